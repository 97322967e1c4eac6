// Outputs of the backward main kernel: the dq tile of each step (added into
// the fp32 workspace accumulator) and the dK/dV of the CTA's key block.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>

#include "jax_fa3/bwd/params_bwd_sm90.hpp"
#include "jax_fa3/common/utils.hpp"

namespace jax_fa3::bwd {

// Named barriers of the backward (cutlass offsets the ids past its reserved
// ones). kdSReady counts the MMA threads; kdQEmpty + w / kdQFull + w one MMA
// warpgroup w plus the dQ writer warp.
enum class BwdNamedBarrier : uint32_t {
  kdSReady = 0,  // every MMA warpgroup has written its dS^T of the step to smem
  kdQEmpty = 1,  // + w, writer -> warpgroup w: its part of the smem dQ tile may be overwritten
  kdQFull = 3,   // + w, warpgroup w -> writer: its part of the step's dQ tile is complete
  kdKVTile = 5,  // + w, warpgroup w's threads: its dK/dV epilogue tile is written / read (BwdTraitsDKVt)
};

JAX_FA3_HOST_DEVICE uint32_t barrier_id(BwdNamedBarrier b) { return static_cast<uint32_t>(b); }

// The dQ writer's side of one step: each MMA warpgroup's part of the fp32 dQ
// tile (smem, contiguous, written and fenced for the async proxy by that
// warpgroup) goes into the workspace accumulator of (batch b, query head hq,
// query block m) with a bulk reduce-add (cp.reduce.async.bulk .add.f32, the
// fp32 adds done at L2 by the copy engine). One thread of the writer warp
// calls these.
//
// Deterministic: the key blocks visiting (b, hq, m) add in increasing n_block
// order, serialised by a counter per (b, hq, m) in the workspace. CTAs are
// dispatched in linear block order and a CTA only waits for lower n_block of
// its own (kv head, batch), which has a lower linear index in the grid (key
// block fastest), so the wait always ends. The same bulk reduce-adds do the
// sum, but each CTA waits for its turn before them (wait_turn) and, after
// them, for its adds to have fully landed, not just for their source reads
// (pass_turn), with proxy fences ordering the counter's acquire/release
// (generic proxy) around the adds (async proxy). wait_turn and pass_turn are
// only called in this mode (their null checks are redundant, but removing them
// changes ptxas's register allocation enough to bring back 4-8 byte spills at
// head dims 192/256).
template <class Traits>
struct DqReducer {
  static constexpr int kPartFloats = Traits::kBlockM * Traits::kDQSlice;

  const BwdMainParams<Traits>& params;
  float* gdq;  // the query block's accumulator tile
  int* sem;    // its turn counter (deterministic mode; nullptr otherwise)

  CUTE_DEVICE static DqReducer at(const BwdMainParams<Traits>& params, int b, int hq, int m) {
    const int64_t tile = (int64_t(b) * params.heads_q + hq) * params.rows + int64_t(m) * Traits::kBlockM;
    int* sem = params.deterministic ? params.dq_sem + (int64_t(b) * params.heads_q + hq) * params.m_blocks + m
                                    : nullptr;
    return DqReducer{params, params.dq_accum + tile * Traits::kHeadDim, sem};
  }

  CUTE_DEVICE void wait_turn(int m, int n_block) const {
    if (!sem) return;
    const int rank = n_block - params.mask.key_begin(m * Traits::kBlockM) / Traits::kBlockN;
    int seen;
    do {
      asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(seen) : "l"(sem) : "memory");
    } while (seen != rank);
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
  }

  // Part w; returns once its smem source has been read.
  CUTE_DEVICE void add_part(const float* smem_dq, int w) const {
    const uint32_t smem_addr = cute::cast_smem_ptr_to_uint(smem_dq + w * kPartFloats);
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
                 :: "l"(gdq + w * kPartFloats), "r"(smem_addr), "r"(uint32_t(kPartFloats * sizeof(float)))
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
  }

  CUTE_DEVICE void pass_turn() const {
    if (!sem) return;
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
    asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" :: "l"(sem) : "memory");
  }
};

// The dQ hand-off between each MMA warpgroup and the writer warp (warp 1 of
// the producer warpgroup), through that warpgroup's part of one smem tile and
// two named barriers per warpgroup: the warpgroups never wait for each other
// here, nor for the reduce itself, only (kdQEmpty + w) for the source read of
// their previous part.
template <class Traits>
struct DqHandoff {
  static constexpr uint32_t kThreads = cutlass::NumThreadsPerWarpGroup + cutlass::NumThreadsPerWarp;
  static constexpr int kParts = Traits::kWarpgroups;

  // MMA side (warpgroup wg), around the write of its part of the step's tile.
  CUTE_DEVICE static void wait_empty(int wg) {
    cutlass::arch::NamedBarrier::sync(kThreads, barrier_id(BwdNamedBarrier::kdQEmpty) + wg);
  }
  CUTE_DEVICE static void mark_full(int wg) {
    cutlass::arch::NamedBarrier::arrive(kThreads, barrier_id(BwdNamedBarrier::kdQFull) + wg);
  }

  // Writer warp (all 32 lanes: named barriers count whole warps): per step of
  // the CTA's walk, in the MMA warpgroups' order, each part as soon as its
  // warpgroup has written it. Deterministic mode takes its turn once every
  // part is ready, so a CTA holds the turn (which the next key block waits
  // for) only while its adds land. Each warpgroup syncs kdQEmpty + w once per
  // step; the writer arrives once up front and after every step but the
  // last, so no arrival is left pending.
  template <class Step, class Range>
  CUTE_DEVICE static void run(const BwdMainParams<Traits>& params, const float* smem_dq, int b, int n_block,
                              int total, Step step, Range range) {
    auto release = [](int w) { cutlass::arch::NamedBarrier::arrive(kThreads, barrier_id(BwdNamedBarrier::kdQEmpty) + w); };
    auto wait_full = [](int w) { cutlass::arch::NamedBarrier::sync(kThreads, barrier_id(BwdNamedBarrier::kdQFull) + w); };
    for (int w = 0; w < kParts; ++w) release(w);
    for (int t = 0; t < total; ++t, step.advance(range)) {
      const auto reducer = DqReducer<Traits>::at(params, b, step.hq, step.m);
      const bool leader = cute::elect_one_sync();
      const bool more = t + 1 < total;
      if (params.deterministic) {
        for (int w = 0; w < kParts; ++w) wait_full(w);
        if (leader) {
          reducer.wait_turn(step.m, n_block);
          for (int w = 0; w < kParts; ++w) reducer.add_part(smem_dq, w);
          reducer.pass_turn();
        }
        __syncwarp();
        for (int w = 0; more && w < kParts; ++w) release(w);
      } else {
        for (int w = 0; w < kParts; ++w) {
          wait_full(w);
          if (leader) reducer.add_part(smem_dq, w);
          __syncwarp();
          if (more) release(w);
        }
      }
    }
  }
};

// dK (times softmax_scale) and dV of this warpgroup's 64 keys x kDSlice
// columns, straight from the accumulators in 16-byte chunks (store_acc_16b);
// rows beyond seqlen_k and chunks beyond the real head_dim (a multiple of 8)
// are not written.
template <class Traits, class Acc>
__device__ __forceinline__ void store_dkv(const BwdMainParams<Traits>& params, const Acc& tdKrdK, const Acc& tdVrdV,
                                          int n_block, int hkv, int b, int wg_tid, int ks, int dsl) {
  using namespace cute;
  using Element = typename Traits::Element;
  typename Traits::MmadKV mma_dkv;
  auto thr_dkv = mma_dkv.get_thread_slice(wg_tid);
  Tensor tc = thr_dkv.partition_C(make_identity_tensor(Shape<_64, Int<Traits::kDSlice>>{}));
  static_assert(decltype(size(tc))::value == decltype(size(tdKrdK))::value, "layout mismatch");
  const int key0 = n_block * Traits::kBlockN + ks * 64;
  const int col0 = dsl * Traits::kDSlice;
  int64_t row_offset[2];
  bool row_inside[2];
  CUTLASS_PRAGMA_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int j = key0 + get<0>(tc(make_coord(make_coord(0, r, 0), 0, 0)));
    row_inside[r] = j < params.seqlen_k;
    row_offset[r] = ((int64_t(b) * params.seqlen_k + j) * params.heads_kv + hkv) * params.head_dim + col0;
  }
  auto store_to = [&](Element* out) {
    return [&, out](int r, int col, uint4 chunk) {
      store_16b_if(out + row_offset[r] + col, chunk, row_inside[r] && col0 + col < params.head_dim);
    };
  };
  store_acc_16b<Element>(tdKrdK, params.softmax_scale, wg_tid % 4, store_to(static_cast<Element*>(params.dk)));
  store_acc_16b<Element>(tdVrdV, 1.f, wg_tid % 4, store_to(static_cast<Element*>(params.dv)));
}

}  // namespace jax_fa3::bwd
