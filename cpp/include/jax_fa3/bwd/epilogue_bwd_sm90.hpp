// Outputs of the backward main kernel: the dq tile of each step (added into
// the fp32 workspace accumulator) and the dK/dV of the CTA's key block.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>

#include "jax_fa3/bwd/params_bwd_sm90.hpp"

namespace jax_fa3::bwd {

// Named barriers of the backward (cutlass offsets the ids past its reserved
// ones). Counts: kdSReady the MMA threads; kdQEmpty / kdQFull the MMA threads
// plus the dQ writer warp.
enum class BwdNamedBarrier : uint32_t {
  kdSReady = 0,  // every MMA warpgroup has written its dS^T of the step to smem
  kdQEmpty = 1,  // writer -> MMA: the smem dQ tile may be overwritten
  kdQFull = 2,   // MMA -> writer: the smem dQ tile of the step is complete
};

JAX_FA3_HOST_DEVICE uint32_t barrier_id(BwdNamedBarrier b) { return static_cast<uint32_t>(b); }

// Sends one step's fp32 dQ tile (smem, [kBlockM, kDqPitch], written and
// fenced for the async proxy by the MMA threads) into the workspace
// accumulator of (batch b, query head hq, query block m). Called by one
// thread of the dQ writer warp; returns once the smem tile may be reused.
//
// Default: a bulk reduce-add (cp.reduce.async.bulk .add.f32, the fp32 adds done
// at L2 by the copy engine).
//
// Deterministic: the key blocks visiting (b, hq, m) add in increasing n_block
// order, serialised by a counter per (b, hq, m) in the workspace. CTAs are
// dispatched in linear block order and a CTA only waits for lower n_block of
// its own (kv head, batch), which has a lower linear index in the grid (key
// block fastest), so the wait always ends. The same bulk reduce-add does the
// sum, but each waits for its turn and for the previous add to have fully
// landed (not just for its source read), with proxy fences ordering the
// counter's acquire/release (generic proxy) around the add (async proxy).
template <class Traits>
__device__ __forceinline__ void reduce_dq_tile(const BwdMainParams<Traits>& params, const float* smem_dq, int b,
                                               int hq, int m, int n_block) {
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  constexpr uint32_t kTileBytes = kBlockM * Traits::kDqPitch * sizeof(float);
  const int64_t tile = (int64_t(b) * params.heads_q + hq) * params.rows + int64_t(m) * kBlockM;
  float* gdq = params.dq_accum + tile * Traits::kDqPitch;
  const uint32_t smem_addr = cute::cast_smem_ptr_to_uint(smem_dq);
  int* sem = nullptr;
  if (params.deterministic) {
    sem = params.dq_sem + (int64_t(b) * params.heads_q + hq) * params.m_blocks + m;
    const int rank = n_block - params.mask.key_begin(m * kBlockM) / kBlockN;
    int seen;
    do {
      asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(seen) : "l"(sem) : "memory");
    } while (seen != rank);
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
  }
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
               :: "l"(gdq), "r"(smem_addr), "r"(kTileBytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
  if (params.deterministic) {
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
    asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" :: "l"(sem) : "memory");
  } else {
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
  }
}

// The dQ hand-off between the MMA warpgroups and the writer warp (warp 1 of
// the producer warpgroup), through one smem tile and two named barriers. The
// MMA threads never wait for the reduce itself, only (kdQEmpty) for the
// previous tile's source read.
template <class Traits>
struct DqHandoff {
  static constexpr uint32_t kThreads = Traits::kMmaThreads + cutlass::NumThreadsPerWarp;

  // MMA side, around the write of the step's tile.
  CUTE_DEVICE static void wait_empty() {
    cutlass::arch::NamedBarrier::sync(kThreads, barrier_id(BwdNamedBarrier::kdQEmpty));
  }
  CUTE_DEVICE static void mark_full() {
    cutlass::arch::NamedBarrier::arrive(kThreads, barrier_id(BwdNamedBarrier::kdQFull));
  }

  // Writer warp (all 32 lanes: named barriers count whole warps): one reduce
  // per step of the CTA's walk, in the MMA warpgroups' order. The MMA side
  // syncs kdQEmpty once per step; the writer arrives once up front and after
  // every tile but the last, so no arrival is left pending.
  template <class StepAt>
  CUTE_DEVICE static void run(const BwdMainParams<Traits>& params, const float* smem_dq, int b, int n_block,
                              int total, StepAt step_at) {
    cutlass::arch::NamedBarrier::arrive(kThreads, barrier_id(BwdNamedBarrier::kdQEmpty));
    for (int t = 0; t < total; ++t) {
      const auto step = step_at(t);
      cutlass::arch::NamedBarrier::sync(kThreads, barrier_id(BwdNamedBarrier::kdQFull));
      if (cute::elect_one_sync()) reduce_dq_tile<Traits>(params, smem_dq, b, step.hq, step.m, n_block);
      __syncwarp();
      if (t + 1 < total) cutlass::arch::NamedBarrier::arrive(kThreads, barrier_id(BwdNamedBarrier::kdQEmpty));
    }
  }
};

template <class Element>
__device__ __forceinline__ void store_pair(Element* ptr, float a, float b) {
  Element v[2] = {Element(a), Element(b)};
  uint32_t packed;
  memcpy(&packed, v, sizeof(packed));
  *reinterpret_cast<uint32_t*>(ptr) = packed;
}

// dK (times softmax_scale) and dV of this warpgroup's 64 keys x kDSlice
// columns, straight from the accumulators; rows beyond seqlen_k and columns
// beyond the real head_dim are not written. Accumulator elements 2i, 2i+1 are
// adjacent columns of one row (wgmma C layout), hence the 4-byte stores.
template <class Traits, class Acc>
__device__ __forceinline__ void store_dkv(const BwdMainParams<Traits>& params, const Acc& tdKrdK, const Acc& tdVrdV,
                                          int n_block, int hkv, int b, int wg_tid, int ks, int dsl) {
  using namespace cute;
  using Element = typename Traits::Element;
  typename Traits::MmadKV mma_dkv;
  auto thr_dkv = mma_dkv.get_thread_slice(wg_tid);
  Tensor tc = thr_dkv.partition_C(make_identity_tensor(Shape<_64, Int<Traits::kDSlice>>{}));
  static_assert(decltype(size(tc))::value == decltype(size(tdKrdK))::value, "layout mismatch");
  Element* dk = static_cast<Element*>(params.dk);
  Element* dv = static_cast<Element*>(params.dv);
  const int key0 = n_block * Traits::kBlockN + ks * 64;
  const int col0 = dsl * Traits::kDSlice;
  CUTLASS_PRAGMA_UNROLL
  for (int i = 0; i < size(tdKrdK); i += 2) {
    const int j = key0 + get<0>(tc(i));
    const int d = col0 + get<1>(tc(i));
    if (j < params.seqlen_k && d < params.head_dim) {
      const int64_t off = ((int64_t(b) * params.seqlen_k + j) * params.heads_kv + hkv) * params.head_dim + d;
      store_pair(dk + off, tdKrdK(i) * params.softmax_scale, tdKrdK(i + 1) * params.softmax_scale);
      store_pair(dv + off, tdVrdV(i), tdVrdV(i + 1));
    }
  }
}

}  // namespace jax_fa3::bwd
