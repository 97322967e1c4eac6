// Stage 1 of the backward, one pass over the query rows: the per-row terms
// the main kernel reads once per tile (written into padded workspace arrays,
// so that it fetches a whole kBlockM slice with one bulk copy and no bounds),
// and the clearing of the fp32 dq accumulator it adds into. Clearing here
// rather than with a memset of its own lets those writes stream out while O
// and dO stream in, one launch fewer.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cuda_runtime_api.h>
#include <cstdint>
#include <math_constants.h>

#include "jax_fa3/bwd/workspace_bwd.h"

namespace jax_fa3::bwd {

constexpr int kPreprocessThreads = 256;

template <int kHeadDim>
using PreprocessShape = SideKernelRows<kHeadDim, kPreprocessThreads>;

//   dpsum = rowsum(dO * O) - dlse
//   lse2  = lse * log2(e), or +inf for rows that see no key (lse = -inf) and
//           for the padding rows: exp2(s - lse2) is then exactly 0, so these
//           rows contribute no P, no dS and no gradient, and never a NaN.
//   dq_accum = 0 over this block's rows (the accumulator holds rows x kHeadDim
//           floats per (batch, head), contiguous: BwdWorkspace).
// Block (x, h, b): rows [x, x + 1) * kRowsPerBlock of head h, batch b, padding
// rows (seqlen_q <= row < rows) included.
template <class Element, int kHeadDim>
__global__ void __launch_bounds__(kPreprocessThreads)
bwd_preprocess_kernel(const Element* __restrict__ out, const Element* __restrict__ dout,
                      const float* __restrict__ lse, const float* __restrict__ dlse,
                      float* __restrict__ lse2, float* __restrict__ dpsum, float* __restrict__ dq_accum,
                      int seqlen_q, int heads_q, int head_dim, int64_t rows) {
  using Shape = PreprocessShape<kHeadDim>;
  constexpr int kPasses = Shape::kPasses;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int lane = threadIdx.x % 32;
  const int chunk = lane % Shape::kLanesPerRow;
  const int64_t row0 = int64_t(blockIdx.x) * Shape::kRowsPerBlock;
  const int64_t head_row0 = (int64_t(b) * heads_q + h) * rows;  // this head's row 0 in the padded arrays

  int64_t row[kPasses];
  uint4 o_raw[kPasses], do_raw[kPasses];
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    row[p] = row0 + p * Shape::kRowsPerPass + threadIdx.x / Shape::kLanesPerRow;
    o_raw[p] = do_raw[p] = make_uint4(0u, 0u, 0u, 0u);
    if (row[p] < seqlen_q && chunk * 8 < head_dim) {
      const int64_t offset = ((int64_t(b) * seqlen_q + row[p]) * heads_q + h) * head_dim + chunk * 8;
      o_raw[p] = *reinterpret_cast<const uint4*>(out + offset);
      do_raw[p] = *reinterpret_cast<const uint4*>(dout + offset);
    }
  }

  {
    const int64_t block_rows = rows - row0 < Shape::kRowsPerBlock ? rows - row0 : Shape::kRowsPerBlock;
    float4* dst = reinterpret_cast<float4*>(dq_accum + (head_row0 + row0) * kHeadDim);
    for (int i = threadIdx.x; i < block_rows * (kHeadDim / 4); i += kPreprocessThreads) {
      dst[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }

#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    const Element* o = reinterpret_cast<const Element*>(&o_raw[p]);
    const Element* d = reinterpret_cast<const Element*>(&do_raw[p]);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) sum += float(o[i]) * float(d[i]);
#pragma unroll
    for (int off = Shape::kLanesPerRow / 2; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (chunk == 0 && row[p] < rows) {
      const int64_t term = head_row0 + row[p];
      if (row[p] >= seqlen_q) {
        lse2[term] = CUDART_INF_F;
        dpsum[term] = 0.f;
      } else {
        const int64_t lse_index = (int64_t(b) * heads_q + h) * seqlen_q + row[p];
        const float l = lse[lse_index];
        lse2[term] = l == -CUDART_INF_F ? CUDART_INF_F : l * float(M_LOG2E);
        dpsum[term] = sum - (dlse != nullptr ? dlse[lse_index] : 0.f);
      }
    }
  }
}

}  // namespace jax_fa3::bwd
