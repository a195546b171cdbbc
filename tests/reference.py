"""Independent float64 NumPy reference for attention (the judge of the math).

Shapes: B batch, T query length, S key length, N heads, H head size.
Written from the definitions, sharing no code with tf_mha.
"""

import numpy as np


def attention(q, k, v, mask=None, causal=False, scale=None, window=None):
  """q [B,T,N,H], k [B,S,N,H], v [B,S,N,V] -> (out [B,T,N,V], probs [B,N,T,S])."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
  logits = np.einsum("btnh,bsnh->bnts", q * scale, k)
  keep = np.ones(logits.shape, bool)
  if mask is not None:
    keep = keep & np.asarray(mask, bool)
  if causal:
    t, s = logits.shape[-2:]
    keep = keep & (np.arange(t)[:, None] >= np.arange(s)[None, :])
  if window is not None:
    t, s = logits.shape[-2:]
    keep = keep & (np.abs(np.arange(t)[:, None] - np.arange(s)[None, :]) < window)
  # A fully masked row attends uniformly (tf.keras' behaviour).
  logits = np.where(keep, logits, -1e300)
  logits = logits - logits.max(-1, keepdims=True)
  probs = np.exp(logits)
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnv->btnv", probs, v), probs


def multi_head_attention(weights, query, value, key=None, *, num_heads,
                         attention_axes=None, mask=None, causal=False,
                         use_bias=True):
  """A whole MHA layer from its weights (tf.keras order), N-D inputs allowed.

  mask: boolean [<batch dims>, <T dims>, <S dims>]; with fewer axes, the
    missing ones are inserted before the T dims (tf.keras' rule).
  Returns (output, scores [<batch dims>, N, <T dims>, <S dims>]).
  """
  key = value if key is None else key
  w = [np.asarray(x, np.float64) for x in weights]
  if use_bias:
    wq, bq, wk, bk, wv, bv, wo, bo = w
  else:
    (wq, wk, wv, wo), bq = w, None
  q = np.einsum("...d,dnh->...nh", np.asarray(query, np.float64), wq)
  k = np.einsum("...d,dnh->...nh", np.asarray(key, np.float64), wk)
  v = np.einsum("...d,dnh->...nh", np.asarray(value, np.float64), wv)
  if use_bias:
    q, k, v = q + bq, k + bk, v + bv
  rank = q.ndim  # input rank + 1
  if isinstance(attention_axes, int):
    attention_axes = (attention_axes,)
  axes = (tuple(range(1, rank - 2)) if attention_axes is None else
          tuple(sorted(a % (rank - 1) for a in attention_axes)))
  batch = tuple(i for i in range(rank - 2) if i not in axes)
  perm = batch + axes + (rank - 2, rank - 1)

  def flat(x):
    x = np.transpose(x, perm)
    nb, na = len(batch), len(axes)
    return x.reshape((int(np.prod(x.shape[:nb])), int(np.prod(x.shape[nb:nb + na]))) + x.shape[-2:]), x.shape

  fq, q_shape = flat(q)
  fk, k_shape = flat(k)
  fv, _ = flat(v)
  fmask = None
  if mask is not None:
    b_dims = q_shape[:len(batch)]
    t_dims = q_shape[len(batch):len(batch) + len(axes)]
    s_dims = k_shape[len(batch):len(batch) + len(axes)]
    m = np.asarray(mask, bool)
    while m.ndim < len(b_dims) + 2 * len(axes):
      m = np.expand_dims(m, m.ndim - 2 * len(axes))
    m = np.broadcast_to(m, b_dims + t_dims + s_dims)
    fmask = m.reshape(fq.shape[0], 1, fq.shape[1], fk.shape[1])
  out, probs = attention(fq, fk, fv, mask=fmask, causal=causal)
  out = out.reshape(q_shape[:-1] + (v.shape[-1],))
  out = np.transpose(out, np.argsort(perm))
  result = np.tensordot(out, wo, axes=([out.ndim - 2, out.ndim - 1], [0, 1]))
  if use_bias:
    result = result + bo
  scores = probs.reshape(q_shape[:len(batch)] + (num_heads,) +
                         q_shape[len(batch):len(batch) + len(axes)] +
                         k_shape[len(batch):len(batch) + len(axes)])
  return result, scores
