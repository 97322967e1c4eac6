// Host entry points of the CUDA kernels. The FFI layer sees only this header
// and params.h, never CuTe.
#pragma once

#include <cuda_runtime_api.h>

#include "jax_fa3/params.h"

namespace jax_fa3 {

// The kernel head-dim bucket that serves `head_dim` (64, 96, 128, 192, 256), or
// 0 when head_dim > 256.
constexpr int head_dim_bucket(int head_dim) {
  return head_dim <= 64    ? 64
         : head_dim <= 96  ? 96
         : head_dim <= 128 ? 128
         : head_dim <= 192 ? 192
         : head_dim <= 256 ? 256
                           : 0;
}

// Whether this build compiled the kernels for (dtype, bucket of head_dim); the
// kernel set can be restricted at build time (JAX_FA3_HEAD_DIMS/JAX_FA3_DTYPES).
bool kernels_compiled(Dtype dtype, int head_dim);

// The current device's properties, queried once per device and cached.
struct DeviceInfo {
  int major;
  int minor;
  int multiprocessor_count;
  int max_smem_per_block_optin;
  int l2_cache_bytes;
};
cudaError_t current_device_info(DeviceInfo* info);

// Enqueue the forward / backward on `stream`. No host synchronisation, no
// allocation: safe inside CUDA graphs.
cudaError_t run_fwd(const FwdParams& params, cudaStream_t stream);
cudaError_t run_bwd(const BwdParams& params, cudaStream_t stream);

// Bytes of BwdParams::workspace the backward needs for this problem.
size_t bwd_workspace_bytes(const AttnShape& shape, bool deterministic);

}  // namespace jax_fa3
