#!/usr/bin/env bash
# Builds the backward dev harness (tools/dev/bwd_check.cu) into build-dev/.
# Usage: tools/dev/build_bwd_check.sh [extra nvcc flags, e.g. -DBWD_CHECK_ONLY_HDIM=128]
# Runs nvcc under the shared lock: only one CuTe compile at a time here.
# The library's flags, no -lineinfo: with it ptxas did not report the wgmma
# serialisation (C7514) that the library's build reported for the head dim 64
# deterministic kernel (both ran equally slowly; benchmarks/notes.md,
# 2026-12-03), so the harness build hid a warning the library had.
set -euo pipefail
cd "$(dirname "$0")/../.."
CUTLASS_INCLUDE=${CUTLASS_INCLUDE:-$(python3 -c "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))")}
mkdir -p build-dev/bwd
flock "${LOCK:-/tmp/jax_fa3_nvcc.lock}" nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -DNDEBUG \
  -Xptxas -v -cudart static \
  -Icpp/include -I"$CUTLASS_INCLUDE" "$@" \
  tools/dev/bwd_check.cu cpp/src/workspace_bwd.cu cpp/src/device_info.cu -o build-dev/bwd/bwd_check 2>&1 | tee build-dev/bwd/bwd_check.ptxas.log
