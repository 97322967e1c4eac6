// Last stage of the backward: the fp32 dq accumulator (workspace: per batch,
// query head and query block one tile of kBlockM rows x head_dim bucket,
// laid out by BwdWorkspace::dq_offset) becomes dq in the
// caller's dtype, scaled by softmax_scale, bounded by seqlen_q and the real
// head_dim.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cuda_runtime_api.h>
#include <cstdint>

#include "jax_fa3/bwd/workspace_bwd.h"

namespace jax_fa3::bwd {

constexpr int kConvertThreads = 256;

// Block (x, h, b): kRowsPerBlock query rows of head h, batch b (grid axes
// instead of index divisions), each task one 8-column chunk of a row (of two
// adjacent rows for DqConvertLoads::kRowPairs), loaded as kLoads vectors of
// kWidth floats kStride floats apart from the chunk's first float, and one
// 16-byte store per row.
template <int kHeadDim>
using ConvertShape = SideKernelRows<kHeadDim, kConvertThreads>;

// The loads of one task by the tile's layout: 8 floats per row, kWidth
// at a time. Load l's float e is row r + row(l, e), column 8 c + column(l, e)
// of the task's chunk (row r, columns 8 c ..): with kRowPairs a float pair per
// column (the transposed fragment puts rows 2k, 2k + 1 side by side).
template <int kWidth_, int kStride_, bool kRowPairs_>
struct DqLoadPattern {
  static constexpr int kWidth = kWidth_, kStride = kStride_;
  static constexpr bool kRowPairs = kRowPairs_;
  static constexpr int kLoads = kRowPairs ? 8 : 8 / kWidth;
  JAX_FA3_HOST_DEVICE static constexpr int row(int /*l*/, int e) { return kRowPairs ? e : 0; }
  JAX_FA3_HOST_DEVICE static constexpr int column(int l, int e) { return kRowPairs ? l : l * kWidth + e; }
};
template <DqLayout kLayout> struct DqConvertLoads;
template <> struct DqConvertLoads<DqLayout::kRowChunks> : DqLoadPattern<4, 4, false> {};
template <> struct DqConvertLoads<DqLayout::kFragment> : DqLoadPattern<2, 4, false> {};
template <> struct DqConvertLoads<DqLayout::kFragmentTransposed> : DqLoadPattern<2, 16, true> {};

template <int kWidth>
__device__ __forceinline__ void load_floats(const float* src, float* dst) {
  if constexpr (kWidth == 4) {
    const float4 v = *reinterpret_cast<const float4*>(src);
    dst[0] = v.x, dst[1] = v.y, dst[2] = v.z, dst[3] = v.w;
  } else {
    static_assert(kWidth == 2, "float2 or float4 loads");
    const float2 v = *reinterpret_cast<const float2*>(src);
    dst[0] = v.x, dst[1] = v.y;
  }
}

// kLayout, kSlice: the tile's order and its parts' width (BwdTraits::kDQLayout, kDQSlice).
template <class Element, int kHeadDim, int kBlockM, DqLayout kLayout, int kSlice>
__global__ void __launch_bounds__(kConvertThreads)
bwd_convert_dq_kernel(const float* __restrict__ dq_accum, Element* __restrict__ dq, int seqlen_q, int heads_q,
                      int head_dim, int64_t rows, float scale) {
  using Shape = ConvertShape<kHeadDim>;
  using Loads = DqConvertLoads<kLayout>;
  constexpr int kPasses = Shape::kPasses;
  static_assert(!Loads::kRowPairs || (kPasses == 2 && kBlockM % 2 == 0), "a thread's two rows are one pair");
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int c = threadIdx.x % Shape::kLanesPerRow;
  const bool col_inside = c * 8 < head_dim;
  const float* head_accum = dq_accum + (int64_t(b) * heads_q + h) * rows * kHeadDim;

  // The thread's rows: one per pass, or one pair.
  int64_t i[kPasses];
  float v[kPasses][8];
  const int64_t first = int64_t(blockIdx.x) * Shape::kRowsPerBlock;
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    i[p] = Loads::kRowPairs ? first + 2 * (threadIdx.x / Shape::kLanesPerRow) + p
                            : first + p * Shape::kRowsPerPass + threadIdx.x / Shape::kLanesPerRow;
  }
  // Rows past seqlen_q up to the tile's end are padding, still in the tile.
#pragma unroll
  for (int p = 0; p < (Loads::kRowPairs ? 1 : kPasses); ++p) {
    if (i[p] < seqlen_q && col_inside) {
      const int r = int(i[p] % kBlockM);
      const float* src =
          head_accum + (i[p] - r) * kHeadDim + BwdWorkspace::dq_offset(kLayout, kBlockM, kSlice, r, c * 8);
#pragma unroll
      for (int l = 0; l < Loads::kLoads; ++l) {
        float part[Loads::kWidth];
        load_floats<Loads::kWidth>(src + l * Loads::kStride, part);
#pragma unroll
        for (int e = 0; e < Loads::kWidth; ++e) v[p + Loads::row(l, e)][Loads::column(l, e)] = part[e];
      }
    }
  }
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    if (i[p] < seqlen_q && col_inside) {
      alignas(16) Element out[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) out[j] = Element(v[p][j] * scale);
      *reinterpret_cast<uint4*>(dq + ((int64_t(b) * seqlen_q + i[p]) * heads_q + h) * head_dim + c * 8) =
          *reinterpret_cast<const uint4*>(out);
    }
  }
}

}  // namespace jax_fa3::bwd
