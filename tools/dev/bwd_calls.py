"""Calls one implementation's attention backward through JAX a few times, for ncu (GPU machine).

The benchmark's shapes (16k tokens, hidden 2048: batch = 16384 / seqlen, heads = 2048 / head_dim) and its
backward step: the forward runs once under jax.vjp, then only the jit-compiled backward is called, so a
profile filtered on the backward's kernels sees nothing else of the implementation's.

  ncu --clock-control none -k regex:bwd_main --launch-skip 1 --launch-count 1 \\
      python3 tools/dev/bwd_calls.py --impl jax_fa3 --seqlen 16384 --head-dim 128 [--causal]
  (cuDNN: --impl cudnn, and a filter on its kernel names, which bwd_calls.py --list prints)
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jax_fa3.benchmark import make_bwd_inputs, make_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=("jax_fa3", "cudnn"), default="jax_fa3")
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float16
    shape = (16384 // args.seqlen, args.seqlen, 2048 // args.head_dim, args.head_dim)
    # Host-side draws: no random-number kernels in the profile.
    rng = np.random.default_rng(0)
    q, k, v, dout = (jax.device_put(rng.standard_normal(shape, dtype=np.float32)).astype(dtype) for _ in range(4))
    (inputs,) = make_bwd_inputs(args.impl, args.causal, [(q, k, v, dout)])
    step = make_step(args.impl, args.causal, "bwd")
    for _ in range(args.calls):
        grads = step(*inputs)
    jax.block_until_ready(grads)
    print(args.impl, "backward", shape, args.dtype, "causal" if args.causal else "full", "calls:", args.calls)


if __name__ == "__main__":
    main()
