"""A pure-JAX float32 reference of :func:`jax_fa3.flash_attention`.

Same signature and semantics as the kernels' API; materialises the full score
matrix, so use it for testing and small problems. ``deterministic`` is accepted
for signature compatibility (the reference is always deterministic).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_fa3 import _checks


def attention(q, k, v, *, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
              return_lse=False, deterministic=False):
    """Float32 reference attention.

    Args and semantics as :func:`jax_fa3.flash_attention` (q ``[batch,
    seqlen_q, heads_q, head_dim]``, k/v ``[batch, seqlen_k, heads_kv,
    head_dim]``); float32 inputs are accepted too. Computes in float32 with
    full-precision matmuls and returns a float32 ``out`` (and float32 ``lse``
    ``[batch, heads_q, seqlen_q]`` with ``return_lse=True``).
    """
    _checks.check_qkv(q, k, v, allowed_dtypes=(jnp.float16, jnp.bfloat16, jnp.float32))
    _checks.static_bool("deterministic", deterministic)
    out, lse = attention_in_dtype(q, k, v, jnp.float32, softmax_scale=softmax_scale, causal=causal,
                                  window_size=window_size, softcap=softcap)
    return (out, lse) if _checks.static_bool("return_lse", return_lse) else out


def visible(seqlen_q: int, seqlen_k: int, window_left, window_right):
    """Boolean ``[seqlen_q, seqlen_k]``: which keys each query sees (bottom-right aligned window)."""
    i = jnp.arange(seqlen_q)[:, None]
    j = jnp.arange(seqlen_k)[None, :]
    diag = seqlen_k - seqlen_q
    mask = jnp.ones((seqlen_q, seqlen_k), bool)
    if window_left is not None:
        mask &= j >= i + diag - window_left
    if window_right is not None:
        mask &= j <= i + diag + window_right
    return mask


def attention_in_dtype(q, k, v, compute_dtype, *, softmax_scale=None, causal=False, window_size=(-1, -1),
                       softcap=0.0):
    """Attention with matmul inputs and outputs in ``compute_dtype`` and the softmax in float32.

    With float32 it is the reference; with q's own dtype it is what plain XLA
    computes at that precision (the yardstick of the tests' error bound).
    Returns ``(out, lse)``, ``out`` in ``compute_dtype``.
    """
    scale, softcap, left, right = _checks.resolve_options(
        q.shape[-1], softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap)
    batch, seqlen_q, heads_q, head_dim = q.shape
    seqlen_k, heads_kv = k.shape[1], k.shape[2]
    group = heads_q // heads_kv
    precision = jax.lax.Precision.HIGHEST
    q, k, v = (x.astype(compute_dtype) for x in (q, k, v))
    k = jnp.repeat(k, group, axis=2)
    v = jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision).astype(jnp.float32) * scale
    if softcap > 0:
        scores = softcap * jnp.tanh(scores / softcap)
    mask = visible(seqlen_q, seqlen_k, left, right)
    # Rows that see no key: out 0, lse -inf, zero gradients. Their scores are
    # replaced by finite zeros first so no NaN reaches the gradients.
    row_seen = jnp.any(mask, axis=-1)
    safe_scores = jnp.where(mask, scores, jnp.where(row_seen[:, None], -jnp.inf, 0.0))
    safe_lse = jax.nn.logsumexp(safe_scores, axis=-1)
    lse = jnp.where(row_seen, safe_lse, -jnp.inf)
    probs = jnp.where(mask, jnp.exp(safe_scores - safe_lse[..., None]), 0.0)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(compute_dtype), v, precision=precision)
    return out, lse
