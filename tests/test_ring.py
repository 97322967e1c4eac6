"""ring_attention: the sequence sharded over a ring of devices, keys and values too.

Rings of 4 and 8 devices run on CPU devices in a subprocess (the device count
is fixed when JAX starts), against the float32 reference on the whole
sequence with the tests' error rule; a ring of one device runs in this process
on each backend, where it must equal flash_attention bit for bit.
"""

from __future__ import annotations

import inspect
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import jax_fa3
from jax_fa3 import ring_attention, zigzag_indices
from test_sharding import PRELUDE, _run

try:
    from jax import shard_map
except ImportError:  # jax < 0.7
    from jax.experimental.shard_map import shard_map

# Before jax 0.7 shard_map's replication check knows nothing of custom calls.
CHECKS = {} if "check_vma" in inspect.signature(shard_map).parameters else {"check_rep": False}

RING_SCRIPT = PRELUDE + textwrap.dedent(
    """
    import inspect
    import re
    import warnings
    import numerics
    try:
        from jax import shard_map
    except ImportError:  # jax < 0.7
        from jax.experimental.shard_map import shard_map
    checks = {} if "check_vma" in inspect.signature(shard_map).parameters else {"check_rep": False}

    def arr(shape, dtype=jnp.bfloat16):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    # name, ring axes (on the 2 x 4 mesh; a ring of 4 shards the batch over
    # "data"), heads (q, kv), rows per device (q, k/v), options, layout, vmapped.
    CASES = [
        ("no mask, GQA", "model", (8, 2), (24, 24), {}, "contiguous", False),
        ("causal: shards above the diagonal skipped", "model", (8, 2), (24, 24), dict(causal=True), "contiguous", False),
        ("window + softcap, ring of 8", ("data", "model"), (4, 4), (12, 12), dict(window_size=(17, 5), softcap=3.0),
         "contiguous", False),
        ("causal, more queries than keys: rows that see no key", "model", (4, 2), (13, 9), dict(causal=True),
         "contiguous", False),
        ("causal, MQA, fewer queries than keys, deterministic", "model", (4, 1), (9, 13),
         dict(causal=True, deterministic=True), "contiguous", False),
        ("zigzag, causal, GQA", "model", (8, 2), (24, 24), dict(causal=True), "zigzag", False),
        ("zigzag, no mask", "model", (8, 2), (24, 24), {}, "zigzag", False),
        ("zigzag, causal, ring of 8", ("data", "model"), (8, 8), (16, 16), dict(causal=True), "zigzag", False),
        ("vmapped, causal", "model", (4, 2), (10, 10), dict(causal=True), "contiguous", True),
    ]

    def attention_and_grads(fn, q, k, v, dout, dlse, **options):
        (out, lse), vjp = jax.vjp(lambda q, k, v: fn(q, k, v, return_lse=True, **options), q, k, v)
        return (out, lse, *vjp((dout.astype(out.dtype), dlse)))

    names = ("out", "lse", "dq", "dk", "dv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # `with mesh:` in jax >= 0.8
        for name, axis, (heads_q, heads_kv), (rows_q, rows_k), options, layout, vmapped in CASES:
            n = mesh.shape["model"] if axis == "model" else len(jax.devices())
            batch_axis = "data" if axis == "model" else None
            lead = (3,) if vmapped else ()
            q = arr((*lead, 2, n * rows_q, heads_q, 64))
            k, v = arr((*lead, 2, n * rows_k, heads_kv, 64)), arr((*lead, 2, n * rows_k, heads_kv, 64))
            dout, dlse = arr(q.shape), arr((*lead, 2, heads_q, n * rows_q), jnp.float32)
            zigzag = layout == "zigzag"
            perm_q = jax_fa3.zigzag_indices(n * rows_q, n) if zigzag else np.arange(n * rows_q)
            perm_k = jax_fa3.zigzag_indices(n * rows_k, n) if zigzag else np.arange(n * rows_k)
            seq = len(lead) + 1  # the sequence axis of q, k, v; lse's is last
            spec = P(*(None,) * len(lead), batch_axis, axis)
            lse_spec = P(*(None,) * len(lead), batch_axis, None, axis)

            def ring(q, k, v, return_lse, **options):
                return jax_fa3.ring_attention(q, k, v, axis, return_lse=return_lse, layout=layout, **options)

            def per_device(q, k, v, dout, dlse):
                fn = lambda *a: attention_and_grads(ring, *a, **options)
                return jax.vmap(fn)(q, k, v, dout, dlse) if vmapped else fn(q, k, v, dout, dlse)

            f = jax.jit(shard_map(per_device, mesh=mesh, in_specs=(spec,) * 4 + (lse_spec,),
                                  out_specs=(spec, lse_spec, spec, spec, spec), **checks))
            args = [jnp.take(x, perm, axis=seq) for x, perm in zip((q, k, v, dout), (perm_q, perm_k, perm_k, perm_q))]
            args.append(jnp.take(dlse, perm_q, axis=-1))
            with mesh:
                compiled = f.lower(*args).compile()
                got = compiled(*args)
            hlo = compiled.as_text()
            assert "all-gather" not in hlo, f"{name}: an operand is gathered"
            assert "collective-permute" in hlo, f"{name}: no ring"
            back_q, back_k = np.argsort(perm_q), np.argsort(perm_k)
            got = [jnp.take(x, back, axis=-1 if i == 1 else seq)
                   for i, (x, back) in enumerate(zip(got, (back_q, back_q, back_q, back_k, back_k)))]

            ref_options = {key: value for key, value in options.items() if key != "deterministic"}
            up = [x.astype(jnp.float32) for x in (q, k, v, dout)]

            def whole(fn, *a):
                run = lambda *b: attention_and_grads(fn, *b, **ref_options)
                return jax.vmap(run)(*a) if vmapped else run(*a)

            ref = whole(lambda *a, return_lse, **o: reference.attention(*a, return_lse=True, **o), *up, dlse)
            base = whole(lambda *a, return_lse, **o: reference.attention_in_dtype(*a, q.dtype, **o),
                         q, k, v, dout, dlse)
            for i, n_ in enumerate(names):
                numerics.assert_within_rule(f"{name}: {n_}", got[i], ref[i], base[i], q.dtype)
            print(f"ok: {name}")
    print("ring ok")
    """
)


def test_rings_of_4_and_8_devices_against_the_reference():
    assert "ring ok" in _run(RING_SCRIPT)


def _one_device_ring(device, fn):
    mesh = Mesh(np.array([device]), ("ring",))
    spec = P(None, "ring")
    lse_spec = P(None, None, "ring")
    return jax.jit(shard_map(fn, mesh=mesh, in_specs=(spec,) * 4 + (lse_spec,),
                             out_specs=(spec, lse_spec, spec, spec, spec), **CHECKS))


@pytest.mark.parametrize("options", [dict(causal=True), dict(window_size=(7, 3), softcap=2.0)], ids=str)
def test_a_ring_of_one_device_is_flash_attention(device, rng, options):
    def arr(shape, dtype=jnp.bfloat16):
        return jax.device_put(jnp.asarray(rng.standard_normal(shape), dtype), device)

    q, k, v = arr((2, 37, 4, 64)), arr((2, 45, 2, 64)), arr((2, 45, 2, 64))
    dout, dlse = arr(q.shape), arr((2, 4, 37), jnp.float32)

    def with_grads(fn):
        def run(q, k, v, dout, dlse):
            (out, lse), vjp = jax.vjp(lambda q, k, v: fn(q, k, v, return_lse=True, **options), q, k, v)
            return (out, lse, *vjp((dout, dlse)))

        return run

    got = _one_device_ring(device, with_grads(lambda *a, **o: ring_attention(*a, "ring", **o)))(q, k, v, dout, dlse)
    want = jax.jit(with_grads(jax_fa3.flash_attention))(q, k, v, dout, dlse)
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32), err_msg=name)


def test_zigzag_indices_round_trip():
    perm = zigzag_indices(12, 3)
    np.testing.assert_array_equal(perm, [0, 1, 10, 11, 2, 3, 8, 9, 4, 5, 6, 7])
    np.testing.assert_array_equal(perm[np.argsort(perm)], np.arange(12))
    with pytest.raises(ValueError, match="multiple of 2 \\* num_shards"):
        zigzag_indices(10, 3)
    with pytest.raises(ValueError, match="num_shards must be a positive int"):
        zigzag_indices(12, 0)


def _trace_in_ring(fn, q, k, v):
    mesh = Mesh(np.array(jax.devices("cpu")[:1]), ("ring",))
    spec = P(None, "ring")
    jax.eval_shape(shard_map(fn, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, **CHECKS), q, k, v)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(axis_name="elsewhere"), ValueError, "axis_name 'elsewhere' is not bound"),
        (dict(axis_name=3), TypeError, "axis_name must be a mesh axis name"),
        (dict(layout="ring"), ValueError, "layout must be one of"),
        (dict(layout="zigzag", window_size=(8, 0)), ValueError, "layout='zigzag' supports causal=True or no mask"),
        (dict(layout="zigzag", causal=True, rows_q=15), ValueError, "equal, even local seqlen_q and seqlen_k"),
        (dict(causal=True, window_size=(2, 1)), ValueError, "causal=True fixes the right window"),
        (dict(return_lse=1), TypeError, "return_lse must be a Python bool"),
    ],
)
def test_bad_arguments_raise_at_trace_time(kwargs, error, match):
    kwargs = dict(kwargs)
    axis_name = kwargs.pop("axis_name", "ring")
    rows_q = kwargs.pop("rows_q", 16)
    q = jax.ShapeDtypeStruct((1, rows_q, 4, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 16, 4, 64), jnp.bfloat16)
    with pytest.raises(error, match=match):
        _trace_in_ring(lambda q, k, v: ring_attention(q, k, v, axis_name, **kwargs), q, kv, kv)


def test_outside_shard_map_the_error_says_where_to_call_it():
    q = jax.ShapeDtypeStruct((1, 16, 4, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="inside jax.shard_map"):
        jax.eval_shape(lambda q: ring_attention(q, q, q, "ring"), q)
