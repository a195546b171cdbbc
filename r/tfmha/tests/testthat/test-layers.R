test_that("an R-built layer equals the same layer built in Python, same weights", {
  query <- random_input(c(2, 7, 12), 1)
  value <- random_input(c(2, 9, 12), 2)
  layer <- layer_multi_head_attention(num_heads = 3, key_dim = 4, value_dim = 5,
                                      output_shape = 10, seed = 3)
  out <- layer(query, value, use_causal_mask = TRUE)
  main <- reticulate::py_run_string(paste(
    "import numpy as np",
    "import tf_mha.keras3",
    "py_layer = tf_mha.keras3.MultiHeadAttention(num_heads=3, key_dim=4,",
    "                                           value_dim=5, output_shape=10)",
    "py_layer(r.query, r.value)",
    "py_layer.set_weights(r.layer.get_weights())",
    "py_out = np.asarray(py_layer(r.query, r.value, use_causal_mask=True))",
    sep = "\n"), convert = FALSE)
  expect_equal(as_r_array(out), as_r_array(main$py_out), tolerance = 1e-6)
  expect_equal(dim(as_r_array(out)), c(2L, 7L, 10L))
})

test_that("inputs as a list call the layer; scores come back in a named list", {
  query <- random_input(c(2, 5, 8), 4)
  value <- random_input(c(2, 6, 8), 5)
  out <- layer_multi_head_attention(list(query, value), num_heads = 2, key_dim = 4,
                                    return_attention_scores = TRUE)
  expect_named(out, c("output", "scores"))
  expect_equal(dim(as_r_array(out$output)), c(2L, 5L, 8L))
  expect_equal(dim(as_r_array(out$scores)), c(2L, 2L, 5L, 6L))
  keyed <- layer_multi_head_attention(list(query = query, value = value, key = value),
                                      num_heads = 2, key_dim = 4)
  expect_equal(dim(as_r_array(keyed)), c(2L, 5L, 8L))
  layer <- layer_multi_head_attention(num_heads = 2, key_dim = 4)
  expect_true(inherits(layer, "python.builtin.object"))
})

test_that("R numbers become integers and axes are 1-based", {
  layer <- layer_multi_head_attention(num_heads = 4, key_dim = 8,
                                      attention_axes = 2, seed = 7)
  expect_identical(layer$num_heads, 4L)
  axes <- reticulate::py_to_r(builtins$list(layer$`_attention_axes`))
  expect_equal(unlist(axes), 1L)
  # 2 and 3 (R) attend over Python's axes 1 and 2 of [batch, x, y, features].
  x <- random_input(c(1, 3, 4, 6), 8)
  both <- layer_multi_head_attention(num_heads = 2, key_dim = 3,
                                     attention_axes = c(2, 3))
  out <- both(x, x, return_attention_scores = TRUE)
  expect_equal(dim(as_r_array(out[[2]])), c(1L, 2L, 3L, 4L, 3L, 4L))
})

test_that("flash attention works on TensorFlow and equals the plain path", {
  x <- random_input(c(1, 1100, 16), 9)
  flash <- layer_multi_head_attention(num_heads = 2, key_dim = 8,
                                      flash_attention = TRUE)
  plain <- layer_multi_head_attention(num_heads = 2, key_dim = 8,
                                      flash_attention = FALSE)
  flash_out <- flash(x, x, use_causal_mask = TRUE)
  plain(x, x)
  plain$set_weights(flash$get_weights())
  plain_out <- plain(x, x, use_causal_mask = TRUE)
  expect_equal(as_r_array(flash_out), as_r_array(plain_out), tolerance = 1e-5)
  expect_identical(flash$`_flash_attention`, TRUE)
})

test_that("grouped-query attention", {
  x <- random_input(c(2, 6, 12), 10)
  out <- layer_group_query_attention(list(x, x), head_dim = 4, num_query_heads = 4,
                                     num_key_value_heads = 2, use_causal_mask = TRUE)
  expect_equal(dim(as_r_array(out)), c(2L, 6L, 12L))
  layer <- layer_group_query_attention(head_dim = 4, num_query_heads = 4,
                                       num_key_value_heads = 2, flash_attention = TRUE)
  expect_equal(dim(as_r_array(layer(x, x))), c(2L, 6L, 12L))
})

test_that("bad arguments are R errors naming the argument", {
  expect_error(layer_multi_head_attention(num_heads = -1, key_dim = 4),
               "`num_heads` must be a positive integer. Received: num_heads = -1")
  expect_error(layer_multi_head_attention(num_heads = 2, key_dim = "a"),
               "`key_dim` must be a positive integer. Received: key_dim = \"a\"")
  expect_error(layer_multi_head_attention(num_heads = 2.5, key_dim = 4),
               "`num_heads` must be a positive integer")
  expect_error(layer_multi_head_attention(num_heads = 2, key_dim = 4, dropout = 1),
               "`dropout` must be a number in \\[0, 1\\)")
  expect_error(layer_multi_head_attention(num_heads = 2, key_dim = 4, attention_axes = 1),
               "`attention_axes` cannot include the batch axis")
  expect_error(layer_group_query_attention(head_dim = 4, num_query_heads = 3,
                                           num_key_value_heads = 2),
               "`num_query_heads` must be a multiple of `num_key_value_heads`")
  expect_error(layer_multi_head_attention(num_heads = 2, key_dim = 4,
                                          use_causal_mask = TRUE),
               "Call arguments \\(use_causal_mask\\) need `inputs`")
  expect_error(layer_multi_head_attention(list(1), num_heads = 2, key_dim = 4),
               "`inputs` must be a list of query, value")
})

test_that("a missing Python package says what to install", {
  expect_error(tfmha_python_module("tf_mha_not_installed_anywhere"),
               "pip install 'tf_mha\\[keras3\\]'")
})

test_that("R arrays go in, and as.array() gives R arrays back", {
  set.seed(11)
  q <- array(runif(2 * 5 * 8), c(2, 5, 8))
  mask <- array(TRUE, c(2, 5, 5))
  mask[, , 5] <- FALSE
  out <- layer_multi_head_attention(list(q, q), num_heads = 2, key_dim = 4,
                                    attention_mask = mask, seed = 1)
  r_out <- as.array(out)
  expect_true(is.array(r_out))
  expect_equal(dim(r_out), c(2L, 5L, 8L))
  # The same values through NumPy arrays made in Python from the R data.
  expect_equal(as_r_array(as_numpy(q)), q, tolerance = 1e-6)
  expect_equal(r_out, as_r_array(out), tolerance = 1e-6)
})
