// The backward main kernel: one CTA per (key block of kBlockN, kv head,
// batch). It loops over the query heads of its GQA group itself, so dK/dV of
// the whole group accumulate in registers and leave the SM once, with no
// cross-CTA reduction; dQ is the only cross-CTA sum (fp32, workspace).
#pragma once

#include "jax_fa3/common/arch.h"

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "jax_fa3/bwd/epilogue_bwd_sm90.hpp"
#include "jax_fa3/bwd/mainloop_bwd_sm90.hpp"
#include "jax_fa3/bwd/params_bwd_sm90.hpp"
#include "jax_fa3/bwd/traits_bwd_sm90.hpp"

namespace jax_fa3::bwd {

// Dynamic shared memory is requested 1 KB larger than SharedStorage so the
// storage can start on a 1024-byte boundary (the period of the 128-byte
// swizzle that TMA and wgmma agree on).
template <class Traits>
constexpr int bwd_main_smem_bytes() {
  return Traits::kSmemBytes + 1024;
}

template <class Traits, bool kMasked>
__global__ void __launch_bounds__(Traits::kThreads, 1)
bwd_main_kernel(const __grid_constant__ BwdMainParams<Traits> params) {
  using namespace cute;
  using SharedStorage = typename Traits::SharedStorage;
  extern __shared__ char smem_raw[];
  const uintptr_t aligned = (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023);
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(aligned);

  // Key blocks fastest in the grid: the CTAs in flight share one head's Q/dO
  // in L2, and in deterministic mode a CTA only ever waits for CTAs of lower
  // linear index (see reduce_dq_tile).
  const int n_block = blockIdx.x;
  const int hkv = blockIdx.y;
  const int b = blockIdx.z;
  const int n0 = n_block * Traits::kBlockN;
  const int n1 = min(n0 + Traits::kBlockN, params.seqlen_k);
  const BwdQueryRange range = BwdQueryRange::make(params.mask, n0, n1, Traits::kBlockM);
  const int total = range.num_m * (params.heads_q / params.heads_kv);

  const int wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
  const int ks = wg % Traits::kKeySplit;
  const int dsl = wg / Traits::kKeySplit;

  typename Traits::MmadKV mma_dkv;
  Tensor tdKrdK = partition_fragment_C(mma_dkv, Shape<_64, Int<Traits::kDSlice>>{});
  Tensor tdVrdV = partition_fragment_C(mma_dkv, Shape<_64, Int<Traits::kDSlice>>{});
  clear(tdKrdK);
  clear(tdVrdV);

  if (total > 0) {
    if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(params.tma_do.get_tma_descriptor());
      cute::prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
      for (int s = 0; s < Traits::kStages; ++s) initialize_barrier(ss.full_bar[s], 1);
      initialize_barrier(ss.kv_bar, 1);
      cutlass::arch::fence_barrier_init();
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      BwdLoader<Traits>::load_kv(params, ss, n_block, hkv, b);
      const int group = params.heads_q / params.heads_kv;
      for (int t = 0; t < Traits::kStages && t < total; ++t) {
        BwdLoader<Traits>::load_step(params, ss, t, hkv * group + t / range.num_m, b,
                                     range.m_begin + t % range.num_m);
      }
    }
    bwd_mainloop<Traits, kMasked>(params, ss, n_block, hkv, b, range, tdKrdK, tdVrdV);
  }
  // Keys that no query sees get zero dK/dV, written like any other.
  store_dkv<Traits>(params, tdKrdK, tdVrdV, n_block, hkv, b, threadIdx.x % 128, ks, dsl);
}

}  // namespace jax_fa3::bwd
