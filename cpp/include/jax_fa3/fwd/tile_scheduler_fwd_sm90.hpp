// Which (query block, head, batch) tiles a CTA computes, and in what order.
//
// The tiles are numbered once, in the order the GPU should work through them
// (FwdTileOrder): (batch, head) pairs in chunks, GQA heads sharing K/V
// adjacent; inside a chunk query blocks from the last to the first (under a
// causal mask the last query rows see the most keys), pairs fastest, so the
// long tiles do not finish last alone.
//   * Without a mask and with equal tiles (seqlen_q a multiple of the tile
//     height), chunks of one pair: head by head, so the CTAs running at any
//     moment walk the K/V of a few heads in lockstep and each K/V block comes
//     from HBM about once. (Chunks of many heads made head dim 128 at 2k read
//     560 MB from HBM where Q, K and V are 201 MB, under Nsight Compute's
//     cold L2.)
//   * Otherwise chunks whose K/V fit in half the L2 cache; under a mask the
//     fewest such chunks, all of one size (give or take a GQA group). A small
//     last chunk (the remainder) put its long tiles at the very end, where
//     they ran nearly alone: the order simulated on 132 CTAs
//     (tools/dev/host_checks.cu) gave max/mean work per CTA 1.04-1.08 at head
//     dim 128 causal and 1.14-1.16 at 256 (1k-8k) with that remainder,
//     1.003-1.013 and 1.02-1.05 with equal chunks; measured +2-9% causal
//     (benchmarks/results/2026-12-05e_h100_fwd_chunks.md).
//
// Schedulers hand that sequence out to the CTAs. Both roles of a CTA walk it:
// the producer through a Producer, the consumer warpgroups through a Consumer;
// next() returns the CTA's next tile index, num_tiles or more when it is done.
//   FwdStaticScheduler (no mask): one CTA per SM; CTA c takes tile c of every
//     round of gridDim.x tiles, the order reversed on odd rounds ("snake").
//     Equal tiles need no more; the roles compute the sequence independently.
//   FwdDynamicScheduler (causal/local): tiles of unequal length balance only
//     dynamically: a CTA takes its first tile by blockIdx.x and every further
//     one from a global counter (an atomicAdd per tile), longest first. The
//     producer fetches the index and passes it to the consumers through a
//     2-slot ring in shared memory (mbarriers).
//   FwdSingleTileScheduler: one CTA per tile (the ablation build).
// tools/dev/host_checks.cu simulates both on the paper grid: under a causal
// mask at 16k the static snake leaves max/mean work per CTA at 1.20 (d128),
// the dynamic order at 1.05.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>
#include <cutlass/arch/barrier.h>

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
  int heads_per_chunk;  // (batch, head) pairs whose tiles are interleaved
  int num_tiles;
  // Masked kernels' chunks are all of one size: the first wide_chunks hold
  // heads_per_chunk + unit pairs (unit: a GQA group). Unmasked kernels (the
  // static snake: equal tiles balance in any order) keep full chunks and a
  // remainder: the arithmetic for equal chunks cost their head dim 128
  // kernel ~1% (H200, benchmarks/results/2026-12-05e_h100_fwd_chunks.md),
  // ptxas scheduling its softmax differently.
  int wide_chunks;
  int unit;

  // `kv_bytes_per_head`: K + V bytes of one (batch, kv head); `group`: query
  // heads per kv head; `masked`: a causal/local kernel (unequal tiles).
  static FwdTileOrder make(int seqlen_q, int heads, int batch, int block_m, int group, int64_t kv_bytes_per_head,
                           int64_t l2_bytes, bool masked) {
    FwdTileOrder o{};
    o.num_m_blocks = (seqlen_q + block_m - 1) / block_m;
    o.heads = heads;
    o.batch = batch;
    o.num_tiles = static_cast<int>(int64_t(o.num_m_blocks) * heads * batch);
    const int64_t kv_heads_in_l2 = kv_bytes_per_head > 0 ? (l2_bytes / 2) / kv_bytes_per_head : heads;
    const int64_t kv_heads_per_chunk = kv_heads_in_l2 > 1 ? kv_heads_in_l2 : 1;
    const int64_t pairs = int64_t(heads) * batch;
    if (masked) {
      // In (batch, kv head) pairs: a GQA group stays in one chunk.
      const int64_t kv_pairs = pairs / group;
      const int64_t per_chunk = kv_heads_per_chunk < kv_pairs ? kv_heads_per_chunk : kv_pairs;
      const int64_t chunks = kv_pairs > 0 ? (kv_pairs + per_chunk - 1) / per_chunk : 1;
      o.heads_per_chunk = static_cast<int>(kv_pairs / chunks * group);
      o.wide_chunks = static_cast<int>(kv_pairs % chunks);
      o.unit = group;
      return o;
    }
    const int64_t per_chunk = kv_heads_per_chunk * group;
    // Head by head only where the tiles are equal: with a partial last query
    // block per head (head dim 64's 192 rows at 512-1k) it put the short tiles
    // on a fixed set of CTAs of the static snake, and head dim 64 without a
    // mask lost 7% at 512-1k in the benchmark (2026-12-04_h200_bench.md
    // against 2026-12-03c).
    const bool head_by_head = seqlen_q % block_m == 0;
    o.heads_per_chunk = head_by_head ? 1 : static_cast<int>(per_chunk < pairs ? per_chunk : pairs);
    o.unit = 1;
    return o;
  }

  template <bool kEqualChunks>
  JAX_FA3_HOST_DEVICE FwdWorkTile tile(int t) const {
    int chunk_pairs, r, pair0;
    if constexpr (kEqualChunks) {
      const int wide_pairs = heads_per_chunk + unit;
      const int wide_tiles = wide_chunks * wide_pairs * num_m_blocks;
      const bool wide = t < wide_tiles;
      chunk_pairs = wide ? wide_pairs : heads_per_chunk;
      const int u = wide ? t : t - wide_tiles;
      const int chunk = u / (chunk_pairs * num_m_blocks);
      r = u - chunk * chunk_pairs * num_m_blocks;
      pair0 = (wide ? 0 : wide_tiles / num_m_blocks) + chunk * chunk_pairs;
    } else {
      const int chunk_tiles = num_m_blocks * heads_per_chunk;
      const int chunk = t / chunk_tiles;
      r = t - chunk * chunk_tiles;
      pair0 = chunk * heads_per_chunk;
      const int pairs_left = heads * batch - pair0;
      chunk_pairs = pairs_left < heads_per_chunk ? pairs_left : heads_per_chunk;
    }
    const int pair = pair0 + r % chunk_pairs;
    return FwdWorkTile{num_m_blocks - 1 - r / chunk_pairs, pair % heads, pair / heads};
  }
};

struct FwdStaticScheduler {
  struct Params {
    FwdTileOrder order;
  };
  struct SharedStorage {};

  static Params to_params(FwdTileOrder const& order, void* /*workspace*/) { return Params{order}; }
  static dim3 grid(Params const& p, int sm_count) {
    return dim3(static_cast<unsigned>(p.order.num_tiles < sm_count ? p.order.num_tiles : sm_count));
  }
  JAX_FA3_DEVICE static void init(SharedStorage&, int /*consumer_threads*/) {}

  // CTA `cta` of `ctas`: in round k, position cta of the round's ctas tiles,
  // counted from the other end on odd rounds.
  struct Walk {
    int cta;
    int ctas;
    int round = -1;
    JAX_FA3_HOST_DEVICE int next() {
      ++round;
      return round * ctas + ((round & 1) ? ctas - 1 - cta : cta);
    }
  };
  using Producer = Walk;
  using Consumer = Walk;
  JAX_FA3_DEVICE static Walk walk() { return Walk{static_cast<int>(blockIdx.x), static_cast<int>(gridDim.x)}; }
  JAX_FA3_DEVICE static Producer producer(Params const&, SharedStorage&) { return walk(); }
  JAX_FA3_DEVICE static Consumer consumer(Params const&, SharedStorage&) { return walk(); }
};

struct FwdDynamicScheduler {
  struct Params {
    FwdTileOrder order;
    int* counter;  // zero before the launch
  };
  struct SharedStorage {
    int tile[2];
    alignas(8) uint64_t full[2];   // the producer published a tile index
    alignas(8) uint64_t empty[2];  // every consumer thread has read it
  };

  // Bytes of the forward workspace the counter lives in.
  static constexpr size_t kWorkspaceBytes = sizeof(int);

  static Params to_params(FwdTileOrder const& order, void* workspace) {
    return Params{order, static_cast<int*>(workspace)};
  }
  static dim3 grid(Params const& p, int sm_count) {
    return dim3(static_cast<unsigned>(p.order.num_tiles < sm_count ? p.order.num_tiles : sm_count));
  }
  // Thread 0, before the CTA-wide barrier that publishes barrier inits.
  JAX_FA3_DEVICE static void init(SharedStorage& ss, int consumer_threads) {
    for (int i = 0; i < 2; ++i) {
      cutlass::arch::ClusterBarrier::init(&ss.full[i], 1);
      cutlass::arch::ClusterBarrier::init(&ss.empty[i], consumer_threads);
    }
  }

  // One thread: claims tile indices and publishes each, the final "done" one
  // included. A CTA claims its next tile only once it has issued the current
  // tile's last load, when its consumers are about kStages key blocks from
  // the end: claimed when the current tile started (as before), the tiles
  // went to the CTAs a tile late, and longest-first lost its balance. The
  // tile order simulated on 132 CTAs (max/mean work per CTA, causal, 16k
  // tokens): head dim 128 at 4k-16k 1.064-1.080 claimed at the start,
  // 1.039-1.046 claimed two key blocks before the end; the one-CTA-per-tile
  // build, which the hardware hands tiles as CTAs finish, ran 1-3% faster
  // there (benchmarks/results/2026-12-05d_h100_fwd_ablation.md). The
  // atomic's latency is hidden under those last blocks.
  struct Producer {
    Params const& params;
    SharedStorage& ss;
    int published = 0;
    JAX_FA3_DEVICE int next() {
      const int tile = published == 0 ? static_cast<int>(blockIdx.x)
                                       : atomicAdd(params.counter, 1) + static_cast<int>(gridDim.x);
      const int slot = published % 2;
      cutlass::arch::ClusterBarrier::wait(&ss.empty[slot], ((published / 2) & 1) ^ 1);
      ss.tile[slot] = tile;
      cutlass::arch::ClusterBarrier::arrive(&ss.full[slot]);
      ++published;
      return tile;
    }
  };
  struct Consumer {
    SharedStorage& ss;
    int taken = 0;
    JAX_FA3_DEVICE int next() {
      const int slot = taken % 2;
      cutlass::arch::ClusterBarrier::wait(&ss.full[slot], (taken / 2) & 1);
      const int tile = ss.tile[slot];
      cutlass::arch::ClusterBarrier::arrive(&ss.empty[slot]);
      ++taken;
      return tile;
    }
  };
  JAX_FA3_DEVICE static Producer producer(Params const& p, SharedStorage& ss) {
    return Producer{p, ss};
  }
  JAX_FA3_DEVICE static Consumer consumer(Params const&, SharedStorage& ss) { return Consumer{ss}; }
};

struct FwdSingleTileScheduler {
  struct Params {
    FwdTileOrder order;
  };
  struct SharedStorage {};

  static Params to_params(FwdTileOrder const& order, void* /*workspace*/) { return Params{order}; }
  static dim3 grid(Params const& p, int /*sm_count*/) { return dim3(static_cast<unsigned>(p.order.num_tiles)); }
  JAX_FA3_DEVICE static void init(SharedStorage&, int) {}

  struct Walk {
    int tile;
    int num_tiles;
    bool done = false;
    JAX_FA3_HOST_DEVICE int next() {
      const int t = done ? num_tiles : tile;
      done = true;
      return t;
    }
  };
  using Producer = Walk;
  using Consumer = Walk;
  JAX_FA3_DEVICE static Walk walk(Params const& p) { return Walk{static_cast<int>(blockIdx.x), p.order.num_tiles}; }
  JAX_FA3_DEVICE static Producer producer(Params const& p, SharedStorage&) { return walk(p); }
  JAX_FA3_DEVICE static Consumer consumer(Params const& p, SharedStorage&) { return walk(p); }
};

}  // namespace jax_fa3
