// Thread block clusters along x (the forward's CTA pairs, tile_config.h
// kClusterM): where a CTA sits in its cluster, and a release of a stage on a
// barrier in another CTA of it.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cstdint>
#include <cute/arch/cluster_sm90.hpp>
#include <cute/arch/util.hpp>

namespace jax_fa3 {

struct ClusterPlace {
  int rank;  // of this CTA in its cluster
  int ctas;  // in the cluster: the launch's choice, 1..kMaxCtas

  // kMaxCtas 1 (a kernel never launched in clusters): no special register
  // reads, so such a kernel compiles as it did before clusters existed.
  template <int kMaxCtas>
  CUTE_DEVICE static ClusterPlace here() {
    if constexpr (kMaxCtas == 1) {
      return ClusterPlace{0, 1};
    } else {
      return ClusterPlace{static_cast<int>(cute::block_rank_in_cluster()), static_cast<int>(cute::cluster_shape().x)};
    }
  }
  // A TMA multicast to every CTA of the cluster.
  CUTE_DEVICE uint16_t multicast_mask() const { return static_cast<uint16_t>((1u << ctas) - 1u); }
};

// Arrives on the mbarrier at `barrier`'s offset in CTA `cta` of the cluster
// when `pred` holds. Predicated instructions, not a branch: a divergent branch
// in the consumer warps makes ptxas treat their later shuffles as divergent
// code (benchmarks/notes.md, 2026-12-05f).
CUTE_DEVICE void cluster_arrive_if(uint64_t* barrier, int cta, bool pred) {
  const uint32_t addr = cute::cast_smem_ptr_to_uint(barrier);
  asm volatile(
      "{\n\t"
      ".reg .pred p;\n\t"
      ".reg .b32 remote;\n\t"
      "setp.ne.b32 p, %2, 0;\n\t"
      "@p mapa.shared::cluster.u32 remote, %0, %1;\n\t"
      "@p mbarrier.arrive.shared::cluster.b64 _, [remote];\n\t"
      "}"
      :
      : "r"(addr), "r"(cta), "r"(static_cast<int>(pred))
      : "memory");
}

}  // namespace jax_fa3
