"""Does a benchmark sample's time depend on the implementation that ran before it? Backward samples at one
grid point, taken in two orders: the rotation the benchmark used until the forty-second session (A B C,
B C A, ...: each implementation mostly after the same other one) and benchmark.balanced_order (each after
every other one equally often).

    python tools/dev/sample_order.py --fa3-lib LIB [--head-dim 128] [--causal] [--iters 12]

Prints per implementation the median (ms a call) of each order's samples and of all samples by predecessor.
"""

from __future__ import annotations

import argparse
import collections
import statistics

import jax

from jax_fa3 import benchmark as bm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fa3-lib", required=True)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--impls", default="jax_fa3,cudnn,fa3")
    args = ap.parse_args()
    bm.load_fa3(args.fa3_lib)
    point = bm.Point(args.seqlen, args.head_dim, args.causal, args.dtype, max(1, 16384 // args.seqlen),
                     2048 // args.head_dim)
    inputs = bm.make_inputs(point, jax.random.PRNGKey(0), 2)
    impls = args.impls.split(",")
    timers = [bm.Timer(bm.make_step(impl, point.causal, "bwd"), bm.make_bwd_inputs(impl, point.causal, inputs),
                       warmup=2, min_sample_ms=20.0) for impl in impls]
    n = len(impls)
    orders = {"rotation": [(i + j) % n for i in range(args.iters) for j in range(n)],
              "balanced": bm.balanced_order(n, args.iters)}
    by_order = collections.defaultdict(list)  # (order, impl) -> ms
    by_prev = collections.defaultdict(list)  # (impl, predecessor) -> ms
    prev = None
    for name, order in orders.items():
        for i in order:
            timers[i].sample()
            by_order[name, i].append(timers[i].samples[-1])
            if prev is not None:
                by_prev[i, prev].append(timers[i].samples[-1])
            prev = i
    print(point.label())
    for i, impl in enumerate(impls):
        cells = [f"{name} {statistics.median(by_order[name, i]):.4f}" for name in orders]
        cells += [f"after {impls[p]} {statistics.median(v):.4f} ({len(v)})"
                  for (j, p), v in sorted(by_prev.items()) if j == i]
        print(f"  {impl:8s} " + "; ".join(cells))
    for name in orders:
        print(f"  {name}: " + ", ".join(
            f"{impls[0]}/{impls[i]} {statistics.median(by_order[name, 0]) / statistics.median(by_order[name, i]):.3f}"
            for i in range(1, n)))


if __name__ == "__main__":
    main()
