// Ping-pong scheduling of consumer warpgroups ("warp scheduler barriers").
//
// The tensor cores run one warpgroup's wgmmas at a time. When the consumer
// warpgroups take turns issuing theirs, warpgroup A's softmax (MUFU/FMA work)
// runs while warpgroup B's GEMMs occupy the tensor cores, and vice versa.
// Each warpgroup owns a named barrier; a turn is
//   wait_mine(): bar.sync on my barrier (128 own threads + 128 arrivals of
//                the warpgroup before me),
//   ...issue GEMMs...
//   pass():      bar.arrive on the next warpgroup's barrier.
// The last warpgroup arrives once up front so warpgroup 0 goes first, and
// warpgroup 0 consumes the last warpgroup's final pass at the end, so no
// arrival is left pending when the CTA exits.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>

namespace jax_fa3 {

// Named-barrier ids (cutlass offsets them past its reserved ids).
enum class FwdNamedBarrier : uint32_t {
  kWarpgroupTurn0 = 0,  // + consumer warpgroup index (up to 3)
};

template <int kWarpgroups, bool kEnabled>
struct WarpgroupTurns {
  int warpgroup;  // consumer warpgroup index, 0-based

  static constexpr uint32_t kThreads = 2 * cutlass::NumThreadsPerWarpGroup;

  CUTE_DEVICE static uint32_t barrier_of(int wg) {
    return static_cast<uint32_t>(FwdNamedBarrier::kWarpgroupTurn0) + static_cast<uint32_t>(wg);
  }
  CUTE_DEVICE void start() const {
    if constexpr (kEnabled) {
      if (warpgroup == kWarpgroups - 1) cutlass::arch::NamedBarrier::arrive(kThreads, barrier_of(0));
    }
  }
  CUTE_DEVICE void wait_mine() const {
    if constexpr (kEnabled) cutlass::arch::NamedBarrier::sync(kThreads, barrier_of(warpgroup));
  }
  CUTE_DEVICE void pass() const {
    if constexpr (kEnabled) {
      cutlass::arch::NamedBarrier::arrive(kThreads, barrier_of(warpgroup + 1 == kWarpgroups ? 0 : warpgroup + 1));
    }
  }
  CUTE_DEVICE void finish() const {
    if constexpr (kEnabled) {
      if (warpgroup == 0) cutlass::arch::NamedBarrier::sync(kThreads, barrier_of(0));
    }
  }
};

}  // namespace jax_fa3
