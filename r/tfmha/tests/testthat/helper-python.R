# The Python side of the tests: numpy, and code run in Python itself.
np <- reticulate::import("numpy", convert = FALSE)
builtins <- reticulate::import_builtins(convert = FALSE)

# Seeded float32 inputs, as numpy arrays.
random_input <- function(shape, seed) {
  rng <- np$random$default_rng(as.integer(seed))
  rng$standard_normal(as.list(as.integer(shape)))$astype("float32")
}

# A tensor or array as an R array of the same shape. Through Python lists:
# Debian's reticulate 1.28 does not convert NumPy 2 arrays itself.
as_r_array <- function(x) {
  x <- np$asarray(x, dtype = "float64")
  values <- unlist(reticulate::py_to_r(x$ravel()$tolist()))
  dims <- unlist(reticulate::py_to_r(builtins$list(x$shape)))
  aperm(array(values, dim = rev(dims)), rev(seq_along(dims)))
}
