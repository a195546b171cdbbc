library(testthat)
library(tfmha)

test_check("tfmha")
