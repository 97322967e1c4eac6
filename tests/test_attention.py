"""Forward and backward against the float32 reference, on every backend."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jax_fa3
from conftest import poison, random_array
from jax_fa3 import reference
from numerics import assert_within_rule, check_against_reference

# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim): odd lengths,
# seqlen_q != seqlen_k both ways, GQA ratios 1/2/8, every head-dim bucket and
# a head_dim that runs on a larger bucket (72 -> 96, 136 -> 192).
SHAPES = [
    (2, 1, 1, 2, 1, 64),
    (2, 17, 113, 4, 2, 64),
    (1, 113, 17, 8, 1, 96),
    (2, 65, 127, 4, 2, 72),
    (2, 113, 113, 8, 8, 128),
    (1, 1000, 1000, 2, 1, 128),
    (1, 17, 1000, 2, 2, 192),
    (1, 77, 130, 2, 1, 136),
    (1, 1000, 17, 2, 2, 256),
    (2, 128, 257, 2, 2, 256),
]
# Head dims 96, 128 and 192 have two unmasked forward kernels (fwd_variant in
# tile_config.h): the key counts above run head dims 96 and 128 on the narrow
# key blocks; these on the wide ones (head dim 192 takes both above).
WIDE_BLOCK_SHAPES = [
    (1, 300, 700, 4, 2, 128),
    (1, 113, 300, 4, 4, 96),
]

# name -> flash_attention mask options
MASKS = {
    "none": dict(),
    "causal": dict(causal=True),
    "window": dict(window_size=(37, 5)),
    "left": dict(window_size=(64, -1)),
    "causal_left": dict(causal=True, window_size=(48, -1)),
}


def _inputs(rng, device, shape, dtype):
    batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim = shape
    q = random_array(rng, (batch, seqlen_q, heads_q, head_dim), dtype, device)
    k = random_array(rng, (batch, seqlen_k, heads_kv, head_dim), dtype, device)
    v = random_array(rng, (batch, seqlen_k, heads_kv, head_dim), dtype, device)
    dout = random_array(rng, q.shape, dtype, device)
    dlse = random_array(rng, (batch, heads_q, seqlen_q), jnp.float32, device)
    poison(device, 4 * q.size * 4)
    return q, k, v, dout, dlse


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("shape", SHAPES + WIDE_BLOCK_SHAPES, ids=lambda s: "b{}_sq{}_sk{}_h{}x{}_d{}".format(*s))
def test_bf16(device, rng, shape, mask):
    q, k, v, dout, dlse = _inputs(rng, device, shape, jnp.bfloat16)
    check_against_reference(q, k, v, dout, dlse, **MASKS[mask])


@pytest.mark.parametrize("mask", ["none", "causal"])
@pytest.mark.parametrize("shape", SHAPES[1::2] + WIDE_BLOCK_SHAPES, ids=lambda s: "b{}_sq{}_sk{}_h{}x{}_d{}".format(*s))
def test_fp16(device, rng, shape, mask):
    q, k, v, dout, dlse = _inputs(rng, device, shape, jnp.float16)
    check_against_reference(q, k, v, dout, dlse, **MASKS[mask])


@pytest.mark.parametrize("mask", ["none", "causal", "window"])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[4], SHAPES[8]], ids=lambda s: "sq{1}_sk{2}_d{5}".format(*s))
def test_softcap(device, rng, shape, mask):
    q, k, v, dout, dlse = _inputs(rng, device, shape, jnp.bfloat16)
    # Large scores so the cap actually bends them.
    check_against_reference(q * 4, k, v, dout, dlse, softcap=30.0, **MASKS[mask])


@pytest.mark.parametrize("softmax_scale", [0.05, 0.5])
def test_softmax_scale(device, rng, softmax_scale):
    q, k, v, dout, dlse = _inputs(rng, device, (2, 33, 47, 4, 2, 64), jnp.bfloat16)
    check_against_reference(q, k, v, dout, dlse, softmax_scale=softmax_scale, causal=True)


def test_rows_without_keys(device, rng):
    """Bottom-right causal with seqlen_q > seqlen_k: the first rows see nothing."""
    q, k, v, dout, dlse = _inputs(rng, device, (2, 70, 20, 4, 2, 64), jnp.bfloat16)
    import jax_fa3

    out, lse = jax_fa3.flash_attention(q, k, v, causal=True, return_lse=True)
    assert bool(jnp.all(out[:, :50] == 0))
    assert bool(jnp.all(jnp.isneginf(lse[:, :, :50])))
    assert bool(jnp.all(jnp.isfinite(lse[:, :, 50:])))
    check_against_reference(q, k, v, dout, dlse, causal=True)


# Head dim 128's masked backward walks 80 queries a step where a CTA's walk
# spans at least 4096 query rows (BwdTile<128>'s kLongWalkRows and
# bwd_walk_rows in tile_config.h), 64 below; the other shapes here stay below.
# Causal over 4100 rows (the last key and query blocks partial), bottom-right
# causal with more queries than keys (the first 200 rows see no key), and a
# window wide enough for the long walk, in both backward modes. The walk is
# the CUDA kernels' own choice.
LONG_WALK_CASES = {
    "causal": ((1, 4100, 4100, 2, 1, 128), dict(causal=True)),
    "causal_sq_gt_sk": ((1, 4300, 4100, 2, 2, 128), dict(causal=True)),
    "window": ((1, 4100, 4100, 2, 2, 128), dict(window_size=(2500, 1700))),
}


@pytest.mark.parametrize("deterministic", [False, True], ids=["fast", "deterministic"])
@pytest.mark.parametrize("case", list(LONG_WALK_CASES))
def test_long_masked_walk(device, rng, case, deterministic):
    if device.platform == "cpu":
        pytest.skip("the walk length only chooses among the CUDA kernels")
    shape, options = LONG_WALK_CASES[case]
    q, k, v, dout, dlse = _inputs(rng, device, shape, jnp.bfloat16)
    check_against_reference(q, k, v, dout, dlse, deterministic=deterministic, **options)


def _grads_of_one_result(fn, q, k, v, cotangent, used, **options):
    """dq, dk, dv where only result `used` ("out" or "lse") of fn(..., return_lse=True) is differentiated: the
    other's cotangent is a symbolic zero."""
    index = ("out", "lse").index(used)
    _, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, return_lse=True, **options)[index], q, k, v)
    return vjp(cotangent)


@pytest.mark.parametrize("used", ["out", "lse"])
@pytest.mark.parametrize("shape", [(2, 65, 127, 4, 2, 64), (1, 300, 700, 4, 2, 128), (2, 128, 257, 2, 2, 256)],
                         ids=lambda s: "b{}_sq{}_sk{}_h{}x{}_d{}".format(*s))
def test_one_result_differentiated(device, rng, shape, used):
    """Gradients when the loss uses out only (the usual case: lse's zero cotangent is never made, the kernels
    skip it) or lse only (out's zero cotangent is made)."""
    q, k, v, dout, dlse = _inputs(rng, device, shape, jnp.bfloat16)
    cotangent = dout if used == "out" else dlse
    options = dict(causal=True)
    got = _grads_of_one_result(jax_fa3.flash_attention, q, k, v, cotangent, used, **options)
    if used == "out":
        lowered = jax.jit(lambda *a: _grads_of_one_result(jax_fa3.flash_attention, *a, used, **options))
        assert "with_dlse = false" in lowered.lower(q, k, v, cotangent).as_text(), "lse's zero cotangent was made"
    up = [x.astype(jnp.float32) for x in (q, k, v)]
    ref = _grads_of_one_result(reference.attention, *up, cotangent.astype(jnp.float32), used, **options)
    base = _grads_of_one_result(lambda *a, return_lse, **o: reference.attention_in_dtype(*a, q.dtype, **o),
                                q, k, v, cotangent, used, **options)
    for name, g, r, b in zip(("dq", "dk", "dv"), got, ref, base):
        assert jnp.dtype(g.dtype) == jnp.dtype(q.dtype), name
        assert_within_rule(name, g, r, b, q.dtype)
