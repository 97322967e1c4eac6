// Dev-only CTA times of the backward main kernel (JAX_FA3_BWD_CTA_TIMES=1,
// harness builds only; the library build never sets it): each CTA stamps the
// global timer when it starts and when its first MMA warpgroup has issued
// its dK/dV stores, with its SM and its number of steps, so that
// tools/dev/bwd_cta_times.py can tell the grid's idle SM time (tail, gaps
// between CTAs) from the CTAs' own fixed and per-step costs. The stamps are
// overwritten by every launch; bwd_cta_times_print_kernel prints the last
// one's ("CT cta sm steps start_ns end_ns") and clears them.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cstdint>
#include <cstdio>

#ifndef JAX_FA3_BWD_CTA_TIMES
#define JAX_FA3_BWD_CTA_TIMES 0
#endif

namespace jax_fa3::bwd {

#if JAX_FA3_BWD_CTA_TIMES
constexpr int kCtaTimesMax = 16384;
static __device__ unsigned long long jax_fa3_bwd_cta_start[kCtaTimesMax];
static __device__ unsigned long long jax_fa3_bwd_cta_end[kCtaTimesMax];
static __device__ uint32_t jax_fa3_bwd_cta_sm_steps[kCtaTimesMax];

__device__ __forceinline__ unsigned long long cta_times_now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ int cta_times_linear() {
  return int(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
}
__device__ __forceinline__ void cta_times_start() {
  const int cta = cta_times_linear();
  if (threadIdx.x == 0 && cta < kCtaTimesMax) jax_fa3_bwd_cta_start[cta] = cta_times_now();
}
// Called by every thread of the first MMA warpgroup; thread 0 of it stamps.
__device__ __forceinline__ void cta_times_end(int mma_tid, int steps) {
  const int cta = cta_times_linear();
  if (mma_tid != 0 || cta >= kCtaTimesMax) return;
  uint32_t sm;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  jax_fa3_bwd_cta_end[cta] = cta_times_now();
  jax_fa3_bwd_cta_sm_steps[cta] = (sm << 20) | uint32_t(steps);
}
static __global__ void bwd_cta_times_print_kernel() {
  for (int i = 0; i < kCtaTimesMax; ++i) {
    if (jax_fa3_bwd_cta_start[i] == 0) continue;
    const uint32_t v = jax_fa3_bwd_cta_sm_steps[i];
    printf("CT %d %u %u %llu %llu\n", i, v >> 20, v & 0xfffffu, jax_fa3_bwd_cta_start[i], jax_fa3_bwd_cta_end[i]);
    jax_fa3_bwd_cta_start[i] = jax_fa3_bwd_cta_end[i] = 0;
  }
}
#else
__device__ __forceinline__ void cta_times_start() {}
__device__ __forceinline__ void cta_times_end(int, int) {}
#endif

}  // namespace jax_fa3::bwd
