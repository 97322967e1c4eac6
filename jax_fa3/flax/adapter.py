"""``attention_fn`` adapters for Flax's own attention modules.

``nn.MultiHeadDotProductAttention(attention_fn=jax_fa3.flax.attention_fn)`` and
``nnx.MultiHeadAttention(attention_fn=jax_fa3.flax.attention_fn)`` compute their
attention on the jax_fa3 kernels whenever the call can be served exactly, and
otherwise fall back to Flax's own function with a one-time warning.

Served by the kernels:

- no mask (``mask=None``), or a *concrete* (not traced) mask that is all True
  or exactly the top-left causal mask; a mask made inside ``jit`` is a tracer
  whose values are unknown at trace time, so it always falls back. For causal
  attention under ``jit`` use :data:`causal_attention_fn` and call the module
  *without* a mask (or nnx's ``is_causal=True``, which reaches the adapter);
- no bias; dropout off (``dropout_rate == 0`` or ``deterministic=True``); no
  attention-weight sowing (``module=None``); no custom einsums;
- q/k/v ``[batch..., length, heads, head_dim]`` with key heads dividing query
  heads and head_dim a multiple of 8 up to 256.

Dtypes: float16/bfloat16 inputs run as they are. Float32 inputs (Flax's default)
are cast to ``attention_dtype`` (bfloat16) for the kernel and the output is
cast back to float32, i.e. the attention core runs in mixed precision; build an
adapter with ``make_attention_fn(attention_dtype=None)`` to send float32 calls
to Flax's float32 attention instead.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jax_fa3 import _checks
from jax_fa3 import attention as _attention
from jax_fa3.flax import _core

_UNSET = object()  # marks the linen-only arguments that the caller did not pass
_warned: set[str] = set()


def _warn_once(reason: str, target: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"jax_fa3.flax.attention_fn: {reason}; falling back to {target}.", stacklevel=4)


def _concrete_mask_kind(mask, seqlen_q: int, seqlen_k: int):
    """'full' or 'causal' (top-left) for a concrete boolean mask that is exactly that; else None."""
    if isinstance(mask, jax.core.Tracer):
        return None
    try:
        mask = np.asarray(mask).astype(bool)
    except Exception:  # noqa: BLE001 - anything that is not a plain concrete array
        return None
    if mask.shape[-2:] not in ((seqlen_q, seqlen_k), (1, seqlen_k), (seqlen_q, 1), (1, 1)):
        return None
    mask = np.broadcast_to(mask, mask.shape[:-2] + (seqlen_q, seqlen_k))
    if mask.all():
        return "full"
    causal = np.tril(np.ones((seqlen_q, seqlen_k), bool))
    if (mask == causal).all():
        return "causal"
    return None


def _unserved_reason(query, key, value, bias, mask, dropout_rate, deterministic, module, custom_einsum,
                     attention_dtype):
    if bias is not None:
        return "bias is not supported by the kernels"
    if dropout_rate > 0 and not deterministic:
        return "attention dropout is not supported by the kernels"
    if module is not None:
        return "sowing attention weights needs them materialised"
    if custom_einsum:
        return "custom attention einsums are not supported by the kernels"
    if mask is not None and _concrete_mask_kind(mask, query.shape[-3], key.shape[-3]) is None:
        return "a mask (other than a concrete all-True or causal one) is not supported by the kernels"
    if query.ndim < 3 or key.ndim != query.ndim or value.ndim != query.ndim:
        return "query/key/value must be [batch..., length, heads, head_dim] of equal rank"
    if key.shape != value.shape or query.shape[-2] % key.shape[-2] or query.shape[-1] != key.shape[-1]:
        return "query/key/value shapes are not [.., Lq, H, D] / [.., Lk, Hkv, D] with Hkv dividing H"
    if query.shape[:-3] != key.shape[:-3]:
        return "query and key/value batch dimensions differ"
    if query.shape[-1] % 8 or query.shape[-1] > _checks.MAX_HEAD_DIM:
        return f"head_dim {query.shape[-1]} is not a multiple of 8 up to 256"
    if jnp.dtype(query.dtype) not in _core.KERNEL_DTYPES and attention_dtype is None:
        return f"dtype {jnp.dtype(query.dtype).name} is not float16/bfloat16 and attention_dtype=None"
    return None


def make_attention_fn(*, is_causal: bool = False, attention_dtype=jnp.bfloat16):
    """Builds an ``attention_fn`` for Flax's attention modules (see the module docstring).

    Args:
      is_causal: always apply the top-left causal mask (query ``t`` sees keys
        ``s <= t``), in addition to any mask the caller passes.
      attention_dtype: dtype float32 inputs are cast to for the kernels; None
        sends float32 calls to Flax's own function.
    """
    if attention_dtype is not None and jnp.dtype(attention_dtype) not in _core.KERNEL_DTYPES:
        raise ValueError(f"attention_dtype must be float16, bfloat16 or None, got {attention_dtype}")
    fn_causal = is_causal

    def attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout=True, dropout_rng=None,
                     dropout_rate=0.0, deterministic=False, dtype=None, precision=None, module=None,
                     force_fp32_for_softmax=_UNSET, einsum_dot_general=_UNSET, qk_attn_weights_einsum=_UNSET,
                     attn_weights_value_einsum=_UNSET, promote_dtype=None, is_causal=False):
        """Flax ``attention_fn``: q ``[batch..., Lq, H, D]``, k/v ``[batch..., Lk, Hkv, D]``.

        Returns ``[batch..., Lq, H, D]`` in the computation dtype (``dtype``, else the inputs').
        """
        from flax import linen, nnx  # imported lazily: flax is an optional dependency

        linen_only = dict(force_fp32_for_softmax=force_fp32_for_softmax, einsum_dot_general=einsum_dot_general,
                          qk_attn_weights_einsum=qk_attn_weights_einsum,
                          attn_weights_value_einsum=attn_weights_value_einsum)
        linen_only = {k: v for k, v in linen_only.items() if v is not _UNSET}
        if promote_dtype is not None:
            query, key, value = promote_dtype((query, key, value), dtype=dtype)
        else:
            query, key, value = (jnp.asarray(x) for x in (query, key, value))
            target = dtype if dtype is not None else jnp.result_type(query, key, value)
            query, key, value = (x.astype(target) for x in (query, key, value))
        causal = fn_causal or is_causal
        custom_einsum = any(linen_only.get(k) is not None for k in
                            ("einsum_dot_general", "qk_attn_weights_einsum", "attn_weights_value_einsum"))
        reason = _unserved_reason(query, key, value, bias, mask, dropout_rate, deterministic, module, custom_einsum,
                                  attention_dtype)
        if reason is not None:
            if causal:  # Flax's functions take causality as a mask (linen) or is_causal (nnx): use a mask.
                tril = jnp.tril(jnp.ones((query.shape[-3], key.shape[-3]), bool))
                mask = tril if mask is None else jnp.logical_and(mask.astype(bool), tril)
            kwargs = dict(bias=bias, mask=mask, broadcast_dropout=broadcast_dropout, dropout_rng=dropout_rng,
                          dropout_rate=dropout_rate, deterministic=deterministic, dtype=dtype, precision=precision,
                          module=module)
            if linen_only or isinstance(module, linen.Module):
                _warn_once(reason, "flax.linen.dot_product_attention")
                return linen.dot_product_attention(query, key, value, **kwargs, **linen_only)
            _warn_once(reason, "flax.nnx.dot_product_attention")
            return nnx.dot_product_attention(query, key, value, **kwargs)

        if mask is not None and _concrete_mask_kind(mask, query.shape[-3], key.shape[-3]) == "causal":
            causal = True
        out_dtype = query.dtype
        compute = _core.kernel_dtype(query.dtype, attention_dtype)
        batch_shape = query.shape[:-3]
        q, k, v = (_core.flatten_batch(x).astype(compute) for x in (query, key, value))
        out = _attention.dot_product_attention(q, k, v, is_causal=causal, implementation="jax_fa3")
        return out.reshape(batch_shape + out.shape[1:]).astype(out_dtype)

    attention_fn.__name__ = "causal_attention_fn" if is_causal else "attention_fn"
    return attention_fn


#: Drop-in ``attention_fn`` for ``flax.linen``/``flax.nnx`` attention modules.
attention_fn = make_attention_fn()
#: Same, always causal (top-left): use it with modules called without a mask.
causal_attention_fn = make_attention_fn(is_causal=True)
