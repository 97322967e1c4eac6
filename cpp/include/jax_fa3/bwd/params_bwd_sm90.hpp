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
  int* dq_done;  // per (batch, query head, query block): key blocks whose dQ part landed (DqFinish)
  void* dq;
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
  // How many key blocks (of block_n keys) have query block m in their range:
  // the n with make(mask, n * block_n, min((n + 1) * block_n, seqlen_k),
  // block_m) holding m, counted in closed form. make's range of key block n
  // is [query_begin(n0) / block_m, ceil(query_end(n1) / block_m)), non-empty
  // iff query_begin(n0) < query_end(n1); with rows [r0, r1) of block m
  // (r1 clipped to seqlen_q) and window sides >= 0 that is
  //   query_begin(n0) < r1, which holds for n below ceil((r1 + diag + right) / block_n),
  //   query_end(n1) > r0, which holds from n = (r0 + diag - left) / block_n
  //   (for none when seqlen_k <= r0 + diag - left, for all when that is < 0).
  // tools/dev/host_checks.cu compares it with make() over windows and shapes.
  // The window sides may be seqlen_q + seqlen_k (unbounded): sums in 64
  // bits, divisions only of values clamped into [0, seqlen_k + block_n) (32-bit).
  JAX_FA3_HOST_DEVICE static int key_blocks_visiting(const WindowMask& mask, int m, int block_m, int block_n) {
    const int n_blocks = (mask.seqlen_k + block_n - 1) / block_n;
    const int64_t r0 = int64_t(m) * block_m;
    const int64_t r1 = r0 + block_m < mask.seqlen_q ? r0 + block_m : mask.seqlen_q;
    if (r1 <= r0) return 0;
    const int64_t upper = r1 + mask.diag + mask.right;  // key blocks n < ceil(upper / block_n)
    const int end = upper <= 0 ? 0 : upper >= int64_t(n_blocks) * block_n ? n_blocks : (int(upper) + block_n - 1) / block_n;
    const int64_t lower = r0 + mask.diag - mask.left;  // the first key block's last key must exceed it
    const int begin = lower < 0 ? 0 : lower >= mask.seqlen_k ? n_blocks : int(lower) / block_n;
    return end > begin ? end - begin : 0;
  }
  // The same blocks, the walk starting `shift` blocks below the last one.
  JAX_FA3_HOST_DEVICE BwdQueryRange shifted(int shift) const {
    return num_m == 0 ? *this : BwdQueryRange{m_begin, num_m, last_m() - shift % num_m};
  }
};

}  // namespace jax_fa3::bwd
