// Definition of run_fwd_sm90 (declared in launch_fwd_sm90.h). Included only by
// the generated instantiation files (one per dtype x head dim x FwdVariant) and the
// dev harness, since it pulls in CuTe and the whole kernel. Each compiles two
// kernels, with and without the logit softcap.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cstdint>
#include <type_traits>
#include <cuda_runtime_api.h>
#include <cutlass/numeric_types.h>

#include "jax_fa3/fwd/kernel_fwd_sm90.hpp"
#include "jax_fa3/fwd/kernel_traits_fwd_sm90.hpp"
#include "jax_fa3/fwd/launch_fwd_sm90.h"
#include "jax_fa3/params.h"
#include "jax_fa3/run.h"

namespace jax_fa3 {

template <class Kernel>
cudaError_t launch_fwd_kernel(const FwdParams& params, cudaStream_t stream) {
  using Traits = typename Kernel::Traits;
  AttnShape const& s = params.problem.shape;
  if (s.head_dim <= 0 || s.head_dim > Traits::kHeadDim || s.head_dim % 8 != 0 || s.heads_kv <= 0 ||
      s.heads_q % s.heads_kv != 0 || s.batch < 0 || s.seqlen_q < 0 || s.seqlen_k < 0) {
    return cudaErrorInvalidValue;
  }
  // Alignment (16 bytes for TMA and the epilogue's stores) is checked once,
  // for both passes, in run_fwd / run_bwd (dispatch.cu).
  if (s.batch == 0 || s.seqlen_q == 0 || s.heads_q == 0) return cudaSuccess;
  // Tiles are numbered in an int.
  const int64_t num_tiles = (int64_t(s.seqlen_q) + Traits::kBlockM - 1) / Traits::kBlockM * s.heads_q * s.batch;
  if (num_tiles > INT32_MAX) return cudaErrorInvalidValue;

  DeviceInfo device;
  if (cudaError_t err = current_device_info(&device); err != cudaSuccess) return err;
  // TMA descriptors are encoded here, on the host, once per call.
  const typename Kernel::Params kernel_params = Kernel::to_params(params, device.l2_cache_bytes);
  if constexpr (std::is_same_v<typename Kernel::Scheduler, FwdDynamicScheduler>) {
    static_assert(FwdDynamicScheduler::kWorkspaceBytes <= kFwdWorkspaceBytes);
    if (params.workspace == nullptr) return cudaErrorInvalidValue;
    // The tile counter starts at zero (stream-ordered: graph-safe).
    if (cudaError_t err = cudaMemsetAsync(params.workspace, 0, FwdDynamicScheduler::kWorkspaceBytes, stream)) return err;
  }
  auto* kernel = &fwd_kernel_sm90<Kernel>;
  // Above 48 KB of dynamic shared memory a kernel must opt in; the call fails
  // (and we return its error) if the device cannot give that much.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Kernel::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid = Kernel::Scheduler::grid(kernel_params.scheduler, device.multiprocessor_count);
  kernel<<<grid, Kernel::kNumThreads, Kernel::kSmemBytes, stream>>>(kernel_params);
#if JAX_FA3_FWD_TIMELINE
  fwd_timeline_print_kernel<<<1, 1, 0, stream>>>();
#endif
  return cudaGetLastError();
}

template <class Element, int kHeadDim, FwdVariant kVariant>
cudaError_t run_fwd_sm90(const FwdParams& params, cudaStream_t stream) {
  // The generated file of a narrow unmasked variant that tile_config.h does
  // not enable compiles no kernel.
  if constexpr (kVariant == FwdVariant::kUnmaskedNarrow && !fwd_has_narrow_unmasked<kHeadDim>()) {
    return cudaErrorNotSupported;
  } else if constexpr (JAX_FA3_FWD_ABLATE_WARPSPEC && kVariant == FwdVariant::kMasked) {
    return cudaErrorNotSupported;
  } else {
    using Traits = FwdKernelTraitsSm90<Element, kHeadDim, kVariant>;
    return params.problem.softcap > 0.f ? launch_fwd_kernel<FwdKernelSm90<Traits, true>>(params, stream)
                                        : launch_fwd_kernel<FwdKernelSm90<Traits, false>>(params, stream);
  }
}

}  // namespace jax_fa3
