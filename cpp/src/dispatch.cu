// The only place where runtime choices (dtype x head-dim bucket x mask, and
// for the forward the key block width, fwd_variant() in tile_config.h) become
// template parameters. The instantiations live in generated files, one per
// (family, dtype, head dim, variant), built only for the configured kernel set.
#include <cstdint>
#include <initializer_list>

#include <cutlass/numeric_types.h>

#include "jax_fa3/bwd/launch_bwd_sm90.h"
#include "jax_fa3/fwd/launch_fwd_sm90.h"
#include "jax_fa3/kernel_set.h"  // generated: JAX_FA3_KERNEL_SET
#include "jax_fa3/run.h"

// JAX_FA3_KERNEL_SET (from CMake) expands X(dtype_tag, Element, head_dim) once
// per compiled (dtype, head dim) pair.
#ifndef JAX_FA3_KERNEL_SET
#error "JAX_FA3_KERNEL_SET must be defined by the build"
#endif

namespace jax_fa3 {
bool kernels_compiled(Dtype dtype, int head_dim) {
  const int bucket = head_dim_bucket(head_dim);
#define JAX_FA3_COMPILED(tag, Element, hd) \
  if (dtype == Dtype::tag && bucket == hd) return true;
  JAX_FA3_KERNEL_SET(JAX_FA3_COMPILED)
#undef JAX_FA3_COMPILED
  return false;
}

// The kernels load Q, K, V (and dO, O) with TMA and write their outputs in
// 16-byte stores, both of which need 16-byte aligned tensors (XLA's buffers
// are); anything else is refused here instead of faulting in a kernel.
static bool aligned_16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

template <class Element, int kHeadDim>
static cudaError_t run_fwd_hd(const FwdParams& params, bool masked, cudaStream_t stream) {
  switch (fwd_variant<kHeadDim>(masked, params.problem.shape.seqlen_k)) {
    case FwdVariant::kMasked: return run_fwd_sm90<Element, kHeadDim, FwdVariant::kMasked>(params, stream);
    case FwdVariant::kUnmaskedNarrow: return run_fwd_sm90<Element, kHeadDim, FwdVariant::kUnmaskedNarrow>(params, stream);
    case FwdVariant::kUnmasked: return run_fwd_sm90<Element, kHeadDim, FwdVariant::kUnmasked>(params, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t run_fwd(const FwdParams& params, cudaStream_t stream) {
  if (!aligned_16({params.q, params.k, params.v, params.out})) return cudaErrorMisalignedAddress;
  const AttnProblem& p = params.problem;
  const bool masked = mask_cuts(p.shape, p.mask);
  const int bucket = head_dim_bucket(p.shape.head_dim);
#define JAX_FA3_FWD(tag, Element, hd)                                          \
  if (p.dtype == Dtype::tag && bucket == hd)                                   \
    return run_fwd_hd<Element, hd>(params, masked, stream);
  JAX_FA3_KERNEL_SET(JAX_FA3_FWD)
#undef JAX_FA3_FWD
  return cudaErrorNotSupported;
}

cudaError_t run_bwd(const BwdParams& params, cudaStream_t stream) {
  if (!aligned_16({params.q, params.k, params.v, params.out, params.dout, params.dq, params.dk, params.dv})) {
    return cudaErrorMisalignedAddress;
  }
  const AttnProblem& p = params.problem;
  const bool masked = mask_cuts(p.shape, p.mask);
  const int bucket = head_dim_bucket(p.shape.head_dim);
#define JAX_FA3_BWD(tag, Element, hd)                                          \
  if (p.dtype == Dtype::tag && bucket == hd)                                   \
    return masked ? run_bwd_sm90<Element, hd, true>(params, stream)            \
                  : run_bwd_sm90<Element, hd, false>(params, stream);
  JAX_FA3_KERNEL_SET(JAX_FA3_BWD)
#undef JAX_FA3_BWD
  return cudaErrorNotSupported;
}

}  // namespace jax_fa3
