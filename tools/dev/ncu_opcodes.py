"""Executed warp instructions and stall samples by SASS opcode, from Nsight Compute's source page.

    python3 tools/dev/ncu_opcodes.py <prefix>...   (reads <prefix>-sass.csv, as tools/dev/ncu_bwd.sh writes it)

Prints one markdown table: per opcode with its first modifier (sass_audit.opcode: STS and STS.128 apart),
millions of executed instructions and the share of stall samples in each profile, the opcodes whose counts differ
most first. First run on real profiles 2026-12-07 (tools/dev/ncu_bwd.sh,
benchmarks/results/2026-12-07c_h100_bwd_ncu_causal.md).
"""

from __future__ import annotations

import collections
import csv
import sys

from sass_audit import opcode  # tools/dev, this script's folder


def read(prefix: str):
    with open(f"{prefix}-sass.csv", newline="") as f:
        rows = list(csv.reader(f))
    head = next(i for i, r in enumerate(rows) if "Source" in r)
    cols = rows[head]
    src = cols.index("Source")
    executed = next(i for i, c in enumerate(cols) if c.startswith("Instructions Executed"))
    stalls = next(i for i, c in enumerate(cols) if c.startswith("Warp Stall Sampling (All"))
    count, stall = collections.Counter(), collections.Counter()
    for r in rows[head + 1:]:
        if len(r) <= max(src, executed, stalls):
            continue
        try:
            n, s = float(r[executed] or 0), float(r[stalls] or 0)
        except ValueError:
            continue
        op = opcode(r[src])
        count[op] += n
        stall[op] += s
    total_stall = sum(stall.values()) or 1.0
    return count, {k: v / total_stall for k, v in stall.items()}


def main() -> None:
    prefixes = sys.argv[1:]
    data = [read(p) for p in prefixes]
    ops = set().union(*(c.keys() for c, _ in data))
    spread = {op: max(c[op] for c, _ in data) - min(c[op] for c, _ in data) for op in ops}
    names = [p.rsplit("/", 1)[-1] for p in prefixes]
    print("| opcode | " + " | ".join(f"{n} M instr | {n} stall %" for n in names) + " |")
    print("|---|" + "---:|---:|" * len(names))
    for op in sorted(ops, key=lambda o: (-spread[o], o))[:40]:
        cells = " | ".join(f"{c[op] / 1e6:.1f} | {100 * s.get(op, 0):.1f}" for c, s in data)
        print(f"| {op} | {cells} |")
    print("| total | " + " | ".join(f"{sum(c.values()) / 1e6:.1f} | 100" for c, _ in data) + " |")


if __name__ == "__main__":
    main()
