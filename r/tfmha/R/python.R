# Reaching the Python package: tf_mha.keras3 through reticulate.

.tfmha <- new.env(parent = emptyenv())

#' The Python module behind the layers
#'
#' Imports `module` (by default `tf_mha.keras3`) in the Python that
#' reticulate uses, once. Fails with an R error that says what to install.
#'
#' @param module The Python module to import.
#' @return The module, as a reticulate object.
tfmha_python_module <- function(module = "tf_mha.keras3") {
  if (!is.null(.tfmha[[module]])) {
    return(.tfmha[[module]])
  }
  imported <- tryCatch(
    reticulate::import(module),
    error = function(e) {
      python <- tryCatch(reticulate::py_config()$python,
                         error = function(e2) "none found")
      stop(sprintf(paste0(
        "The Python module '%s' could not be imported (Python: %s): %s\n",
        "Install the Python package tf_mha with Keras 3 into that Python: ",
        "pip install 'tf_mha[keras3]' (from a checkout: pip install -e ",
        "'.[keras3]'), or point reticulate at a Python that has it: ",
        "Sys.setenv(RETICULATE_PYTHON = \"/path/to/python3\")."),
        module, python, conditionMessage(e)), call. = FALSE)
    })
  .tfmha[[module]] <- imported
  imported
}

# R data to Python and back through plain lists: reticulate converts R
# arrays to NumPy and back itself, but Debian's reticulate 1.28 cannot with
# NumPy 2 ("installation of Numpy >= 1.6 not found").

#' An R array as a NumPy array
#'
#' For calling a layer object on R data: an R array, matrix or vector
#' (double, integer, logical) becomes a NumPy array of the same shape
#' (float32, int32 or bool); a Python object or NULL is returned as it is.
#'
#' @param x An R array, matrix or vector.
#' @return A NumPy array (a reticulate object).
as_numpy <- function(x) {
  if (inherits(x, "python.builtin.object") || is.null(x) ||
      !(is.numeric(x) || is.logical(x))) {
    return(x)
  }
  dims <- if (is.null(dim(x))) length(x) else dim(x)
  row_major <- if (length(dims) > 1L) aperm(x, rev(seq_along(dims))) else x
  dtype <- if (is.logical(x)) "bool" else if (is.integer(x)) "int32" else "float32"
  np <- reticulate::import("numpy", convert = FALSE)
  values <- reticulate::r_to_py(as.list(as.vector(row_major)))
  np$array(values, dtype = dtype)$reshape(as.list(as.integer(dims)))
}

#' A tensor as an R array
#'
#' `as.array()` for the tensors the layers return (and NumPy arrays): an R
#' array of the same shape.
#'
#' @param x A TensorFlow tensor.
#' @param ... Unused.
#' @return An R array (double, integer or logical).
as.array.tensorflow.python.types.core.Tensor <- function(x, ...) {
  np <- reticulate::import("numpy", convert = FALSE)
  builtins <- reticulate::import_builtins(convert = FALSE)
  x <- np$asarray(x)
  values <- unlist(reticulate::py_to_r(x$ravel()$tolist()))
  dims <- unlist(reticulate::py_to_r(builtins$list(x$shape)))
  if (length(dims) == 0L) return(values)
  aperm(array(values, dim = rev(dims)), rev(seq_along(dims)))
}
