"""Calls one attention implementation through JAX a few times, for Nsight Compute (GPU machine).

--impl cudnn needs only jax (jax.nn.dot_product_attention(implementation="cudnn")), so a profile of cuDNN's
kernels can sit beside one of the harness's (fwd_check) in a call that carries no wheel; --impl jax_fa3 needs
the wheel. --pass fwd calls the forward; --pass bwd runs the forward once under jax.vjp and then calls only the
jit-compiled backward (the benchmark's backward step), so a profile filtered on the backward's kernels sees
nothing else of the implementation's. The shape is the benchmark's: 16k tokens, hidden 2048 (batch = 16384 /
seqlen, heads = 2048 / head_dim), layout (batch, seqlen, heads, head_dim).

  ncu --clock-control none -k regex:'(?i)sdpa|fprop|flash' --launch-skip 2 --launch-count 1 \\
      python3 tools/dev/attention_calls.py --seqlen 16384 --head-dim 128 [--causal]
  ncu --clock-control none -k regex:bwd_main --launch-skip 1 --launch-count 1 \\
      python3 tools/dev/attention_calls.py --impl jax_fa3 --pass bwd
  (cuDNN's backward kernels: -k regex:'(?i)bprop|dot_do')

--impl fa3 calls FlashAttention-3's own kernels (the benchmark's fa3 implementation; needs the wheel and
--fa3-lib, the library tools/dev/build_fa3_ffi.sh builds). The last line printed gives the calls' mean wall
time (after one untimed warm-up call) and, with --chunk-calls, the first, fastest, slowest and last chunk's mean,
for runs long enough to reach the power cap's steady clock (tools/dev/bwd_power.sh).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def attention(impl: str, causal: bool, fa3_lib: str | None):
    if impl == "cudnn":
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
    import jax_fa3  # only here: --impl cudnn runs without the wheel

    if impl == "fa3":
        from jax_fa3 import benchmark

        benchmark.load_fa3(fa3_lib)
        return benchmark.fa3_attention(causal)
    return lambda q, k, v: jax_fa3.flash_attention(q, k, v, causal=causal)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=("cudnn", "jax_fa3", "fa3"), default="cudnn")
    ap.add_argument("--fa3-lib", help="the FlashAttention-3 FFI library, for --impl fa3")
    ap.add_argument("--pass", dest="which", choices=("fwd", "bwd"), default="fwd")
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--chunk-calls", type=int, default=0,
                    help="also print the mean of every chunk of this many calls (blocking after each chunk), "
                         "to see the time drift as the power draw settles")
    args = ap.parse_args()
    if args.calls < 1:
        ap.error("--calls must be at least 1")
    if args.impl == "fa3" and not args.fa3_lib:
        ap.error("--impl fa3 needs --fa3-lib")
    dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float16
    shape = (16384 // args.seqlen, args.seqlen, 2048 // args.head_dim, args.head_dim)
    # Host-side draws: no random-number kernels in the profile.
    rng = np.random.default_rng(0)
    q, k, v, dout = (jax.device_put(rng.standard_normal(shape, dtype=np.float32)).astype(dtype) for _ in range(4))
    fwd = jax.jit(attention(args.impl, args.causal, args.fa3_lib))
    if args.which == "fwd":
        call = lambda: fwd(q, k, v)  # noqa: E731
    else:
        _, vjp = jax.vjp(fwd, q, k, v)
        bwd = jax.jit(lambda vjp, dout: vjp(dout))
        call = lambda: bwd(vjp, dout)  # noqa: E731
    jax.block_until_ready(call())
    chunk = args.chunk_calls if args.chunk_calls > 0 else args.calls
    chunk_ends = []
    start = time.perf_counter()
    for i in range(args.calls):
        out = call()
        if (i + 1) % chunk == 0 or i + 1 == args.calls:
            jax.block_until_ready(out)
            chunk_ends.append(time.perf_counter())
    per_call_ms = (chunk_ends[-1] - start) * 1e3 / args.calls
    summary = ""
    if args.chunk_calls > 0:
        edges = [start, *chunk_ends]
        sizes = [chunk] * (len(chunk_ends) - 1) + [args.calls - chunk * (len(chunk_ends) - 1)]
        means = [(b - a) * 1e3 / n for a, b, n in zip(edges, edges[1:], sizes)]
        print("chunk means (ms/call):", " ".join(f"{m:.3f}" for m in means))
        summary = (f" (chunks of {chunk} calls: first {means[0]:.3f}, min {min(means):.3f}, max {max(means):.3f}, "
                   f"last {means[-1]:.3f})")
    print(args.impl, args.which, shape, args.dtype, "causal" if args.causal else "full", "calls:", args.calls,
          f"mean {per_call_ms:.3f} ms/call{summary}")


if __name__ == "__main__":
    main()
