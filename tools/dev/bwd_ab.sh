#!/usr/bin/env bash
# Before/after timings of backward builds in one device call: at each head dim
# and length the bwd_check builds run in turns, first in the given order, then
# reversed (A B B A for two builds), so they see the same clocks and power cap;
# the first build is the reference.
#
#   bash tools/dev/bwd_ab.sh <folder> <build> <build>...   (bwd_check-<build>-<head dim> files,
#                                                           built with -DBWD_CHECK_ONLY_HDIM=<head dim>)
#
# Env: HDIMS (default "128"), SEQLENS (default "1024 4096 16384"), and bwd_check's
# BENCH_CASES and BENCH_SETTLE_MS. To rank builds by their energy a step (the time they
# take once the 700 W cap has settled the clock on their own draw, as in a training
# loop), e.g. BENCH_CASES=causal:fast BENCH_SETTLE_MS=3000 SEQLENS=16384: cycle counts
# and unsettled timings miss it (benchmarks/notes.md, forty-first and forty-second sessions).
# Each `bwd_check bench` line times the whole backward (fast and deterministic,
# causal and not) and spot-checks dq against float64 (PASS/FAIL).
# Logs: $OUT/bwd-ab-raw.txt (every bench line, prefixed by its build); the
# table on stdout: mean TFLOP/s per build over its runs, each build's ratio to
# the first, and per build the deterministic mode's cost (1 - det / fast).
set -uo pipefail
dir=${1:?folder with the bwd_check builds}
shift
builds=("$@")
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
raw="$OUT/bwd-ab-raw.txt"
echo "# BENCH_CASES=${BENCH_CASES:-all} BENCH_SETTLE_MS=${BENCH_SETTLE_MS:-0}" > "$raw"
reversed=()
for ((i = ${#builds[@]} - 1; i >= 0; --i)); do reversed+=("${builds[i]}"); done
for d in ${HDIMS:-128}; do
  for s in ${SEQLENS:-1024 4096 16384}; do
    for b in "${builds[@]}" "${reversed[@]}"; do
      BENCH_HDIMS=$d timeout -s KILL 120 "$dir/bwd_check-$b-$d" bench "$s" 2>&1 | grep "^bench" | sed "s/^/$b /" >> "$raw"
    done
  done
done
python3 - "$raw" "${builds[@]}" <<'EOF'
import collections, re, statistics, sys
raw, builds = sys.argv[1], sys.argv[2:]
runs, failed, points = collections.defaultdict(list), set(), []
pattern = re.compile(r"(\S+) bench \S+ b=\d+ s=(\d+) h=\d+ d=(\d+) (\S+)\s+(\S+)\s*: median [\d.]+ ms\s+([\d.]+) TFLOP/s.*(PASS|FAIL)")
for line in open(raw):
    m = pattern.match(line)
    if not m:
        continue
    build, s, d, mask, mode, tflops, verdict = m.groups()
    point = (int(d), int(s), mask, mode)
    if point not in points:
        points.append(point)
    runs[point, build].append(float(tflops))
    if verdict != "PASS":
        failed.add((point, build))
mean = {key: statistics.mean(v) for key, v in runs.items()}
head = ["head dim", "seqlen", "mask", "mode"] + builds + [f"{b}/{builds[0]}" for b in builds[1:]]
head += [f"det cost {b}" for b in builds]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * 4 + "---:|" * (len(head) - 4))
for point in sorted(points, key=lambda p: (-p[0], p[2], p[3], p[1])):
    d, s, mask, mode = point
    cells = [str(d), str(s), mask, mode]
    cells += [f"{mean[point, b]:.1f}" + (" FAIL" if (point, b) in failed else "") if (point, b) in mean else "-"
              for b in builds]
    cells += [f"{mean[point, b] / mean[point, builds[0]]:.3f}" if (point, b) in mean and (point, builds[0]) in mean
              else "-" for b in builds[1:]]
    fast = (d, s, mask, "fast")
    for b in builds:
        ok = mode == "det" and (point, b) in mean and (fast, b) in mean
        cells.append(f"{1 - mean[point, b] / mean[fast, b]:+.0%}" if ok else "")
    print("| " + " | ".join(cells) + " |")
EOF
