// Online (streaming) softmax over key blocks, kept in fp32 registers.
//
// Each thread owns kRows rows of the score tile (the wgmma accumulator layout
// puts 2 rows per 64-row warpgroup tile in a thread) and, per row, a quarter of
// the columns; the other quarters live in the 3 neighbouring lanes of the same
// quad, so a row reduction is a local loop plus 2 xor-shuffles.
//
// Scores are kept unscaled; the softmax scale is folded into the exponent as
// exp2(s * scale*log2(e) - max * scale*log2(e)), one FFMA + one MUFU.EX2 per
// element.
//
// update() reports whether any of a thread's rows got a new max: on most
// blocks of a long row none did, and a caller's warp can then skip rescaling
// the output accumulator (head dim 256: 128 multiplies per thread and block)
// by factors that are all 1. The max stays exact (the largest probability of
// a row is exactly 1), so results are the same bits as with the multiplies:
// letting the max lag (FlashAttention-4's lazy rescaling) skips more of them
// but rounds that largest probability to 16 bits, which made a peaked
// (softcapped) row's output one bf16 ulp worse than the dev harness allows.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cmath>
#include <cute/tensor.hpp>

namespace jax_fa3 {

CUTE_DEVICE float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Reciprocal and log2 on the MUFU alone, without the range handling (scaling
// of denormal inputs) the intrinsics' non-ftz forms add.
CUTE_DEVICE float fast_rcp(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

CUTE_DEVICE float fast_log2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

CUTE_DEVICE float quad_allreduce_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
  return x;
}

CUTE_DEVICE float quad_allreduce_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  x += __shfl_xor_sync(0xffffffff, x, 2);
  return x;
}

template <int kRows>
struct OnlineSoftmax {
  float row_max[kRows];  // running max of the unscaled scores; -inf: nothing seen yet
  float row_sum[kRows];  // this thread's partial sum of exp (quad-reduced at the end)
  float scale_log2;      // softmax scale * log2(e)

  CUTE_DEVICE explicit OnlineSoftmax(float scale_log2_) : scale_log2(scale_log2_) {
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.f;
    }
  }

  // Folds one block of scores, given as a (rows, cols) view, into the running
  // state: replaces the scores by exp(s - row_max) in place and writes, per
  // row, the factor the output accumulator must be multiplied by. Returns
  // whether any of this thread's rows needs that: a new max on a row that had
  // already seen keys (all other factors are 1, or 0 on a row still at 0).
  template <class TensorS>
  CUTE_DEVICE bool update(TensorS& s, float (&o_scale)[kRows]) {
    using namespace cute;
    static_assert(decltype(size<0>(s))::value == kRows);
    bool rescale = false;
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float old_max = row_max[r];
      float m = old_max;
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < size<1>(s); ++c) { m = fmaxf(m, s(r, c)); }
      m = quad_allreduce_max(m);
      row_max[r] = m;
      // A row that has seen only masked keys keeps max = -inf; subtracting 0
      // instead keeps exp2(-inf - (-inf)) = NaN out and yields p = 0.
      const float m_scaled = m == -INFINITY ? 0.f : m * scale_log2;
      float sum = 0.f;
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < size<1>(s); ++c) {
        const float p = fast_exp2(s(r, c) * scale_log2 - m_scaled);
        s(r, c) = p;
        sum += p;
      }
      // old_max = -inf gives factor 0 on a sum and an output row that are
      // still 0: nothing to rescale.
      const float factor = m == -INFINITY ? 1.f : fast_exp2((old_max - m) * scale_log2);
      o_scale[r] = factor;
      row_sum[r] = row_sum[r] * factor + sum;
      rescale = rescale || (m > old_max && old_max != -INFINITY);
    }
    return rescale;
  }

  // Completes the row sums across the quad; returns per row the factor that
  // normalises the output (0 for a row that saw no key, so its output is 0) and
  // the natural-log LSE (-inf for such a row). A row's sum holds its max's own
  // term, exactly 1, so it lies in [1, keys]: the approximate reciprocal and
  // log2 (within 1 ulp and 2^-22 there) need none of the IEEE versions' range
  // handling, whose branches sat in every tile's epilogue.
  CUTE_DEVICE void finalize(float (&o_scale)[kRows], float (&lse)[kRows]) {
    constexpr float kLn2 = 0.69314718055994530942f;
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float sum = quad_allreduce_sum(row_sum[r]);
      const bool empty = sum == 0.f || sum != sum;
      o_scale[r] = empty ? 0.f : fast_rcp(sum);
      lse[r] = empty ? -INFINITY : (row_max[r] * scale_log2 + fast_log2(sum)) * kLn2;
    }
  }
};

}  // namespace jax_fa3
