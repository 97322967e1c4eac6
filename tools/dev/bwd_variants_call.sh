#!/usr/bin/env bash
# One device call for backward variants built by tools/dev/build_bwd_variants.sh:
# each non-base build's coverage list (float64 reference, both modes, every
# mask kind; head dims it was not built for are skipped), racecheck on its small
# cases, then the before/after timings of every build in turns (bwd_ab.sh).
#   bash tools/dev/bwd_variants_call.sh <folder> base <variant>...
# Env: HDIMS (default "128"), SEQLENS (bwd_ab.sh's default "1024 4096 16384"), and
# AB=0 to stop after the checks (the timings then in a call of their own:
# bash tools/dev/bwd_ab.sh <folder> base <variant>..., on the same warm machine).
set -uo pipefail
dir=${1:?folder}
shift
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
  echo "revision: $(cat "$dir/revision" 2>/dev/null || echo unknown)"
} | tee "$OUT/env.txt"
for name in "${@:2}"; do
  for d in ${HDIMS:-128}; do
    bin="$dir/bwd_check-$name-$d"
    timeout -s KILL 300 "$bin" > "$OUT/coverage-$name-$d.log" 2>&1
    echo "coverage $name d$d: exit $?; $(tail -n 1 "$OUT/coverage-$name-$d.log")"
    grep -E "FAIL" "$OUT/coverage-$name-$d.log" | head -10
    timeout -s KILL 300 compute-sanitizer --tool racecheck --error-exitcode 1 "$bin" small > "$OUT/racecheck-$name-$d.log" 2>&1
    echo "racecheck $name d$d: exit $?; $(tail -n 1 "$OUT/racecheck-$name-$d.log")"
  done
done
[ "${AB:-1}" = 0 ] || bash "$(dirname "$0")/bwd_ab.sh" "$dir" "$@"
