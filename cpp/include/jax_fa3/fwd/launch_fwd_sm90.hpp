// Definition of run_fwd_sm90 (declared in launch_fwd_sm90.h). Included only by
// the generated instantiation files (one per dtype x head dim x FwdVariant) and the
// dev harness, since it pulls in CuTe and the whole kernel.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <cuda_runtime_api.h>
#include <cutlass/numeric_types.h>

#include "jax_fa3/fwd/kernel_fwd_sm90.hpp"
#include "jax_fa3/fwd/kernel_traits_fwd_sm90.hpp"
#include "jax_fa3/fwd/launch_fwd_sm90.h"
#include "jax_fa3/params.h"
#include "jax_fa3/run.h"

namespace jax_fa3 {

// A launch of `ctas` CTAs in clusters of `cluster_ctas` along x; the config
// points at `attr`, which holds the cluster shape.
inline cudaLaunchConfig_t cluster_launch_config(unsigned ctas, int threads, int smem_bytes, cudaStream_t stream,
                                                int cluster_ctas, cudaLaunchAttribute* attr) {
  *attr = cudaLaunchAttribute{};
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = cluster_ctas;
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(ctas);
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = 1;
  return config;
}

// How many clusters of `cluster_ctas` CTAs of `kernel` fit on the current
// device at once (its GPCs decide; not SMs / cluster_ctas), queried once per
// (device, kernel, cluster size).
template <class KernelFn>
cudaError_t max_active_clusters(KernelFn kernel, int threads, int smem_bytes, int cluster_ctas, int* count) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int>, int> cache;
  int device = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  const auto key = std::make_tuple(device, reinterpret_cast<const void*>(kernel), cluster_ctas);
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = cache.find(key); it != cache.end()) {
    *count = it->second;
    return cudaSuccess;
  }
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t config = cluster_launch_config(cluster_ctas, threads, smem_bytes, nullptr, cluster_ctas, &attr);
  if (cudaError_t err = cudaOccupancyMaxActiveClusters(count, kernel, &config); err != cudaSuccess) return err;
  cache[key] = *count;
  return cudaSuccess;
}

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
  auto* kernel = &fwd_kernel_sm90<Kernel>;
  // Above 48 KB of dynamic shared memory a kernel must opt in; the call fails
  // (and we return its error) if the device cannot give that much.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Kernel::kSmemBytes);
  if (err != cudaSuccess) return err;
  // CTA pairs (Traits::kClusterM) where every head's query blocks pair up:
  // an odd last block would leave its partner idle for a whole tile.
  int cluster_ctas = 1, max_clusters = 0;
  if constexpr (Traits::kClusterM > 1) {
    const int64_t m_blocks = (int64_t(s.seqlen_q) + Traits::kBlockM - 1) / Traits::kBlockM;
    if (m_blocks % Traits::kClusterM == 0) {
      err = max_active_clusters(kernel, Kernel::kNumThreads, Kernel::kSmemBytes, Traits::kClusterM, &max_clusters);
      if (err != cudaSuccess) return err;
      if (max_clusters > 0) cluster_ctas = Traits::kClusterM;
    }
  }
  // TMA descriptors are encoded here, on the host, once per call.
  const typename Kernel::Params kernel_params = Kernel::to_params(params, device.l2_cache_bytes, cluster_ctas);
  if constexpr (std::is_same_v<typename Kernel::Scheduler, FwdDynamicScheduler>) {
    static_assert(FwdDynamicScheduler::kWorkspaceBytes <= kFwdWorkspaceBytes);
    if (params.workspace == nullptr) return cudaErrorInvalidValue;
    // The tile counter starts at zero (stream-ordered: graph-safe).
    if (cudaError_t err = cudaMemsetAsync(params.workspace, 0, FwdDynamicScheduler::kWorkspaceBytes, stream)) return err;
  }
  if constexpr (Traits::kClusterM > 1) {
    // One cluster (of 1 or 2 CTAs) per tile of the order, at most as many as
    // run at once.
    const int slots = cluster_ctas > 1 ? max_clusters : device.multiprocessor_count;
    const int clusters = kernel_params.scheduler.order.num_tiles < slots ? kernel_params.scheduler.order.num_tiles : slots;
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t config = cluster_launch_config(static_cast<unsigned>(clusters * cluster_ctas),
                                                            Kernel::kNumThreads, Kernel::kSmemBytes, stream,
                                                            cluster_ctas, &attr);
    if (err = cudaLaunchKernelEx(&config, kernel, kernel_params); err != cudaSuccess) return err;
  } else {
    const dim3 grid = Kernel::Scheduler::grid(kernel_params.scheduler, device.multiprocessor_count);
    kernel<<<grid, Kernel::kNumThreads, Kernel::kSmemBytes, stream>>>(kernel_params);
  }
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
    return launch_fwd_kernel<FwdKernelSm90<FwdKernelTraitsSm90<Element, kHeadDim, kVariant>>>(params, stream);
  }
}

}  // namespace jax_fa3
