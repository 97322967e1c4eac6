#!/usr/bin/env bash
# Builds backward harness variants for before/after timings (tools/dev/bwd_ab.sh)
# on this GPU-less machine (or on the device, with PARALLEL=1: every variant at
# once, each in its own build folder, JOBS translation units at a time), into a
# folder to carry to the device:
#   <folder>/bwd_check-<name>-<head dim>
# one per "name=flags" argument and head dim (HDIMS, default "128"), each built
# with -DBWD_CHECK_ONLY_HDIM=<head dim> and its flags; "base=" is the library's
# own walk. Example (the dS^T stores' swizzle on offsets, a candidate of
# bwd/mainloop_bwd_sm90.hpp, against the library's head dim 128 walks):
#   tools/dev/build_bwd_variants.sh .carry/bwd base= "swz=-DJAX_FA3_BWD_SWIZZLED_OFFSETS=1"
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?output folder}
shift
mkdir -p "$out"
git describe --always --dirty > "$out/revision"
build_one() {  # <name> <head dim> <flags>
  local name=$1 d=$2 flags=$3 dir=build-dev/bwd-$1-$2 lock=${LOCK:-/tmp/jax_fa3_nvcc.lock}
  # Side by side, each build its own lock; one at a time, the shared one (builds do not pile up here).
  [ "${PARALLEL:-0}" = 1 ] && lock=/tmp/jax_fa3_nvcc-$name-$d.lock
  # shellcheck disable=SC2086  # flags are words
  BWD_CHECK_OUT=$dir LOCK=$lock \
    tools/dev/build_bwd_check.sh -DBWD_CHECK_ONLY_HDIM="$d" $flags > "$out/build-$name-$d.log" 2>&1 &&
    cp "$dir/bwd_check" "$out/bwd_check-$name-$d"
}
pids=()
for variant in "$@"; do
  for d in ${HDIMS:-128}; do
    if [ "${PARALLEL:-0}" = 1 ]; then
      build_one "${variant%%=*}" "$d" "${variant#*=}" &
      pids+=($!)
    else
      build_one "${variant%%=*}" "$d" "${variant#*=}" || { echo "build ${variant%%=*} d$d failed"; exit 1; }
    fi
  done
done
for pid in "${pids[@]}"; do wait "$pid" || { echo "a parallel build failed, see $out/build-*.log"; exit 1; }; done
for log in "$out"/build-*.log; do
  if grep -E "[1-9][0-9]* bytes spill stores|C75[0-9][0-9]" "$log"; then
    echo "$log: spills or a wgmma/setmaxnreg warning"
    exit 1
  fi
done
ls -la "$out"
