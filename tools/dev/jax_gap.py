"""Where the forward's time goes when JAX runs it (GPU machine, wheel installed).

The harness (fwd_check) times the kernel at ~675 TFLOP/s (head dim 128, bf16,
16k tokens) where the library's benchmark measured ~595 through JAX. This
times the same call three ways and traces it:
  1. the benchmark's Timer (20 ms samples), jax_fa3 and cuDNN in turns;
  2. 300 back-to-back calls, one wait at the end;
  3. the JAX profiler (CUPTI): each device activity of 5 calls, with the gaps.

  python tools/dev/jax_gap.py [--head-dim 128] [--causal] [--inputs bf16|f32] [--trace-dir DIR]
  python tools/dev/jax_gap.py --calls-only N   (N calls, for ncu)
  python tools/dev/jax_gap.py --fwdbwd   the benchmark's forward+backward step instead (3.5x the
      forward FLOPs), and the trace of both implementations' calls: which kernels the backward's
      time (the benchmark's fwd+bwd minus fwd) goes to
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import time

import jax
import jax.numpy as jnp

from jax_fa3.benchmark import Timer, make_step, time_interleaved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--trace-dir", default="/tmp/jax_gap_trace")
    ap.add_argument("--calls-only", type=int, default=0)
    ap.add_argument("--fwdbwd", action="store_true")
    ap.add_argument("--inputs", choices=("bf16", "f32"), default="bf16",
                    help="normals drawn in bfloat16 (the benchmark's: few distinct values) or in float32, then cast")
    args = ap.parse_args()
    d = args.head_dim
    shape = (1, 16384, 2048 // d, d)
    draw_dtype = jnp.bfloat16 if args.inputs == "bf16" else jnp.float32
    q, k, v = (jax.random.normal(key, shape, draw_dtype).astype(jnp.bfloat16)
               for key in jax.random.split(jax.random.key(0), 3))
    print(f"inputs drawn in {args.inputs}: {len(jnp.unique(q[0, :, 0].ravel()))} distinct values in one head of q")
    # Buffer placement (the harness's cudaMalloc bases are 2 MiB-aligned).
    print("q, k, v addresses mod 2 MiB:", [x.unsafe_buffer_pointer() % (1 << 21) for x in (q, k, v)])
    flops = 4.0 * shape[0] * shape[1] ** 2 * shape[2] * d / (2 if args.causal else 1) * (3.5 if args.fwdbwd else 1)
    dout = jax.random.normal(jax.random.key(1), shape, draw_dtype).astype(jnp.bfloat16)
    # The benchmark's jitted steps (the forward one ignores dout).
    ours, cudnn = (lambda q, k, v, step=make_step(name, args.causal, "fwdbwd" if args.fwdbwd else "fwd"):
                   step(q, k, v, dout) for name in ("jax_fa3", "cudnn"))
    if args.calls_only:
        for _ in range(args.calls_only):
            out = ours(q, k, v)
        jax.block_until_ready(out)
        return

    def tflops(ms):
        return flops / (ms * 1e-3) / 1e12

    timers = {name: Timer(lambda q, k, v, _, fn=fn: fn(q, k, v), [(q, k, v, None)], warmup=3, min_sample_ms=20)
              for name, fn in (("jax_fa3", ours), ("cudnn", cudnn))}
    time_interleaved(list(timers.values()), 10)
    for name, t in timers.items():
        print(f"timer    {name:8s} {t.timing().median_ms:.3f} ms  {tflops(t.timing().median_ms):.1f} TFLOP/s")
    for name, fn in (("jax_fa3", ours), ("cudnn", cudnn)):
        jax.block_until_ready(fn(q, k, v))
        start = time.perf_counter()
        for _ in range(300):
            out = fn(q, k, v)
        jax.block_until_ready(out)
        ms = (time.perf_counter() - start) / 300 * 1e3
        print(f"300calls {name:8s} {ms:.3f} ms  {tflops(ms):.1f} TFLOP/s")
    if not args.fwdbwd:
        outs = [ours(q, k, v) for _ in range(4)]
        print("output addresses mod 2 MiB:", [o.unsafe_buffer_pointer() % (1 << 21) for o in outs])
        del outs

    jax.profiler.start_trace(args.trace_dir, create_perfetto_trace=True)
    for fn in (ours, cudnn) if args.fwdbwd else (ours,):
        for _ in range(3 if args.fwdbwd else 5):
            out = fn(q, k, v)
        jax.block_until_ready(out)
    jax.profiler.stop_trace()
    files = sorted(glob.glob(os.path.join(args.trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
    if not files:
        print("no perfetto trace written")
        return
    with gzip.open(files[-1]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = [e for e in events if e.get("ph") == "X" and "GPU" in names.get(e.get("pid"), "")]
    device.sort(key=lambda e: float(e["ts"]))
    print(f"{len(device)} device events (pids: {sorted(set(names.get(e['pid']) for e in device))})")
    prev_end = None
    for e in device:
        ts, dur = float(e["ts"]), float(e.get("dur", 0))
        gap = "" if prev_end is None else f"gap {ts - prev_end:9.1f} us"
        print(f"  {dur:9.1f} us  {gap:16s} {e['name'][:100]}")
        prev_end = max(prev_end or 0.0, ts + dur)


if __name__ == "__main__":
    main()
