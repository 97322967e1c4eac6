#!/usr/bin/env bash
# Builds FlashAttention-3's own Hopper kernels into one shared library of XLA
# FFI targets (tools/dev/fa3_ffi.cu), for the side-by-side benchmark:
#
#   FA3_SRC=<flash-attention checkout>/hopper tools/dev/build_fa3_ffi.sh OUT_DIR
#   python -m jax_fa3.benchmark --impls jax_fa3,cudnn,fa3 --fa3-lib OUT_DIR/libfa3_ffi.so ...
#
# FA3_HEAD_DIMS (default "128 256") and FA3_DTYPES (default "bf16") pick the
# instantiation files (hopper/instantiations/flash_{fwd,bwd}_hdim<d>_<dtype>_sm90.cu);
# features the benchmark does not use (split KV, paged KV, local windows,
# softcap, varlen, FP8, sm8x) are compiled out with FlashAttention's own
# FLASHATTENTION_DISABLE_* switches, as its setup.py does. Each translation
# unit takes several minutes and ~10 GB; JOBS (default 1) run at once. The XLA
# FFI headers come from the jax installed for python3 (build against the
# jaxlib the library will run with). Nothing of FlashAttention is copied into
# jax_fa3: the sources are read from FA3_SRC.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:?usage: FA3_SRC=.../hopper $0 OUT_DIR}"
FA3_SRC="${FA3_SRC:?set FA3_SRC to the hopper/ directory of a flash-attention checkout}"
CUTLASS_INC="${CUTLASS_INC:-$(python3 -c "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))")}"
FFI_INC="$(python3 -c "import jax.ffi; print(jax.ffi.include_dir())")"
JOBS="${JOBS:-1}"
mkdir -p "$OUT"

FLAGS=(-std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr --use_fast_math
       -Xcompiler=-fPIC -DNDEBUG -DCUTLASS_ENABLE_GDC_FOR_SM90 -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
       -DCUTLASS_DEBUG_TRACE_LEVEL=0
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
       -D__CUDA_NO_HALF2_OPERATORS__
       -DFLASHATTENTION_DISABLE_SPLIT -DFLASHATTENTION_DISABLE_PAGEDKV -DFLASHATTENTION_DISABLE_APPENDKV
       -DFLASHATTENTION_DISABLE_LOCAL -DFLASHATTENTION_DISABLE_SOFTCAP -DFLASHATTENTION_DISABLE_PACKGQA
       -DFLASHATTENTION_DISABLE_FP8 -DFLASHATTENTION_DISABLE_VARLEN -DFLASHATTENTION_DISABLE_SM8x
       -DFLASHATTENTION_DISABLE_HDIMDIFF64 -DFLASHATTENTION_DISABLE_HDIMDIFF192
       -I"$FA3_SRC" -I"$CUTLASS_INC")

units=()
buckets=()
for dt in ${FA3_DTYPES:-bf16}; do buckets+=(-DFA3_${dt^^}); done
for d in ${FA3_HEAD_DIMS:-128 256}; do
  buckets+=(-DFA3_HDIM$d)
  for dt in ${FA3_DTYPES:-bf16}; do
    units+=("flash_fwd_hdim${d}_${dt}_sm90" "flash_bwd_hdim${d}_${dt}_sm90")
  done
done

compile() {  # unit name -> $OUT/<name>.o (skipped when up to date)
  local name=$1 src="$FA3_SRC/instantiations/$1.cu"
  if [[ -f "$OUT/$name.o" && "$OUT/$name.o" -nt "$src" ]]; then return 0; fi
  echo "== $name"
  nvcc "${FLAGS[@]}" -c "$src" -o "$OUT/$name.o.tmp" && mv "$OUT/$name.o.tmp" "$OUT/$name.o"
}
pids=()
for u in "${units[@]}"; do
  compile "$u" &
  pids+=($!)
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
done
for p in "${pids[@]}"; do wait "$p" || { echo "a FlashAttention-3 unit failed" >&2; exit 1; }; done

echo "== fa3_ffi"
nvcc "${FLAGS[@]}" "${buckets[@]}" -isystem "$FFI_INC" -c "$ROOT/tools/dev/fa3_ffi.cu" -o "$OUT/fa3_ffi.o"
objs=()
for u in "${units[@]}"; do objs+=("$OUT/$u.o"); done
nvcc -shared -gencode=arch=compute_90a,code=sm_90a -cudart static -o "$OUT/libfa3_ffi.so" "$OUT/fa3_ffi.o" "${objs[@]}"
echo "built $OUT/libfa3_ffi.so (FlashAttention-3 at $(git -C "$FA3_SRC" rev-parse --short HEAD 2>/dev/null || echo 'unknown revision'))"
