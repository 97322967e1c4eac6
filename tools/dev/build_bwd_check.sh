#!/usr/bin/env bash
# Builds the backward dev harness (tools/dev/bwd_check.cu) into build-dev/.
# Usage: tools/dev/build_bwd_check.sh [extra nvcc flags, e.g. -DBWD_CHECK_ONLY_HDIM=128]
# (BWD_CHECK_OUT: another build folder, so that builds may run side by side.)
# The kernels compile like the library's, one translation unit per (dtype,
# head dim, mask) (tools/dev/bwd_check_launch.cu), JOBS at a time (default 2:
# ~2.5 GB each), under the shared lock so that builds do not pile up.
# The library's flags, no -lineinfo: with it ptxas did not report the wgmma
# serialisation (C7514) that the library's build reported for the head dim 64
# deterministic kernel (both ran equally slowly; benchmarks/notes.md,
# 2026-12-03), so the harness build hid a warning the library had.
set -euo pipefail
cd "$(dirname "$0")/../.."
CUTLASS_INCLUDE=${CUTLASS_INCLUDE:-$(python3 -c "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))")}
out=${BWD_CHECK_OUT:-build-dev/bwd}
mkdir -p "$out"
rm -f "$out"/launch-*.o
hdims="64 96 128 192 256"
for flag in "$@"; do
  case $flag in -DBWD_CHECK_ONLY_HDIM=*) hdims=${flag#*=} ;; esac
done
nvcc_flags=(-std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -DNDEBUG
            -Xptxas -v -Icpp/include -I"$CUTLASS_INCLUDE" "$@")
export out
units=()
for d in $hdims; do
  for e in bfloat16_t half_t; do
    for m in 0 1; do units+=("$d $e $m"); done
  done
done
compile_unit() {  # "<head dim> <cutlass type> <masked>" + nvcc flags
  read -r d e m <<< "$1"
  shift
  nvcc "$@" -DBWD_CHECK_HDIM="$d" -DBWD_CHECK_ELEMENT="cutlass::$e" -DBWD_CHECK_MASKED="$m" \
    -c tools/dev/bwd_check_launch.cu -o "$out/launch-$d-$e-$m.o" > "$out/launch-$d-$e-$m.log" 2>&1
  local status=$?
  cat "$out/launch-$d-$e-$m.log"
  return $status
}
export -f compile_unit
(
  flock 9
  printf '%s\n' "${units[@]}" | xargs -d '\n' -P "${JOBS:-2}" -I{} bash -c 'compile_unit "$@"' _ {} "${nvcc_flags[@]}"
  nvcc "${nvcc_flags[@]}" -cudart static tools/dev/bwd_check.cu cpp/src/workspace_bwd.cu cpp/src/device_info.cu \
    "$out"/launch-*.o -o "$out/bwd_check"
) 9> "${LOCK:-/tmp/jax_fa3_nvcc.lock}" 2>&1 | tee "$out/bwd_check.ptxas.log"
exit "${PIPESTATUS[0]}"
