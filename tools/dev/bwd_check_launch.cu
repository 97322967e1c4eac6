// One of the backward harness's launches (bwd_check_launch.h): built by
// build_bwd_check.sh with -DBWD_CHECK_ELEMENT=<cutlass type>
// -DBWD_CHECK_HDIM=<head dim> -DBWD_CHECK_MASKED=<0|1>.
#include "bwd_check_launch.h"

#include <cutlass/numeric_types.h>

#include "jax_fa3/bwd/launch_bwd_sm90.hpp"

namespace bwd_check {

template <class Element, int kHeadDim, bool kMasked>
cudaError_t launch(const BwdParams& params, cudaStream_t stream) {
  return run_bwd_sm90<Element, kHeadDim, kMasked, typename Tile<kHeadDim>::type>(params, stream);
}

template cudaError_t launch<BWD_CHECK_ELEMENT, BWD_CHECK_HDIM, bool(BWD_CHECK_MASKED)>(const BwdParams&, cudaStream_t);

template <class Element, int kHeadDim, bool kMasked>
cudaError_t print_cta_times() {
#if JAX_FA3_BWD_CTA_TIMES
  jax_fa3::bwd::bwd_cta_times_print_kernel<<<1, 1>>>();
  return cudaDeviceSynchronize();
#else
  return cudaErrorNotSupported;
#endif
}

template cudaError_t print_cta_times<BWD_CHECK_ELEMENT, BWD_CHECK_HDIM, bool(BWD_CHECK_MASKED)>();

}  // namespace bwd_check
