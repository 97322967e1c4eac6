// What the backward main kernel receives (by value, __grid_constant__, so the
// TMA descriptors inside sit in the kernel's parameter space where the copy
// engine can read them).
#pragma once

#include "jax_fa3/common/arch.h"
#include "jax_fa3/common/mask.h"
#include "jax_fa3/bwd/cta_order_bwd_sm90.hpp"
#include "jax_fa3/bwd/traits_bwd_sm90.hpp"

namespace jax_fa3::bwd {

template <class Traits>
struct BwdMainParams {
  using Tma = BwdTmaTypes<Traits>;
  typename Tma::TmaQ tma_q;
  typename Tma::TmaQ tma_do;
  typename Tma::TmaK tma_k;
  typename Tma::TmaV tma_v;
  WindowMask mask;
  int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim;
  float softmax_scale;
  float scale_log2;    // softmax_scale * log2(e): P = exp2(x * scale_log2 - lse2)
  float softcap;       // > 0: softcapped scores
  float softcap_in;    // softmax_scale / softcap: tanh argument
  float softcap_log2;  // softcap * log2(e)
  int64_t rows;        // seqlen_q rounded up to kBlockM (workspace row pitch)
  int64_t m_blocks;
  const float* lse2;
  const float* dpsum;
  float* dq_accum;
  int* dq_sem;
  void* dk;
  void* dv;
  bool deterministic;
  BwdCtaOrder order;
};

// The query blocks a CTA of key block n_block visits, for each query head of
// its group: [m_begin, m_begin + num_m). Exact (WindowMask's bounds are
// tight), so every visited block has at least one visible (query, key) pair.
// They are walked downwards from start_m, wrapping from m_begin to the last
// block (BwdStep).
struct BwdQueryRange {
  int m_begin;
  int num_m;
  int start_m;
  JAX_FA3_HOST_DEVICE static BwdQueryRange make(const WindowMask& mask, int n0, int n1, int block_m) {
    const int q_begin = mask.query_begin(n0);
    const int q_end = mask.query_end(n1);
    if (q_end <= q_begin) return BwdQueryRange{0, 0, 0};
    const int m_begin = q_begin / block_m;
    const int m_end = (q_end + block_m - 1) / block_m;
    return BwdQueryRange{m_begin, m_end - m_begin, m_end - 1};
  }
  JAX_FA3_HOST_DEVICE int last_m() const { return m_begin + num_m - 1; }
  // The same blocks, the walk starting `shift` blocks below the last one.
  JAX_FA3_HOST_DEVICE BwdQueryRange shifted(int shift) const {
    return num_m == 0 ? *this : BwdQueryRange{m_begin, num_m, last_m() - shift % num_m};
  }
};

// At most the query rows of any CTA's walk (before rounding to query blocks):
// a key block's unclipped rows (its kBlockN keys and the window around them),
// and no more than the rows that see any key.
template <int kBlockN>
JAX_FA3_HOST_DEVICE int64_t bwd_walk_rows(const WindowMask& mask) {
  const int64_t block_rows = int64_t(mask.left) + mask.right + kBlockN;
  const int64_t all_rows = mask.query_end(mask.seqlen_k) - mask.query_begin(0);
  return block_rows < all_rows ? block_rows : all_rows;
}

}  // namespace jax_fa3::bwd
