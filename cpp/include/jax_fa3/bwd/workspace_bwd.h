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

// How a query block's fp32 dq tile is laid out (BwdWorkspace::dq_offset).
enum class DqLayout { kRowChunks, kFragment, kFragmentTransposed };

struct BwdWorkspace {
  // Query rows rounded up to whole kBlockM tiles: the main kernel reads the
  // per-row terms and reduces dq one full tile at a time, never bounds-checked.
  int64_t m_blocks;
  int64_t rows;
  size_t lse2_offset;      // float [batch, heads_q, rows]: lse * log2(e); +inf where P must be 0
  size_t dpsum_offset;     // float [batch, heads_q, rows]: D = rowsum(dO * O) - dlse
  size_t dq_accum_offset;  // float [batch, heads_q, m_blocks, tile (dq_offset)]: fp32 dq sums
  size_t dq_sem_offset;    // int [batch, heads_q, m_blocks]: deterministic dq order (0 bytes otherwise)
  size_t dq_accum_bytes;
  size_t dq_sem_bytes;
  size_t total_bytes;

  static constexpr size_t kAlign = 256;

  // Offset (floats) of row `row`, column `col` inside one query block's fp32
  // dq tile (block_m rows x head-dim-bucket columns), the same in the main
  // kernel's smem tile and in the workspace accumulator, which receives the
  // tile byte for byte. Each MMA warpgroup's column slice (`slice` columns)
  // is one contiguous part of block_m x slice floats, which the dQ writer
  // reduces as soon as that warpgroup is done. Inside a part (DqLayout):
  //   kRowChunks: chunks of 8 columns, each chunk's block_m rows contiguous
  //     ([slice / 8][block_m][8]); a warp stores 8 rows of one chunk per
  //     64-bit store instruction, 256 contiguous bytes. For walks whose part
  //     is more than one wgmma accumulator (block_m = 128).
  //   kFragment: the order of the warpgroup's wgmma accumulator fragment
  //     (64 rows x slice columns): a thread's four values of one 8-column
  //     group (rows r, r + 8 x columns c, c + 1) are 16 contiguous bytes and
  //     its groups lie kDqFragmentGroupFloats apart from one base
  //     (dq_fragment_thread_offset): [column group][warp][lane][4]. One 128-bit
  //     store or reduce-add per group at an immediate offset, where the row
  //     chunks took a 64-bit one per pair with its own address arithmetic
  //     (benchmarks/results/2026-12-06h_h100_bwd_ncu_instructions.md).
  //   kFragmentTransposed: the same for an accumulator of dQ^T (slice = 64
  //     head-dim rows x block_m query columns, BwdWalk::kDQTransposed), where
  //     the row chunks took one 32-bit store per value with 2-way bank
  //     conflicts.
  JAX_FA3_HOST_DEVICE static constexpr int dq_tile_offset(int block_m, int row, int col) {
    return (col / 8) * (block_m * 8) + row * 8 + col % 8;
  }
  JAX_FA3_HOST_DEVICE static constexpr int dq_fragment_offset(int block_m, int slice, bool transposed, int row,
                                                              int col) {
    const int in_slice = col % slice;
    // (row, column) in the accumulator.
    const int ar = transposed ? in_slice : row, ac = transposed ? row : in_slice;
    const int lane = (ar % 8) * 4 + (ac % 8) / 2;
    return (col / slice) * (block_m * slice) + (ac / 8) * kDqFragmentGroupFloats + (ar / 16) * 128 + lane * 4 +
           ((ar % 16) / 8) * 2 + ac % 2;
  }
  JAX_FA3_HOST_DEVICE static constexpr int dq_offset(DqLayout layout, int block_m, int slice, int row, int col) {
    return layout == DqLayout::kRowChunks
               ? dq_tile_offset(block_m, row, col)
               : dq_fragment_offset(block_m, slice, layout == DqLayout::kFragmentTransposed, row, col);
  }
  // In the fragment orders, thread `tid` of MMA warpgroup `wg` (wgmma
  // accumulator rows 16 (tid / 32) + (tid % 32) / 4 [+ 8], columns 2 (tid % 4)
  // [+ 1] of each group) finds its first group here, and the group of its
  // accumulator values i .. i + 3 (i a multiple of 4) dq_fragment_group_offset(i)
  // floats on; part_floats = block_m x slice.
  static constexpr int kDqFragmentGroupFloats = 512;
  JAX_FA3_HOST_DEVICE static constexpr int dq_fragment_thread_offset(int part_floats, int wg, int tid) {
    return wg * part_floats + (tid / 32) * 128 + (tid % 32) * 4;
  }
  JAX_FA3_HOST_DEVICE static constexpr int dq_fragment_group_offset(int i) { return (i / 4) * kDqFragmentGroupFloats; }
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

// The workspace a head dim's backward needs: its kernels may walk different
// query blocks by mask and walk length (BwdTile), and the callers size it from
// the shapes alone, before the mask's effect on them (mask_cuts) is decided,
// so it fits any (they differ by at most a query block's rows).
template <int kHeadDim, class Tile = BwdTile<kHeadDim>>
size_t bwd_workspace_bytes_for(const AttnShape& shape, bool deterministic) {
  const int block_ms[] = {bwd_block_m<Tile, false, false>(deterministic), bwd_block_m<Tile, true, false>(deterministic),
                          bwd_block_m<Tile, true, true>(deterministic)};
  size_t bytes = 0;
  for (int block_m : block_ms) {
    const size_t walk_bytes = BwdWorkspace::make(shape, deterministic, block_m, kHeadDim).total_bytes;
    bytes = walk_bytes > bytes ? walk_bytes : bytes;
  }
  return bytes;
}

}  // namespace jax_fa3
