#!/usr/bin/env bash
# Builds on this GPU-less machine everything one device call needs, into
# .carry/ (git-ignored; name it in the device tool's carry list), so device
# time is not spent compiling:
#   fwd_check                 every forward kernel (coverage + grid)
#   fwd_check-no_<feature>    ablations (bf16 head dims 64 and 128)
#   fwd_check-baseline        the forward of BASELINE_REV (if set), in this
#                             harness, for before/after in the same run
#   bwd_check                 every backward kernel
#   revision                  git describe of this tree
#   wheel/*.whl               with PY312 set: jax_fa3 built by that Python
#                             (which must have the device's jax/jaxlib, nanobind
#                             and scikit-build-core), for the GPU test suite and
#                             the benchmark against cuDNN
# Two compile chains run at once (2 cores, ~2.5 GB per nvcc).
#
#   BASELINE_REV=4191f53 PY312=/tmp/venv312/bin/python tools/dev/build_carry.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
CARRY="$ROOT/.carry"
mkdir -p "$CARRY"
grep -qx "/.carry/" .git/info/exclude 2>/dev/null || echo "/.carry/" >> .git/info/exclude
git describe --always --dirty > "$CARRY/revision"

(
  LOCK=/tmp/jax_fa3_lock_a tools/dev/build_fwd_check.sh all
  cp build-dev/fwd/fwd_check "$CARRY/fwd_check"
  for v in pingpong:PINGPONG overlap:OVERLAP persistent:PERSISTENT warpspec:WARPSPEC; do
    VARIANT=no_${v%%:*} FLAGS=-DJAX_FA3_FWD_ABLATE_${v#*:}=1 LOCK=/tmp/jax_fa3_lock_a SETS="bf16:128 bf16:64" \
      tools/dev/build_fwd_check.sh
    cp "build-dev/fwd-no_${v%%:*}/fwd_check" "$CARRY/fwd_check-no_${v%%:*}"
  done
) > "$CARRY/build_fwd.log" 2>&1 &
fwd=$!

(
  tools/dev/build_bwd_check.sh
  cp build-dev/bwd/bwd_check "$CARRY/bwd_check"
  if [ -n "${BASELINE_REV:-}" ]; then
    # The old kernels with this harness (its sources and the headers it
    # needs from this tree). Revisions from eff9688 on: the harness names the
    # forward kernels by FwdVariant, older ones by a mask flag.
    tree=/tmp/jax_fa3_baseline_tree
    rm -rf "$tree"
    git worktree add -f "$tree" "$BASELINE_REV" > /dev/null
    mkdir -p "$tree/cpp/src"
    cp tools/dev/build_fwd_check.sh tools/dev/fwd_check.cu "$tree/tools/dev/"
    cp cpp/src/device_info.cu "$tree/cpp/src/"
    # This harness's parameter structs (a superset of the old ones), so the
    # old kernels and the harness agree on them.
    cp cpp/include/jax_fa3/run.h cpp/include/jax_fa3/params.h "$tree/cpp/include/jax_fa3/"
    (cd "$tree" && LOCK=/tmp/jax_fa3_lock_b SETS="bf16:128 bf16:64 bf16:256 fp16:64 fp16:256" tools/dev/build_fwd_check.sh)
    cp "$tree/build-dev/fwd/fwd_check" "$CARRY/fwd_check-baseline"
    git worktree remove --force "$tree"
  fi
  if [ -n "${PY312:-}" ]; then
    rm -rf "$CARRY/wheel"
    JAX_FA3_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=${WHEEL_JOBS:-1} "$PY312" -m pip wheel --no-build-isolation --no-deps -w "$CARRY/wheel" .
  fi
) > "$CARRY/build_bwd.log" 2>&1 &
bwd=$!

status=0
wait $fwd || { echo "forward builds failed: $CARRY/build_fwd.log"; status=1; }
wait $bwd || { echo "backward/baseline/wheel builds failed: $CARRY/build_bwd.log"; status=1; }
grep -hE "[1-9][0-9]* bytes spill stores|C7508" "$CARRY"/build_*.log && { echo "spills or ignored setmaxnreg"; status=1; }
ls -la "$CARRY"
du -sh "$CARRY"
exit $status
