// Which (query block, head, batch) tiles a CTA computes, and in what order.
//
// The tiles are numbered once, in the order the GPU should work through them:
//   * L2 first: (batch, head) pairs are taken in chunks whose K/V fit in half
//     the L2 cache, so the CTAs running at any moment read the same few heads'
//     K/V and the copies come from L2, not HBM; GQA heads sharing K/V are
//     adjacent, so they share a chunk.
//   * Longest first inside a chunk: query blocks from the last to the first
//     (under a causal mask the last query rows see the most keys), so the long
//     tiles do not finish last alone.
//
// FwdPersistentScheduler: one CTA per SM; CTA c takes tile c of every round of
// gridDim.x tiles, with the order reversed on odd rounds ("snake"), so a CTA
// that got a long tile in one round gets a short one in the next and the
// static schedule stays balanced under causal masks. Producer and consumers
// walk the same sequence independently: no communication is needed.
//
// FwdSingleTileScheduler: one CTA per tile, in the same order (the hardware
// dispatches blockIdx.x in increasing order); kept for the ablation build.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cstdint>
#include <cuda_runtime_api.h>

namespace jax_fa3 {

struct FwdWorkTile {
  int m_block;
  int head;
  int batch;
};

// The tile numbering shared by both schedulers.
struct FwdTileOrder {
  int num_m_blocks;
  int heads;
  int batch;
  int heads_per_chunk;  // (batch, head) pairs whose K/V share L2 at once
  int num_tiles;

  // `kv_bytes_per_head`: K + V bytes of one (batch, kv head); `group`: query
  // heads per kv head.
  static FwdTileOrder make(int seqlen_q, int heads, int batch, int block_m, int group, int64_t kv_bytes_per_head,
                           int64_t l2_bytes) {
    FwdTileOrder o{};
    o.num_m_blocks = (seqlen_q + block_m - 1) / block_m;
    o.heads = heads;
    o.batch = batch;
    const int64_t kv_heads_in_l2 = kv_bytes_per_head > 0 ? (l2_bytes / 2) / kv_bytes_per_head : heads;
    const int64_t per_chunk = (kv_heads_in_l2 > 1 ? kv_heads_in_l2 : 1) * group;
    const int64_t pairs = int64_t(heads) * batch;
    o.heads_per_chunk = static_cast<int>(per_chunk < pairs ? per_chunk : pairs);
    o.num_tiles = static_cast<int>(int64_t(o.num_m_blocks) * heads * batch);
    return o;
  }

  JAX_FA3_HOST_DEVICE FwdWorkTile tile(int t) const {
    const int chunk_tiles = num_m_blocks * heads_per_chunk;
    const int chunk = t / chunk_tiles;
    const int r = t - chunk * chunk_tiles;
    const int pair0 = chunk * heads_per_chunk;
    const int pairs_left = heads * batch - pair0;
    const int chunk_pairs = pairs_left < heads_per_chunk ? pairs_left : heads_per_chunk;
    const int pair = pair0 + r % chunk_pairs;
    return FwdWorkTile{num_m_blocks - 1 - r / chunk_pairs, pair % heads, pair / heads};
  }
};

struct FwdPersistentScheduler {
  using Params = FwdTileOrder;

  static dim3 grid(Params const& p, int sm_count) {
    return dim3(static_cast<unsigned>(p.num_tiles < sm_count ? p.num_tiles : sm_count));
  }

  // The CTA's k-th tile is the tile of round k at position blockIdx.x, counted
  // from the other end on odd rounds.
  struct Iterator {
    int round = 0;
    CUTE_DEVICE int index() const {
      const int g = static_cast<int>(gridDim.x);
      const int c = static_cast<int>(blockIdx.x);
      return round * g + ((round & 1) ? g - 1 - c : c);
    }
    CUTE_DEVICE bool valid(Params const& p) const { return index() < p.num_tiles; }
    CUTE_DEVICE void advance() { ++round; }
  };
};

struct FwdSingleTileScheduler {
  using Params = FwdTileOrder;

  static dim3 grid(Params const& p, int /*sm_count*/) { return dim3(static_cast<unsigned>(p.num_tiles)); }

  struct Iterator {
    bool done = false;
    CUTE_DEVICE int index() const { return static_cast<int>(blockIdx.x); }
    CUTE_DEVICE bool valid(Params const&) const { return !done; }
    CUTE_DEVICE void advance() { done = true; }
  };
};

}  // namespace jax_fa3
