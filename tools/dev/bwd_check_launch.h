// The backward harness's launches (tools/dev/bwd_check.cu), compiled one per
// (dtype, head dim, mask) in tools/dev/bwd_check_launch.cu like the library's
// generated files: a head dim 128 harness build with both masks' kernels in
// one translation unit spilled 4 bytes in a kernel that the library's build
// compiles without (benchmarks/notes.md, 2026-12-05c), so the harness would
// have timed other code than the library runs.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

#include "jax_fa3/bwd/launch_bwd_sm90.h"
#include "jax_fa3/bwd/workspace_bwd.h"
#include "jax_fa3/params.h"
#include "jax_fa3/run.h"
#include "jax_fa3/tile_config.h"

namespace bwd_check {

using namespace jax_fa3;

// A candidate walk for head dim 128 under measurement, in both modes, under
// every mask and at every walk length instead of BwdTile<128>'s:
// BwdWalk<BWD_CHECK_WALK128_M, 2, BWD_CHECK_WALK128_DQT> (nvcc reads commas in -D values as list separators, hence two macros; e.g.
// -DBWD_CHECK_WALK128_M=80 -DBWD_CHECK_WALK128_DQT=1), run by the library's
// launcher (checks, mode and CTA order as for the library's row).
template <int kHeadDim>
struct Tile {
  using type = BwdTile<kHeadDim>;
};
#ifdef BWD_CHECK_WALK128_M
struct CandidateTile128 : BwdTile<128> {
  template <bool, bool = false> using Fast = BwdWalk<BWD_CHECK_WALK128_M, 2, bool(BWD_CHECK_WALK128_DQT)>;
  template <bool kMasked, bool kLong = false> using Deterministic = Fast<kMasked, kLong>;
};
template <>
struct Tile<128> {
  using type = CandidateTile128;
};
#endif

// The workspace the launches below need: the library's, but for a candidate
// whose query blocks differ from it.
inline size_t workspace_bytes(const AttnShape& shape, bool deterministic) {
#ifdef BWD_CHECK_WALK128_M
  if (head_dim_bucket(shape.head_dim) == 128) {
    return bwd_workspace_bytes_for<128, CandidateTile128>(shape, deterministic);
  }
#endif
  return bwd_workspace_bytes(shape, deterministic);
}

// run_bwd_sm90 with Tile<kHeadDim>; defined in bwd_check_launch.cu.
template <class Element, int kHeadDim, bool kMasked>
cudaError_t launch(const BwdParams& params, cudaStream_t stream);

// Prints the CTA times of the last main-kernel launch of this translation
// unit (built with -DJAX_FA3_BWD_CTA_TIMES=1; cta_times_bwd_sm90.hpp), else
// cudaErrorNotSupported.
template <class Element, int kHeadDim, bool kMasked>
cudaError_t print_cta_times();

}  // namespace bwd_check
