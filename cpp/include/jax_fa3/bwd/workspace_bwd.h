// Carving of BwdParams::workspace, in one place: bwd_workspace_bytes() sizes
// it with this struct and the launcher finds its pieces with the same struct.
// Plain C++ (no CUDA types) so host-only code can include it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "jax_fa3/common/arch.h"
#include "jax_fa3/params.h"
#include "jax_fa3/tile_config.h"

namespace jax_fa3 {

struct BwdWorkspace {
  // Query rows rounded up to whole kBlockM tiles: the main kernel reads the
  // per-row terms and reduces dq one full tile at a time, never bounds-checked.
  int64_t m_blocks;
  int64_t rows;
  size_t lse2_offset;      // float [batch, heads_q, rows]: lse * log2(e); +inf where P must be 0
  size_t dpsum_offset;     // float [batch, heads_q, rows]: D = rowsum(dO * O) - dlse
  size_t dq_accum_offset;  // float [batch, heads_q, m_blocks, tile (dq_tile_offset)]: fp32 dq sums
  size_t dq_sem_offset;    // int [batch, heads_q, m_blocks]: deterministic dq order (0 bytes otherwise)
  size_t dq_accum_bytes;
  size_t dq_sem_bytes;
  size_t total_bytes;

  static constexpr size_t kAlign = 256;

  // Offset (floats) of row `row`, column `col` inside one query block's fp32
  // dq tile (block_m rows x head-dim-bucket columns), the same in the main
  // kernel's smem tile and in the workspace accumulator, which receives the
  // tile byte for byte: chunks of 8 columns, each chunk's block_m rows
  // contiguous ([bucket / 8][block_m][8]). A warp stores its part of a wgmma
  // accumulator as 8 consecutive rows of one chunk per instruction, 256
  // contiguous bytes (no bank conflicts), and each MMA warpgroup's column
  // slice (a multiple of 8 columns) is one contiguous range that the dQ
  // writer reduces as soon as that warpgroup is done.
  JAX_FA3_HOST_DEVICE static constexpr int dq_tile_offset(int block_m, int row, int col) {
    return (col / 8) * (block_m * 8) + row * 8 + col % 8;
  }
  // The tile of the walks whose warpgroups reduce-add their dQ part from
  // registers (64 rows, the MMA warpgroups' column slices of `slice` columns
  // side by side): in the order of the wgmma accumulator fragment, so that a
  // thread's four values of one 8-column group (rows r, r + 8 x columns c,
  // c + 1) are 16 contiguous bytes and its groups lie at fixed distances from
  // one base: [slice][column group][warp][lane][4]. One 128-bit reduce-add per
  // group at an immediate offset, where the row-major tile took a 64-bit one
  // per pair with its own address arithmetic
  // (benchmarks/results/2026-12-06h_h100_bwd_ncu_instructions.md).
  JAX_FA3_HOST_DEVICE static constexpr int dq_fragment_offset(int slice, int row, int col) {
    const int in_slice = col % slice;
    const int lane = (row % 8) * 4 + (in_slice % 8) / 2;
    return (col / slice) * (64 * slice) + (in_slice / 8) * kDqFragmentGroupFloats + (row / 16) * 128 + lane * 4 +
           ((row % 16) / 8) * 2 + in_slice % 2;
  }
  // In that layout, thread `tid` of MMA warpgroup `wg` (wgmma accumulator
  // rows 16 (tid / 32) + (tid % 32) / 4 [+ 8], columns 2 (tid % 4) [+ 1] of
  // each group) finds its first group here, and group g g * 512 floats on.
  static constexpr int kDqFragmentGroupFloats = 512;
  JAX_FA3_HOST_DEVICE static constexpr int dq_fragment_thread_offset(int slice, int wg, int tid) {
    return wg * (64 * slice) + (tid / 32) * 128 + (tid % 32) * 4;
  }
  JAX_FA3_HOST_DEVICE static size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

  JAX_FA3_HOST_DEVICE static BwdWorkspace make(const AttnShape& s, bool deterministic, int block_m,
                                               int head_dim_bucket) {
    BwdWorkspace w{};
    w.m_blocks = (static_cast<int64_t>(s.seqlen_q) + block_m - 1) / block_m;
    w.rows = w.m_blocks * block_m;
    const size_t row_terms = static_cast<size_t>(s.batch) * s.heads_q * w.rows;
    size_t off = 0;
    w.lse2_offset = off;
    off = align_up(off + row_terms * sizeof(float));
    w.dpsum_offset = off;
    off = align_up(off + row_terms * sizeof(float));
    w.dq_accum_offset = off;
    w.dq_accum_bytes = row_terms * head_dim_bucket * sizeof(float);
    off = align_up(off + w.dq_accum_bytes);
    w.dq_sem_offset = off;
    w.dq_sem_bytes = deterministic ? static_cast<size_t>(s.batch) * s.heads_q * w.m_blocks * sizeof(int) : 0;
    off = align_up(off + w.dq_sem_bytes);
    w.total_bytes = off;
    return w;
  }
};

// The row-parallel side kernels (preprocess, convert): a row's 16-byte chunks
// (8 elements of O/dO/dq; head_dim <= kHeadDim, a multiple of 8) go to
// kLanesPerRow consecutive threads, the bucket's chunk count rounded up to a
// power of two (so that a row's sum is a butterfly within its lanes); each of
// kThreads threads takes kPasses rows, its loads all issued before any use.
template <int kHeadDim, int kThreads>
struct SideKernelRows {
  static constexpr int kChunks = kHeadDim / 8;
  static constexpr int kLanesPerRow = kChunks <= 8 ? 8 : kChunks <= 16 ? 16 : 32;
  static_assert(kChunks <= 32, "a row's chunks must fit one warp");
  static constexpr int kPasses = 2;
  static constexpr int kRowsPerPass = kThreads / kLanesPerRow;
  static constexpr int kRowsPerBlock = kRowsPerPass * kPasses;
};

// The workspace a head dim's backward needs: its masked and unmasked kernels
// may walk different query blocks (BwdTile), and the callers size it from the
// shapes alone, before the mask's effect on them (mask_cuts) is decided, so it
// fits either (they differ by at most a query block's rows).
template <int kHeadDim, class Tile = BwdTile<kHeadDim>>
size_t bwd_workspace_bytes_for(const AttnShape& shape, bool deterministic) {
  size_t bytes = 0;
  for (bool masked : {false, true}) {
    const int block_m = bwd_block_m<kHeadDim, Tile>(deterministic, masked);
    const size_t walk_bytes = BwdWorkspace::make(shape, deterministic, block_m, kHeadDim).total_bytes;
    bytes = walk_bytes > bytes ? walk_bytes : bytes;
  }
  return bytes;
}

}  // namespace jax_fa3
