"""``flash_attention`` and the ``jax.nn.dot_product_attention`` drop-in.

Both validate their arguments at trace time, turn the mask options into one
window relative to the bottom-right diagonal, and call a single
``jax.custom_vjp`` primitive whose forward and backward are the XLA FFI custom
calls of :mod:`jax_fa3._ffi` (Hopper kernels on CUDA, the C++ backend on CPU),
partitioned and batched by :mod:`jax_fa3._sharding`.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values

from jax_fa3 import _checks, _sharding


def _window(left, right, seqlen_q: int, seqlen_k: int):
    """The window as the kernels take it: ints, an unbounded (None) side as seqlen_q + seqlen_k.

    Values are clamped to [-(seqlen_q + seqlen_k), seqlen_q + seqlen_k], which
    keeps every mask the same while staying far inside int32.
    """
    bound = seqlen_q + seqlen_k
    return tuple(bound if w is None else max(-bound, min(bound, w)) for w in (left, right))


def _first_order(fn):
    """``fn`` (a function of arrays) with a clear error where JAX would differentiate it.

    The custom VJP below gives first derivatives; a second one (grad of grad,
    a Hessian) would differentiate the custom calls themselves, which have no
    derivative rule, and JAX's own message would name its internals.
    """
    wrapped = jax.custom_jvp(fn)

    def refuse(primals, tangents):
        raise NotImplementedError(
            "jax_fa3.flash_attention has first derivatives only, in reverse mode (jax.grad, jax.vjp, "
            "jax.value_and_grad): grad of grad is not implemented (nor forward mode: jax.jvp, jax.hessian)")

    wrapped.defjvp(refuse)
    return wrapped


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _attention(q, k, v, softmax_scale, softcap, window_left, window_right, deterministic):
    fwd = functools.partial(_sharding.fwd, softmax_scale=softmax_scale, softcap=softcap, window_left=window_left,
                            window_right=window_right)
    out, lse = _first_order(fwd)(q, k, v)
    return _sharding.typed_like_q(out, lse, q)


#: The names of the forward's saved ``out`` and ``lse`` (``jax.ad_checkpoint.checkpoint_name``), in
#: ``flash_attention`` and ``ring_attention`` alike: under
#: ``jax.checkpoint`` with ``jax.checkpoint_policies.save_only_these_names(*RESIDUAL_NAMES)`` the backward
#: uses them instead of running the forward kernel again.
RESIDUAL_NAMES = ("jax_fa3_out", "jax_fa3_lse")


def named_residuals(out, lse):
    """``out`` and ``lse`` named for remat policies (RESIDUAL_NAMES): the forward's results, which the layers
    after it may need in their backward too, and its residuals alike."""
    return tuple(checkpoint_name(x, name) for x, name in zip((out, lse), RESIDUAL_NAMES))


def _attention_fwd(q, k, v, softmax_scale, softcap, window_left, window_right, deterministic):
    q, k, v = custom_vjp_primal_tree_values((q, k, v))  # symbolic_zeros: they come as CustomVJPPrimal records
    out, lse = named_residuals(*_attention(q, k, v, softmax_scale, softcap, window_left, window_right,
                                           deterministic))
    return (out, lse), (q, k, v, out, lse)


def output_cotangents(out, dout, dlse):
    """The backward kernel's (dout, dlse) from the cotangents of (out, lse) under ``symbolic_zeros``.

    dlse stays None when it is a symbolic zero (the common case: lse unused),
    so that no zeros are made for it; a zero dout, rarer, is made.
    """
    dout = jnp.zeros_like(out) if isinstance(dout, SymbolicZero) else dout.astype(out.dtype)
    dlse = None if isinstance(dlse, SymbolicZero) else dlse.astype(jnp.float32)
    return dout, dlse


def _attention_bwd(softmax_scale, softcap, window_left, window_right, deterministic, residuals, cotangents):
    q, k, v, out, lse = residuals
    dout, dlse = output_cotangents(out, *cotangents)
    bwd = functools.partial(_sharding.bwd, softmax_scale=softmax_scale, softcap=softcap, window_left=window_left,
                            window_right=window_right, deterministic=deterministic)
    grads = _first_order(bwd)(q, k, v, out, dout, lse, dlse)
    return tuple(_sharding.typed_like(g, x) for g, x in zip(grads, (q, k, v)))


_attention.defvjp(_attention_fwd, _attention_bwd, symbolic_zeros=True)


def flash_attention(q, k, v, *, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    return_lse=False, deterministic=False):
    """FlashAttention-3 multi-head attention (MHA, MQA and GQA).

    Args:
      q: queries, ``[batch, seqlen_q, heads_q, head_dim]``, float16 or bfloat16.
      k: keys, ``[batch, seqlen_k, heads_kv, head_dim]``, same dtype as ``q``;
        ``heads_q`` must be a multiple of ``heads_kv``.
      v: values, same shape and dtype as ``k``.
      softmax_scale: scale of ``q·kᵀ`` before the softmax; ``1/sqrt(head_dim)``
        when None.
      causal: causal mask aligned to the bottom-right corner (query ``i`` sees
        keys ``j <= i + seqlen_k - seqlen_q``); same as ``window_size=(-1, 0)``
        and combinable with a left window.
      window_size: ``(left, right)`` sliding window: query ``i`` sees keys
        ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right``;
        ``-1`` leaves a side unbounded.
      softcap: when ``> 0`` the scaled scores ``s`` become
        ``softcap * tanh(s / softcap)`` before the softmax.
      return_lse: also return the softmax log-sum-exp. It is differentiable.
      deterministic: make the backward pass bitwise reproducible run to run.

    Returns:
      ``out`` with the shape and dtype of ``q``; with ``return_lse=True``,
      ``(out, lse)`` where ``lse`` is float32 ``[batch, heads_q, seqlen_q]``
      (natural log). A query row that sees no key gets ``out = 0``,
      ``lse = -inf`` and zero gradients.

    head_dim may be any multiple of 8 up to 256; kernels exist for 64, 96, 128,
    192 and 256 and smaller head dims run on the next one. Any ``seqlen_q`` and
    ``seqlen_k`` ≥ 1 work. Arrays on the CPU run the C++ backend, arrays on an
    H100/H200 run the Hopper kernels. Works under ``jit``, ``grad``, ``vmap``
    and ``checkpoint``, and on sharded arrays: each device computes its own
    batch / heads / query-row shard against all keys; other shardings are
    gathered first (README, *Transformations*).
    """
    _checks.check_qkv(q, k, v)
    scale, softcap, left, right = _checks.resolve_options(
        q.shape[-1], softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap)
    return_lse = _checks.static_bool("return_lse", return_lse)
    deterministic = _checks.static_bool("deterministic", deterministic)
    window_left, window_right = _window(left, right, q.shape[1], k.shape[1])
    out, lse = _attention(q, k, v, scale, softcap, window_left, window_right, deterministic)
    return (out, lse) if return_lse else out


# ----------------------------------------------------------------------------
# jax.nn.dot_product_attention drop-in
# ----------------------------------------------------------------------------

_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"jax_fa3.dot_product_attention: {reason}; falling back to jax.nn.dot_product_attention "
            "(pass implementation='jax_fa3' to raise instead).",
            stacklevel=3,
        )


def _unserved_reason(query, key, value, bias, mask, query_seq_lengths, key_value_seq_lengths,
                     local_window_size, is_causal):
    """Why the kernels cannot compute this call exactly as jax.nn does, or None."""
    if bias is not None:
        return "bias is not supported by the kernels"
    if mask is not None:
        return "an explicit mask is not supported by the kernels"
    if query_seq_lengths is not None or key_value_seq_lengths is not None:
        return "query_seq_lengths/key_value_seq_lengths are not supported by the kernels yet"
    if query.ndim not in (3, 4) or key.ndim != query.ndim or value.ndim != query.ndim:
        return f"inputs of rank {query.ndim} are not supported (rank 3 or 4)"
    dtypes = {jnp.dtype(x.dtype) for x in (query, key, value)}
    if len(dtypes) != 1 or dtypes.pop() not in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)):
        return f"dtype {query.dtype} is not supported by the kernels (float16, bfloat16)"
    head_dim = query.shape[-1]
    if head_dim % 8 or head_dim > _checks.MAX_HEAD_DIM:
        return f"head_dim {head_dim} is not supported by the kernels (a multiple of 8, at most 256)"
    if local_window_size is not None:
        left, _ = local_window_size
        seqlen_q, seqlen_k = query.shape[-3], key.shape[-3]
        # jax.nn gives a row that sees no key a uniform softmax; the kernels give it zeros.
        if seqlen_q - 1 - left >= seqlen_k:
            return "local_window_size leaves some query rows without any key"
    return None


def dot_product_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                          query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
                          implementation=None):
    """Drop-in for :func:`jax.nn.dot_product_attention`, computed by the jax_fa3 kernels.

    Same arguments and semantics as ``jax.nn.dot_product_attention``: ``query``
    ``[batch, T, N, H]`` (or ``[T, N, H]``), ``key``/``value`` ``[batch, S, K, H]``
    with ``N % K == 0``; ``is_causal`` is aligned to the top-left corner
    (query ``t`` sees keys ``s <= t``); ``local_window_size=(left, right)`` lets
    query ``t`` see keys ``t - left <= s <= t + right`` (an int means
    symmetric). Returns an array shaped like ``query``.

    ``implementation``: None uses the kernels when they can serve the call and
    otherwise falls back to ``jax.nn.dot_product_attention`` with a one-time
    warning (bias, mask, sequence lengths, float32, unsupported head_dim);
    ``"jax_fa3"`` forces the kernels and raises instead of falling back;
    ``"xla"``/``"cudnn"`` call ``jax.nn.dot_product_attention`` with that
    implementation.
    """
    kwargs = dict(scale=scale, is_causal=is_causal, query_seq_lengths=query_seq_lengths,
                  key_value_seq_lengths=key_value_seq_lengths, local_window_size=local_window_size)
    if implementation in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(query, key, value, bias, mask, implementation=implementation, **kwargs)
    if implementation not in (None, "jax_fa3"):
        raise ValueError(f"implementation must be None, 'jax_fa3', 'xla' or 'cudnn', got {implementation!r}")
    query, key, value = (jnp.asarray(x) for x in (query, key, value))
    if isinstance(local_window_size, int) and not isinstance(local_window_size, bool):
        local_window_size = (local_window_size, local_window_size)
    if local_window_size is not None and (
        not isinstance(local_window_size, (tuple, list)) or len(local_window_size) != 2
        or any(not isinstance(w, int) or w < 0 for w in local_window_size)
    ):
        raise ValueError(f"local_window_size must be an int or a pair of non-negative ints, got {local_window_size!r}")
    reason = _unserved_reason(query, key, value, bias, mask, query_seq_lengths, key_value_seq_lengths,
                              local_window_size, is_causal)
    if reason is not None:
        if implementation == "jax_fa3":
            raise ValueError(f"jax_fa3.dot_product_attention(implementation='jax_fa3'): {reason}")
        _warn_once(reason)
        return jax.nn.dot_product_attention(query, key, value, bias, mask, **kwargs)

    unbatched = query.ndim == 3
    if unbatched:
        query, key, value = query[None], key[None], value[None]
    _checks.check_qkv(query, key, value)
    seqlen_q, seqlen_k = query.shape[1], key.shape[1]
    softmax_scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else _checks.static_float("scale", scale)
    # Top-left masks (s - t in [-left, right]) expressed on the bottom-right
    # diagonal the kernels use (s - t - diag in [-window_left, window_right]).
    diag = seqlen_k - seqlen_q
    left, right = local_window_size if local_window_size is not None else (None, None)
    if _checks.static_bool("is_causal", is_causal):
        right = 0 if right is None else min(right, 0)
    window_left, window_right = _window(None if left is None else left + diag,
                                        None if right is None else right - diag, seqlen_q, seqlen_k)
    out, _ = _attention(query, key, value, softmax_scale, 0.0, window_left, window_right, False)
    return out[0] if unbatched else out
