"""Does a benchmark sample's time depend on the implementation that ran before it? Backward samples at each
grid point, taken in two orders: the rotation the benchmark used until the forty-second session (A B C,
B C A, ...: each implementation mostly after the same other one) and benchmark.balanced_order (each after
every other one equally often).

    python tools/dev/sample_order.py --fa3-lib LIB --head-dims 128 --seqlens 16384 --dtypes bf16 --causal yes \
        --impls jax_fa3,cudnn,fa3 --iters 12 --warmup 2

Takes the benchmark's own arguments (grid, timing, inputs). Prints per implementation the median (ms a call)
of each order's samples and of all samples by predecessor.
"""

from __future__ import annotations

import collections
import statistics
import sys

import jax

from jax_fa3 import benchmark as bm


def sample_orders(point: bm.Point, args) -> None:
    inputs = bm.make_inputs(point, jax.random.PRNGKey(args.seed), args.input_sets)
    impls = args.impls
    timers = [bm.Timer(bm.make_step(impl, point.causal, "bwd"), bm.make_bwd_inputs(impl, point.causal, inputs),
                       warmup=args.warmup, min_sample_ms=args.min_sample_ms) for impl in impls]
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


def main() -> None:
    args = bm.parse_args(sys.argv[1:])
    if args.fa3_lib:
        bm.load_fa3(args.fa3_lib)
    for point in bm.build_grid(args):
        sample_orders(point, args)


if __name__ == "__main__":
    main()
