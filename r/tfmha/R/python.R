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
