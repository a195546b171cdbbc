# layer_multi_head_attention() and layer_group_query_attention(): the
# keras3 (R) signatures, on tf_mha.keras3's layers.

# Arguments of a layer's call, picked out of `...` (the rest go to the
# layer's constructor: name, dtype, ...).
# Call arguments that hold data (R arrays are converted for them).
.data_arguments <- c("attention_mask", "query_mask", "value_mask", "key_mask",
                     "segment_ids", "key_segment_ids")
.call_arguments <- c("attention_mask", "use_causal_mask",
                     "return_attention_scores", "training", "query_mask",
                     "value_mask", "key_mask", "segment_ids",
                     "key_segment_ids")

#' Multi-head attention (keras3's layer_multi_head_attention)
#'
#' The Keras 3 `MultiHeadAttention` layer of tf_mha (`tf_mha.keras3`): the
#' same arguments, weights and outputs as Keras', with its attention on
#' tf_mha's op on the TensorFlow backend, where `flash_attention = TRUE`
#' works.
#'
#' @param inputs Missing or NULL: the layer is returned. A list of `query`,
#'   `value` and optionally `key` (by name or position): the layer is called
#'   on them and its output returned.
#' @param num_heads,key_dim,value_dim,dropout,use_bias,output_shape As in
#'   keras3; numbers become integers.
#' @param attention_axes 1-based axes (keras3's convention for R): 2 is the
#'   sequence axis of `[batch, length, features]` inputs.
#' @param flash_attention NULL (chosen from the shapes), TRUE or FALSE.
#' @param kernel_initializer,bias_initializer,kernel_regularizer,bias_regularizer,activity_regularizer,kernel_constraint,bias_constraint
#'   As in keras3.
#' @param seed Integer seed for the attention dropout, or NULL.
#' @param ... Call arguments (`attention_mask`, `use_causal_mask`,
#'   `return_attention_scores`, `training`, the input masks, `segment_ids`)
#'   and other layer arguments (`name`, `dtype`).
#' @return The layer, or its output; with `return_attention_scores = TRUE`,
#'   `list(output = , scores = )`.
layer_multi_head_attention <- function(
    inputs, num_heads, key_dim, value_dim = NULL, dropout = 0,
    use_bias = TRUE, output_shape = NULL, attention_axes = NULL,
    flash_attention = NULL, kernel_initializer = "glorot_uniform",
    bias_initializer = "zeros", kernel_regularizer = NULL,
    bias_regularizer = NULL, activity_regularizer = NULL,
    kernel_constraint = NULL, bias_constraint = NULL, seed = NULL, ...) {
  args <- .split_arguments(list(...))
  config <- c(list(
      num_heads = as_positive_integer(num_heads, "num_heads"),
      key_dim = as_positive_integer(key_dim, "key_dim"),
      value_dim = as_positive_integer(value_dim, "value_dim", null_ok = TRUE),
      output_shape = as_positive_integers(output_shape, "output_shape"),
      attention_axes = as_axes(attention_axes, "attention_axes")),
    .shared_config(dropout, use_bias, flash_attention, kernel_initializer,
                   bias_initializer, kernel_regularizer, bias_regularizer,
                   activity_regularizer, kernel_constraint, bias_constraint,
                   seed), args$layer)
  layer <- do.call(tfmha_python_module()$MultiHeadAttention, config)
  .call_or_return(layer, if (missing(inputs)) NULL else inputs, args$call)
}

#' Grouped-query attention (keras3's layer_group_query_attention)
#'
#' The Keras 3 `GroupQueryAttention` layer of tf_mha
#' (`tf_mha.keras3.GroupedQueryAttention`): keys and values have
#' `num_key_value_heads` heads, shared by groups of query heads, and are not
#' repeated on the TensorFlow backend.
#'
#' @inheritParams layer_multi_head_attention
#' @param head_dim,num_query_heads,num_key_value_heads As in keras3.
#' @return The layer, or its output (see layer_multi_head_attention()).
layer_group_query_attention <- function(
    inputs, head_dim, num_query_heads, num_key_value_heads, dropout = 0,
    use_bias = TRUE, flash_attention = NULL,
    kernel_initializer = "glorot_uniform", bias_initializer = "zeros",
    kernel_regularizer = NULL, bias_regularizer = NULL,
    activity_regularizer = NULL, kernel_constraint = NULL,
    bias_constraint = NULL, seed = NULL, ...) {
  args <- .split_arguments(list(...))
  heads <- as_positive_integer(num_query_heads, "num_query_heads")
  kv_heads <- as_positive_integer(num_key_value_heads, "num_key_value_heads")
  if (heads %% kv_heads != 0L) {
    stop(sprintf(paste0("`num_query_heads` must be a multiple of ",
                        "`num_key_value_heads`. Received: num_query_heads = ",
                        "%d, num_key_value_heads = %d"), heads, kv_heads),
         call. = FALSE)
  }
  config <- c(list(
      head_dim = as_positive_integer(head_dim, "head_dim"),
      num_query_heads = heads, num_key_value_heads = kv_heads),
    .shared_config(dropout, use_bias, flash_attention, kernel_initializer,
                   bias_initializer, kernel_regularizer, bias_regularizer,
                   activity_regularizer, kernel_constraint, bias_constraint,
                   seed), args$layer)
  layer <- do.call(tfmha_python_module()$GroupedQueryAttention, config)
  .call_or_return(layer, if (missing(inputs)) NULL else inputs, args$call)
}

# The constructor arguments both layers take, checked and converted.
.shared_config <- function(dropout, use_bias, flash_attention,
                           kernel_initializer, bias_initializer,
                           kernel_regularizer, bias_regularizer,
                           activity_regularizer, kernel_constraint,
                           bias_constraint, seed) {
  list(dropout = as_rate(dropout, "dropout"),
       use_bias = as_flag(use_bias, "use_bias"),
       flash_attention = as_flag(flash_attention, "flash_attention", null_ok = TRUE),
       kernel_initializer = kernel_initializer,
       bias_initializer = bias_initializer,
       kernel_regularizer = kernel_regularizer,
       bias_regularizer = bias_regularizer,
       activity_regularizer = activity_regularizer,
       kernel_constraint = kernel_constraint, bias_constraint = bias_constraint,
       seed = as_seed(seed))
}

.split_arguments <- function(dots) {
  if (length(dots) && (is.null(names(dots)) || any(names(dots) == ""))) {
    stop("Arguments in `...` must be named (call arguments such as ",
         "use_causal_mask = TRUE, or layer arguments such as name = \"mha\").",
         call. = FALSE)
  }
  is_call <- names(dots) %in% .call_arguments
  call <- dots[is_call]
  for (flag in intersect(names(call), c("use_causal_mask",
                                        "return_attention_scores"))) {
    call[[flag]] <- as_flag(call[[flag]], flag)
  }
  list(call = call, layer = dots[!is_call])
}

.call_or_return <- function(layer, inputs, call) {
  if (is.null(inputs)) {
    if (length(call)) {
      stop(sprintf("Call arguments (%s) need `inputs`: pass a list of query, value (and key).",
                   paste(names(call), collapse = ", ")), call. = FALSE)
    }
    return(layer)
  }
  if (!is.list(inputs) || !length(inputs) %in% c(2L, 3L)) {
    stop("`inputs` must be a list of query, value and optionally key. Received: ",
         class(inputs)[1], " of length ", length(inputs), call. = FALSE)
  }
  named <- !is.null(names(inputs)) && all(names(inputs) != "")
  if (named && !all(names(inputs) %in% c("query", "value", "key"))) {
    stop("`inputs` names must be query, value and key. Received: ",
         paste(names(inputs), collapse = ", "), call. = FALSE)
  }
  tensors <- if (named) inputs[c("query", "value", intersect("key", names(inputs)))]
             else stats::setNames(inputs, c("query", "value", "key")[seq_along(inputs)])
  tensors <- lapply(tensors, as_numpy)
  data <- intersect(names(call), .data_arguments)
  call[data] <- lapply(call[data], as_numpy)
  result <- do.call(layer, c(unname(tensors[c("query", "value")]),
                             tensors["key"][!is.na(names(tensors["key"]))],
                             call))
  if (isTRUE(call$return_attention_scores)) {
    return(list(output = result[[1]], scores = result[[2]]))
  }
  result
}
