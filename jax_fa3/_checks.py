"""Trace-time argument validation shared by the kernels' API and the reference."""

from __future__ import annotations

import math
import numbers

import jax.numpy as jnp
import numpy as np

KERNEL_DTYPES = (jnp.float16, jnp.bfloat16)
MAX_HEAD_DIM = 256


def _shape_str(name: str, x) -> str:
    return f"{name}.shape={tuple(x.shape)}"


def check_qkv(q, k, v, *, allowed_dtypes=KERNEL_DTYPES) -> None:
    """Validates q [batch, seqlen_q, heads_q, head_dim] and k, v [batch, seqlen_k, heads_kv, head_dim]."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{name} must be an array, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(
                f"{name} must have rank 4 [batch, seqlen, heads, head_dim], got {_shape_str(name, x)}"
            )
        if any(d == 0 for d in x.shape):
            raise ValueError(f"{name} has a zero-size dimension: {_shape_str(name, x)}")
    dtypes = {jnp.dtype(x.dtype) for x in (q, k, v)}
    allowed = tuple(jnp.dtype(d) for d in allowed_dtypes)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if jnp.dtype(x.dtype) not in allowed:
            names = ", ".join(d.name for d in allowed)
            raise TypeError(f"{name} has dtype {jnp.dtype(x.dtype).name}; supported dtypes: {names}")
    if len(dtypes) != 1:
        raise TypeError(
            f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    shapes = f"{_shape_str('q', q)}, {_shape_str('k', k)}, {_shape_str('v', v)}"
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape: {shapes}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k/v must have the same batch size: {shapes}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k/v must have the same head_dim: {shapes}")
    if q.shape[2] % k.shape[2] != 0:
        raise ValueError(
            f"heads_q ({q.shape[2]}) must be a multiple of heads_kv ({k.shape[2]}) (MQA/GQA): {shapes}"
        )
    head_dim = q.shape[3]
    if head_dim % 8 != 0 or head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"head_dim must be a multiple of 8 and at most {MAX_HEAD_DIM}, got {head_dim}: {shapes}"
        )


def static_float(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a static Python float (not a traced value or array), got {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def static_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a Python bool, got {type(value).__name__}")
    return bool(value)


def resolve_options(head_dim, *, softmax_scale, causal, window_size, softcap):
    """Returns (softmax_scale, softcap, window_left, window_right) with -1 kept as unbounded (None)."""
    scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else static_float("softmax_scale", softmax_scale)
    softcap = static_float("softcap", softcap)
    if softcap < 0:
        raise ValueError(f"softcap must be >= 0 (0 disables it), got {softcap}")
    causal = static_bool("causal", causal)
    if (
        not isinstance(window_size, (tuple, list))
        or len(window_size) != 2
        or not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) for w in window_size)
    ):
        raise TypeError(f"window_size must be a pair of ints (left, right), got {window_size!r}")
    left, right = (int(w) for w in window_size)
    if left < -1 or right < -1:
        raise ValueError(f"window_size entries must be >= 0, or -1 for unbounded, got {tuple(window_size)}")
    if causal:
        if right > 0:
            raise ValueError(
                f"causal=True fixes the right window to 0, but window_size={tuple(window_size)} asks for {right}"
            )
        right = 0
    return scale, softcap, (None if left == -1 else left), (None if right == -1 else right)
