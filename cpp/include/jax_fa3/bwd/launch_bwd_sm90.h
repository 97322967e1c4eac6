// Declaration of the backward launcher; its definition (the kernel) is in
// launch_bwd_sm90.hpp, included only by the generated instantiation files.
#pragma once

#include <cuda_runtime_api.h>

#include "jax_fa3/params.h"
#include "jax_fa3/tile_config.h"

namespace jax_fa3 {

// Element: cutlass::half_t or cutlass::bfloat16_t. kMasked: the window cuts
// the seqlen_q x seqlen_k rectangle (mask_cuts() in params.h); partial tiles at
// the sequence ends are handled in both variants. Tile: the key block and the
// walks (tile_config.h's row; the dev harness passes candidates).
template <class Element, int kHeadDim, bool kMasked, class Tile = BwdTile<kHeadDim>>
cudaError_t run_bwd_sm90(const BwdParams& params, cudaStream_t stream);

}  // namespace jax_fa3
