"""ring_attention: the sequence sharded over a ring of devices, keys and values too.

Each case runs ring_attention on a whole sequence reordered into its layout
and split over the ring, and compares the restored results (out, lse, dq, dk,
dv) with the float32 reference on the whole sequence by the tests' error rule.
The ring is emulated on one device by ``jax.vmap`` with an axis name (on each
backend, so the GPU suite runs the kernels through every step), and runs on 8
CPU devices under ``jax.shard_map`` in a subprocess (the device count is fixed
when JAX starts). A ring of one device must equal flash_attention bit for bit.
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
import numerics
from jax_fa3 import reference, ring_attention, ring_permutation
from test_sharding import PRELUDE, _run

try:
    from jax import shard_map
except ImportError:  # jax < 0.7
    from jax.experimental.shard_map import shard_map

# Before jax 0.7 shard_map's replication check knows nothing of custom calls.
CHECKS = {} if "check_vma" in inspect.signature(shard_map).parameters else {"check_rep": False}
NAMES = ("out", "lse", "dq", "dk", "dv")


def _with_grads(fn, options):
    """(q, k, v, dout, dlse) -> (out, lse, dq, dk, dv) of fn(q, k, v, return_lse=True, **options)."""
    return lambda *arrays: numerics.forward_and_grads(fn, *arrays, **options)


def vmap_ring(fn, n, args):
    """fn run by n ring members emulated with vmap over axis "ring": args and results whole, members' rows
    contiguous (q-like arrays [batch, rows, ...], lse-like [batch, heads, rows])."""
    def split(x, seq):
        return jnp.moveaxis(x.reshape(*x.shape[:seq], n, x.shape[seq] // n, *x.shape[seq + 1:]), seq, 0)

    def join(x, seq):
        x = jnp.moveaxis(x, 0, seq)
        return x.reshape(*x.shape[:seq], -1, *x.shape[seq + 2:])

    seqs = [2 if x.ndim == 3 else 1 for x in args]  # lse-like arrays are the rank-3 ones
    results = jax.jit(jax.vmap(fn, axis_name="ring"))(*(split(x, s) for x, s in zip(args, seqs)))
    return [join(x, 2 if i == 1 else 1) for i, x in enumerate(results)]


def check_ring(run_ring, n, layout, q, k, v, dout, dlse, options, axis="ring"):
    """Runs ring_attention over ``axis`` through ``run_ring(fn, n, args)`` on the rows reordered into
    ``layout``, and applies the error rule to the restored results against the float32 reference on the whole
    sequence."""
    perm_q, perm_k = (ring_permutation(x.shape[1], n, layout) for x in (q, k))
    back_q, back_k = np.argsort(perm_q), np.argsort(perm_k)
    args = [jnp.take(x, p, axis=1) for x, p in zip((q, k, v, dout), (perm_q, perm_k, perm_k, perm_q))]
    fn = _with_grads(lambda *a, **o: ring_attention(*a, axis, layout=layout, **o), options)
    got = run_ring(fn, n, [*args, jnp.take(dlse, perm_q, axis=2)])
    got = [jnp.take(x, back, axis=2 if i == 1 else 1)
           for i, (x, back) in enumerate(zip(got, (back_q, back_q, back_q, back_k, back_k)))]
    options = {key: value for key, value in options.items() if key != "deterministic"}
    up = [x.astype(jnp.float32) for x in (q, k, v, dout)]
    ref = _with_grads(lambda *a, return_lse, **o: reference.attention(*a, return_lse=True, **o), options)(*up, dlse)
    base = _with_grads(lambda *a, return_lse, **o: reference.attention_in_dtype(*a, q.dtype, **o),
                       options)(q, k, v, dout, dlse)
    for name, g, r, b in zip(NAMES, got, ref, base):
        numerics.assert_within_rule(f"{layout} {options}: {name}", g, r, b, q.dtype)


# layout, ring size, heads (q, kv), rows per member (q, k/v), head_dim, options
VMAP_CASES = [
    ("contiguous", 4, (8, 2), (24, 24), 64, dict(causal=True)),
    ("contiguous", 3, (4, 4), (20, 20), 128, dict(window_size=(17, 5), softcap=3.0)),
    ("contiguous", 4, (4, 2), (13, 9), 64, dict(causal=True)),  # more queries: rows that see no key
    ("contiguous", 4, (4, 1), (9, 13), 64, dict(causal=True, deterministic=True)),
    ("contiguous", 2, (4, 2), (16, 40), 64, {}),
    ("zigzag", 4, (8, 2), (24, 24), 64, dict(causal=True)),
    ("striped", 4, (8, 2), (24, 24), 128, dict(causal=True)),
    ("striped", 3, (4, 4), (11, 11), 64, dict(causal=True, deterministic=True)),
    ("striped", 3, (4, 2), (11, 7), 64, {}),
    # Sliding windows: only steps 0, 1 (the shard before) and 5 (the one after) have work; K/V jump from 1 to 5.
    ("contiguous", 6, (4, 2), (16, 16), 64, dict(window_size=(7, 3))),
    ("contiguous", 4, (4, 4), (12, 12), 128, dict(window_size=(5, 0), softcap=2.0)),
]


@pytest.mark.parametrize("layout, n, heads, rows, head_dim, options", VMAP_CASES, ids=str)
def test_ring_emulated_by_vmap(device, rng, layout, n, heads, rows, head_dim, options):
    def arr(shape, dtype=jnp.bfloat16):
        return jax.device_put(jnp.asarray(rng.standard_normal(shape), dtype), device)

    (heads_q, heads_kv), (rows_q, rows_k) = heads, rows
    q = arr((2, n * rows_q, heads_q, head_dim))
    k, v = arr((2, n * rows_k, heads_kv, head_dim)), arr((2, n * rows_k, heads_kv, head_dim))
    dout, dlse = arr(q.shape), arr((2, heads_q, n * rows_q), jnp.float32)
    check_ring(vmap_ring, n, layout, q, k, v, dout, dlse, options)


@pytest.mark.parametrize("layout", ["contiguous", "striped"])
def test_deterministic_ring_is_bitwise_reproducible(device, rng, layout):
    # 300 keys a member: several key blocks, so the kernels' CTAs wait on each other's dQ turns.
    n, rows = 3, 300
    q, dout = (jax.device_put(jnp.asarray(rng.standard_normal((1, n * rows, 4, 64)), jnp.bfloat16), device)
               for _ in range(2))
    k, v = (jax.device_put(jnp.asarray(rng.standard_normal((1, n * rows, 2, 64)), jnp.bfloat16), device)
            for _ in range(2))
    dlse = jax.device_put(jnp.asarray(rng.standard_normal((1, 4, n * rows)), jnp.float32), device)
    fn = _with_grads(lambda *a, **o: ring_attention(*a, "ring", layout=layout, **o),
                     dict(causal=True, deterministic=True))
    first = [np.asarray(x) for x in vmap_ring(fn, n, [q, k, v, dout, dlse])]
    for _ in range(2):
        for name, a, b in zip(NAMES, first, vmap_ring(fn, n, [q, k, v, dout, dlse])):
            np.testing.assert_array_equal(a, np.asarray(b), err_msg=name)


def test_remat_policy_keeps_the_ring_forward(device, rng):
    # Rematerialised layers in a scan: the backward reruns the ring's forward kernels (one per step) unless the
    # policy keeps the named results; the gradients are the same either way.
    n = 4
    x = jax.device_put(jnp.asarray(rng.standard_normal((n, 1, 16, 2, 64)), jnp.bfloat16), device)
    w = jax.device_put(jnp.asarray(0.1 * rng.standard_normal((3, 64, 64)), jnp.bfloat16), device)

    def compiled(policy):
        def layer(x, wi):
            out = ring_attention(x, x, x, "ring", causal=True, layout="striped")
            return (out @ wi).astype(x.dtype), None

        def loss(x, w):
            y, _ = jax.lax.scan(jax.checkpoint(layer, policy=policy), x, w)
            return jnp.sum(y.astype(jnp.float32) ** 2)

        member = jax.grad(loss, argnums=(0, 1))
        return jax.jit(jax.vmap(member, in_axes=(0, None), axis_name="ring")).lower(x, w).compile()

    policies = jax.checkpoint_policies
    runs = {}
    for name, policy, calls in (("nothing", policies.nothing_saveable, 2 * n),
                                ("names", policies.save_only_these_names(*jax_fa3.RESIDUAL_NAMES), n)):
        program = compiled(policy)
        assert program.as_text().count('custom_call_target="jax_fa3_fwd"') == calls, name
        runs[name] = program(x, w)
    for a, b in zip(*runs.values()):
        # The same kernels on the same data; XLA may pick other matmul algorithms in the two programs (GPU):
        # equal up to about one bfloat16 rounding.
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=2**-7, atol=2**-7 * float(np.max(np.abs(b))))


SHARD_MAP_SCRIPT = PRELUDE + textwrap.dedent(
    """
    import re
    import warnings
    from test_ring import CHECKS, check_ring, shard_map

    def arr(shape, dtype=jnp.bfloat16):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    # name, ring axes of the 2 x 4 mesh ("model": the batch over "data"), heads (q, kv), rows per device
    # (q, k/v), options, layout, vmapped, whether devices differ in their calls (a switch in the HLO), and
    # where given, how many forward kernel calls the program holds (steps without work are skipped).
    CASES = [
        ("contiguous, causal, GQA", "model", (8, 2), (24, 24), dict(causal=True), "contiguous", False, True),
        ("contiguous, window + softcap, ring of 8", ("data", "model"), (4, 4), (12, 12),
         dict(window_size=(17, 5), softcap=3.0), "contiguous", False, True),
        ("contiguous, no mask", "model", (4, 2), (16, 40), {}, "contiguous", False, False),
        ("zigzag, causal, ring of 8", ("data", "model"), (8, 8), (16, 16), dict(causal=True), "zigzag", False, True),
        ("striped, causal, ring of 8", ("data", "model"), (8, 2), (16, 16), dict(causal=True), "striped", False,
         False),
        ("striped, causal, vmapped", "model", (4, 2), (10, 10), dict(causal=True), "striped", True, False),
        ("contiguous, sliding window on 8: 2 steps", ("data", "model"), (4, 2), (16, 16), dict(window_size=(7, 0)),
         "contiguous", False, True, 2),
    ]

    for name, axis, (heads_q, heads_kv), (rows_q, rows_k), options, layout, vmapped, switched, *calls in CASES:
        n = mesh.shape["model"] if axis == "model" else len(jax.devices())
        batch_axis = "data" if axis == "model" else None
        lead = (3,) if vmapped else ()
        q = arr((*lead, 2, n * rows_q, heads_q, 64))
        k, v = arr((*lead, 2, n * rows_k, heads_kv, 64)), arr((*lead, 2, n * rows_k, heads_kv, 64))
        dout, dlse = arr(q.shape), arr((*lead, 2, heads_q, n * rows_q), jnp.float32)
        spec, lse_spec = P(batch_axis, axis), P(batch_axis, None, axis)
        hlos = []

        def on_mesh(fn, n, args):
            def per_device(*a):
                return (jax.vmap(fn) if vmapped else fn)(*a)

            specs = [P(*(None,) * len(lead), *(lse_spec if x.ndim == 3 + len(lead) else spec)) for x in args]
            out_specs = tuple(specs[i] for i in (0, 4, 0, 1, 2))
            f = jax.jit(shard_map(per_device, mesh=mesh, in_specs=tuple(specs), out_specs=out_specs, **CHECKS))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # `with mesh:` in jax >= 0.8
                with mesh:
                    compiled = f.lower(*args).compile()
                    results = compiled(*args)
            hlos.append(compiled.as_text())
            # The vmapped axis leads: fold it into the batch for the comparison.
            return [x.reshape(-1, *x.shape[2:]) if vmapped else x for x in results]

        flat = [x.reshape(-1, *x.shape[2:]) if vmapped else x for x in (q, k, v, dout, dlse)]
        if vmapped:  # the comparison runs on the folded arrays; the ring on the vmapped ones
            run = lambda fn, n, args: on_mesh(fn, n, [a.reshape(3, -1, *a.shape[1:]) for a in args])
        else:
            run = on_mesh
        check_ring(run, n, layout, *flat, options, axis=axis)
        hlo = hlos[0]
        assert "all-gather" not in hlo, f"{name}: an operand is gathered"
        assert "collective-permute" in hlo, f"{name}: no ring"
        assert (re.search(r"\\bconditional\\(", hlo) is not None) == switched, f"{name}: switch or not as expected"
        if calls:
            assert hlo.count('custom_call_target="jax_fa3_fwd"') == calls[0], f"{name}: forward calls"
        print(f"ok: {name}")
    print("ring ok")
    """
)


def test_rings_of_4_and_8_devices_under_shard_map():
    assert "ring ok" in _run(SHARD_MAP_SCRIPT)


@pytest.mark.parametrize("options", [dict(causal=True), dict(window_size=(7, 3), softcap=2.0)], ids=str)
def test_a_ring_of_one_device_is_flash_attention(device, rng, options):
    def arr(shape, dtype=jnp.bfloat16):
        return jax.device_put(jnp.asarray(rng.standard_normal(shape), dtype), device)

    q, k, v = arr((2, 37, 4, 64)), arr((2, 45, 2, 64)), arr((2, 45, 2, 64))
    dout, dlse = arr(q.shape), arr((2, 4, 37), jnp.float32)
    mesh = Mesh(np.array([device]), ("ring",))
    spec, lse_spec = P(None, "ring"), P(None, None, "ring")
    ring = _with_grads(lambda *a, **o: ring_attention(*a, "ring", **o), options)
    got = jax.jit(shard_map(ring, mesh=mesh, in_specs=(spec,) * 4 + (lse_spec,),
                            out_specs=(spec, lse_spec, spec, spec, spec), **CHECKS))(q, k, v, dout, dlse)
    want = jax.jit(_with_grads(jax_fa3.flash_attention, options))(q, k, v, dout, dlse)
    for name, g, w in zip(NAMES, got, want):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32), err_msg=name)


def test_ring_permutation():
    np.testing.assert_array_equal(ring_permutation(12, 3, "zigzag"), [0, 1, 10, 11, 2, 3, 8, 9, 4, 5, 6, 7])
    np.testing.assert_array_equal(ring_permutation(6, 3, "striped"), [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(ring_permutation(6, 2, "contiguous"), np.arange(6))
    with pytest.raises(ValueError, match="must be a multiple of 6 for layout='zigzag'"):
        ring_permutation(10, 3, "zigzag")
    with pytest.raises(ValueError, match="num_shards must be a positive int"):
        ring_permutation(12, 0, "striped")
    with pytest.raises(ValueError, match="layout must be one of"):
        ring_permutation(12, 3, "ring")


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
        (dict(layout="striped", window_size=(-1, 3)), ValueError, "layout='striped' supports causal=True or no"),
        (dict(layout="zigzag", causal=True, rows_q=15, rows_k=15), ValueError, "needs equal, even local seqlen_q"),
        (dict(layout="striped", causal=True, rows_q=15), ValueError, "needs equal local seqlen_q and seqlen_k"),
        (dict(causal=True, window_size=(2, 1)), ValueError, "causal=True fixes the right window"),
        (dict(return_lse=1), TypeError, "return_lse must be a Python bool"),
    ],
)
def test_bad_arguments_raise_at_trace_time(kwargs, error, match):
    kwargs = dict(kwargs)
    axis_name = kwargs.pop("axis_name", "ring")
    q = jax.ShapeDtypeStruct((1, kwargs.pop("rows_q", 16), 4, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, kwargs.pop("rows_k", 16), 4, 64), jnp.bfloat16)
    with pytest.raises(error, match=match):
        _trace_in_ring(lambda q, k, v: ring_attention(q, k, v, axis_name, **kwargs), q, kv, kv)


def test_outside_a_ring_the_error_says_where_to_call_it():
    q = jax.ShapeDtypeStruct((1, 16, 4, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="inside jax.shard_map"):
        jax.eval_shape(lambda q: ring_attention(q, q, q, "ring"), q)
