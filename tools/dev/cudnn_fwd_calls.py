"""Calls cuDNN's forward attention through JAX a few times, for ncu (GPU machine).

Needs only jax (not jax_fa3), so a profile of cuDNN's kernel can sit beside
one of the harness's (fwd_check) in a call that carries no wheel. The shape is
the benchmark's: 16k tokens, hidden 2048 (batch = 16384 / seqlen, heads =
2048 / head_dim), layout (batch, seqlen, heads, head_dim).

  ncu --clock-control none -k regex:'(?i)sdpa|fprop|flash' --launch-skip 2 --launch-count 1 \\
      python3 tools/dev/cudnn_fwd_calls.py --seqlen 16384 --head-dim 128 [--causal]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--calls", type=int, default=4)
    args = ap.parse_args()
    dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float16
    shape = (16384 // args.seqlen, args.seqlen, 2048 // args.head_dim, args.head_dim)
    # Host-side draws: no random-number kernels in the profile.
    rng = np.random.default_rng(0)
    q, k, v = (jax.device_put(rng.standard_normal(shape, dtype=np.float32)).astype(dtype) for _ in range(3))
    fwd = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=args.causal,
                                                               implementation="cudnn"))
    for _ in range(args.calls):
        out = fwd(q, k, v)
    out.block_until_ready()
    print("cudnn forward", shape, args.dtype, "causal" if args.causal else "full", "calls:", args.calls)


if __name__ == "__main__":
    main()
