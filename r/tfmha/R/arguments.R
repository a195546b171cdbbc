# R values to the Python types the layers take, with errors naming the
# argument (keras3's conventions: numbers to integers, NULL to None, axes
# 1-based).

as_positive_integer <- function(value, name, null_ok = FALSE) {
  if (is.null(value)) {
    if (null_ok) return(NULL)
    stop(sprintf("`%s` must be a positive integer. Received: %s = NULL",
                 name, name), call. = FALSE)
  }
  if (!is.numeric(value) || length(value) != 1L || is.na(value) ||
      value != round(value) || value < 1) {
    stop(sprintf("`%s` must be a positive integer. Received: %s = %s",
                 name, name, deparse1(value)), call. = FALSE)
  }
  as.integer(value)
}

as_positive_integers <- function(value, name) {
  if (is.null(value)) return(NULL)
  if (!is.numeric(value) || length(value) < 1L || anyNA(value) ||
      any(value != round(value)) || any(value < 1)) {
    stop(sprintf("`%s` must be a positive integer or a vector of them. Received: %s = %s",
                 name, name, deparse1(value)), call. = FALSE)
  }
  if (length(value) == 1L) as.integer(value) else as.list(as.integer(value))
}

as_rate <- function(value, name) {
  if (!is.numeric(value) || length(value) != 1L || is.na(value) ||
      value < 0 || value >= 1) {
    stop(sprintf("`%s` must be a number in [0, 1). Received: %s = %s",
                 name, name, deparse1(value)), call. = FALSE)
  }
  as.double(value)
}

as_flag <- function(value, name, null_ok = FALSE) {
  if (is.null(value) && null_ok) return(NULL)
  if (!is.logical(value) || length(value) != 1L || is.na(value)) {
    stop(sprintf("`%s` must be TRUE or FALSE%s. Received: %s = %s", name,
                 if (null_ok) " or NULL" else "", name, deparse1(value)),
         call. = FALSE)
  }
  value
}

# R axes are 1-based, as in keras3 for R: a positive axis `a` is Python's
# `a - 1` (axis 1 is the batch axis, so attention axes start at 2); negative
# axes count from the end and are the same in both.
as_axes <- function(value, name) {
  if (is.null(value)) return(NULL)
  if (!is.numeric(value) || length(value) < 1L || anyNA(value) ||
      any(value != round(value)) || any(value == 0)) {
    stop(sprintf("`%s` must be non-zero integer axes (1-based, as in keras3). Received: %s = %s",
                 name, name, deparse1(value)), call. = FALSE)
  }
  if (any(value == 1)) {
    stop(sprintf("`%s` cannot include the batch axis (1). Received: %s = %s",
                 name, name, deparse1(value)), call. = FALSE)
  }
  axes <- ifelse(value > 0, value - 1L, value)
  as.list(as.integer(axes))
}

as_seed <- function(value) {
  if (is.null(value)) return(NULL)
  if (!is.numeric(value) || length(value) != 1L || is.na(value) ||
      value != round(value)) {
    stop(sprintf("`seed` must be an integer or NULL. Received: seed = %s",
                 deparse1(value)), call. = FALSE)
  }
  as.integer(value)
}
