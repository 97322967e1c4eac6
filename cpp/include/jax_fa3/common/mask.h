// The attention window as the kernels see it: which keys a query row sees,
// which key blocks a query block must visit, and which blocks need masking.
// Semantics are documented on AttnMask in params.h (bottom-right aligned).
#pragma once

#include "jax_fa3/common/arch.h"
#include "jax_fa3/params.h"

namespace jax_fa3 {

struct WindowMask {
  int seqlen_q;
  int seqlen_k;
  int left;   // window_left
  int right;  // window_right
  int diag;   // seqlen_k - seqlen_q

  JAX_FA3_HOST_DEVICE static WindowMask make(const AttnShape& s, const AttnMask& m) {
    return WindowMask{s.seqlen_q, s.seqlen_k, m.window_left, m.window_right,
                      s.seqlen_k - s.seqlen_q};
  }

  // In-bounds and inside the window.
  JAX_FA3_HOST_DEVICE bool visible(int i, int j) const {
    return i < seqlen_q && j >= 0 && j < seqlen_k && j >= i + diag - left &&
           j <= i + diag + right;
  }

  // The keys query row i sees: [row_key_begin(i), row_key_end(i)), possibly
  // empty. For i < seqlen_q, visible(i, j) iff that range holds j.
  JAX_FA3_HOST_DEVICE int row_key_begin(int i) const {
    const int j = i + diag - left;
    return j < 0 ? 0 : j;
  }
  JAX_FA3_HOST_DEVICE int row_key_end(int i) const {
    const int j = i + diag + right + 1;
    return j > seqlen_k ? seqlen_k : j;
  }

  // The queries that see key j (0 <= j < seqlen_k): [row_query_begin(j),
  // row_query_end(j)), not clipped to [0, seqlen_q).
  JAX_FA3_HOST_DEVICE int row_query_begin(int j) const { return j - diag - right; }
  JAX_FA3_HOST_DEVICE int row_query_end(int j) const { return j - diag + left + 1; }

  // Keys [key_begin, key_end) cover every key seen by queries [q0, q1).
  // Empty (key_begin >= key_end) when those rows see nothing.
  JAX_FA3_HOST_DEVICE int key_begin(int q0) const {
    int j = q0 + diag - left;
    return j < 0 ? 0 : j;
  }
  JAX_FA3_HOST_DEVICE int key_end(int q1) const {
    int j = q1 - 1 + diag + right + 1;
    return j > seqlen_k ? seqlen_k : j;
  }

  // Queries [query_begin, query_end) cover every query that sees a key of [k0, k1).
  JAX_FA3_HOST_DEVICE int query_begin(int k0) const {
    int i = k0 - diag - right;
    return i < 0 ? 0 : i;
  }
  JAX_FA3_HOST_DEVICE int query_end(int k1) const {
    int i = k1 - 1 - diag + left + 1;
    return i > seqlen_q ? seqlen_q : i;
  }

  // Every pair of the tile [q0, q1) x [k0, k1) is inside the window (bounds are
  // not checked here: partial tiles at the sequence ends are a separate test).
  JAX_FA3_HOST_DEVICE bool tile_inside_window(int q0, int q1, int k0, int k1) const {
    return k0 >= (q1 - 1) + diag - left && (k1 - 1) <= q0 + diag + right;
  }
};

}  // namespace jax_fa3
