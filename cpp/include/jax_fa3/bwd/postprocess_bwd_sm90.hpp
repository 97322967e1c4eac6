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

// One thread per 8 output elements: 2 x 16-byte loads (one 32-byte chunk
// row of the tile), 1 x 16-byte store, consecutive threads on consecutive
// columns then heads (coalesced stores).
template <class Element, int kHeadDim, int kBlockM>
__global__ void __launch_bounds__(kConvertThreads)
bwd_convert_dq_kernel(const float* __restrict__ dq_accum, Element* __restrict__ dq, int seqlen_q, int heads_q,
                      int head_dim, int64_t rows, float scale, int64_t chunks) {
  const int64_t idx = int64_t(blockIdx.x) * kConvertThreads + threadIdx.x;
  if (idx >= chunks) return;
  const int chunks_per_row = head_dim / 8;
  const int c = int(idx % chunks_per_row);
  int64_t t = idx / chunks_per_row;
  const int h = int(t % heads_q);
  t /= heads_q;
  const int64_t i = t % seqlen_q;
  const int64_t b = t / seqlen_q;
  const int r = int(i % kBlockM);
  const float* src = dq_accum + ((b * heads_q + h) * rows + (i - r)) * kHeadDim +
                     BwdWorkspace::dq_tile_offset(kBlockM, r, c * 8);
  const float4 lo = *reinterpret_cast<const float4*>(src);
  const float4 hi = *reinterpret_cast<const float4*>(src + 4);
  alignas(16) Element v[8] = {Element(lo.x * scale), Element(lo.y * scale), Element(lo.z * scale),
                              Element(lo.w * scale), Element(hi.x * scale), Element(hi.y * scale),
                              Element(hi.z * scale), Element(hi.w * scale)};
  *reinterpret_cast<uint4*>(dq + ((b * seqlen_q + i) * heads_q + h) * head_dim + c * 8) =
      *reinterpret_cast<const uint4*>(v);
}

}  // namespace jax_fa3::bwd
