// Which (query block, head, batch) tile a CTA computes. One CTA per tile for
// now; a persistent scheduler (grid = #SMs, tiles fetched in a loop) can replace
// this struct without touching the kernel body, which only calls get_tile().
#pragma once

#include "jax_fa3/common/arch.h"

#include <cuda_runtime_api.h>

namespace jax_fa3 {

struct FwdSingleTileScheduler {
  struct Params {
    int num_m_blocks;
    int heads;
    int batch;
  };

  struct WorkTile {
    int m_block;
    int head;
    int batch;
  };

  static Params to_params(int seqlen_q, int heads, int batch, int block_m) {
    return Params{(seqlen_q + block_m - 1) / block_m, heads, batch};
  }

  static dim3 grid(Params const& p) {
    return dim3(static_cast<unsigned>(p.num_m_blocks), static_cast<unsigned>(p.heads),
                static_cast<unsigned>(p.batch));
  }

  // Blocks are dispatched in blockIdx.x order first; handing out the last query
  // blocks first starts the longest tiles (under a causal mask, the last rows
  // see the most keys) early, so they do not finish last alone on the GPU.
  __device__ static WorkTile get_tile(Params const& p) {
    return WorkTile{p.num_m_blocks - 1 - static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y),
                    static_cast<int>(blockIdx.z)};
  }
};

}  // namespace jax_fa3
