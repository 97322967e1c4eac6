#!/usr/bin/env bash
# The backward main kernels under Nsight Compute, per SASS instruction: one
# launch each of jax_fa3's (the installed wheel) and, with FA3_LIB,
# FlashAttention-3's (tools/dev/build_fa3_ffi.sh), called through JAX by
# tools/dev/attention_calls.py (the benchmark's backward step; bf16, 16k tokens,
# hidden 2048). Clocks as found.
#
#   OUT=... HDIM=128 SEQLEN=16384 CAUSAL=1 FA3_LIB=.carry/fa3so/libfa3_ffi.so bash tools/dev/ncu_bwd.sh
#
# First run 2026-12-07 (benchmarks/results/2026-12-07c_h100_bwd_ncu_causal.md).
#
# Writes $OUT/ncu-<impl>.ncu-rep, the per-instruction source page
# ($OUT/ncu-<impl>-sass.csv, for tools/dev/ncu_opcodes.py) and prints the
# speed-of-light lines and the executed instructions by opcode.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
args=(--pass bwd --calls 3 --head-dim "${HDIM:-128}" --seqlen "${SEQLEN:-16384}")
[ "${CAUSAL:-0}" = 1 ] && args+=(--causal)
impls=(jax_fa3)
[ -n "${FA3_LIB:-}" ] && impls+=(fa3)
for impl in "${impls[@]}"; do
  extra=()
  [ "$impl" = fa3 ] && extra=(--fa3-lib "$FA3_LIB")
  # From /tmp: in the checkout, the source folder would shadow the install.
  env -C /tmp ncu --clock-control none --kernel-name-base demangled -k "regex:bwd_main_kernel|FlashAttnBwdSm90" \
    --launch-skip 1 --launch-count 1 --section SourceCounters --section WarpStateStats --section SpeedOfLight \
    --section LaunchStats -f -o "$OUT/ncu-$impl" \
    python3 "$PWD/tools/dev/attention_calls.py" --impl "$impl" "${extra[@]}" "${args[@]}" > "$OUT/ncu-$impl.log" 2>&1
  echo "== $impl: ncu exit $?"
  ncu -i "$OUT/ncu-$impl.ncu-rep" --page details --csv 2>/dev/null |
    grep -E '"(Duration|SM Frequency|Elapsed Cycles|Compute \(SM\) Throughput|Memory Throughput|Executed Instructions|Registers Per Thread)"' |
    awk -F'","' '{print $(NF-2), $(NF-1), $NF}' | tr -d '"'
  ncu -i "$OUT/ncu-$impl.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu-$impl-sass.csv" 2>/dev/null
done
python3 tools/dev/ncu_opcodes.py "${impls[@]/#/$OUT/ncu-}"
