// Last stage of the backward: the fp32 dq accumulator (workspace: per batch,
// query head and query block one tile of kBlockM rows x head_dim bucket,
// laid out by BwdWorkspace::dq_tile_offset) becomes dq in the caller's dtype,
// scaled by softmax_scale, bounded by seqlen_q and the real head_dim. Walks
// that send dQ through the writer warp convert each query block inside the
// main kernel, in the CTA that added its last part (DqFinish); the others
// (dQ added from the MMA warpgroups' registers) run the convert kernel after
// it.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cuda_runtime_api.h>
#include <cstdint>

#include "jax_fa3/bwd/workspace_bwd.h"

namespace jax_fa3::bwd {

// Query block m of (batch b, head h): its tile's rows below seqlen_q, by
// kThreads threads (thread tid). A task is one 8-column chunk of a row (2 x
// 16-byte loads of the tile, one 16-byte store of dq); consecutive threads
// take consecutive chunks of a row (coalesced stores), and each thread
// issues all its loads before any store.
template <class Element, int kHeadDim, int kBlockM, int kThreads>
__device__ __forceinline__ void convert_dq_block(const float* __restrict__ dq_accum, Element* __restrict__ dq,
                                                 int64_t rows, int seqlen_q, int heads_q, int head_dim, float scale,
                                                 int b, int h, int m, int tid) {
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kTasks = kBlockM * kChunks;
  constexpr int kPerThread = (kTasks + kThreads - 1) / kThreads;
  const float* tile = dq_accum + ((int64_t(b) * heads_q + h) * rows + int64_t(m) * kBlockM) * kHeadDim;
  const int valid_rows = seqlen_q - m * kBlockM;
  float4 lo[kPerThread], hi[kPerThread];
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int t = tid + k * kThreads, r = t / kChunks, c = t % kChunks;
    if (t < kTasks && r < valid_rows && c * 8 < head_dim) {
      const float* src = tile + BwdWorkspace::dq_tile_offset(kBlockM, r, c * 8);
      // L2 only (ld.global.cg): inside the main kernel the tile was just
      // completed by other SMs' adds, which this SM's L1 never saw.
      lo[k] = __ldcg(reinterpret_cast<const float4*>(src));
      hi[k] = __ldcg(reinterpret_cast<const float4*>(src + 4));
    }
  }
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int t = tid + k * kThreads, r = t / kChunks, c = t % kChunks;
    if (t < kTasks && r < valid_rows && c * 8 < head_dim) {
      alignas(16) Element v[8] = {Element(lo[k].x * scale), Element(lo[k].y * scale), Element(lo[k].z * scale),
                                  Element(lo[k].w * scale), Element(hi[k].x * scale), Element(hi[k].y * scale),
                                  Element(hi[k].z * scale), Element(hi[k].w * scale)};
      const int64_t i = int64_t(m) * kBlockM + r;
      *reinterpret_cast<uint4*>(dq + ((int64_t(b) * seqlen_q + i) * heads_q + h) * head_dim + c * 8) =
          *reinterpret_cast<const uint4*>(v);
    }
  }
}

constexpr int kConvertThreads = 256;

// Block (m, h, b): query block m of head h, batch b.
template <class Element, int kHeadDim, int kBlockM>
__global__ void __launch_bounds__(kConvertThreads)
bwd_convert_dq_kernel(const float* __restrict__ dq_accum, Element* __restrict__ dq, int seqlen_q, int heads_q,
                      int head_dim, int64_t rows, float scale) {
  convert_dq_block<Element, kHeadDim, kBlockM, kConvertThreads>(dq_accum, dq, rows, seqlen_q, heads_q, head_dim, scale,
                                                                blockIdx.z, blockIdx.y, blockIdx.x, threadIdx.x);
}

}  // namespace jax_fa3::bwd
