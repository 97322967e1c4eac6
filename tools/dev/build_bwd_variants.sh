#!/usr/bin/env bash
# Builds backward harness variants for before/after timings (tools/dev/bwd_ab.sh)
# on this GPU-less machine, into a folder to carry to the device:
#   <folder>/bwd_check-<name>-<head dim>
# one per "name=flags" argument and head dim (HDIMS, default "128"), each built
# with -DBWD_CHECK_ONLY_HDIM=<head dim> and its flags; "base=" is the library's
# own walk. Example (64 queries a step, dQ not transposed, under every mask,
# against the library's head dim 128 walks):
#   tools/dev/build_bwd_variants.sh .carry/bwd base= \
#     "q64=-DBWD_CHECK_WALK128_M=64 -DBWD_CHECK_WALK128_DQT=0"
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?output folder}
shift
mkdir -p "$out"
git describe --always --dirty > "$out/revision"
for variant in "$@"; do
  name=${variant%%=*}
  flags=${variant#*=}
  for d in ${HDIMS:-128}; do
    # shellcheck disable=SC2086  # flags are words
    tools/dev/build_bwd_check.sh -DBWD_CHECK_ONLY_HDIM="$d" $flags > "$out/build-$name-$d.log" 2>&1
    cp build-dev/bwd/bwd_check "$out/bwd_check-$name-$d"
    if grep -E "[1-9][0-9]* bytes spill stores|C75[0-9][0-9]" "$out/build-$name-$d.log"; then
      echo "$name (head dim $d): spills or a wgmma/setmaxnreg warning, see $out/build-$name-$d.log"
      exit 1
    fi
  done
done
ls -la "$out"
