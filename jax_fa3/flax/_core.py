"""The attention core shared by the NNX and Linen modules.

``attend`` runs the full (prefill / training) attention on the jax_fa3 kernels
(or on ``jax.nn.dot_product_attention`` for comparisons); ``attend_cached``
computes the attention of a few new tokens against a KV cache in plain JAX,
with the mask built from the dynamic cache index.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jax_fa3 import attention as _attention
from jax_fa3 import ring as _ring

KERNEL_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))
IMPLEMENTATIONS = ("jax_fa3", "xla", "cudnn")


def check_options(*, num_heads, num_kv_heads, dropout_rate, causal, window_size, softcap, attention_dtype,
                  implementation, ring_axis_name=None, ring_layout="contiguous"):
    """Trace-free validation of the module options; returns ``(num_kv_heads, window_size)``."""
    if dropout_rate != 0.0:
        raise ValueError(
            f"dropout_rate={dropout_rate}: attention dropout is not supported by the jax_fa3 kernels. "
            "Use dropout_rate=0.0 (and dropout on the residual stream instead), or flax's own attention "
            "module with attention_fn=jax_fa3.flax.attention_fn, which falls back to Flax's attention "
            "when dropout is active."
        )
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})")
    if (not isinstance(window_size, (tuple, list)) or len(window_size) != 2
            or any(not isinstance(w, int) or isinstance(w, bool) or w < -1 for w in window_size)):
        raise ValueError(f"window_size must be a pair of ints >= -1 (-1: unbounded), got {window_size!r}")
    if causal and window_size[1] > 0:
        raise ValueError(f"causal=True fixes the right window to 0, but window_size={tuple(window_size)}")
    if softcap < 0:
        raise ValueError(f"softcap must be >= 0 (0 disables it), got {softcap}")
    if attention_dtype is not None and jnp.dtype(attention_dtype) not in KERNEL_DTYPES:
        raise ValueError(f"attention_dtype must be float16, bfloat16 or None, got {attention_dtype}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation != "jax_fa3" and softcap > 0:
        raise ValueError(f"softcap is only supported by implementation='jax_fa3', not {implementation!r}")
    if ring_axis_name is not None:
        names = ring_axis_name if isinstance(ring_axis_name, tuple) else (ring_axis_name,)
        if not names or not all(isinstance(name, str) for name in names):
            raise ValueError(f"ring_axis_name must be a mesh axis name or a tuple of them, got {ring_axis_name!r}")
        if implementation != "jax_fa3":
            raise ValueError(f"ring_axis_name is only supported by implementation='jax_fa3', not {implementation!r}")
    if ring_layout not in _ring.LAYOUTS:
        raise ValueError(f"ring_layout must be one of {_ring.LAYOUTS}, got {ring_layout!r}")
    return num_kv_heads, tuple(window_size)


def check_no_ring_decode(ring_axis_name):
    if ring_axis_name is not None:
        raise ValueError("decode=True with ring_axis_name: the KV cache is not sharded over a ring; decode with a "
                         "module without ring_axis_name")


def check_prefill_decodes(prefill):
    if prefill:
        raise ValueError("prefill=True fills the KV cache: it needs decode=True (and a cache)")


def resolve_inputs(module_name, flax_module, inputs_q, inputs_k, inputs_v, mask):
    """The (query, key, value) inputs of a module call: key defaults to query and value to key."""
    if mask is not None:
        raise ValueError(
            f"{module_name} does not take a mask: use causal=/window_size=, or "
            f"{flax_module}(attention_fn=jax_fa3.flax.attention_fn) for arbitrary masks.")
    if inputs_k is None:
        if inputs_v is not None:
            raise ValueError("inputs_v given without inputs_k; pass inputs_k (inputs_v defaults to it)")
        inputs_k = inputs_q
    return inputs_q, inputs_k, inputs_k if inputs_v is None else inputs_v


def kernel_dtype(dtype, attention_dtype):
    """The dtype the attention core runs in for q/k/v of ``dtype``."""
    if jnp.dtype(dtype) in KERNEL_DTYPES:
        return jnp.dtype(dtype)
    if attention_dtype is None:
        raise TypeError(
            f"q/k/v are {jnp.dtype(dtype).name} but the jax_fa3 kernels compute in float16/bfloat16 only, "
            "and attention_dtype=None forbids casting: set dtype=jnp.bfloat16 (or float16) on the module, "
            "or attention_dtype=jnp.bfloat16 to cast q/k/v for the attention core only."
        )
    return jnp.dtype(attention_dtype)


def flatten_batch(x):
    """``[batch..., L, H, D]`` -> ``[prod(batch), L, H, D]``, the kernels' rank-4 layout."""
    return x.reshape((math.prod(x.shape[:-3]),) + x.shape[-3:])


def write_cache(cached_key, cached_value, start, key, value, query_length):
    """The caches ``[batch..., max_length, Hkv, D]`` with ``key``/``value`` ``[batch..., L, Hkv, D]``
    written at position ``start``, ``L`` the new tokens' count (``query_length``)."""
    if key.shape[-3] != query_length:
        raise ValueError(f"decode: {query_length} new tokens but keys/values for {key.shape[-3]}: the cache holds "
                         "the keys of the decoded tokens themselves (self-attention)")
    shape = cached_key.shape
    if key.shape[:-3] != shape[:-3] or key.shape[-2:] != shape[-2:]:
        raise ValueError(f"decode: keys of shape {key.shape} do not fit the cache {shape}")
    index = (0,) * (key.ndim - 3) + (start, 0, 0)
    return (jax.lax.dynamic_update_slice(cached_key, key.astype(cached_key.dtype), index),
            jax.lax.dynamic_update_slice(cached_value, value.astype(cached_value.dtype), index))


def attend(q, k, v, *, causal, window_size, softcap, attention_dtype, implementation, ring_axis_name=None,
           ring_layout="contiguous"):
    """Attention of q ``[batch..., Lq, H, D]`` over k, v ``[batch..., Lk, Hkv, D]``.

    Masks are bottom-right aligned (``flash_attention``'s convention; the same as
    top-left when ``Lq == Lk``). The result has q's shape and dtype. With
    ``ring_axis_name`` (inside ``shard_map``) the rows are this device's shard
    of a sequence sharded over that axis: ``ring_attention``.
    """
    out_dtype = q.dtype
    dtype = kernel_dtype(q.dtype, attention_dtype)
    batch_shape = q.shape[:-3]
    q, k, v = (flatten_batch(x).astype(dtype) for x in (q, k, v))
    if ring_axis_name is not None:
        out = _ring.ring_attention(q, k, v, ring_axis_name, causal=causal, window_size=window_size,
                                   softcap=softcap, layout=ring_layout)
    elif implementation == "jax_fa3":
        out = _attention.flash_attention(q, k, v, causal=causal, window_size=window_size, softcap=softcap)
    else:
        left, right = window_size
        if q.shape[1] != k.shape[1] and (causal or window_size != (-1, -1)):
            raise ValueError(
                f"implementation={implementation!r} serves causal/windowed attention only when the query "
                f"and key lengths agree (got {q.shape[1]} and {k.shape[1]})")
        bound = q.shape[1] + k.shape[1]
        local = None if window_size == (-1, -1) else (bound if left < 0 else left, bound if right < 0 else right)
        out = jax.nn.dot_product_attention(q, k, v, is_causal=causal, local_window_size=local,
                                           implementation=implementation)
    return out.reshape(batch_shape + out.shape[1:]).astype(out_dtype)


def attend_cached(q, cached_k, cached_v, start, *, causal, window_size, softcap, attention_dtype):
    """Attention of new tokens against a KV cache, in plain JAX.

    q: ``[batch..., L, H, D]``, the queries of the tokens at cache positions
    ``start .. start + L - 1``; cached_k/cached_v: ``[batch..., max_length,
    Hkv, D]``, already holding those tokens' keys/values. Query ``start + i``
    sees the filled slots ``j < start + L``, restricted by ``causal`` (``j <=
    start + i``) and ``window_size`` around its own position. Matmul inputs are
    in the kernel dtype, scores and softmax in float32. Returns q's shape/dtype.
    """
    out_dtype = q.dtype
    dtype = kernel_dtype(q.dtype, attention_dtype)
    *batch, length, heads, head_dim = q.shape
    max_length, heads_kv = cached_k.shape[-3], cached_k.shape[-2]
    group = heads // heads_kv
    q = q.astype(dtype).reshape(*batch, length, heads_kv, group, head_dim)
    k, v = cached_k.astype(dtype), cached_v.astype(dtype)
    scores = jnp.einsum("...qhgd,...khd->...hgqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(head_dim)
    if softcap > 0:
        scores = softcap * jnp.tanh(scores / softcap)
    pos = start + jnp.arange(length)[:, None]
    j = jnp.arange(max_length)[None, :]
    visible = j < start + length
    left, right = window_size
    if causal:
        right = 0 if right < 0 else min(right, 0)
    if left >= 0:
        visible &= j >= pos - left
    if right >= 0:
        visible &= j <= pos + right
    # Every row sees at least its own token, so the softmax is never empty.
    probs = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
    out = jnp.einsum("...hgqk,...khd->...qhgd", probs.astype(dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(*batch, length, heads, head_dim).astype(out_dtype)
