// Forward epilogue: the normalised O tile goes from the fp32 accumulators to
// Element and straight to global memory, clipped to seqlen_q rows and the real
// head_dim columns (the kernel's head-dim bucket may be wider); LSE rows are
// written by one lane of each quad.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cstdint>
#include <cute/tensor.hpp>

#include "jax_fa3/common/utils.hpp"
#include "jax_fa3/fwd/tile_scheduler_fwd_sm90.hpp"
#include "jax_fa3/params.h"

namespace jax_fa3 {

template <class Traits>
struct FwdEpilogueSm90 {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kRows = Traits::kRowsPerThread;
  using WorkTile = FwdWorkTile;

  struct Params {
    Element* out;
    float* lse;
    int seqlen_q;
    int heads_q;
    int head_dim;
    int64_t row_stride;    // heads_q * head_dim
    int64_t batch_stride;  // seqlen_q * heads_q * head_dim
  };

  static Params to_params(FwdParams const& p) {
    AttnShape const& s = p.problem.shape;
    return Params{static_cast<Element*>(p.out), p.lse, s.seqlen_q, s.heads_q, s.head_dim,
                  int64_t(s.heads_q) * s.head_dim, int64_t(s.seqlen_q) * s.heads_q * s.head_dim};
  }

  // tOrO: the already normalised accumulator; lse: per owned row.
  template <class FragO>
  CUTE_DEVICE static void store(Params const& params, FragO const& tOrO, float const (&lse)[kRows],
                                WorkTile const& tile, int thread_idx) {
    using namespace cute;
    typename Traits::TiledMmaPV tiled_mma_pv;
    auto thr_mma = tiled_mma_pv.get_thread_slice(thread_idx);
    Tensor cO = make_identity_tensor(select<0, 1>(typename Traits::TileShapePV{}));
    Tensor tOcO = thr_mma.partition_C(cO);  // (row, col) of each accumulator element

    const int m0 = tile.m_block * kBlockM;
    Element* out = params.out + tile.batch * params.batch_stride + int64_t(tile.head) * params.head_dim;

    // 16-byte chunks (store_acc_16b): head_dim is a multiple of 8 and `out`
    // 16-byte aligned (run_fwd refuses anything else), so a chunk is fully
    // inside head_dim or fully outside.
    const bool tile_inside = m0 + kBlockM <= params.seqlen_q && params.head_dim == kHeadDim;
    int rows[2];
    for (int r = 0; r < 2; ++r) rows[r] = m0 + get<0>(tOcO(make_coord(make_coord(0, r, 0), 0, 0)));
    store_acc_16b<Element>(tOrO, 1.f, thread_idx % 4, [&](int r, int col, uint4 chunk) {
      store_16b_if(out + rows[r] * params.row_stride + col, chunk,
                   tile_inside || (rows[r] < params.seqlen_q && col < params.head_dim));
    });

    // The 4 lanes of a quad hold the same rows; one of them writes the LSE.
    if (thread_idx % 4 == 0) {
      Tensor tOcO_rc = rowcol_view(tOcO);
      float* lse_out = params.lse + (int64_t(tile.batch) * params.heads_q + tile.head) * params.seqlen_q;
      CUTLASS_PRAGMA_UNROLL
      for (int r = 0; r < kRows; ++r) {
        const int row = m0 + get<0>(tOcO_rc(r, 0));
        if (row < params.seqlen_q) { lse_out[row] = lse[r]; }
      }
    }
  }
};

}  // namespace jax_fa3
