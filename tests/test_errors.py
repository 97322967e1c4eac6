"""Bad input is refused at trace time with a message naming the argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jax_fa3
from jax_fa3 import reference

Q = jax.ShapeDtypeStruct((2, 16, 4, 64), jnp.bfloat16)
KV = jax.ShapeDtypeStruct((2, 24, 2, 64), jnp.bfloat16)


def _trace(q=Q, k=KV, v=KV, fn=jax_fa3.flash_attention, **options):
    # eval_shape traces without running: errors must come from tracing.
    return jax.eval_shape(lambda q, k, v: fn(q, k, v, **options), q, k, v)


def _sds(shape, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize("fn", [jax_fa3.flash_attention, reference.attention], ids=["kernels", "reference"])
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(q=_sds((16, 4, 64))), ValueError, r"q must have rank 4.*q.shape=\(16, 4, 64\)"),
        (dict(k=_sds((2, 24, 2, 1, 64))), ValueError, r"k must have rank 4"),
        (dict(v=_sds((2, 24, 3, 64))), ValueError, r"k and v must have the same shape"),
        (dict(q=_sds((3, 16, 4, 64))), ValueError, r"same batch size.*q.shape=\(3, 16, 4, 64\)"),
        (dict(q=_sds((2, 16, 4, 128))), ValueError, r"same head_dim"),
        (dict(q=_sds((2, 16, 3, 64))), ValueError, r"heads_q \(3\) must be a multiple of heads_kv \(2\)"),
        (dict(q=_sds((2, 16, 4, 264)), k=_sds((2, 24, 2, 264)), v=_sds((2, 24, 2, 264))), ValueError, r"head_dim must be a multiple of 8 and at most 256, got 264"),
        (dict(q=_sds((2, 16, 4, 60)), k=_sds((2, 24, 2, 60)), v=_sds((2, 24, 2, 60))), ValueError, r"head_dim must be a multiple of 8.*got 60"),
        (dict(q=_sds((2, 0, 4, 64))), ValueError, r"q has a zero-size dimension"),
        (dict(k=_sds((2, 0, 2, 64)), v=_sds((2, 0, 2, 64))), ValueError, r"k has a zero-size dimension"),
        (dict(k=_sds((2, 24, 2, 64), jnp.float16)), TypeError, r"share one dtype"),
        (dict(window_size=(-2, 0)), ValueError, r"window_size entries must be >= 0, or -1"),
        (dict(window_size=(3,)), TypeError, r"window_size must be a pair of ints"),
        (dict(window_size=(1.5, 2)), TypeError, r"window_size must be a pair of ints"),
        (dict(causal=True, window_size=(4, 2)), ValueError, r"causal=True fixes the right window to 0"),
        (dict(softcap=-1.0), ValueError, r"softcap must be >= 0"),
        (dict(softcap=float("nan")), ValueError, r"softcap must be finite"),
        (dict(softmax_scale="0.1"), TypeError, r"softmax_scale must be a static Python float"),
        (dict(causal=1), TypeError, r"causal must be a Python bool"),
        (dict(return_lse="yes"), TypeError, r"return_lse must be a Python bool"),
        (dict(deterministic=None), TypeError, r"deterministic must be a Python bool"),
    ],
)
def test_bad_input_raises_at_trace_time(fn, kwargs, error, match):
    with pytest.raises(error, match=match):
        _trace(fn=fn, **kwargs)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int8, jnp.float64])
def test_kernel_dtypes(dtype):
    x = _sds((2, 16, 4, 64), dtype)
    y = _sds((2, 24, 2, 64), dtype)
    with pytest.raises(TypeError, match=r"q has dtype .*supported dtypes: float16, bfloat16"):
        _trace(q=x, k=y, v=y)


def test_traced_softmax_scale_is_refused():
    q = jnp.ones((1, 4, 2, 64), jnp.bfloat16)
    with pytest.raises(TypeError, match="softmax_scale must be a static Python float"):
        jax.jit(lambda s: jax_fa3.flash_attention(q, q, q, softmax_scale=s))(0.5)


def test_valid_options_trace():
    out, lse = _trace(causal=True, window_size=(8, -1), softcap=5.0, return_lse=True, softmax_scale=0.3)
    assert out.shape == Q.shape and out.dtype == Q.dtype
    assert lse.shape == (2, 4, 16) and lse.dtype == jnp.float32


def test_second_derivatives_are_refused_with_a_clear_error():
    def loss(q, k, v):
        return jnp.sum(jax_fa3.flash_attention(q, k, v, causal=True).astype(jnp.float32) ** 2)

    def grad_norm(q, k, v):
        return sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.grad(loss, argnums=(0, 1, 2))(q, k, v))

    first = jax.eval_shape(jax.grad(loss, argnums=(0, 1, 2)), Q, KV, KV)  # first derivatives trace
    assert [g.shape for g in first] == [Q.shape, KV.shape, KV.shape]
    with pytest.raises(NotImplementedError, match="first derivatives only"):
        jax.eval_shape(jax.grad(grad_norm), Q, KV, KV)
