// Dev-only forward timeline (JAX_FA3_FWD_TIMELINE=1, dev harness builds only;
// the library build never sets it): every consumer warp stamps the SM clock at
// the schedule's events (tile start, Q ready, turn, GEMMs issued, S ready,
// softmax done, epilogue start/end) into its CTA's shared memory; CTA 0 of
// launch kLaunchToPrint copies its stamps out and a one-thread kernel prints
// them ("TL warp event clock") for tools/dev/fwd_timeline.py. Needs
// kWarps x 1 KB of shared memory that head dim 256 does not have free.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cstdint>
#include <cstdio>
#include <cute/tensor.hpp>

#ifndef JAX_FA3_FWD_TIMELINE
#define JAX_FA3_FWD_TIMELINE 0
#endif

namespace jax_fa3 {

enum class FwdEvent : uint32_t {
  kTileStart = 0, kQReady, kTurn, kIssued, kSReady, kSoftmaxDone, kEpilogueStart, kEpilogueEnd
};

template <int kWarps_>
struct FwdTimeline {
  static constexpr int kWarps = kWarps_, kEvents = 256, kLaunchToPrint = 20;
#if JAX_FA3_FWD_TIMELINE
  uint32_t stamp[kWarps][kEvents];
  uint32_t count[kWarps];
  uint32_t launch;
#endif
};

#if JAX_FA3_FWD_TIMELINE
// A printf (a function call) in the kernel would serialise its wgmmas (ptxas
// C7510): the stamps go to shared memory without branches, CTA 0 copies them
// to these globals at its end, and a one-thread kernel prints them.
static __device__ unsigned jax_fa3_fwd_timeline_launches;
constexpr int kTimelineMaxWarps = 16, kTimelineMaxEvents = 256;
static __device__ uint32_t jax_fa3_fwd_timeline_stamp[kTimelineMaxWarps][kTimelineMaxEvents];
static __device__ uint32_t jax_fa3_fwd_timeline_count[kTimelineMaxWarps];

template <class Timeline>
CUTE_DEVICE void timeline_init(Timeline& tl) {
  static_assert(Timeline::kWarps <= kTimelineMaxWarps && Timeline::kEvents <= kTimelineMaxEvents);
  for (int w = 0; w < Timeline::kWarps; ++w) tl.count[w] = 0;
  tl.launch = blockIdx.x == 0 ? atomicAdd(&jax_fa3_fwd_timeline_launches, 1u) : 0u;
}
// No branch: a branch with a wgmma in flight can make ptxas serialise them.
template <class Timeline>
CUTE_DEVICE void timeline_stamp(Timeline& tl, FwdEvent event) {
  const int warp = threadIdx.x / 32;
  const uint32_t n = tl.count[warp];
  tl.stamp[warp][n < Timeline::kEvents ? n : Timeline::kEvents - 1] =
      (uint32_t(clock64()) & ~7u) | uint32_t(event);
  tl.count[warp] = n + 1;
}
template <class Timeline>
CUTE_DEVICE void timeline_flush(Timeline& tl) {
  const int warp = threadIdx.x / 32;
  if (blockIdx.x != 0 || (threadIdx.x & 31) != 0 || tl.launch != Timeline::kLaunchToPrint) return;
  const uint32_t n = tl.count[warp] < Timeline::kEvents ? tl.count[warp] : Timeline::kEvents;
  for (uint32_t i = 0; i < n; ++i) jax_fa3_fwd_timeline_stamp[warp][i] = tl.stamp[warp][i];
  jax_fa3_fwd_timeline_count[warp] = n;
}
static __global__ void fwd_timeline_print_kernel() {
  for (int w = 0; w < kTimelineMaxWarps; ++w) {
    for (uint32_t i = 0; i < jax_fa3_fwd_timeline_count[w]; ++i) {
      const uint32_t v = jax_fa3_fwd_timeline_stamp[w][i];
      printf("TL %d %u %u\n", w, v & 7u, v & ~7u);
    }
    jax_fa3_fwd_timeline_count[w] = 0;
  }
}
#else
template <class Timeline> CUTE_DEVICE void timeline_init(Timeline&) {}
template <class Timeline> CUTE_DEVICE void timeline_stamp(Timeline&, FwdEvent) {}
template <class Timeline> CUTE_DEVICE void timeline_flush(Timeline&) {}
#endif

}  // namespace jax_fa3
