// The device properties the launchers size their grids and schedules with,
// queried once per device (cudaDeviceGetAttribute is cheap, but the handlers
// run on every call).
#include <mutex>
#include <vector>

#include "jax_fa3/run.h"

namespace jax_fa3 {

cudaError_t current_device_info(DeviceInfo* info) {
  static std::mutex mutex;
  static std::vector<DeviceInfo> cache;  // by device ordinal; major < 0: not queried
  int device = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  std::lock_guard<std::mutex> lock(mutex);
  if (static_cast<int>(cache.size()) <= device) cache.resize(device + 1, DeviceInfo{-1, 0, 0, 0, 0});
  DeviceInfo& entry = cache[device];
  if (entry.major < 0) {
    DeviceInfo queried{};
    cudaError_t err = cudaDeviceGetAttribute(&queried.major, cudaDevAttrComputeCapabilityMajor, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&queried.minor, cudaDevAttrComputeCapabilityMinor, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&queried.multiprocessor_count, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&queried.max_smem_per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&queried.l2_cache_bytes, cudaDevAttrL2CacheSize, device);
    if (err != cudaSuccess) return err;
    entry = queried;
  }
  *info = entry;
  return cudaSuccess;
}

}  // namespace jax_fa3
