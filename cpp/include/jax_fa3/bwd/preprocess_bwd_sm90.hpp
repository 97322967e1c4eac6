// Stage 1 of the backward: per query row (and head) terms the main kernel
// reads once per tile, written into the padded workspace arrays so that the
// main kernel fetches a whole kBlockM slice with one bulk copy and no bounds.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cuda_runtime_api.h>
#include <cstdint>
#include <math_constants.h>

namespace jax_fa3::bwd {

constexpr int kPreprocessWarps = 8;

// One warp per row: each lane reads 16 bytes of O and of dO (head_dim is a
// multiple of 8 and at most 256, so one chunk per lane covers the row).
//   dpsum = rowsum(dO * O) - dlse
//   lse2  = lse * log2(e), or +inf for rows that see no key (lse = -inf) and
//           for the padding rows: exp2(s - lse2) is then exactly 0, so these
//           rows contribute no P, no dS and no gradient, and never a NaN.
template <class Element>
__global__ void __launch_bounds__(kPreprocessWarps * 32)
bwd_preprocess_kernel(const Element* __restrict__ out, const Element* __restrict__ dout,
                      const float* __restrict__ lse, const float* __restrict__ dlse,
                      float* __restrict__ lse2, float* __restrict__ dpsum, int seqlen_q, int heads_q,
                      int head_dim, int64_t rows) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kPreprocessWarps + threadIdx.x / 32;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  if (row >= rows) return;
  const int64_t term = (int64_t(b) * heads_q + h) * rows + row;
  if (row >= seqlen_q) {
    if (lane == 0) {
      lse2[term] = CUDART_INF_F;
      dpsum[term] = 0.f;
    }
    return;
  }
  float sum = 0.f;
  if (lane * 8 < head_dim) {
    const int64_t offset = ((int64_t(b) * seqlen_q + row) * heads_q + h) * head_dim + lane * 8;
    const uint4 o_raw = *reinterpret_cast<const uint4*>(out + offset);
    const uint4 do_raw = *reinterpret_cast<const uint4*>(dout + offset);
    const Element* o = reinterpret_cast<const Element*>(&o_raw);
    const Element* d = reinterpret_cast<const Element*>(&do_raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) sum += float(o[i]) * float(d[i]);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) {
    const int64_t lse_index = (int64_t(b) * heads_q + h) * seqlen_q + row;
    const float l = lse[lse_index];
    lse2[term] = l == -CUDART_INF_F ? CUDART_INF_F : l * float(M_LOG2E);
    dpsum[term] = sum - (dlse != nullptr ? dlse[lse_index] : 0.f);
  }
}

}  // namespace jax_fa3::bwd
