// Paired dQ sums (Traits::kDQPaired). The two CTAs of a cluster own adjacent
// key blocks and walk the same query blocks in the same order. Of each MMA
// warpgroup's kDQSlice dQ columns, the CTA of rank r keeps half r: it adds the
// other CTA's part of those columns to its own and sends the sum into the fp32
// accumulator, and hands its part of the other half over. Every dQ value then
// leaves the pair once: half the reduce-add bytes of unpaired CTAs, which bound
// the head dim 256 kernel (benchmarks/results/2026-12-06c_h100_bwd_ncu.md).
//
// The hand-over lands in the keeper's shared memory, in the step's dO stage:
// the bytes of the warpgroup's dO column slice, which only its own dV GEMM
// reads. Per step t and warpgroup, each side of the pair:
//   once dV(t) is done: tells the peer its area is free (xfree_bar, relaxed);
//   once dQ(t) is done and the peer's area is free: pushes the half it gives
//     there (st.async, counted on the peer's xfull_bar), holds the half it keeps;
//   in step t + 1, once its P is computed (the hand-over's latency hidden): waits
//     for the peer's push, adds, sends, and only then releases the stage.
// No release fences: a release at cluster scope would wait for this thread's
// reduce-adds in flight to land, which put their latency into every step (the
// first version, with release/acquire arrivals, ran 31-40% slower than
// unpaired CTAs).
#pragma once

#include "jax_fa3/common/arch.h"

#include <cute/tensor.hpp>
#include <cute/arch/copy_sm90_desc.hpp>

namespace jax_fa3::bwd {

// Shared-window address of the same bytes in the CTA of cluster rank `peer`.
CUTE_DEVICE uint32_t peer_smem_addr(uint32_t local, uint32_t peer) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(peer));
  return remote;
}

template <class Traits>
struct DqPair {
  static constexpr int kValues = Traits::kBlockM * Traits::kDQSlice / 128;  // per thread
  static constexpr int kHalf = kValues / 2;
  static constexpr uint32_t kAreaBytes = 128 * kHalf * sizeof(float);
  static_assert(kHalf % 4 == 0, "the hand-over moves 4 values a store");
  // Thread tid's slot j (values 4j..4j+3 of its half) in a warpgroup's
  // hand-over area: [j][tid] float4s, so a warp's stores and loads are 512
  // contiguous bytes.
  static constexpr uint32_t kSlotStride = 128 * 16;
  static_assert(!Traits::kDQPaired || typename Traits::SmemLayoutQ{}(0, Traits::kDSlice, 1) ==
                    Traits::kBlockM * Traits::kHeadDim + Traits::kBlockM * Traits::kDSlice,
                "area() assumes a dO column slice is one contiguous range of its stage");

  float2 kept[kHalf / 2];  // this CTA's part of the kept half, until take()
  float* gdq = nullptr;    // the kept half's accumulator tile

  // The warpgroup's hand-over area in the stage's dO tile: its dV column
  // slice, kBlockM x kDSlice 16-bit values in atoms of 64 columns, each atom
  // column over all kBlockM rows contiguous (SmemLayoutQ's order).
  CUTE_DEVICE static uint32_t area(typename Traits::SharedStorage& ss, int stage, int wg) {
    return cute::cast_smem_ptr_to_uint(ss.dout.data() + stage * Traits::kBlockM * Traits::kHeadDim +
                                       wg * Traits::kBlockM * Traits::kDSlice);
  }

  // Step t, once dV(t) is done: the peer may push into this warpgroup's area.
  // One arrival per warp (xfree_bar counts 4): a warp's wgmma wait covers its
  // part of the warpgroup's GEMMs.
  CUTE_DEVICE static void mark_free(typename Traits::SharedStorage& ss, int stage, int wg, uint32_t rank) {
    __syncwarp();
    if (threadIdx.x % 32 == 0) {
      const uint32_t bar = peer_smem_addr(cute::cast_smem_ptr_to_uint(&ss.xfree_bar[stage][wg]), rank ^ 1u);
      asm volatile("mbarrier.arrive.relaxed.cluster.shared::cluster.b64 _, [%0];" :: "r"(bar) : "memory");
    }
  }

  // Step t, once dQ(t) is done: push the half of `frag` (kValues fp32, value
  // i at dq_offset's coordinates) that the peer keeps into its area, and hold
  // this CTA's half. Fragment indices must be compile-time constants (a
  // runtime index would put the fragment in local memory): one instance per
  // rank.
  template <class Frag>
  CUTE_DEVICE void give(typename Traits::SharedStorage& ss, const Frag& frag, int stage, int phase, int wg,
                        uint32_t rank, float* gdq_tile) {
    gdq = gdq_tile + rank * (Traits::kDQSlice / 2) * Traits::kBlockM;  // dq_tile_offset's column chunks
    wait_barrier(ss.xfree_bar[stage][wg], phase);
    if (rank == 0) {
      give_as<0>(ss, frag, stage, wg);
    } else {
      give_as<1>(ss, frag, stage, wg);
    }
  }

  // Step t + 1, after P (and after the walk): the peer's half of step t added to the
  // held one (collect; then the stage's hand-over area is free), and the sums
  // sent into the accumulator (send).
  CUTE_DEVICE void collect(typename Traits::SharedStorage& ss, int stage, int phase, int wg) {
    uint64_t& full = ss.xfull_bar[stage][wg];
    if (threadIdx.x % 128 == 0) set_barrier_transaction_bytes(full, kAreaBytes);
    wait_barrier(full, phase);
    const uint32_t mine = area(ss, stage, wg) + (threadIdx.x % 128) * 16;
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kHalf / 4; ++j) {
      float4 v;
      asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];"
                   : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(mine + j * kSlotStride) : "memory");
      kept[2 * j] = make_float2(kept[2 * j].x + v.x, kept[2 * j].y + v.y);
      kept[2 * j + 1] = make_float2(kept[2 * j + 1].x + v.z, kept[2 * j + 1].y + v.w);
    }
  }
  template <class AddPair>
  CUTE_DEVICE void send(AddPair&& add_pair) const {
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kHalf / 2; ++j) add_pair(gdq, 2 * j, kept[j]);
  }

 private:
  template <int kRank, class Frag>
  CUTE_DEVICE void give_as(typename Traits::SharedStorage& ss, const Frag& frag, int stage, int wg) {
    constexpr uint32_t peer = kRank ^ 1;
    constexpr int give = int(peer) * kHalf, keep = kRank * kHalf;
    const uint32_t theirs = peer_smem_addr(area(ss, stage, wg) + (threadIdx.x % 128) * 16, peer);
    const uint32_t bar = peer_smem_addr(cute::cast_smem_ptr_to_uint(&ss.xfull_bar[stage][wg]), peer);
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kHalf / 4; ++j) {
      const int i = give + 4 * j;
      asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];"
                   :: "r"(theirs + j * kSlotStride), "f"(frag(i)), "f"(frag(i + 1)), "f"(frag(i + 2)),
                      "f"(frag(i + 3)), "r"(bar) : "memory");
    }
    // Through an add of -0 (DqHeld::hold says why).
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kHalf / 2; ++j) {
      asm volatile("add.rn.f32 %0, %2, 0f80000000;\n\tadd.rn.f32 %1, %3, 0f80000000;"
                   : "=f"(kept[j].x), "=f"(kept[j].y) : "f"(frag(keep + 2 * j)), "f"(frag(keep + 2 * j + 1)));
    }
  }
};

}  // namespace jax_fa3::bwd
