"""The tests' error yardstick (FlashAttention's rule): the kernel's error
against the float32 reference may be at most twice the error of plain XLA at
the same precision, plus the rounding of one value in that dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jax_fa3
from jax_fa3 import reference

# Relative rounding of one value stored in the dtype (half an ulp).
ROUNDING = {jnp.dtype(jnp.bfloat16): 2.0**-8, jnp.dtype(jnp.float16): 2.0**-11}


def _np(x):
    return np.asarray(jnp.asarray(x, jnp.float32))


def assert_within_rule(name, got, ref, baseline, dtype, terms_scale=None):
    """terms_scale: for a value that is a cancelling sum of much larger terms, their magnitude; the slack is then
    the rounding of one such term instead of one value of the (small) result."""
    got, ref, baseline = _np(got), _np(ref), _np(baseline)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    assert not np.isnan(got).any(), f"{name}: NaN in the kernel's result (unwritten or broken)"
    inf = np.isinf(ref)
    np.testing.assert_array_equal(np.isinf(got), inf, err_msg=f"{name}: -inf pattern differs")
    np.testing.assert_array_equal(got[inf], ref[inf], err_msg=f"{name}: infinities differ")
    finite = ~inf
    err = float(np.max(np.abs(got[finite] - ref[finite]), initial=0.0))
    base = float(np.max(np.abs(baseline[finite] - ref[finite]), initial=0.0))
    scale = float(np.max(np.abs(ref[finite]), initial=0.0)) if terms_scale is None else terms_scale
    atol = ROUNDING[jnp.dtype(dtype)] * scale + 1e-6
    assert err <= 2 * base + atol, (
        f"{name}: kernel error {err:.3e} > 2 x XLA {jnp.dtype(dtype).name} error {base:.3e} + atol {atol:.3e}"
    )


def forward_and_grads(fn, q, k, v, dout, dlse, **options):
    """(out, lse, dq, dk, dv) of fn(q, k, v, return_lse=True, **options) with cotangents (dout, dlse)."""
    (out, lse), vjp = jax.vjp(lambda q, k, v: fn(q, k, v, return_lse=True, **options), q, k, v)
    dq, dk, dv = vjp((dout.astype(out.dtype), dlse))
    return out, lse, dq, dk, dv


def check_against_reference(q, k, v, dout, dlse, *, grads=True, **options):
    """Runs the kernels, the float32 reference and plain XLA at q's precision, and applies the rule."""
    dtype = q.dtype
    names = ("out", "lse", "dq", "dk", "dv")

    def lowp(q, k, v, return_lse, deterministic=False, **options):
        return reference.attention_in_dtype(q, k, v, dtype, **options)

    def ref32(q, k, v, return_lse, **options):
        return reference.attention(q, k, v, return_lse=return_lse, **options)

    up = [x.astype(jnp.float32) for x in (q, k, v)]
    if grads:
        got = forward_and_grads(jax_fa3.flash_attention, q, k, v, dout, dlse, **options)
        ref = forward_and_grads(ref32, *up, dout.astype(jnp.float32), dlse, **options)
        base = forward_and_grads(lowp, q, k, v, dout, dlse, **options)
    else:
        got = jax_fa3.flash_attention(q, k, v, return_lse=True, **options)
        ref = ref32(*up, True, **options)
        base = lowp(q, k, v, True, **options)
    for name, g, r, b in zip(names, got, ref, base):
        if g is not None:
            assert jnp.dtype(g.dtype) == (jnp.dtype(jnp.float32) if name == "lse" else jnp.dtype(dtype)), name
        assert_within_rule(name, g, r, b, dtype)
