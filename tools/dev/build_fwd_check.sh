#!/usr/bin/env bash
# Builds the forward dev harness into build-dev/fwd_check (static cudart, runs
# on the GPU machine as is). Each kernel instantiation is its own translation
# unit, like the real build; every nvcc runs under the shared compile lock.
#
#   tools/dev/build_fwd_check.sh            bf16 head dim 128, every variant
#   tools/dev/build_fwd_check.sh all        every dtype x head dim x variant (30 TUs,
#                                           the narrow ones of head dims without one empty)
#   SETS="bf16:64 fp16:128" tools/dev/build_fwd_check.sh   chosen (dtype:head_dim) pairs
#   VARIANT=no_pingpong FLAGS=-DJAX_FA3_FWD_ABLATE_PINGPONG=1 tools/dev/build_fwd_check.sh
#       an ablation build (kernel_traits_fwd_sm90.hpp) into build-dev/fwd-<variant>
#   VARIANT=tl FLAGS=-DJAX_FA3_FWD_TIMELINE=1 SETS="bf16:128" tools/dev/build_fwd_check.sh
#       clock stamps of CTA 0's consumer warps (timeline_fwd_sm90.hpp; not head
#       dim 256, no shared memory left): run one bench point, then
#       python3 tools/dev/fwd_timeline.py <its output>
#   VARIANTS="kMasked" (any of kUnmasked kUnmaskedNarrow kMasked, FwdVariant in
#       tile_config.h): only those kernels; the harness skips the cases of
#       kernels it lacks. FWD_CHECK_VARIANT=wide|narrow|masked at run time
#       forces one on the unmasked shapes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="$ROOT/build-dev/fwd${VARIANT:+-$VARIANT}"
CUTLASS_INC="${CUTLASS_INC:-$(python3 -c "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))")}"
LOCK=${LOCK:-/tmp/jax_fa3_nvcc.lock}
NVCC_FLAGS=(-std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -DNDEBUG
            -I"$ROOT/cpp/include" -I"$CUTLASS_INC" ${FLAGS:-})
mkdir -p "$OUT/inst"

if [[ "${1:-}" == "all" ]]; then
  SETS="bf16:64 bf16:96 bf16:128 bf16:192 bf16:256 fp16:64 fp16:96 fp16:128 fp16:192 fp16:256"
else
  SETS="${SETS:-bf16:128}"
fi

objs=()
set_h="$OUT/fwd_check_set.h.tmp"
echo "#define FWD_CHECK_SET(X) \\" > "$set_h"
for pair in $SETS; do
  dt="${pair%%:*}"; hd="${pair##*:}"
  case "$dt" in
    bf16) elem="cutlass::bfloat16_t"; tag=kBFloat16 ;;
    fp16) elem="cutlass::half_t"; tag=kFloat16 ;;
    *) echo "bad dtype $dt" >&2; exit 1 ;;
  esac
  for variant in ${VARIANTS:-kUnmasked kUnmaskedNarrow kMasked}; do
    name="fwd_${dt}_${hd}_${variant}"
    src="$OUT/inst/$name.cu"
    printf '#include "jax_fa3/fwd/launch_fwd_sm90.hpp"\ntemplate cudaError_t jax_fa3::run_fwd_sm90<%s, %s, jax_fa3::FwdVariant::%s>(const jax_fa3::FwdParams&, cudaStream_t);\n' \
      "$elem" "$hd" "$variant" > "$src.new"
    # Rebuild only when the source or a header changed.
    if ! cmp -s "$src.new" "$src"; then mv "$src.new" "$src"; else rm "$src.new"; fi
    obj="$OUT/inst/$name.o"
    # Only the headers the forward kernel includes (the backward's are edited
    # independently and must not trigger forward rebuilds).
    newest_header=$(find "$ROOT/cpp/include/jax_fa3/fwd" "$ROOT/cpp/include/jax_fa3/common" \
                         "$ROOT/cpp/include/jax_fa3/params.h" "$ROOT/cpp/include/jax_fa3/tile_config.h" \
                         -type f -newer "$obj" 2>/dev/null | head -1 || true)
    if [[ ! -f "$obj" || "$src" -nt "$obj" || -n "$newest_header" ]]; then
      echo "== $name"
      start=$(date +%s)
      /usr/bin/time -f "   %e s wall, %M KB max RSS" flock "$LOCK" nvcc "${NVCC_FLAGS[@]}" -Xptxas -v -c "$src" -o "$obj" \
        2> "$OUT/inst/$name.log" || { cat "$OUT/inst/$name.log"; exit 1; }
      grep -E "registers|spill|stack|max RSS" "$OUT/inst/$name.log" | sed 's/^/   /'
    fi
    objs+=("$obj")
    echo "  X($elem, $tag, $hd, $variant) \\" >> "$set_h"
  done
done
echo "" >> "$set_h"
mv "$set_h" "$OUT/fwd_check_set.h"

echo "== fwd_check"
flock "$LOCK" nvcc "${NVCC_FLAGS[@]}" -I"$OUT" -Xcompiler -fopenmp -c "$ROOT/tools/dev/fwd_check.cu" -o "$OUT/fwd_check.o"
flock "$LOCK" nvcc "${NVCC_FLAGS[@]}" -c "$ROOT/cpp/src/device_info.cu" -o "$OUT/device_info.o"
flock "$LOCK" nvcc -gencode=arch=compute_90a,code=sm_90a -cudart static -Xcompiler -fopenmp \
  "$OUT/fwd_check.o" "$OUT/device_info.o" "${objs[@]}" -o "$OUT/fwd_check"
echo "built $OUT/fwd_check"
