#!/usr/bin/env bash
# Where the forward kernel waits, beside cuDNN's (GPU machine): one launch of
# each under Nsight Compute with per-SASS-instruction warp-state samples, and
# the HBM traffic of cold-cache launches at shorter lengths.
#
#   bash tools/dev/ncu_fwd_stalls.sh <fwd_check>   (a -lineinfo build; jax for cuDNN)
#
# Env: STALL_POINTS ("hdim:seqlen:mask ..." profiled with source counters;
#      default "128:16384:full"), TRAFFIC_POINTS (the same form, timed and
#      counted under a flushed L2; default none).
# Logs under $OUT: stalls-<impl>-<point>.{csv,details.txt} (the source page as
# CSV, one row per SASS instruction; the details page), traffic.txt.
set -uo pipefail
bin=${1:?fwd_check built with -lineinfo}
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
sections=(--section SourceCounters --section WarpStateStats --section ComputeWorkloadAnalysis
          --section SpeedOfLight --section LaunchStats --section Occupancy)

profile() {  # name, ncu filter args..., -- command...
  local name=$1; shift
  local filter=()
  while [[ $1 != -- ]]; do filter+=("$1"); shift; done
  shift
  timeout -s KILL 300 ncu --clock-control none "${sections[@]}" "${filter[@]}" \
    -o "$OUT/$name" "$@" > "$OUT/$name.run.log" 2>&1
  ncu -i "$OUT/$name.ncu-rep" --page source --csv --print-source sass > "$OUT/$name.csv" 2>&1
  ncu -i "$OUT/$name.ncu-rep" --page details > "$OUT/$name.details.txt" 2>&1
  rm -f "$OUT/$name.ncu-rep"
  echo "== $name: $(wc -l < "$OUT/$name.csv") source rows"
}

for point in ${STALL_POINTS:-128:16384:full}; do
  IFS=: read -r hd s m <<< "$point"
  BENCH_HDIMS=$hd BENCH_SEQLENS=$s BENCH_MASKS=$m BENCH_WARMUP_MS=0 BENCH_SAMPLES=2 \
    profile "stalls-ours-$hd-$s-$m" -k regex:fwd --launch-skip 2 --launch-count 1 -- "$bin" bench
  causal=(); [[ $m == causal ]] && causal=(--causal)
  profile "stalls-cudnn-$hd-$s-$m" -k 'regex:(?i)sdpa|fprop|flash' --launch-skip 2 --launch-count 1 -- \
    python3 "$ROOT/tools/dev/attention_calls.py" --seqlen "$s" --head-dim "$hd" "${causal[@]}"
done

metrics=gpu__time_duration.sum,dram__bytes_read.sum,lts__t_bytes.sum,sm__cycles_elapsed.avg.per_second
: > "$OUT/traffic.txt"
for point in ${TRAFFIC_POINTS:-}; do
  IFS=: read -r hd s m <<< "$point"
  causal=(); [[ $m == causal ]] && causal=(--causal)
  {
    echo "== ours $point"
    BENCH_HDIMS=$hd BENCH_SEQLENS=$s BENCH_MASKS=$m BENCH_WARMUP_MS=0 BENCH_SAMPLES=2 \
      timeout -s KILL 120 ncu --clock-control none --cache-control all --metrics "$metrics" -k regex:fwd \
      --launch-skip 2 --launch-count 1 "$bin" bench 2>&1 | grep -E "^\s+(gpu__|dram__|lts__|sm__)"
    echo "== cudnn $point"
    timeout -s KILL 120 ncu --clock-control none --cache-control all --metrics "$metrics" \
      -k 'regex:(?i)sdpa|fprop|flash' --launch-skip 2 --launch-count 1 \
      python3 "$ROOT/tools/dev/attention_calls.py" --seqlen "$s" --head-dim "$hd" "${causal[@]}" 2>&1 |
      grep -E "^\s+(gpu__|dram__|lts__|sm__)"
  } >> "$OUT/traffic.txt"
done
cat "$OUT/traffic.txt"
