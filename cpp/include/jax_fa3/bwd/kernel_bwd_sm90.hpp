// The backward main kernel: one CTA per (key block of kBlockN, kv head,
// batch). It loops over the query heads of its GQA group itself, so dK/dV of
// the whole group accumulate in registers and leave the SM once, with no
// cross-CTA reduction; dQ is the only cross-CTA sum (fp32, workspace).
// Warp-specialised: a producer warpgroup (TMA loads; dQ reduce-adds, or the
// MMA warpgroups add dQ from registers: Traits::kDQFromRegs) and
// kWarpgroups MMA warpgroups, synchronised through mbarriers (the Q/dO
// ring) and named barriers (dS exchange, dQ hand-off).
#pragma once

#include "jax_fa3/common/arch.h"

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>

#include "jax_fa3/bwd/cta_times_bwd_sm90.hpp"
#include "jax_fa3/bwd/epilogue_bwd_sm90.hpp"
#include "jax_fa3/bwd/mainloop_bwd_dkvt_sm90.hpp"
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

// kChunkedOrder: the CTA order of the deterministic kernels under a mask and
// without one where BwdTile's row chunks it (BwdCtaOrder); otherwise blockIdx
// is (key block, kv head, batch).
template <class Traits, bool kMasked, bool kChunkedOrder>
__global__ void __launch_bounds__(Traits::kThreads, 1)
bwd_main_kernel(const __grid_constant__ BwdMainParams<Traits> params) {
  using namespace cute;
  using SharedStorage = typename Traits::SharedStorage;
  extern __shared__ char smem_raw[];
  // Aligned by pointer arithmetic on smem_raw (not through an integer), so
  // the compiler still knows every access is to shared memory (STS/LDS with
  // 32-bit addresses, not generic ones).
  const uint32_t smem_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(smem_raw + ((1024u - (smem_addr & 1023u)) & 1023u));

  // By default key blocks run fastest in the grid: the CTAs in flight share
  // one head's Q/dO in L2. In deterministic mode a CTA only ever waits for
  // CTAs of lower linear index (see DqReducer), in either order.
  const BwdCtaOrder::Cta cta = kChunkedOrder ? params.order.cta(blockIdx.x)
                                             : BwdCtaOrder::Cta{int(blockIdx.x), int(blockIdx.y), int(blockIdx.z)};
  const int n_block = cta.n_block;
  const int hkv = cta.hkv;
  const int b = cta.b;
  const int group = params.heads_q / params.heads_kv;
  // The walk: range.num_m query blocks for each of the group's query heads.
  // Each role derives it after its register reconfiguration (values kept
  // live across setmaxnreg would be spilled).
  auto walk = [&] {
    const int n0 = n_block * Traits::kBlockN;
    const int n1 = min(n0 + Traits::kBlockN, params.seqlen_k);
    const BwdQueryRange range = BwdQueryRange::make(params.mask, n0, n1, Traits::kBlockM);
    return params.deterministic ? range : range.shifted(n_block);  // see BwdStep
  };

  cta_times_start();
  if (threadIdx.x == 0) {
    cute::prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_do.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
    for (int s = 0; s < Traits::kStages; ++s) {
      initialize_barrier(ss.full_bar[s], 1);
      initialize_barrier(ss.empty_bar[s], Traits::kMmaThreads);
    }
    if constexpr (Traits::kSplitdO) {
      for (int s = 0; s < Traits::kStagesdO; ++s) {
        initialize_barrier(ss.full_do_bar[s], 1);
        initialize_barrier(ss.empty_do_bar[s], Traits::kMmaThreads);
      }
    }
    initialize_barrier(ss.kv_bar, 1);
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  const int warpgroup = cutlass::canonical_warp_group_idx();
  if (warpgroup == 0) {
    // Producer warpgroup: warp 0 loads, warp 1 writes dQ (unless the MMA
    // warpgroups add it themselves, kDQFromRegs), warps 2-3 exit.
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    const int warp = cutlass::canonical_warp_idx_sync();
    const BwdQueryRange range = walk();
    const int total = range.num_m * group;
    if (total > 0) {
      if (warp == 0) {
        if (cute::elect_one_sync()) bwd_load<Traits>(params, ss, n_block, hkv, b, range);
      } else if (warp == 1) {
        if constexpr (!Traits::kDQFromRegs) {
          DqHandoff<Traits>::run(params, ss.dq.data(), b, n_block, total, BwdStep::first(range, hkv, group), range);
        }
      }
    }
  } else if constexpr (Traits::kDKVTransposed) {
    cutlass::arch::warpgroup_reg_alloc<Traits::kMmaRegs>();
    const BwdQueryRange range = walk();
    bwd_mma_dkvt<Traits, kMasked>(params, ss, n_block, hkv, b, range, range.num_m * group, threadIdx.x - 128);
    cta_times_end(threadIdx.x - 128, range.num_m * group);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kMmaRegs>();
    const int mma_tid = threadIdx.x - 128;
    const int wg = mma_tid / 128;
    typename Traits::MmadKV mma_dkv;
    Tensor tdKrdK = partition_fragment_C(mma_dkv, Shape<_64, Int<Traits::kDSlice>>{});
    Tensor tdVrdV = partition_fragment_C(mma_dkv, Shape<_64, Int<Traits::kDSlice>>{});
    clear(tdKrdK);
    clear(tdVrdV);
    const BwdQueryRange range = walk();
    const int total = range.num_m * group;
    if (total > 0) bwd_mma<Traits, kMasked>(params, ss, n_block, hkv, b, range, total, mma_tid, tdKrdK, tdVrdV);
    // Keys that no query sees get zero dK/dV, written like any other.
    store_dkv<Traits>(params, tdKrdK, tdVrdV, n_block, hkv, b, mma_tid % 128, wg % Traits::kKeySplit,
                      wg / Traits::kKeySplit);
    cta_times_end(mma_tid, total);
  }
}

}  // namespace jax_fa3::bwd
