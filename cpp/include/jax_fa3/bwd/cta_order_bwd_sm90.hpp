// The order of the backward main kernel's CTAs (plain C++: host checks
// include it without CuTe).
#pragma once

#include "jax_fa3/common/arch.h"

namespace jax_fa3::bwd {

// The order of the deterministic mode's CTAs (under a mask, and without one
// where BwdTile's row says so): CTA `linear`
// computes key block n_block of (batch, kv head) pair `pair`. The GPU starts
// CTAs in linear order, and in the deterministic mode a CTA waits for the
// CTAs of its pair with lower key blocks (their dQ turns), so those come
// first. The other kernels run key blocks fastest (blockIdx = (key block, kv
// head, batch)): their CTAs in flight share one head's Q, dO and dQ
// accumulator in L2. Here chunks of `chunk_pairs` pairs run with the key
// blocks slowest inside a chunk: with key blocks fastest a head's CTAs ran
// side by side and waited for each other's turns; across heads they do not
// wait, and the long CTAs (low key blocks, under a causal mask) start first.
// A chunk holds about `waves` waves of CTAs (tile_config.h). Measured, causal
// (4 waves): +9-27% at head dims 64 and 256, +8-11% at 128 from 2k to 8k (-2%
// at 16k); the fast mode ran 5-30% slower at head dim 256 in such orders (the
// CTAs of many heads in flight share less in L2), so it keeps the default
// (benchmarks/results/2026-12-04d_h200_schedules.md).
struct BwdCtaOrder {
  int n_blocks;     // key blocks per (batch, kv head)
  int heads_kv;
  int pairs;        // batch * heads_kv
  int chunk_pairs;

  static BwdCtaOrder make(int n_blocks, int heads_kv, int batch, int sm_count, int waves) {
    const int pairs = heads_kv * batch;
    int chunk = n_blocks > 0 ? (waves * sm_count + n_blocks - 1) / n_blocks : 1;
    chunk = chunk < pairs ? chunk : pairs;
    return BwdCtaOrder{n_blocks, heads_kv, pairs, chunk > 1 ? chunk : 1};
  }
  int num_ctas() const { return n_blocks * pairs; }

  struct Cta {
    int n_block, hkv, b;
  };
  JAX_FA3_HOST_DEVICE Cta cta(int linear) const {
    const int chunk = linear / (chunk_pairs * n_blocks);
    const int r = linear - chunk * chunk_pairs * n_blocks;
    const int first_pair = chunk * chunk_pairs;
    const int in_chunk = pairs - first_pair < chunk_pairs ? pairs - first_pair : chunk_pairs;
    const int pair = first_pair + r % in_chunk;
    return Cta{r / in_chunk, pair % heads_kv, pair / heads_kv};
  }
};

}  // namespace jax_fa3::bwd
