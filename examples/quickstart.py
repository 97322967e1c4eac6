"""Quick start: causal GQA attention with jax_fa3, checked against the float32
reference, with gradients, timed. Runs the C++ backend on a CPU and the Hopper
kernels on an H100/H200.

    python examples/quickstart.py            # small problem (CPU friendly)
    python examples/quickstart.py --seqlen 8192 --batch 2   # on a GPU
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import jax_fa3
from jax_fa3 import reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}); jax {jax.__version__}; "
          f"jax_fa3 CUDA kernels built: {jax_fa3.WITH_CUDA}")
    kq, kk, kv, kd = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(kq, (args.batch, args.seqlen, args.heads, args.head_dim), jnp.bfloat16)
    k = jax.random.normal(kk, (args.batch, args.seqlen, args.kv_heads, args.head_dim), jnp.bfloat16)
    v = jax.random.normal(kv, (args.batch, args.seqlen, args.kv_heads, args.head_dim), jnp.bfloat16)
    dout = jax.random.normal(kd, q.shape, jnp.bfloat16)

    def loss(q, k, v):
        out = jax_fa3.flash_attention(q, k, v, causal=True)
        return jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    value, grads = step(q, k, v)
    jax.block_until_ready(grads)
    start = time.perf_counter()
    for _ in range(args.iters):
        value, grads = step(q, k, v)
    jax.block_until_ready(grads)
    elapsed = (time.perf_counter() - start) / args.iters
    flops = 3.5 * 4 * args.batch * args.seqlen**2 * args.heads * args.head_dim / 2  # causal fwd+bwd
    print(f"forward+backward: {elapsed * 1e3:.2f} ms/iter, {flops / elapsed / 1e12:.3f} TFLOP/s")

    out = jax_fa3.flash_attention(q, k, v, causal=True)
    ref = reference.attention(q, k, v, causal=True)
    err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)))
    print(f"max |out - float32 reference| = {err:.2e}")
    ref_grads = jax.grad(lambda q, k, v: jnp.sum(reference.attention(q, k, v, causal=True) * dout.astype(jnp.float32)),
                         argnums=(0, 1, 2))(*(x.astype(jnp.float32) for x in (q, k, v)))
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        rel = float(jnp.max(jnp.abs(g.astype(jnp.float32) - r)) / jnp.max(jnp.abs(r)))
        print(f"{name}: max error relative to max |reference| = {rel:.2e}")


if __name__ == "__main__":
    main()
