#!/usr/bin/env bash
# Cycle counts of backward harness builds' main kernels, under Nsight Compute:
# the A/B that the power cap does not blur. bwd_ab.sh's timings at 16k move by
# 10% between samples of one run (the clock follows the power draw), so a 2%
# change needs several calls to show; elapsed SM cycles of one launch move by
# well under 1% between launches.
#
#   OUT=... HDIMS=128 SEQLENS="4096 16384" bash tools/dev/bwd_cycles.sh <folder> <build> <build>...
#
# <folder>/bwd_check-<build>-<head dim> as for bwd_ab.sh. Each runs
# `bwd_check cycles <seqlen>` (the bench's inputs and its four configurations,
# kBwdCyclesLaunches launches each, dq spot-checked; its lines name them) under ncu with the main
# kernels' elapsed cycles and executed warp instructions; the table gives per
# configuration the median of each build's launches after the first, and the
# ratio to the first build (> 1: fewer cycles, faster). What it cannot show:
# anything the clock itself does (a kernel that draws less power runs at a
# higher clock under the cap); the timings of bwd_ab.sh keep that.
# Raw: $OUT/ncu-cycles-<build>-<head dim>-<seqlen>.txt.
set -uo pipefail
dir=${1:?folder with the bwd_check builds}
shift
builds=("$@")
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
for d in ${HDIMS:-128}; do
  for s in ${SEQLENS:-4096 16384}; do
    for b in "${builds[@]}"; do
      BENCH_HDIMS=$d timeout -s KILL 300 ncu --clock-control none -k regex:bwd_main \
        --metrics sm__cycles_elapsed.max,smsp__inst_executed.sum --csv --print-units base \
        "$dir/bwd_check-$b-$d" cycles "$s" > "$OUT/ncu-cycles-$b-$d-$s.txt" 2>&1
      grep -h "^cycles" "$OUT/ncu-cycles-$b-$d-$s.txt" | grep -v PASS | sed "s/^/$b: /"
    done
  done
done
PYTHONPATH="$(dirname "$0")" python3 - "$OUT" "${HDIMS:-128}" "${SEQLENS:-4096 16384}" "${builds[@]}" <<'EOF'
import os, re, statistics, sys

import ncu_metrics

out, hdims, seqlens, builds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4:]
# The harness's "cycles ... <mask> <mode>: <n> launches" lines give the configurations in launch order.
config_line = re.compile(r"cycles .* (\w+) (\w+)\s*: (\d+) launches")
table = {}
for d in hdims:
    for s in seqlens:
        for build in builds:
            path = os.path.join(out, f"ncu-cycles-{build}-{d}-{s}.txt")
            lines = open(path).read().splitlines()
            configs = [(f"{m.group(1)} {m.group(2)}", int(m.group(3))) for m in map(config_line.match, lines) if m]
            per_launch = {k: metrics for k, (_, metrics) in ncu_metrics.per_launch(lines).items()}
            ids = sorted(per_launch)
            if len(ids) != sum(n for _, n in configs):
                print(f"{path}: {len(ids)} launches profiled, the harness made {sum(n for _, n in configs)}")
                continue
            first = 0
            for config, n in configs:
                group = [per_launch[k] for k in ids[first + 1:first + n]]  # each configuration's first launch left out
                first += n
                cycles = [g["sm__cycles_elapsed.max"] for g in group]
                table[(int(d), int(s), config, build)] = (
                    statistics.median(cycles), statistics.median(g["smsp__inst_executed.sum"] for g in group),
                    max(cycles) / min(cycles) - 1)
keys = sorted({k[:3] for k in table})
print("| head dim | seqlen | config | " + " | ".join(f"{b} Mcycles" for b in builds) + " | "
      + " | ".join(f"{b} speed" for b in builds[1:]) + " | " + " | ".join(f"{b} instr" for b in builds[1:])
      + " | spread |")
print("|---|---|---|" + "---:|" * (3 * len(builds) - 1))
for k in keys:
    vals = [table.get(k + (b,)) for b in builds]
    base = vals[0]
    cyc = [f"{v[0] / 1e6:.3f}" if v else "-" for v in vals]
    speed = [f"{base[0] / v[0]:.3f}" if v and base else "-" for v in vals[1:]]
    instr = [f"{v[1] / base[1]:.3f}" if v and base else "-" for v in vals[1:]]
    spread = max(v[2] for v in vals if v)
    print(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cyc) + " | " + " | ".join(speed) + " | "
          + " | ".join(instr) + f" | {spread * 100:.1f}% |")
EOF
