#!/usr/bin/env bash
# The forward's harness-vs-JAX gap (benchmarks/notes.md): the head dim 128
# bf16 16k kernel, non-causal, timed in the harness with JAX's launch
# conditions added one at a time, and through JAX under XLA settings; the SM
# clock and power are logged during each run (median over loaded samples).
#
#   bash tools/dev/fwd_gap.sh <folder with fwd_check>   (jax_fa3 installed)
#
# Logs: $OUT/gap-<run>.log; one summary line per run on stdout.
set -uo pipefail
dir=${1:?folder with fwd_check}
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
# The board's power limit: under a software power cap the kernels' speed
# follows the clock the cap leaves (2026-12-03b: 1620-1695 MHz under load).
nvidia-smi --query-gpu=name,power.limit,enforced.power.limit,power.max_limit,clocks.max.sm --format=csv | tee "$OUT/gap-power.txt"

clocked() {  # name, command (a function of this script or a program)...
  local name=$1; shift
  nvidia-smi --query-gpu=clocks.sm,power.draw,clocks_throttle_reasons.active \
    --format=csv,noheader,nounits -lms 100 > "$OUT/gap-$name.clocks" &
  local smi=$!
  timeout -s KILL "${RUN_TIMEOUT:-180}" bash -c '"$@"' _ "$@" > "$OUT/gap-$name.log" 2>&1
  local status=$?
  kill $smi
  local result
  result=$(grep -hE "^BENCH|^timer|^300calls" "$OUT/gap-$name.log" | sed 's/ | spot check.*//' | tr '\n' ';')
  # Loaded samples: power above 300 W.
  local clocks
  clocks=$(awk -F', ' '$2 > 300 {print $1, $2, $3}' "$OUT/gap-$name.clocks" | sort -n |
           awk '{c[NR]=$1; p[NR]=$2; t[$3]++} END {if (NR) {printf "SM clock median %d MHz (min %d, n %d), power ~%d W, throttle", c[int((NR+1)/2)], c[1], NR, p[int((NR+1)/2)]; for (k in t) printf " %s:%d", k, t[k]} else printf "no loaded samples"}')
  echo "== $name (exit $status): $result | $clocks"
}

export dir
bench() { env BENCH_HDIMS=128 BENCH_SEQLENS=16384 BENCH_MASKS=full BENCH_SAMPLE_MS=20 BENCH_SAMPLES=40 "$@" "$dir/fwd_check" bench; }
export -f bench
for round in 1 2; do
  clocked "harness-plain-$round" bench
  clocked "harness-outbuf3-$round" bench BENCH_OUT_BUFFERS=3
  clocked "harness-stream-$round" bench BENCH_STREAM=1
  clocked "harness-offset256-$round" bench BENCH_IN_OFFSET=256
  clocked "harness-all-$round" bench BENCH_OUT_BUFFERS=3 BENCH_STREAM=1 BENCH_IN_OFFSET=256
done
gap() { env "$@" python3 tools/dev/jax_gap.py --inputs f32 --trace-dir "/tmp/gap_trace_$RANDOM"; }
export -f gap
clocked jax-default gap XLA_PYTHON_CLIENT_PREALLOCATE=false
clocked jax-prealloc gap XLA_PYTHON_CLIENT_PREALLOCATE=true
clocked jax-no-cmdbuf gap XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_FLAGS=--xla_gpu_enable_command_buffer=
clocked harness-plain-3 bench
