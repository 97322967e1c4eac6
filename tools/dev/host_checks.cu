// Host-side checks of the kernels' index arithmetic (no GPU needed; nvcc
// compiles it as host code):
//   * the forward tile order is a permutation of all (query block, head,
//     batch) tiles, and the static snake schedule hands every tile to
//     exactly one CTA;
//   * the work balance (max over mean of the key blocks per CTA) of the static
//     schedule and of the dynamic one (the same order, each CTA claiming its
//     next tile shortly before the current one ends), the reason masked
//     kernels schedule dynamically;
//   * the per-row key / per-column query ranges the kernels mask with agree
//     with WindowMask::visible, the one definition of the mask;
//   * the forward's choice of key block width (fwd_variant) at a few lengths;
//   * the deterministic backward's chunked CTA order covers every (key block,
//     kv head, batch) once and puts a head's lower key blocks first (the dQ
//     turns wait on them);
//   * the backward's dQ values land on every float of their warpgroup's part
//     of the dQ tile exactly once, where its order (dq_offset) puts them and
//     the convert kernel reads them, and its transposed smem views (Q^T, K^T,
//     dS^T) address the same bytes as the views they transpose, for the
//     library's walks (head dim 128's unmasked one computes dQ transposed);
//     the dS^T stores address the same bytes whether the swizzle applies to
//     their addresses or to their offsets from the stage (ds_store_stage),
//     and the S^T accumulator's columns come in pairs of adjacent query
//     columns, the first even (column_lse2_pair's 64-bit loads).
//
//   nvcc -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Icpp/include -I<cutlass>/include tools/dev/host_checks.cu \
//     -o build-dev/host_checks && build-dev/host_checks
// CuTe's as_position_independent_swizzle_tensor asserts its base's alignment
// through a shared-memory address conversion that host code cannot make
// (check_ds_store_offsets gives ds_store_stage a 1024-byte aligned host buffer
// instead). The checks below are CHECKs, not asserts.
#ifndef NDEBUG
#define NDEBUG
#endif
#include <algorithm>
#include <cstdio>
#include <functional>
#include <vector>

#include <cutlass/numeric_types.h>

#include "jax_fa3/bwd/cta_order_bwd_sm90.hpp"
#include "jax_fa3/bwd/mainloop_bwd_sm90.hpp"
#include "jax_fa3/bwd/postprocess_bwd_sm90.hpp"
#include "jax_fa3/common/mask.h"
#include "jax_fa3/fwd/tile_scheduler_fwd_sm90.hpp"
#include "jax_fa3/tile_config.h"

using namespace jax_fa3;

namespace {

int failures = 0;
#define CHECK(cond, ...)                      \
  do {                                        \
    if (!(cond)) {                            \
      ++failures;                             \
      std::printf("FAIL: " __VA_ARGS__);      \
      std::printf("\n");                      \
    }                                         \
  } while (0)

// Key blocks [n_min, n_max) a query block visits (FwdMainloopSm90::n_block_range).
int key_blocks(const WindowMask& mask, bool masked, int m_block, int block_m, int block_n) {
  int key_begin = 0, key_end = mask.seqlen_k;
  if (masked) {
    const int m0 = m_block * block_m;
    const int m1 = std::min(m0 + block_m, mask.seqlen_q);
    key_begin = mask.key_begin(m0);
    key_end = mask.key_end(m1);
  }
  if (key_end <= key_begin) return 0;
  return (key_end + block_n - 1) / block_n - key_begin / block_n;
}

// Jobs of the given costs handed out in order to `workers`, each worker
// taking its next job `lead` cost units before its current one ends (not
// before that one starts; lead 0: when it is free): the time the last ends.
long list_schedule_end(const std::vector<long>& costs, int workers, long lead) {
  // Per worker: when it claims its next job, and when its current one ends.
  std::vector<long> claim(workers, 0), end(workers, 0);
  for (long cost : costs) {
    const int w = static_cast<int>(std::min_element(claim.begin(), claim.end()) - claim.begin());
    const long start = end[w];
    end[w] = start + cost;
    claim[w] = std::max(start, end[w] - lead);
  }
  return *std::max_element(end.begin(), end.end());
}

void check_schedule(int seqlen, int heads, int batch, int group, int head_dim, bool causal, int block_m,
                    int block_n, int sm_count, long l2_bytes, bool print) {
  const AttnShape shape{batch, seqlen, seqlen, heads, heads / group, head_dim};
  const AttnMask m{seqlen * 2, causal ? 0 : seqlen * 2};
  const WindowMask mask = WindowMask::make(shape, m);
  const long kv_bytes = 2L * seqlen * head_dim * 2;
  const FwdTileOrder order = FwdTileOrder::make(seqlen, heads, batch, block_m, group, kv_bytes, l2_bytes,
                                                /*masked=*/causal);
  // The masked kernels number the tiles with equal chunks.
  auto tile_at = [&](int t) { return causal ? order.tile<true>(t) : order.tile<false>(t); };
  std::vector<int> seen(order.num_tiles, 0);
  for (int t = 0; t < order.num_tiles; ++t) {
    const FwdWorkTile w = tile_at(t);
    const bool in_range = w.m_block >= 0 && w.m_block < order.num_m_blocks && w.head >= 0 && w.head < heads &&
                          w.batch >= 0 && w.batch < batch;
    CHECK(in_range, "tile %d out of range (m %d head %d batch %d)", t, w.m_block, w.head, w.batch);
    if (in_range) ++seen[(w.batch * heads + w.head) * order.num_m_blocks + w.m_block];
  }
  for (int i = 0; i < order.num_tiles; ++i) CHECK(seen[i] == 1, "tile slot %d seen %d times", i, seen[i]);
  std::vector<long> cost(order.num_tiles);  // key blocks, +1: epilogue
  for (int t = 0; t < order.num_tiles; ++t) {
    cost[t] = key_blocks(mask, causal, tile_at(t).m_block, block_m, block_n) + 1;
  }

  // The persistent CTAs' walks: every tile once, and the work per CTA.
  const int ctas = std::min(order.num_tiles, sm_count);
  std::vector<int> taken(order.num_tiles, 0);
  std::vector<long> work(ctas, 0);
  for (int c = 0; c < ctas; ++c) {
    FwdStaticScheduler::Walk walk{c, ctas};
    for (int t = walk.next(); t < order.num_tiles; t = walk.next()) {
      ++taken[t];
      work[c] += cost[t];
    }
  }
  for (int i = 0; i < order.num_tiles; ++i) CHECK(taken[i] == 1, "tile %d taken %d times", i, taken[i]);
  if (print) {
    long total = 0, most = 0;
    for (long w : work) { total += w; most = std::max(most, w); }
    const double mean = double(total) / ctas;
    // The same tile order handed out dynamically: FwdDynamicScheduler claims
    // a CTA's next tile after the current one's last load, about kStages = 2
    // key blocks before its end; a lead of a whole tile is a claim when the
    // tile starts (its earlier design).
    std::printf("schedule s%-5d h%-2d b%-2d d%-3d %-6s tile %dx%d, %d tiles on %d CTAs, %d(+%d) (b,h) per chunk: "
                "max/mean work per CTA: static snake %.3f, dynamic %.3f (claimed at a tile's start: %.3f)\n",
                seqlen, heads, batch, head_dim, causal ? "causal" : "full", block_m, block_n, order.num_tiles, ctas,
                order.heads_per_chunk, order.wide_chunks > 0 ? order.unit : 0, most / mean,
                list_schedule_end(cost, ctas, 2) / mean, list_schedule_end(cost, ctas, 1L << 40) / mean);
  }
}

void check_mask(int sq, int sk, int left, int right) {
  const AttnShape shape{1, sq, sk, 1, 1, 64};
  const WindowMask mask = WindowMask::make(shape, AttnMask{left, right});
  for (int i = 0; i < sq; ++i) {
    for (int j = 0; j < sk; ++j) {
      const bool vis = mask.visible(i, j);
      const bool by_row = j >= mask.row_key_begin(i) && j < mask.row_key_end(i);
      const bool by_col = i >= mask.row_query_begin(j) && i < mask.row_query_end(j);
      CHECK(vis == by_row, "row range: sq %d sk %d window (%d,%d) at (%d,%d)", sq, sk, left, right, i, j);
      CHECK(vis == by_col, "column range: sq %d sk %d window (%d,%d) at (%d,%d)", sq, sk, left, right, i, j);
    }
  }
  // bwd_walk_rows bounds the rows a key block of 8 is seen by (first to last),
  // exactly where window_left is unbounded (causal: the first block's walk).
  constexpr int kBlockN = 8;
  int64_t span = 0;
  for (int n0 = 0; n0 < sk; n0 += kBlockN) {
    int first = sq, last = -1;
    for (int j = n0; j < n0 + kBlockN && j < sk; ++j) {
      for (int i = 0; i < sq; ++i) {
        if (mask.visible(i, j)) first = i < first ? i : first, last = i > last ? i : last;
      }
    }
    if (last >= first) span = last - first + 1 > span ? last - first + 1 : span;
  }
  const int64_t rows = bwd::bwd_walk_rows<kBlockN>(mask);
  CHECK(rows >= span && (left < sq + sk || rows == span),
        "bwd_walk_rows: sq %d sk %d window (%d,%d): %lld, walks span %lld", sq, sk, left, right,
        static_cast<long long>(rows), static_cast<long long>(span));
}

void check_bwd_order(int n_blocks, int heads_kv, int batch, int sm_count, int waves) {
  const bwd::BwdCtaOrder order = bwd::BwdCtaOrder::make(n_blocks, heads_kv, batch, sm_count, waves);
  std::vector<int> seen(size_t(n_blocks) * heads_kv * batch, 0);
  std::vector<int> last_n(size_t(heads_kv) * batch, -1);
  for (int i = 0; i < order.num_ctas(); ++i) {
    const bwd::BwdCtaOrder::Cta c = order.cta(i);
    const bool in_range = c.n_block >= 0 && c.n_block < n_blocks && c.hkv >= 0 && c.hkv < heads_kv && c.b >= 0 &&
                          c.b < batch;
    CHECK(in_range, "bwd cta %d out of range (n %d hkv %d b %d)", i, c.n_block, c.hkv, c.b);
    if (!in_range) continue;
    const int pair = c.b * heads_kv + c.hkv;
    ++seen[size_t(pair) * n_blocks + c.n_block];
    CHECK(c.n_block == last_n[pair] + 1, "bwd cta %d: key block %d of pair %d after %d", i, c.n_block, pair,
          last_n[pair]);
    last_n[pair] = c.n_block;
  }
  for (size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == 1, "bwd cta slot %zu seen %d times", i, seen[i]);
}

// The fast backward's CTAs under a causal mask run in blockIdx order (key
// blocks fastest, then kv heads, then batches), one CTA per SM at a time.
// Their work balance (max over mean of the query steps per SM, each CTA
// costing the query blocks its kernel walks (BwdQueryRange) + 1, greedy
// dispatch to the first free SM) against longest first over all pairs:
// notes.md's lead for 1k-4k.
template <int kHeadDim>
void print_bwd_fast_causal_balance(int seqlen, int sm_count) {
  using Tile = BwdTile<kHeadDim>;
  using Walk = typename Tile::template Fast<true>;
  constexpr int kBlockN = bwd::BwdTraitsOf<cutlass::bfloat16_t, kHeadDim, Walk>::kBlockN, kBlockM = Walk::kBlockM;
  const int pairs = (2048 / kHeadDim) * (16384 / seqlen);
  const int n_blocks = (seqlen + kBlockN - 1) / kBlockN;
  const WindowMask mask = WindowMask::make(AttnShape{1, seqlen, seqlen, 1, 1, kHeadDim}, AttnMask{2 * seqlen, 0});
  std::vector<long> costs;
  for (int p = 0; p < pairs; ++p) {
    for (int n = 0; n < n_blocks; ++n) {
      const int n0 = n * kBlockN, n1 = std::min(n0 + kBlockN, seqlen);
      costs.push_back(bwd::BwdQueryRange::make(mask, n0, n1, kBlockM).num_m + 1);
    }
  }
  long total = 0;
  for (long c : costs) total += c;
  const double mean = double(total) / sm_count;
  std::vector<long> longest_first = costs;
  std::sort(longest_first.begin(), longest_first.end(), std::greater<long>());
  // blockIdx order but for the last pairs, about two waves of CTAs, which
  // run with key blocks slowest (longest first among them): the CTAs before
  // keep the L2 sharing of key blocks fastest.
  const int tail = std::min(pairs, (2 * sm_count + n_blocks - 1) / n_blocks);
  std::vector<long> tail_slowest(costs.begin(), costs.begin() + long(pairs - tail) * n_blocks);
  for (int n = 0; n < n_blocks; ++n) {
    for (int p = 0; p < tail; ++p) tail_slowest.push_back(costs[n]);
  }
  std::printf("bwd fast causal s%-5d d%-3d %d CTAs of %dx%d on %d SMs: max/mean blockIdx order %.3f, "
              "the last %d pairs key blocks slowest %.3f, longest first %.3f\n", seqlen, kHeadDim,
              int(costs.size()), kBlockN, kBlockM, sm_count, list_schedule_end(costs, sm_count, 0) / mean, tail,
              list_schedule_end(tail_slowest, sm_count, 0) / mean, list_schedule_end(longest_first, sm_count, 0) / mean);
}

// Every float of a walk's dQ tile placed once (hits, misplaced: from the
// caller's walk over the MMA threads' values), and the convert kernel's loads
// (DqConvertLoads) finding each (row, column) where dq_offset puts it, at
// addresses aligned for their width.
template <class Traits>
void check_dq_tile_reads(const char* what, const std::vector<int>& hits, int misplaced) {
  constexpr DqLayout kLayout = Traits::kDQLayout;
  constexpr int kBlockM = Traits::kBlockM, kSlice = Traits::kDQSlice, kHeadDim = Traits::kHeadDim;
  const bool once = std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; });
  CHECK(once && misplaced == 0, "dQ tile %s: %d value(s) misplaced or outside their part, not every float once",
        what, misplaced);
  auto layout_offset = [](int row, int col) { return BwdWorkspace::dq_offset(kLayout, kBlockM, kSlice, row, col); };
  using Loads = bwd::DqConvertLoads<kLayout>;
  int misread = 0;
  for (int r = 0; r < kBlockM; r += Loads::kRowPairs ? 2 : 1) {
    for (int c = 0; c < kHeadDim / 8; ++c) {
      const int base = layout_offset(r, c * 8);
      for (int l = 0; l < Loads::kLoads; ++l) {
        misread += (base + l * Loads::kStride) % Loads::kWidth != 0;
        for (int e = 0; e < Loads::kWidth; ++e) {
          misread += base + l * Loads::kStride + e != layout_offset(r + Loads::row(l, e), c * 8 + Loads::column(l, e));
        }
      }
    }
  }
  CHECK(misread == 0, "dQ tile %s: the convert kernel misreads %d float(s)", what, misread);
}

// One buffer, two wgmma views (K-major for one GEMM, MN-major for another):
// element (r, c[, stage]) of one must be element (c, r[, stage]) of the other.
template <class Layout, class Transposed>
void check_same_bytes(Layout layout, Transposed transposed, const char* what, const char* name) {
  int wrong = 0;
  for (int stage = 0; stage < int(cute::size<2>(layout)); ++stage) {
    for (int r = 0; r < int(cute::size<0>(layout)); ++r) {
      for (int c = 0; c < int(cute::size<1>(layout)); ++c) wrong += layout(r, c, stage) != transposed(c, r, stage);
    }
  }
  CHECK(wrong == 0, "%s %s: %d element(s) of the transposed view elsewhere", what, name, wrong);
}

// Every MMA thread's dS^T stmatrix stores (bwd_mma) address the same bytes of
// every stage and warpgroup part whether ds_store_stage swizzles their
// addresses (CuTe's swizzled pointer) or their offsets from the stage.
template <class Traits>
void check_ds_store_offsets(const char* what) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kElems = cosize_v<typename Traits::SmemLayoutdSt>;
  std::vector<Element> storage(kElems + 1024 / sizeof(Element));
  auto* base = reinterpret_cast<Element*>((reinterpret_cast<uintptr_t>(storage.data()) + 1023) / 1024 * 1024);
  auto r2s = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, typename Traits::MmaSdP{});
  using Part = Shape<_64, Int<Traits::kSdPCols>>;
  int wrong = 0, stores = 0;
  for (int stage = 0; stage < Traits::kStagesdS; ++stage) {
    for (int ks = 0; ks < Traits::kKeySplit; ++ks) {
      for (int qs = 0; qs < Traits::kBlockM / Traits::kSdPCols; ++qs) {
        for (int tid = 0; tid < 128; ++tid) {
          auto thr = r2s.get_thread_slice(tid);
          Tensor by_address = thr.partition_D(
              local_tile(bwd::ds_store_stage<Traits, false>(base, stage), Part{}, make_coord(ks, qs)));
          Tensor by_offset = thr.partition_D(
              local_tile(bwd::ds_store_stage<Traits, true>(base, stage), Part{}, make_coord(ks, qs)));
          for (int i = 0; i < int(size(by_address)); ++i, ++stores) {
            wrong += &by_address(i) != &by_offset(i);
          }
        }
      }
    }
  }
  // Every element of every stage: 64 keys a key split x kBlockM queries.
  CHECK(wrong == 0 && stores == Traits::kStagesdS * Traits::kKeySplit * 64 * Traits::kBlockM,
        "%s dS^T stores: %d of %d at another address with the swizzle on offsets", what, wrong, stores);
}

// column_lse2_pair reads the row terms of S^T accumulator columns c, c + 1
// (c even) as one 8-byte pair: query columns 2i and 2i + 1.
template <class Traits>
void check_column_pairs(const char* what) {
  using namespace cute;
  int wrong = 0;
  for (int tid = 0; tid < 128; ++tid) {
    typename Traits::MmaSdP mma;
    Tensor coords = mma.get_thread_slice(tid).partition_C(make_identity_tensor(Shape<_64, Int<Traits::kSdPCols>>{}));
    Tensor c_rc = make_tensor(coords.data(), acc_layout_rowcol(coords.layout()));
    for (int r = 0; r < int(size<0>(c_rc)); ++r) {
      for (int c = 0; c < int(size<1>(c_rc)); c += 2) {
        const int col = get<1>(c_rc(r, c));
        wrong += col % 2 != 0 || get<1>(c_rc(r, c + 1)) != col + 1;
      }
    }
  }
  CHECK(wrong == 0, "%s: %d S^T accumulator column pair(s) not two adjacent query columns from an even one", what,
        wrong);
}

// The backward's dQ tile for one walk, in its order (BwdTraits::kDQLayout,
// BwdWorkspace::dq_offset):
//   * each MMA warpgroup's 128 threads store (or reduce-add) every dQ value
//     at the address bwd_mma computes for it (row chunks: dq_row_chunk_offset;
//     fragment orders: the thread's base + the group's fixed distance), which
//     must be dq_offset of the value's (query row, column) and inside that
//     warpgroup's part; every float of the tile once; the convert kernel
//     reads it back (check_dq_tile_reads);
//   * the smem buffers read through two views hold the same bytes in both.
template <int kHeadDim, class Walk>
void check_bwd_smem(const char* what) {
  using Traits = bwd::BwdTraits<cutlass::bfloat16_t, kHeadDim, Walk>;
  constexpr DqLayout kLayout = Traits::kDQLayout;
  constexpr int kBlockM = Traits::kBlockM, kSlice = Traits::kDQSlice;
  constexpr int kPart = kBlockM * kSlice, kTile = kBlockM * kHeadDim;
  auto layout_offset = [](int row, int col) { return BwdWorkspace::dq_offset(kLayout, kBlockM, kSlice, row, col); };
  std::vector<int> hits(kTile, 0);
  int misplaced = 0;
  for (int wg = 0; wg < Traits::kWarpgroups; ++wg) {
    for (int tid = 0; tid < 128; ++tid) {
      typename Traits::MmadQ mma;
      auto coords = mma.get_thread_slice(tid).partition_C(cute::make_identity_tensor(typename Traits::DQTile{}));
      for (int i = 0; i < int(cute::size(coords)); ++i) {
        const int row = cute::get<Traits::kDQTransposed ? 1 : 0>(coords(i));
        const int col = wg * kSlice + cute::get<Traits::kDQTransposed ? 0 : 1>(coords(i));
        int at;
        if constexpr (kLayout == DqLayout::kRowChunks) {
          at = bwd::dq_row_chunk_offset<Traits>(coords, wg, i);
        } else {
          at = BwdWorkspace::dq_fragment_thread_offset(kPart, wg, tid) + BwdWorkspace::dq_fragment_group_offset(i) + i % 4;
        }
        misplaced += at != layout_offset(row, col) || at < wg * kPart || at >= (wg + 1) * kPart;
        if (at >= 0 && at < kTile) ++hits[at];
      }
    }
  }
  check_dq_tile_reads<Traits>(what, hits, misplaced);
  using namespace cute;
  check_same_bytes(typename Traits::SmemLayoutQ{}, typename Traits::SmemLayoutQt{}, what, "Q / Q^T");
  check_same_bytes(typename Traits::SmemLayoutdS{}, typename Traits::SmemLayoutdSt{}, what, "dS / dS^T");
  check_same_bytes(append<3>(typename Traits::SmemLayoutK{}, Layout<_1, _0>{}),
                   append<3>(typename Traits::SmemLayoutKt{}, Layout<_1, _0>{}), what, "K / K^T");
  check_ds_store_offsets<Traits>(what);
  check_column_pairs<Traits>(what);
}

// The same for BwdTraitsDKVt (head dim 256's fast walk): each warpgroup's
// dQ leaves in two 64-column halves, value i of half h at the group of
// i + h x (values a half) from the thread's base (bwd_mma_dkvt's send_dq).
template <int kHeadDim, class Walk>
void check_bwd_smem_dkvt(const char* what) {
  using Traits = bwd::BwdTraitsDKVt<cutlass::bfloat16_t, kHeadDim, Walk>;
  constexpr int kBlockM = Traits::kBlockM, kSlice = Traits::kDQSlice;
  constexpr int kPart = kBlockM * kSlice, kTile = kBlockM * kHeadDim;
  std::vector<int> hits(kTile, 0);
  int misplaced = 0;
  for (int wg = 0; wg < Traits::kWarpgroups; ++wg) {
    for (int tid = 0; tid < 128; ++tid) {
      typename Traits::MmadQ mma;
      auto coords = mma.get_thread_slice(tid).partition_C(cute::make_identity_tensor(cute::Shape<cute::_64, cute::_64>{}));
      const int half_values = int(cute::size(coords));
      for (int h = 0; h < Traits::kDQHalves; ++h) {
        for (int i = 0; i < half_values; ++i) {
          const int row = cute::get<0>(coords(i)), col = wg * kSlice + 64 * h + cute::get<1>(coords(i));
          const int at = BwdWorkspace::dq_fragment_thread_offset(kPart, wg, tid) +
                         BwdWorkspace::dq_fragment_group_offset(i + h * half_values) + i % 4;
          misplaced += at != BwdWorkspace::dq_offset(Traits::kDQLayout, kBlockM, kSlice, row, col) ||
                       at < wg * kPart || at >= (wg + 1) * kPart;
          if (at >= 0 && at < kTile) ++hits[at];
        }
      }
    }
  }
  check_dq_tile_reads<Traits>(what, hits, misplaced);
  using namespace cute;
  check_same_bytes(typename Traits::SmemLayoutQ{}, typename Traits::SmemLayoutQt{}, what, "Q / Q^T");
  check_same_bytes(typename Traits::SmemLayoutdO{}, typename Traits::SmemLayoutdOt{}, what, "dO / dO^T");
  check_same_bytes(typename Traits::SmemLayoutPdS{}, typename Traits::SmemLayoutPdSt{}, what, "P, dS / P^T, dS^T");
  check_same_bytes(append<3>(typename Traits::SmemLayoutK{}, Layout<_1, _0>{}),
                   append<3>(typename Traits::SmemLayoutKt{}, Layout<_1, _0>{}), what, "K / K^T");
}

}  // namespace

int main() {
  for (int n : {1, 5, 64, 128, 1000}) {
    for (int hkv : {1, 3, 8}) {
      for (int b : {1, 2, 7}) {
        for (int sms : {1, 132}) {
          for (int waves : {1, 4}) check_bwd_order(n, hkv, b, sms, waves);
        }
      }
    }
  }
  const long kL2 = 50L << 20;  // H100/H200
  for (int s : {1, 17, 113, 512, 1000, 4096}) {
    for (int b : {1, 3}) {
      for (int g : {1, 4}) {
        for (bool causal : {false, true}) check_schedule(s, 8, b, g, 128, causal, 128, 160, 132, kL2, false);
      }
    }
  }
  check_schedule(100000, 2, 1, 1, 128, true, 128, 128, 132, kL2, false);
  for (bool causal : {false, true}) check_schedule(64, 8, 0, 1, 128, causal, 128, 128, 132, kL2, false);  // no tiles
  // The paper grid: 16k tokens, hidden 2048, H100's 132 SMs, tile_config.h's tiles.
  auto paper_point = [&](auto tile, int s, int head_dim, bool causal) {
    using Tile = decltype(tile);
    check_schedule(s, 2048 / head_dim, 16384 / s, 1, head_dim, causal, Tile::kBlockM, Tile::kBlockN, 132, kL2, true);
  };
  for (int s : {512, 1024, 2048, 4096, 8192, 16384}) {
    // The unmasked kernel dispatch.cu picks (fwd_variant).
    if (fwd_variant<128>(false, s) == FwdVariant::kUnmaskedNarrow) {
      paper_point(FwdTile<128, true>{}, s, 128, false);
    } else {
      paper_point(FwdTile<128, false>{}, s, 128, false);
    }
    paper_point(FwdTile<128, true>{}, s, 128, true);
  }
  for (int s : {1024, 16384}) {
    paper_point(FwdTile<64, true>{}, s, 64, true);
    paper_point(FwdTile<256, true>{}, s, 256, true);
  }
  for (int s : {1024, 2048, 4096, 16384}) {
    print_bwd_fast_causal_balance<128>(s, 132);
    print_bwd_fast_causal_balance<256>(s, 132);
  }
  const int unbounded = 1 << 20;
  for (int sq : {1, 7, 40}) {
    for (int sk : {1, 9, 40}) {
      for (int left : {0, 3, unbounded}) {
        for (int right : {0, 5, unbounded}) check_mask(sq, sk, left, right);
      }
    }
  }
  // The forward's key block width (fwd_variant): narrow blocks where the
  // wide ones pad the keys, one block more counted for each, by more than
  // kNarrowPaysPermille: at head dim 128 (128 vs 176 keys) narrow at 512 and
  // 1k, wide at 2k-16k although 176 pad 2k-4k by 3.1%; a single wide block
  // stays wide.
  for (int sk : {512, 1024}) {
    CHECK(fwd_variant<96>(false, sk) == FwdVariant::kUnmaskedNarrow, "d96 sk %d: expected narrow", sk);
  }
  for (int sk : {2048, 16384}) {
    CHECK(fwd_variant<96>(false, sk) == FwdVariant::kUnmasked, "d96 sk %d: expected wide", sk);
  }
  CHECK(fwd_variant<192>(false, 1024) == FwdVariant::kUnmaskedNarrow, "d192 sk 1024: expected narrow");
  for (int sk : {512, 2048, 16384}) {
    CHECK(fwd_variant<192>(false, sk) == FwdVariant::kUnmasked, "d192 sk %d: expected wide", sk);
  }
  for (int sk : {1, 100, 512, 1000, 1024, 1100}) {
    CHECK(fwd_variant<128>(false, sk) == FwdVariant::kUnmaskedNarrow, "d128 sk %d: expected narrow", sk);
  }
  for (int sk : {160, 176, 320, 1500, 2048, 4096, 8192, 16384}) {
    CHECK(fwd_variant<128>(false, sk) == FwdVariant::kUnmasked, "d128 sk %d: expected wide", sk);
  }
  for (int sk : {1, 512, 16384}) {
    CHECK(fwd_variant<128>(true, sk) == FwdVariant::kMasked, "d128 masked sk %d", sk);
    CHECK(fwd_variant<64>(false, sk) == FwdVariant::kUnmasked && fwd_variant<256>(false, sk) == FwdVariant::kUnmasked,
          "d64/d256 sk %d: no narrow unmasked kernel", sk);
  }
  check_bwd_smem<64, BwdTile<64>::Fast<false>>("d64");
  check_bwd_smem<96, BwdTile<96>::Fast<false>>("d96");
  check_bwd_smem<128, BwdTile<128>::Fast<true>>("d128 masked");
  check_bwd_smem<128, BwdTile<128>::Fast<true, true>>("d128 masked, long walks (80 queries, dQ transposed)");
  check_bwd_smem<128, BwdTile<128>::Fast<false>>("d128 unmasked (80 queries, dQ transposed)");
  check_bwd_smem<192, BwdTile<192>::Fast<false>>("d192");
  check_bwd_smem<256, BwdTile<256>::Deterministic<true>>("d256 deterministic");
  check_bwd_smem_dkvt<256, BwdTile<256>::Fast<false>>("d256 fast (80 keys, dK^T/dV^T)");
  std::printf("%s (%d failure(s))\n", failures ? "FAILED" : "all host checks passed", failures);
  return failures ? 1 : 0;
}
