"""jax_fa3.dot_product_attention against jax.nn.dot_product_attention."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fa3
from jax_fa3 import attention as attention_module
from conftest import random_array
from numerics import assert_within_rule


def _jax_nn_ignores_lone_window() -> bool:
    """Older jax (0.6) drops local_window_size unless a mask or is_causal is also given."""
    x = jnp.asarray(np.arange(4 * 8, dtype=np.float32).reshape(1, 4, 1, 8) % 5)
    plain = jax.nn.dot_product_attention(x, x, x, implementation="xla")
    windowed = jax.nn.dot_product_attention(x, x, x, implementation="xla", local_window_size=(0, 0))
    return bool(jnp.all(plain == windowed))


def _ours_vs_jax(query, key, value, **kwargs):
    """Our output, the float32 jax.nn result and jax.nn at the inputs' precision."""
    ours = jax_fa3.dot_product_attention(query, key, value, implementation="jax_fa3", **kwargs)
    up = [x.astype(jnp.float32) for x in (query, key, value)]
    ref = jax.nn.dot_product_attention(*up, implementation="xla", **kwargs)
    base = jax.nn.dot_product_attention(query, key, value, implementation="xla", **kwargs)
    return ours, ref, base


@pytest.mark.parametrize(
    "seqlens,kwargs",
    [
        ((33, 33), dict()),
        ((33, 57), dict(is_causal=True)),  # top-left causal with T < S
        ((57, 33), dict(is_causal=True)),  # and with T > S
        ((40, 40), dict(local_window_size=(5, 3))),
        ((40, 52), dict(local_window_size=4)),
        ((52, 40), dict(local_window_size=(20, 0), is_causal=True)),
        ((30, 30), dict(scale=0.3, is_causal=True)),
    ],
)
def test_matches_jax_nn(device, rng, seqlens, kwargs):
    if "local_window_size" in kwargs and not kwargs.get("is_causal") and _jax_nn_ignores_lone_window():
        pytest.skip(f"jax {jax.__version__}'s jax.nn.dot_product_attention ignores local_window_size without "
                    "is_causal (fixed in later jax); jax_fa3 applies it as documented")
    seqlen_q, seqlen_k = seqlens
    q = random_array(rng, (2, seqlen_q, 4, 64), jnp.bfloat16, device)
    k = random_array(rng, (2, seqlen_k, 2, 64), jnp.bfloat16, device)
    v = random_array(rng, (2, seqlen_k, 2, 64), jnp.bfloat16, device)
    ours, ref, base = _ours_vs_jax(q, k, v, **kwargs)
    assert ours.shape == q.shape and ours.dtype == q.dtype
    assert_within_rule("out", ours, ref, base, q.dtype)
    # Gradients too.
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.cos(f(q, k, v).astype(jnp.float32)))
    ours_g = jax.grad(loss(lambda q, k, v: jax_fa3.dot_product_attention(q, k, v, implementation="jax_fa3", **kwargs)), (0, 1, 2))(q, k, v)
    ref_g = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla", **kwargs)), (0, 1, 2))(
        *[x.astype(jnp.float32) for x in (q, k, v)])
    base_g = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla", **kwargs)), (0, 1, 2))(q, k, v)
    for name, a, b, c in zip(("dq", "dk", "dv"), ours_g, ref_g, base_g):
        assert_within_rule(name, a, b, c, q.dtype)


def test_rank3_inputs(device, rng):
    q = random_array(rng, (21, 4, 64), jnp.float16, device)
    k = random_array(rng, (21, 4, 64), jnp.float16, device)
    ours, ref, base = _ours_vs_jax(q, k, k, is_causal=True)
    assert ours.shape == q.shape
    assert_within_rule("out", ours, ref, base, q.dtype)


@pytest.mark.parametrize(
    "case,match",
    [
        ("bias", "bias"),
        ("mask", "mask"),
        ("seq_lengths", "seq_lengths"),
        ("float32", "dtype float32"),
        ("head_dim", "head_dim 60"),
        ("empty_rows", "without any key"),
    ],
)
def test_fallback_warns_once_and_matches(rng, case, match):
    attention_module._warned.clear()
    shape_q, shape_k, dtype = (2, 16, 4, 64), (2, 16, 2, 64), jnp.bfloat16
    kwargs, extra = {}, ()
    if case == "float32":
        dtype = jnp.float32
    if case == "head_dim":
        shape_q, shape_k = (2, 16, 4, 60), (2, 16, 2, 60)
    if case == "empty_rows":
        shape_q = (2, 40, 4, 64)
        kwargs = dict(local_window_size=(3, 0))
    cpu = jax.devices("cpu")[0]
    q = random_array(rng, shape_q, dtype, cpu)
    k = random_array(rng, shape_k, dtype, cpu)
    v = random_array(rng, shape_k, dtype, cpu)
    if case == "bias":
        extra = (random_array(rng, (2, 4, 16, 16), dtype, cpu),)
    if case == "mask":
        extra = (None, jnp.asarray(rng.random((2, 1, 16, 16)) > 0.3))
    if case == "seq_lengths":
        kwargs = dict(query_seq_lengths=jnp.array([16, 9], jnp.int32), key_value_seq_lengths=jnp.array([5, 16], jnp.int32))
    with pytest.warns(UserWarning, match=match):
        ours = jax_fa3.dot_product_attention(q, k, v, *extra, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call must not warn again
        again = jax_fa3.dot_product_attention(q, k, v, *extra, **kwargs)
    expected = jax.nn.dot_product_attention(q, k, v, *extra, **kwargs)
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(expected, np.float32))
    np.testing.assert_array_equal(np.asarray(again, np.float32), np.asarray(expected, np.float32))
    with pytest.raises(ValueError, match=match):
        jax_fa3.dot_product_attention(q, k, v, *extra, implementation="jax_fa3", **kwargs)


def test_explicit_xla_and_bad_implementation(rng):
    q = random_array(rng, (1, 8, 2, 64), jnp.bfloat16, jax.devices("cpu")[0])
    np.testing.assert_array_equal(
        np.asarray(jax_fa3.dot_product_attention(q, q, q, implementation="xla"), np.float32),
        np.asarray(jax.nn.dot_product_attention(q, q, q, implementation="xla"), np.float32))
    with pytest.raises(ValueError, match="implementation must be"):
        jax_fa3.dot_product_attention(q, q, q, implementation="flash")
