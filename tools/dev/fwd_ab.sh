#!/usr/bin/env bash
# Before/after timings of forward builds in one device call: at each grid point
# the fwd_check builds run in turns (A B C, then again in later rounds), so
# they see the same clocks and power cap; the first build is the reference.
#
#   bash tools/dev/fwd_ab.sh <folder> <build> <build>...   (fwd_check-<build> files)
#
# Env: HDIMS (default "64 128"), SEQLENS (default "512 1024 2048 4096 16384"),
#      MASKS (default "full causal"), ROUNDS (default 2), BENCH_WARMUP_MS /
#      BENCH_SAMPLE_MS / BENCH_SAMPLES (fwd_check's; default here 300, 10, 15).
# A build without the kernel of a point (a reduced build) prints nothing there.
# Logs: $OUT/ab-raw.txt (every BENCH line), the table on stdout: median TFLOP/s
# over the rounds per build, and each build's ratio to the first.
set -uo pipefail
dir=${1:?folder with the fwd_check builds}
shift
builds=("$@")
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
export BENCH_WARMUP_MS=${BENCH_WARMUP_MS:-300} BENCH_SAMPLE_MS=${BENCH_SAMPLE_MS:-10} BENCH_SAMPLES=${BENCH_SAMPLES:-15}
raw="$OUT/ab-raw.txt"
: > "$raw"
nvidia-smi --query-gpu=clocks.sm,power.draw,clocks_throttle_reasons.active \
  --format=csv,noheader,nounits -lms 500 > "$OUT/ab-clocks.csv" &
smi=$!
for round in $(seq "${ROUNDS:-2}"); do
  for d in ${HDIMS:-64 128}; do
    for m in ${MASKS:-full causal}; do
      for s in ${SEQLENS:-512 1024 2048 4096 16384}; do
        for b in "${builds[@]}"; do
          BENCH_HDIMS=$d BENCH_SEQLENS=$s BENCH_MASKS=$m timeout -s KILL 120 "$dir/fwd_check-$b" bench 2>&1 |
            grep "^BENCH" | sed "s/^/$b round$round /" >> "$raw"
        done
      done
    done
  done
done
kill $smi
# BENCH lines: <build> <round> BENCH <dtype> d<hd> s<len> b.. h.. <mask> <ms> ms ... <tflops> TFLOP/s | ... PASS|FAIL
awk -v order="${builds[*]}" '
  { key = $4 " " $5 " " $6 " " $9
    for (i = 1; i <= NF; ++i) if ($i == "TFLOP/s") tf = $(i - 1)
    v[key, $1] = v[key, $1] " " tf; if (!(key in seen)) { seen[key] = 1; keys[++nk] = key }
    if ($NF != "PASS") bad[key, $1] = 1 }
  function median(s,   a, n, i, j, t) { n = split(s, a, " "); for (i = 1; i <= n; ++i) for (j = i + 1; j <= n; ++j) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n ? (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2) : 0 }
  END {
    nb = split(order, b, " "); printf "| point |"; for (i = 1; i <= nb; ++i) printf " %s |", b[i]; for (i = 2; i <= nb; ++i) printf " %s/%s |", b[i], b[1]; print ""
    printf "|---|"; for (i = 1; i < 2 * nb; ++i) printf "---:|"; print ""
    for (k = 1; k <= nk; ++k) { key = keys[k]; printf "| %s |", key
      for (i = 1; i <= nb; ++i) { m[i] = median(v[key, b[i]]); printf " %s%s |", m[i] ? sprintf("%.1f", m[i]) : "-", bad[key, b[i]] ? " FAIL" : "" }
      for (i = 2; i <= nb; ++i) printf " %s |", (m[1] && m[i]) ? sprintf("%.3f", m[i] / m[1]) : "-"
      print "" } }' "$raw"
echo
# Loaded samples (power above 300 W): the clock the power cap left.
awk -F', ' '$2 > 300 {print $1, $3}' "$OUT/ab-clocks.csv" | sort -n |
  awk '{c[NR] = $1; t[$2]++} END {if (NR) {printf "loaded samples: %d, SM clock median %d MHz (min %d), throttle reasons:", NR, c[int((NR + 1) / 2)], c[1]; for (k in t) printf " %s:%d", k, t[k]; print ""}}'
