// Small CuTe helpers shared by the Hopper kernels: swizzle-atom choice for
// GMMA operands in shared memory, views of wgmma accumulator fragments, fp32 ->
// 16-bit fragment conversion, and one warpgroup-wide wgmma issue routine.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

namespace jax_fa3 {

// Warp-specialised kernels move registers between warpgroups with
// setmaxnreg. setmaxnreg.inc only takes registers that a setmaxnreg.dec of
// the same CTA released: the CTA keeps the count it was launched with, the
// 64K register file over its threads (__launch_bounds__(threads, 1)) in
// steps of 8. A split that asks for more than that waits forever.
constexpr bool setmaxnreg_split_fits(int producer_regs, int producer_threads, int consumer_regs,
                                     int consumer_threads) {
  const int threads = producer_threads + consumer_threads;
  const int launch_regs = (65536 / threads) / 8 * 8;
  return producer_regs * producer_threads + consumer_regs * consumer_threads <=
         (launch_regs > 255 ? 255 : launch_regs) * threads;
}

// The widest GMMA swizzle whose row fits `kContiguous` elements (the extent of
// the contiguous dimension of the tile). Wider swizzles spread a wgmma's 8-row
// core matrices over more banks; 96 (head dim bucket 96) cannot use 128-byte
// rows, so it falls back to 64-byte rows instead of failing.
template <class Element, cute::GMMA::Major kMajor, int kContiguous>
CUTE_HOST_DEVICE constexpr auto gmma_smem_atom() {
  using namespace cute;
  constexpr int kElemsPer128B = 128 / int(sizeof(Element));
  if constexpr (kContiguous % kElemsPer128B == 0) {
    return GMMA::Layout_SW128_Atom<Element, kMajor>{};
  } else if constexpr (kContiguous % (kElemsPer128B / 2) == 0) {
    return GMMA::Layout_SW64_Atom<Element, kMajor>{};
  } else {
    static_assert(kContiguous % (kElemsPer128B / 4) == 0, "tile extent must be a multiple of 32 bytes");
    return GMMA::Layout_SW32_Atom<Element, kMajor>{};
  }
}

// A wgmma accumulator fragment has layout ((2, 2, V), MMA_M, MMA_N): per 8x8
// core block a thread owns 2 adjacent columns (mode 0) of 2 rows 8 apart
// (mode 1), repeated V times along N. Softmax needs it as (rows, cols):
// ((2, MMA_M), (2, V, MMA_N)).
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_layout_rowcol(Layout const& l) {
  using namespace cute;
  static_assert(decltype(rank<0>(l))::value == 3, "expects an SM90 wgmma accumulator layout");
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)),
                     make_layout(get<0, 0>(l), get<0, 2>(l), get<2>(l)));
}

template <class Tensor>
CUTE_HOST_DEVICE constexpr auto rowcol_view(Tensor&& t) {
  return cute::make_tensor(t.data(), acc_layout_rowcol(t.layout()));
}

// Multiplies each row of a wgmma accumulator by its factor (the online
// softmax's rescale of O, and the final normalisation).
template <int kRows, class Tensor>
CUTE_DEVICE void scale_rows(Tensor& acc, float const (&scale)[kRows]) {
  auto rows = rowcol_view(acc);
  static_assert(decltype(cute::size<0>(rows))::value == kRows, "one factor per row");
  CUTLASS_PRAGMA_UNROLL
  for (int r = 0; r < cute::size<0>(rows); ++r) {
    CUTLASS_PRAGMA_UNROLL
    for (int c = 0; c < cute::size<1>(rows); ++c) { rows(r, c) *= scale[r]; }
  }
}

// The register A operand of an RS wgmma (k16 slice) holds, per thread, the same
// (row, column) pairs as two consecutive N=8 blocks of an accumulator. So the
// accumulator of S = Q K^T, once converted to 16 bits, *is* the A operand of
// O = P V: only the view changes, ((2, 2, V), M, N) -> ((2, 2, 2), M, (V/2, N)).
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_layout_as_rs_a(Layout const& l) {
  using namespace cute;
  static_assert(decltype(rank<0>(l))::value == 3, "expects an SM90 wgmma accumulator layout");
  static_assert(decltype(size<0, 2>(l))::value % 2 == 0, "need an even number of N=8 blocks");
  auto v_split = logical_divide(get<0, 2>(l), Int<2>{});  // (2, V/2)
  return make_layout(make_layout(get<0, 0>(l), get<0, 1>(l), get<0>(v_split)), get<1>(l),
                     make_layout(get<1>(v_split), get<2>(l)));
}

// Converts a register fragment element for element in storage order into
// `dst`, which may view the same storage positions through another layout (the
// S accumulator -> the P operand of the RS wgmma). Whole-fragment, so the
// compiler emits packed cvt (2 values per instruction).
template <class TensorSrc, class TensorDst>
CUTE_DEVICE void convert_fragment_into(TensorSrc const& src, TensorDst& dst) {
  using From = typename TensorSrc::value_type;
  using To = typename TensorDst::value_type;
  constexpr int kNumel = decltype(cute::size(src))::value;
  static_assert(decltype(cute::cosize(dst.layout()))::value == kNumel, "same number of registers");
  cutlass::NumericArrayConverter<To, From, kNumel> convert;
  *reinterpret_cast<cutlass::Array<To, kNumel>*>(dst.data()) =
      convert(*reinterpret_cast<cutlass::Array<From, kNumel> const*>(src.data()));
}

// x[u] of lane t of a quad -> x[t] of lane u (a 4x4 transpose over the
// quad): an exchange over lane bit 1, then one over lane bit 0; each swaps the
// two entries whose index differs from the lane's in that bit. (Selects, not
// x[high ? 0 : 2]: a computed index would put x in local memory.)
CUTE_DEVICE void quad_transpose(uint32_t (&x)[4], int lane_in_quad) {
  bool high = lane_in_quad & 2;
  uint32_t a = __shfl_xor_sync(0xffffffff, high ? x[0] : x[2], 2);
  uint32_t b = __shfl_xor_sync(0xffffffff, high ? x[1] : x[3], 2);
  x[0] = high ? a : x[0];
  x[2] = high ? x[2] : a;
  x[1] = high ? b : x[1];
  x[3] = high ? x[3] : b;
  high = lane_in_quad & 1;
  a = __shfl_xor_sync(0xffffffff, high ? x[0] : x[1], 1);
  b = __shfl_xor_sync(0xffffffff, high ? x[2] : x[3], 1);
  x[0] = high ? a : x[0];
  x[1] = high ? x[1] : a;
  x[2] = high ? b : x[2];
  x[3] = high ? x[3] : b;
}

// A 16-byte global store under a predicate: one predicated instruction,
// where a C++ `if` around the store compiles to a branch with its
// reconvergence (BSSY/BSYNC) per store.
CUTE_DEVICE void store_16b_if(void* ptr, uint4 v, bool pred) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n @p st.global.v4.b32 [%0], {%1, %2, %3, %4};\n}\n" ::"l"(ptr),
      "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(int(pred))
      : "memory");
}

// Hands a warpgroup's 64-row wgmma accumulator tile, times `scale` and
// converted to Element, to store(row, col, chunk) as 16-byte chunks of 8
// columns: row in {0, 1} (the thread's two rows, 8 apart), col the chunk's
// first column in the tile. Per 8-column block the wgmma layout gives lane t of
// a quad columns 2t, 2t+1 of each of its rows, so direct stores would be 4
// bytes each, every warp instruction writing 8 rows x 16 bytes; a quad
// transpose per 4 blocks gives lane t all 8 columns of block 4g + t: a quarter
// of the store instructions, each writing 8 rows x 64 contiguous bytes (the
// forward's epilogue went from ~4700 to ~1900 cycles a tile at head dim 128,
// benchmarks/results/2026-12-04c_h200_epilogue_stores.md).
template <class Element, class Acc, class Store>
CUTE_DEVICE void store_acc_16b(Acc const& acc, float scale, int lane_in_quad, Store&& store) {
  using namespace cute;
  static_assert(decltype(size<0, 0>(acc))::value == 2 && decltype(size<0, 1>(acc))::value == 2,
                "expects an SM90 wgmma accumulator layout");
  static_assert(decltype(size<1>(acc))::value == 1 && decltype(size<2>(acc))::value == 1,
                "one 64-row wgmma tile per warpgroup");
  constexpr int kBlocks = decltype(size<0, 2>(acc))::value;  // 8-column blocks
  static_assert(kBlocks % 4 == 0, "tile width must be a multiple of 32 columns");
  static_assert(sizeof(Element) == 2, "16-bit outputs");
  CUTLASS_PRAGMA_UNROLL
  for (int r = 0; r < 2; ++r) {
    CUTLASS_PRAGMA_UNROLL
    for (int g = 0; g < kBlocks / 4; ++g) {
      uint32_t x[4];
      CUTLASS_PRAGMA_UNROLL
      for (int u = 0; u < 4; ++u) {
        const Element lo = static_cast<Element>(acc(make_coord(make_coord(0, r, 4 * g + u), 0, 0)) * scale);
        const Element hi = static_cast<Element>(acc(make_coord(make_coord(1, r, 4 * g + u), 0, 0)) * scale);
        x[u] = uint32_t(lo.raw()) | (uint32_t(hi.raw()) << 16);
      }
      quad_transpose(x, lane_in_quad);
      store(r, 8 * (4 * g + lane_in_quad), make_uint4(x[0], x[1], x[2], x[3]));
    }
  }
}

// Issue one warpgroup GEMM C (+)= A B as a batch of wgmma over the K slices and
// commit it; the caller decides when to wait (warpgroup_wait<N>), which is what
// lets later versions overlap the softmax with the next GEMM. kARegs: A is a
// register fragment (RS wgmma), which needs its own operand fence so the
// compiler does not move writes of A past the asynchronous read.
template <bool kZeroInit, bool kARegs, class TiledMma, class TensorA, class TensorB, class TensorC>
CUTE_DEVICE void warpgroup_gemm(TiledMma& tiled_mma, TensorA& tCrA, TensorB const& tCrB, TensorC& tCrC) {
  using namespace cute;
  if constexpr (kARegs) { warpgroup_fence_operand(tCrA); }
  warpgroup_fence_operand(tCrC);
  warpgroup_arrive();
  if constexpr (kZeroInit) { tiled_mma.accumulate_ = GMMA::ScaleOut::Zero; }
  CUTLASS_PRAGMA_UNROLL
  for (int k = 0; k < size<2>(tCrA); ++k) {
    gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), tCrC);
    tiled_mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(tCrC);
  if constexpr (kARegs) { warpgroup_fence_operand(tCrA); }
}

}  // namespace jax_fa3
