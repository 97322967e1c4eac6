"""flash_attention inside shard_map over batch and heads on 8 CPU devices (a
subprocess, since the device count is fixed when JAX starts)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    import inspect
    try:
        from jax import shard_map
    except ImportError:  # jax < 0.7
        from jax.experimental.shard_map import shard_map
    # Before jax 0.7 shard_map's replication check knows nothing of custom
    # calls; from 0.7 on the calls type their results and the check stays on.
    params = inspect.signature(shard_map).parameters
    checks = {} if "check_vma" in params else {"check_rep": False}
    import jax_fa3

    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    rng = np.random.default_rng(int(os.environ["SEED"]))
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

    value, grads = jax.jit(jax.value_and_grad(sharded_loss, argnums=(0, 1, 2)))(q, k, v)
    value_ref, grads_ref = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(float(value), float(value_ref), rtol=1e-5)
    for g, r in zip(grads, grads_ref):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(r, np.float32))
    print("sharded ok")
    """
)


def test_shard_map_over_batch_and_heads():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               SEED=str(os.getpid()))
    result = subprocess.run([sys.executable, "-c", "import os\n" + SCRIPT], env=env, cwd=os.path.dirname(__file__),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sharded ok" in result.stdout
