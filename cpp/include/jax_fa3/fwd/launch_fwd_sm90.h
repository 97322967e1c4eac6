// Declaration of the forward launcher; its definition (the kernel) is in
// launch_fwd_sm90.hpp, included only by the generated instantiation files.
#pragma once

#include <cuda_runtime_api.h>

#include "jax_fa3/params.h"
#include "jax_fa3/tile_config.h"

namespace jax_fa3 {

// Element: cutlass::half_t or cutlass::bfloat16_t. kVariant: kMasked when the
// window cuts the seqlen_q x seqlen_k rectangle (mask_cuts() in params.h), else
// fwd_variant() in tile_config.h picks the key block width; partial tiles at
// the sequence ends are handled in every variant. kUnmaskedNarrow where
// fwd_has_narrow_unmasked() is false returns cudaErrorNotSupported.
template <class Element, int kHeadDim, FwdVariant kVariant>
cudaError_t run_fwd_sm90(const FwdParams& params, cudaStream_t stream);

}  // namespace jax_fa3
