// Last stage of the backward: the fp32 dq accumulator (workspace: per batch,
// query head and query block one tile of kBlockM rows x head_dim bucket,
// laid out by BwdWorkspace::dq_tile_offset) becomes dq in the
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
// instead of index divisions), each task one 8-column chunk of a row: 2 x
// 16-byte loads (one 32-byte chunk row of the tile) and one 16-byte store.
template <int kHeadDim>
using ConvertShape = SideKernelRows<kHeadDim, kConvertThreads>;

// kFragmentOrder: the tile is laid out by BwdWorkspace::dq_fragment_offset
// (slices of kSlice columns), else by dq_tile_offset.
template <class Element, int kHeadDim, int kBlockM, bool kFragmentOrder = false, int kSlice = kHeadDim>
__global__ void __launch_bounds__(kConvertThreads)
bwd_convert_dq_kernel(const float* __restrict__ dq_accum, Element* __restrict__ dq, int seqlen_q, int heads_q,
                      int head_dim, int64_t rows, float scale) {
  static_assert(!kFragmentOrder || kBlockM == 64, "the fragment order covers one wgmma tile of rows");
  using Shape = ConvertShape<kHeadDim>;
  constexpr int kPasses = Shape::kPasses;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int c = threadIdx.x % Shape::kLanesPerRow;
  const bool col_inside = c * 8 < head_dim;
  const float* head_accum = dq_accum + (int64_t(b) * heads_q + h) * rows * kHeadDim;

  int64_t i[kPasses];
  float4 lo[kPasses], hi[kPasses];
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    i[p] = int64_t(blockIdx.x) * Shape::kRowsPerBlock + p * Shape::kRowsPerPass + threadIdx.x / Shape::kLanesPerRow;
    if (i[p] < seqlen_q && col_inside) {
      const int r = int(i[p] % kBlockM);
      const float* tile = head_accum + (i[p] - r) * kHeadDim;
      if constexpr (kFragmentOrder) {
        // The row's 8 columns: 4 pairs, 16 bytes apart.
        const float* src = tile + BwdWorkspace::dq_fragment_offset(kSlice, r, c * 8);
        const float2 a = *reinterpret_cast<const float2*>(src), b = *reinterpret_cast<const float2*>(src + 4),
                     e = *reinterpret_cast<const float2*>(src + 8), f = *reinterpret_cast<const float2*>(src + 12);
        lo[p] = make_float4(a.x, a.y, b.x, b.y);
        hi[p] = make_float4(e.x, e.y, f.x, f.y);
      } else {
        const float* src = tile + BwdWorkspace::dq_tile_offset(kBlockM, r, c * 8);
        lo[p] = *reinterpret_cast<const float4*>(src);
        hi[p] = *reinterpret_cast<const float4*>(src + 4);
      }
    }
  }
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    if (i[p] < seqlen_q && col_inside) {
      alignas(16) Element v[8] = {Element(lo[p].x * scale), Element(lo[p].y * scale), Element(lo[p].z * scale),
                                  Element(lo[p].w * scale), Element(hi[p].x * scale), Element(hi[p].y * scale),
                                  Element(hi[p].z * scale), Element(hi[p].w * scale)};
      *reinterpret_cast<uint4*>(dq + ((int64_t(b) * seqlen_q + i[p]) * heads_q + h) * head_dim + c * 8) =
          *reinterpret_cast<const uint4*>(v);
    }
  }
}

}  // namespace jax_fa3::bwd
