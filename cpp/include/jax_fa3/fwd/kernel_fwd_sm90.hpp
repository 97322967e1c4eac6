// The Hopper forward kernel: a persistent CTA per SM walks its (query block,
// head, batch) tiles (tile_scheduler_fwd_sm90.hpp); one producer warpgroup feeds
// shared memory with TMA, kConsumerWarpgroups warpgroups compute with wgmma,
// synchronised through mbarriers, and take turns on the tensor cores
// (WarpgroupTurns).
#pragma once

#include "jax_fa3/common/arch.h"

#include <cstdint>
#include <type_traits>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>

#include "jax_fa3/common/softmax.hpp"
#include "jax_fa3/common/utils.hpp"
#include "jax_fa3/common/warpgroup_turns.hpp"
#include "jax_fa3/fwd/epilogue_fwd_sm90.hpp"
#include "jax_fa3/fwd/kernel_traits_fwd_sm90.hpp"
#include "jax_fa3/fwd/mainloop_fwd_sm90.hpp"
#include "jax_fa3/fwd/tile_scheduler_fwd_sm90.hpp"
#include "jax_fa3/params.h"

namespace jax_fa3 {

// kCapped: the logit softcap is on. A template argument rather than a
// runtime test so that the main loop has no branch between a warpgroup's PV
// GEMM issue and its wait (FwdMainloopSm90::mma says why that matters).
template <class Traits_, bool kCapped_>
struct FwdKernelSm90 {
  using Traits = Traits_;
  static constexpr bool kCapped = kCapped_;
  using Mainloop = FwdMainloopSm90<Traits>;
  using Epilogue = FwdEpilogueSm90<Traits>;
  using Scheduler = typename Traits::Scheduler;
  using SharedStorage = typename Traits::SharedStorage;
  using Turns = WarpgroupTurns<Traits::kConsumerWarpgroups, Traits::kPingPong>;
  static constexpr int kNumThreads = Traits::kNumThreads;
  static constexpr int kSmemBytes = Traits::kSmemBytes;

  struct Params {
    typename Mainloop::Params mainloop;
    typename Epilogue::Params epilogue;
    typename Scheduler::Params scheduler;
  };

  static Params to_params(FwdParams const& p, int64_t l2_bytes) {
    AttnShape const& s = p.problem.shape;
    const int64_t kv_bytes_per_head = 2 * int64_t(s.seqlen_k) * s.head_dim * int64_t(sizeof(typename Traits::Element));
    const FwdTileOrder order = FwdTileOrder::make(s.seqlen_q, s.heads_q, s.batch, Traits::kBlockM,
                                                  s.heads_q / s.heads_kv, kv_bytes_per_head, l2_bytes,
                                                  Traits::kMasked);
    return Params{Mainloop::to_params(p), Epilogue::to_params(p), Scheduler::to_params(order, p.workspace)};
  }

  // Calls body(tile, n_min, n_max) for each tile the walk hands out, with the
  // key blocks [n_min, n_max) it visits.
  template <class Walk, class Body>
  CUTE_DEVICE static void for_each_tile(Params const& params, Walk walk, Body&& body) {
    for (int t = walk.next(); t < params.scheduler.order.num_tiles; t = walk.next()) {
      const FwdWorkTile tile = params.scheduler.order.template tile<Traits::kMasked>(t);
      const auto n_range = Mainloop::n_block_range(params.mainloop, tile.m_block);
      body(tile, cute::get<0>(n_range), cute::get<1>(n_range));
    }
  }

  CUTE_DEVICE void operator()(Params const& params, char* smem_raw) const {
    using namespace cute;
    // Swizzled TMA/wgmma tiles need 1024-byte aligned shared memory.
    const uint32_t smem_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
    SharedStorage& ss = *reinterpret_cast<SharedStorage*>(smem_raw + ((1024u - (smem_addr & 1023u)) & 1023u));

    const int warpgroup = cutlass::canonical_warp_group_idx();

    if (threadIdx.x == 0) {
      Mainloop::prefetch_descriptors(params.mainloop);
      // full: one arrival (the producer's expect_tx) + the TMA bytes; empty:
      // every consumer thread arrives once it is done with the buffer.
      cutlass::arch::ClusterBarrier::init(&ss.full_q, 1);
      cutlass::arch::ClusterBarrier::init(&ss.empty_q, Traits::kNumConsumerThreads);
      CUTLASS_PRAGMA_UNROLL
      for (int s = 0; s < Traits::kStages; ++s) {
        cutlass::arch::ClusterBarrier::init(&ss.full_k[s], 1);
        cutlass::arch::ClusterBarrier::init(&ss.full_v[s], 1);
        cutlass::arch::ClusterBarrier::init(&ss.empty_k[s], Traits::kNumConsumerThreads);
        cutlass::arch::ClusterBarrier::init(&ss.empty_v[s], Traits::kNumConsumerThreads);
      }
      Scheduler::init(ss.scheduler, Traits::kNumConsumerThreads);
      timeline_init(Traits::timeline(ss));
      // Make the initialised barriers visible to the async proxy (TMA).
      cutlass::arch::fence_barrier_init();
    }
    __syncthreads();

    // Both roles walk the same tile sequence (the scheduler's) and count the
    // K/V blocks and Q tiles they have passed, which gives every ring slot and
    // barrier phase.
    if constexpr (Traits::kWarpSpecialized) {
      if (warpgroup == 0) {
        // Producer warpgroup: gives its registers to the consumers; one thread
        // issues all TMA copies, the other 127 threads just exit.
        cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
        if (cutlass::canonical_warp_idx_sync() == 0 && cute::elect_one_sync()) {
          int kv_count = 0, q_count = 0;
          auto load_tile = [&](FwdWorkTile const& tile, int n_min, int n_max) {
            if (n_max <= n_min) return;
            Mainloop::load(params.mainloop, ss, tile, n_min, n_max, kv_count, q_count);
            kv_count += n_max - n_min;
            ++q_count;
          };
          for_each_tile(params, Scheduler::producer(params.scheduler, ss.scheduler), load_tile);
        }
      } else {
        cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
        consume(params, ss, warpgroup - 1, threadIdx.x - Traits::kNumProducerThreads);
      }
    } else {
      consume(params, ss, warpgroup, threadIdx.x);
    }
  }

  // Consumer warpgroup `consumer_wg` (thread `thread_idx` of the consumers):
  // the tiles' math and epilogue. Without warp specialization (an ablation
  // build) its thread 0 also issues the tile's loads, one load step ahead of
  // the math (Mainloop::tile_loads).
  CUTE_DEVICE void consume(Params const& params, SharedStorage& ss, int consumer_wg, int thread_idx) const {
    using namespace cute;
    const Turns turns{consumer_wg};
    turns.start();
    int kv_count = 0, q_count = 0;
    auto stamp = [&](FwdEvent event) { timeline_stamp(Traits::timeline(ss), event); };
    auto compute_tile = [&](FwdWorkTile const& tile, int n_min, int n_max) {
      stamp(FwdEvent::kTileStart);
      typename Traits::TiledMmaPV tiled_mma_pv;
      Tensor tOrO = partition_fragment_C(tiled_mma_pv, select<0, 1>(typename Traits::TileShapePV{}));
      clear(tOrO);
      OnlineSoftmax<Traits::kRowsPerThread> softmax(params.mainloop.scale_log2);
      if (n_max > n_min) {
        auto run_mma = [&](auto&& prefetch) {
          Mainloop::template mma<kCapped>(params.mainloop, ss, tile, n_min, n_max, kv_count, q_count, thread_idx,
                                          tOrO, softmax, turns, prefetch);
        };
        if constexpr (Traits::kWarpSpecialized) {
          run_mma([](int) {});
        } else {
          // The warp reconverges before the named barriers that follow.
          auto loads = Mainloop::tile_loads(params.mainloop, ss, tile, n_max, kv_count, q_count);
          const int n_iters = n_max - n_min;
          if (thread_idx == 0) {
            Mainloop::load_step(loads, 0, n_iters);
            Mainloop::load_step(loads, 1, n_iters);
          }
          __syncwarp();
          run_mma([&](int iter) {
            if (thread_idx == 0) Mainloop::load_step(loads, iter + 1, n_iters);
            __syncwarp();
          });
        }
        kv_count += n_max - n_min;
        ++q_count;
      }
      stamp(FwdEvent::kEpilogueStart);
      // Rows that saw no key (empty range or fully masked) get scale 0, so
      // O = 0, and LSE = -inf.
      float o_scale[Traits::kRowsPerThread];
      float lse[Traits::kRowsPerThread];
      softmax.finalize(o_scale, lse);
      scale_rows(tOrO, o_scale);
      Epilogue::store(params.epilogue, tOrO, lse, tile, thread_idx);
      stamp(FwdEvent::kEpilogueEnd);
    };
    for_each_tile(params, Scheduler::consumer(params.scheduler, ss.scheduler), compute_tile);
    turns.finish();
    timeline_flush(Traits::timeline(ss));
  }
};

// The __launch_bounds__ minimum of 1 block gives the kernel the register cap
// that setmaxnreg needs to rebalance registers between warpgroups.
template <class Kernel>
__global__ void __launch_bounds__(Kernel::kNumThreads, 1)
    fwd_kernel_sm90(CUTE_GRID_CONSTANT typename Kernel::Params const params) {
  extern __shared__ char smem_raw[];
  Kernel{}(params, smem_raw);
}

}  // namespace jax_fa3
