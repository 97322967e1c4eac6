"""Small forward+backward cases for compute-sanitizer (tools/gpu_check.sh)."""

import jax
import jax.numpy as jnp

import jax_fa3

CASES = [  # (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim), options
    ((1, 17, 113, 4, 2, 64), dict(causal=True)),
    ((2, 130, 70, 2, 1, 128), dict(window_size=(37, 5))),
    ((1, 65, 65, 2, 2, 256), dict(softcap=30.0)),
    # Unmasked forwards on narrow key blocks (fwd_variant in tile_config.h) at
    # head dims 96, 128 and 192, and one on the wide blocks.
    ((1, 70, 200, 2, 1, 96), dict()),
    ((1, 100, 200, 2, 2, 128), dict()),
    ((1, 90, 130, 2, 1, 192), dict()),
    ((1, 50, 350, 2, 2, 128), dict()),
    # Head dim 256 without a mask: two query blocks a head, the second
    # partial, K/V shared by a GQA group.
    ((2, 250, 190, 2, 1, 256), dict()),
    # Head dim 256 causal over three 80-key blocks, the last partial.
    ((1, 230, 230, 4, 2, 256), dict(causal=True)),
    # Head dim 128 causal over three 128-key blocks, the last partial.
    ((1, 300, 300, 4, 2, 128), dict(causal=True)),
    # Head dim 128 causal over 4 100 rows: the masked kernels' long walk
    # (80 queries a step; BwdTile<128>'s kLongWalkRows in tile_config.h).
    ((1, 4100, 4100, 1, 1, 128), dict(causal=True)),
]

# Both backward modes: their kernels differ (the deterministic one's CTA order
# and dQ writer; at head dim 256 the fast one sends dQ from registers).
for (b, sq, sk, hq, hk, d), options in CASES:
    keys = jax.random.split(jax.random.PRNGKey(sq * sk), 4)
    q = jax.random.normal(keys[0], (b, sq, hq, d), jnp.bfloat16)
    k = jax.random.normal(keys[1], (b, sk, hk, d), jnp.bfloat16)
    v = jax.random.normal(keys[2], (b, sk, hk, d), jnp.bfloat16)
    dout = jax.random.normal(keys[3], q.shape, jnp.bfloat16)
    for deterministic in (True, False):
        loss = lambda q, k, v: jnp.sum(
            jax_fa3.flash_attention(q, k, v, deterministic=deterministic, **options) * dout)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
        jax.block_until_ready(grads)
        print((b, sq, sk, hq, hk, d), options, "deterministic" if deterministic else "fast", "ok")
