"""Sharded inputs on 8 CPU devices (subprocesses, since the device count is
fixed when JAX starts): flash_attention under jit with sharded operands (the
custom calls' partitioning rule, with Shardy, with GSPMD and with explicit
mesh axes), inside shard_map, and a Flax module sharded through its
parameters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import pytest

PRELUDE = textwrap.dedent(
    """
    import os
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jax_fa3
    from jax_fa3 import reference

    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    rng = np.random.default_rng(int(os.environ["SEED"]))
    """
)

JIT_SCRIPT = PRELUDE + textwrap.dedent(
    """
    import numerics

    import contextlib

    # shardy / gspmd: the partitioner, with the mesh's axes automatic;
    # explicit: Shardy, the axes explicit (shardings are part of the types).
    mode = os.environ["JAX_FA3_PARTITIONER"]
    shardy = mode != "gspmd"
    if shardy and not hasattr(jax.config, "jax_use_shardy_partitioner"):
        print("skip: this jax has no Shardy"); raise SystemExit
    try:
        jax.config.update("jax_use_shardy_partitioner", shardy)
    except Exception as err:  # a jax without GSPMD
        print(f"skip: {mode} cannot be selected: {err}"); raise SystemExit
    context = contextlib.nullcontext
    if mode == "explicit":
        explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
        if explicit is None or not hasattr(jax, "set_mesh"):
            print("skip: this jax has no explicit sharding mode"); raise SystemExit
        mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(explicit, explicit))
        context = lambda: jax.set_mesh(mesh)

    def arr(shape, dtype=jnp.bfloat16):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    # name, heads (q, kv), options, q / k-v specs, (seqlen_q, seqlen_k), how
    # devices share the work ("local": each computes on its own shard, no
    # operand gathered; "trade": also, trading half-blocks of query rows under
    # a causal mask; "gathered": an operand is gathered first), whether dK/dV
    # are sums of per-device parts (query rows or a GQA group split).
    CASES = [
        ("batch x heads, GQA, causal", (8, 4), dict(causal=True),
         P("data", None, "model", None), P("data", None, "model", None), (33, 47), "local", False),
        ("batch x heads, MHA, window + softcap", (8, 8), dict(window_size=(9, 4), softcap=3.0),
         P("data", None, "model", None), P("data", None, "model", None), (33, 47), "local", False),
        ("MQA: q heads over model, k/v replicated", (8, 1), dict(causal=True),
         P("data", None, "model", None), P("data", None, None, None), (33, 47), "local", True),
        ("GQA groups split across model", (8, 2), dict(window_size=(5, 3)),
         P(None, None, ("data", "model"), None), P(None, None, "data", None), (33, 47), "local", True),
        ("query rows without a mask", (8, 4), {},
         P("data", "model", None, None), P("data", None, None, None), (64, 47), "local", True),
        ("query rows, causal: half-blocks traded", (8, 4), dict(causal=True),
         P("data", "model", None, None), P("data", None, None, None), (64, 47), "trade", True),
        ("query rows in 8 blocks, causal, more keys: traded", (4, 2), dict(causal=True),
         P(None, ("data", "model"), None, None), P(), (64, 80), "trade", True),
        ("query rows, causal, odd blocks: not traded", (4, 4), dict(causal=True),
         P(None, "model", None, None), P(), (36, 47), "local", True),
        ("query rows in 8 blocks, window, rows that see no key", (4, 2), dict(window_size=(20, 3)),
         P(None, ("data", "model"), None, None), P(), (64, 47), "local", True),
        ("query rows x heads, keys sharded too: keys gathered", (8, 4), dict(causal=True, softcap=2.0),
         P("data", "model", None, None), P("data", "model", None, None), (64, 96), "gathered", True),
        ("q heads splitting kv heads unevenly: heads gathered", (8, 2), {},
         P("data", None, "model", None), P("data", None, None, None), (33, 47), "gathered", False),
    ]

    def attention_and_grads(fn, q, k, v, dout, dlse, **options):
        (out, lse), vjp = jax.vjp(lambda q, k, v: fn(q, k, v, return_lse=True, **options), q, k, v)
        return (out, lse, *vjp((dout.astype(out.dtype), dlse)))

    with context():
        names = ("out", "lse", "dq", "dk", "dv")
        for name, (heads_q, heads_kv), options, q_spec, kv_spec, (seqlen_q, seqlen_k), sharing, partial_kv in CASES:
            q = arr((4, seqlen_q, heads_q, 64))
            k, v = arr((4, seqlen_k, heads_kv, 64)), arr((4, seqlen_k, heads_kv, 64))
            dout, dlse = arr(q.shape), arr((4, heads_q, seqlen_q), jnp.float32)
            f = jax.jit(lambda *a: attention_and_grads(jax_fa3.flash_attention, *a, **options))
            q_sh, kv_sh, lse_sh = (NamedSharding(mesh, s) for s in (q_spec, kv_spec, P(*q_spec[:1], q_spec[2], q_spec[1])))
            shardings = (q_sh, kv_sh, kv_sh, q_sh, lse_sh)
            args = [jax.device_put(x, s) for x, s in zip((q, k, v, dout, dlse), shardings)]
            compiled = f.lower(*args).compile()  # compiled once: run, and read its HLO
            got = compiled(*args)
            whole = f(q, k, v, dout, dlse)  # one device
            hlo = compiled.as_text()
            if sharing != "gathered":
                assert "all-gather" not in hlo, f"{name}: an operand is gathered"
                assert ("collective-permute" in hlo) == (sharing == "trade"), f"{name}: rows traded or not as expected"
                for x, s, n in zip(got, (q_sh, lse_sh, q_sh, kv_sh, kv_sh), names):
                    assert x.sharding.is_equivalent_to(s, x.ndim), f"{name}: {n} sharded as {x.sharding}, not {s}"
            for n, g, w in zip(names, got, whole):
                if partial_kv and n in ("dk", "dv"):
                    continue
                # The same rows through the same kernel: bitwise the unsharded result.
                np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32), err_msg=f"{name}: {n}")
            if partial_kv:  # sums of per-device parts: the tests' error rule
                up = [x.astype(jnp.float32) for x in (q, k, v, dout)]
                ref = attention_and_grads(lambda *a, return_lse, **o: reference.attention(*a, return_lse=True, **o),
                                          *up, dlse, **options)
                base = attention_and_grads(lambda *a, return_lse, **o: reference.attention_in_dtype(*a, q.dtype, **o),
                                           q, k, v, dout, dlse, **options)
                for i in (3, 4):
                    numerics.assert_within_rule(f"{name}: {names[i]}", got[i], ref[i], base[i], q.dtype)
            print(f"ok: {name}")

        # vmap over a sharded leading axis: the vmapped axis is one more batch dimension.
        q = arr((2, 4, 33, 8, 64)); k = arr((2, 4, 47, 4, 64)); v = arr((2, 4, 47, 4, 64))
        spec = P("data", None, None, "model", None)
        f = jax.jit(jax.vmap(lambda q, k, v: jax_fa3.flash_attention(q, k, v, causal=True)))
        args = [jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v)]
        compiled = f.lower(*args).compile()
        out = compiled(*args)
        assert "all-gather" not in compiled.as_text(), "vmap: an operand is gathered"
        np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(f(q, k, v), np.float32))
        print("ok: vmap over a sharded axis")
    print("sharded ok")
    """
)

SHARD_MAP_SCRIPT = PRELUDE + textwrap.dedent(
    """
    import inspect
    import warnings
    try:
        from jax import shard_map
    except ImportError:  # jax < 0.7
        from jax.experimental.shard_map import shard_map
    # Before jax 0.7 shard_map's replication check knows nothing of custom
    # calls; from 0.7 on the calls type their results and the check stays on.
    params = inspect.signature(shard_map).parameters
    checks = {} if "check_vma" in params else {"check_rep": False}

    q = jnp.asarray(rng.standard_normal((4, 33, 8, 64)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((4, 47, 4, 64)), jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal((4, 47, 4, 64)), jnp.bfloat16)
    spec = P("data", None, "model", None)

    def loss(q, k, v):
        out, lse = jax_fa3.flash_attention(q, k, v, causal=True, return_lse=True)
        return jnp.sum(out.astype(jnp.float32) ** 2) + jnp.sum(lse)

    def sharded_loss(q, k, v):
        # Each device holds whole sequences of its batch and heads shard; GQA
        # groups stay together because q and k/v heads are split alike.
        per_shard = shard_map(lambda q, k, v: jax.lax.psum(loss(q, k, v), ("data", "model")),
                              mesh=mesh, in_specs=(spec, spec, spec), out_specs=P(), **checks)
        return per_shard(q, k, v)

    # Only "data" manual, "model" left to XLA, inside the legacy mesh context
    # (where the custom calls' partitioning rule would abort XLA; they run as
    # plain calls in any shard_map).
    partial = {"axis_names": {"data"}} if "axis_names" in params else {"auto": frozenset({"model"})}

    def partly_manual_loss(q, k, v):
        per_shard = shard_map(lambda q, k, v: jax.lax.psum(loss(q, k, v), "data"), mesh=mesh,
                              in_specs=(P("data"),) * 3, out_specs=P(), **partial, **checks)
        return per_shard(q, k, v)

    if os.environ["CASE"] == "manual":
        fn, args = sharded_loss, (q, k, v)
    else:
        fn, args = partly_manual_loss, [jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # `with mesh:` in jax >= 0.8
        with mesh:
            value, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(*args)
    value_ref, grads_ref = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(float(value), float(value_ref), rtol=1e-5)
    for g, r in zip(grads, grads_ref):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(r, np.float32))
    print("sharded ok")
    """
)


FLAX_SCRIPT = PRELUDE + textwrap.dedent(
    """
    from flax import nnx
    import jax_fa3.flax as jf

    # Tensor parallel (the projections' heads over "model") x data parallel
    # (the batch over "data"), the way a Flax user shards a model: through
    # the parameters' partitioning and the input's sharding only.
    init = nnx.nn.linear.default_kernel_init

    def make(kernel_init):
        return jf.MultiHeadAttention(8, 64, num_kv_heads=4, causal=True, dtype=jnp.float32,
                                     kernel_init=kernel_init, rngs=nnx.Rngs(0))

    x = jnp.asarray(rng.standard_normal((4, 40, 64)), jnp.float32)
    whole = make(init)(x)
    with jax.set_mesh(mesh):
        model = make(nnx.with_partitioning(init, (None, "model", None)))
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        graph, state = nnx.split(model)
        compiled = jax.jit(lambda s, x: nnx.merge(graph, s)(x)).lower(state, xs).compile()
        out, hlo = compiled(state, xs), compiled.as_text()
    assert "all-gather" not in hlo, "an operand is gathered"
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), out.ndim), out.sharding
    # The float32 projections round differently once split by heads (XLA's dot on a head slice), and the
    # attention takes q, k, v rounded to bfloat16, where such a difference can flip one rounding: so the two
    # agree up to one bfloat16 rounding (numerics.ROUNDING) of the output's scale.
    whole = np.asarray(whole)
    np.testing.assert_allclose(np.asarray(out), whole, rtol=0, atol=2.0**-8 * np.abs(whole).max())
    print("sharded ok")
    """
)


def _run(script, **env):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               SEED=str(os.getpid()), **env)
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=os.path.dirname(__file__),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("partitioner", ["shardy", "gspmd", "explicit"])
def test_jit_with_sharded_inputs(partitioner):
    out = _run(JIT_SCRIPT, JAX_FA3_PARTITIONER=partitioner)
    if out.startswith("skip:"):
        pytest.skip(out.strip())
    assert "sharded ok" in out, out


def test_shard_map_over_batch_and_heads():
    assert "sharded ok" in _run(SHARD_MAP_SCRIPT, CASE="manual")


# jax 0.6's XLA aborts on any custom call inside a shard_map that leaves some
# mesh axes automatic (a failed check in its SPMD partitioner); 0.7.2 is fine.
@pytest.mark.skipif(tuple(int(p) for p in jax.__version__.split(".")[:2]) < (0, 7),
                    reason=f"jax {jax.__version__}: XLA aborts on custom calls in a partly manual shard_map")
def test_shard_map_partly_manual():
    assert "sharded ok" in _run(SHARD_MAP_SCRIPT, CASE="partly")


@pytest.mark.skipif(not hasattr(jax, "set_mesh"), reason=f"jax {jax.__version__} has no jax.set_mesh")
def test_flax_module_tensor_and_data_parallel():
    pytest.importorskip("flax")
    assert "sharded ok" in _run(FLAX_SCRIPT)
