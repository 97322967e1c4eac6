// The forward main loop: the producer side streams Q once and K/V block by
// block into shared memory with TMA; the consumer side runs, per key block,
// S = Q K^T (SS wgmma), softcap + window mask + online softmax in registers,
// and O += P V (RS wgmma).
#pragma once

#include "jax_fa3/common/arch.h"

#include <cmath>
#include <cstdint>
#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>

#include "jax_fa3/common/mask.h"
#include "jax_fa3/common/softmax.hpp"
#include "jax_fa3/common/utils.hpp"
#include "jax_fa3/fwd/tile_scheduler_fwd_sm90.hpp"
#include "jax_fa3/params.h"

namespace jax_fa3 {

template <class Traits>
struct FwdMainloopSm90 {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kStages = Traits::kStages;
  static constexpr bool kMasked = Traits::kMasked;
  using WorkTile = FwdWorkTile;

  // Global tensors as TMA sees them. Q, K: (rows, head_dim, head, batch) with
  // head_dim contiguous. V is described transposed, (head_dim, keys, head,
  // batch), to match its MN-major shared-memory layout. The extents use the
  // real head_dim: TMA fills the columns of the kHeadDim-wide box beyond it
  // with zeros, which is what lets one kernel serve a whole head-dim bucket.
  using ShapeT = cute::Shape<int32_t, int32_t, int32_t, int32_t>;
  using StrideRowMajor = cute::Stride<int64_t, cute::_1, int64_t, int64_t>;
  using StrideTransposed = cute::Stride<cute::_1, int64_t, int64_t, int64_t>;

  template <class Stride, class SmemLayout, class Box>
  using TmaLoad = decltype(cute::make_tma_copy(
      cute::SM90_TMA_LOAD{},
      cute::make_tensor(cute::make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeT{}, Stride{}),
      SmemLayout{}, Box{}, cute::_1{}));
  using TmaQ = TmaLoad<StrideRowMajor, typename Traits::SmemLayoutQ,
                       cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>>;
  using TmaK = TmaLoad<StrideRowMajor, typename Traits::SmemLayoutKStage,
                       cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>>;
  using TmaV = TmaLoad<StrideTransposed, typename Traits::SmemLayoutVtStage,
                       cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>>>;

  struct Params {
    // TMA descriptors (CUtensorMap) are encoded once per call on the host and
    // live in the kernel's __grid_constant__ parameter block: the copy engine
    // reads them by address from there, no device allocation is needed.
    TmaQ tma_q;
    TmaK tma_k;
    TmaV tma_v;
    ShapeT shape_q;
    ShapeT shape_k;
    ShapeT shape_vt;
    WindowMask mask;
    int head_group;          // heads_q / heads_kv
    float scale_log2;        // scale applied to the (possibly capped) scores, times log2(e)
    float softcap;           // > 0: scores = softcap * tanh(softmax_scale * q.k / softcap)
    float softcap_in_scale;  // softmax_scale / softcap
  };

  static Params to_params(FwdParams const& p) {
    using namespace cute;
    AttnShape const& s = p.problem.shape;
    const int64_t hd = s.head_dim;
    // A zero-length key sequence still needs a valid descriptor (non-zero
    // extents and strides); nothing is loaded then (the block range is empty).
    const int seqlen_k_desc = s.seqlen_k > 0 ? s.seqlen_k : 1;
    ShapeT shape_q = make_shape(s.seqlen_q, s.head_dim, s.heads_q, s.batch);
    ShapeT shape_k = make_shape(seqlen_k_desc, s.head_dim, s.heads_kv, s.batch);
    ShapeT shape_vt = make_shape(s.head_dim, seqlen_k_desc, s.heads_kv, s.batch);
    StrideRowMajor stride_q = make_stride(int64_t(s.heads_q) * hd, _1{}, hd, int64_t(s.seqlen_q) * s.heads_q * hd);
    StrideRowMajor stride_k = make_stride(int64_t(s.heads_kv) * hd, _1{}, hd, int64_t(seqlen_k_desc) * s.heads_kv * hd);
    StrideTransposed stride_vt = make_stride(_1{}, int64_t(s.heads_kv) * hd, hd, int64_t(seqlen_k_desc) * s.heads_kv * hd);
    auto mQ = make_tensor(make_gmem_ptr(static_cast<Element const*>(p.q)), shape_q, stride_q);
    auto mK = make_tensor(make_gmem_ptr(static_cast<Element const*>(p.k)), shape_k, stride_k);
    auto mVt = make_tensor(make_gmem_ptr(static_cast<Element const*>(p.v)), shape_vt, stride_vt);

    const float kLog2e = 1.4426950408889634f;
    const bool capped = p.problem.softcap > 0.f;
    Params out{
        make_tma_copy(SM90_TMA_LOAD{}, mQ, typename Traits::SmemLayoutQ{},
                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}),
        make_tma_copy(SM90_TMA_LOAD{}, mK, typename Traits::SmemLayoutKStage{},
                      Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}),
        make_tma_copy(SM90_TMA_LOAD{}, mVt, typename Traits::SmemLayoutVtStage{},
                      Shape<Int<kHeadDim>, Int<kBlockN>>{}, _1{}),
        shape_q,
        shape_k,
        shape_vt,
        WindowMask::make(s, p.problem.mask),
        s.heads_q / s.heads_kv,
        // With a softcap the capped score is already scaled; softmax then runs
        // at scale 1.
        (capped ? 1.f : p.problem.softmax_scale) * kLog2e,
        capped ? p.problem.softcap : 0.f,
        capped ? p.problem.softmax_scale / p.problem.softcap : 0.f,
    };
    return out;
  }

  CUTE_DEVICE static void prefetch_descriptors(Params const& params) {
    cute::prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
  }

  // Key blocks [n_min, n_max) that query block m_block must visit; empty when
  // its rows see no key. Without a cutting window that is every key block.
  CUTE_DEVICE static cute::tuple<int, int> n_block_range(Params const& params, int m_block) {
    WindowMask const& mask = params.mask;
    int key_begin = 0, key_end = mask.seqlen_k;
    if constexpr (kMasked) {
      const int m0 = m_block * kBlockM;
      const int m1 = m0 + kBlockM < mask.seqlen_q ? m0 + kBlockM : mask.seqlen_q;
      key_begin = mask.key_begin(m0);
      key_end = mask.key_end(m1);
    }
    if (key_end <= key_begin) return {0, 0};
    return {key_begin / kBlockN, (key_end + kBlockN - 1) / kBlockN};
  }

  // Blocks are visited from the last to the first, so the partial block at the
  // end of the keys and the blocks cut by a causal diagonal come first.
  CUTE_DEVICE static int n_block_at(int iter, int n_max) { return n_max - 1 - iter; }

  // The first block of a tile's walk (an iteration of n_block_at) that
  // consumer warpgroup `warpgroup`'s 64 query rows can see; n_iters when they
  // see none. The tile's block range covers all its rows, so in a tile taller
  // than its key blocks (192 rows against 128 keys, or 128 against 64) the
  // upper warpgroups are above the causal diagonal for the first blocks, and a
  // warpgroup past seqlen_q sees no block: it skips those (no GEMMs, no
  // softmax) instead of computing scores that are all masked.
  CUTE_DEVICE static int first_live_block(Params const& params, int m_block, int warpgroup, int n_max,
                                          int n_iters) {
    WindowMask const& mask = params.mask;
    const int row0 = m_block * kBlockM + 64 * warpgroup;
    if (row0 >= mask.seqlen_q) return n_iters;
    if constexpr (!kMasked) {
      return 0;
    } else {
      const int row1 = row0 + 64 < mask.seqlen_q ? row0 + 64 : mask.seqlen_q;
      const int key_end = mask.key_end(row1);
      if (key_end <= mask.key_begin(row0)) return n_iters;
      const int first = n_max - (key_end + kBlockN - 1) / kBlockN;
      return first > 0 ? first : 0;
    }
  }

  // Position in a kStages-deep ring of buffers: which stage, and the parity of
  // its mbarriers on this pass over the ring. Producer and consumers count the
  // same blocks (across tiles, in a persistent CTA), so they agree on both.
  struct RingSlot {
    int count;
    CUTE_DEVICE int stage() const { return count % kStages; }
    CUTE_DEVICE uint32_t phase() const { return (count / kStages) & 1; }
  };

  // Producer: a single thread issues every bulk tensor copy of one tile. Each
  // K/V stage has a `full` mbarrier (completes when the copy engine has written
  // the stage's bytes) and an `empty` one (completes when every consumer thread
  // has finished reading it), so loads run kStages blocks ahead of the math.
  // `kv_count` / `q_count`: K/V blocks and Q tiles loaded by earlier tiles.
  // The tile's loads as load(kind, block): Q, or K/V block `block` of the
  // tile's walk into its ring slot. The tile's tensor views are built once,
  // here; `kind` is a constant at every call, so each call site compiles to
  // one straight copy.
  enum class Load { kQ, kK, kV };
  template <class SharedStorage>
  CUTE_DEVICE static auto tile_loads(Params const& params, SharedStorage& ss, WorkTile const& tile, int n_max,
                                     int kv_count, int q_count) {
    using namespace cute;
    Tensor mQ = params.tma_q.get_tma_tensor(params.shape_q);
    Tensor mK = params.tma_k.get_tma_tensor(params.shape_k);
    Tensor mVt = params.tma_v.get_tma_tensor(params.shape_vt);
    const int head_kv = tile.head / params.head_group;
    Tensor gQ = local_tile(mQ(_, _, tile.head, tile.batch), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                           make_coord(tile.m_block, _0{}));                                  // (M, D)
    Tensor gK = local_tile(mK(_, _, head_kv, tile.batch), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                           make_coord(_, _0{}));                                             // (N, D, n)
    Tensor gVt = local_tile(mVt(_, _, head_kv, tile.batch), Shape<Int<kHeadDim>, Int<kBlockN>>{},
                            make_coord(_0{}, _));                                            // (D, N, n)
    Tensor sQ = make_tensor(make_smem_ptr(ss.smem_q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.smem_k.data()), typename Traits::SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(ss.smem_v.data()), typename Traits::SmemLayoutVt{});
    auto cta_tma_q = params.tma_q.get_slice(_0{});
    auto cta_tma_k = params.tma_k.get_slice(_0{});
    auto cta_tma_v = params.tma_v.get_slice(_0{});
    Tensor tQgQ = cta_tma_q.partition_S(gQ);
    Tensor tQsQ = cta_tma_q.partition_D(sQ);
    Tensor tKgK = cta_tma_k.partition_S(gK);   // (TMA, _, _, n)
    Tensor tKsK = cta_tma_k.partition_D(sK);   // (TMA, _, _, stage)
    Tensor tVgV = cta_tma_v.partition_S(gVt);  // (TMA, _, _, n)
    Tensor tVsV = cta_tma_v.partition_D(sVt);  // (TMA, _, _, stage)

    return [=, &params, &ss](Load kind, int block) mutable {
      using Barrier = cutlass::arch::ClusterTransactionBarrier;
      if (kind == Load::kQ) {
        cutlass::arch::ClusterBarrier::wait(&ss.empty_q, (q_count & 1) ^ 1);
        Barrier::arrive_and_expect_tx(&ss.full_q, Traits::kBytesQ);
        copy(params.tma_q.with(ss.full_q), tQgQ, tQsQ);
        return;
      }
      // The first pass over a ring waits on parity 1 of fresh barriers, which
      // counts as already completed; hence the ^ 1.
      auto load_block = [&](auto const& tma, auto const& src, auto const& dst, uint64_t* full, uint64_t* empty,
                            uint32_t bytes) {
        const RingSlot slot{kv_count + block};
        cutlass::arch::ClusterBarrier::wait(&empty[slot.stage()], slot.phase() ^ 1);
        Barrier::arrive_and_expect_tx(&full[slot.stage()], bytes);
        copy(tma.with(full[slot.stage()]), src(_, _, _, n_block_at(block, n_max)), dst(_, _, _, slot.stage()));
      };
      if (kind == Load::kK) {
        load_block(params.tma_k, tKgK, tKsK, ss.full_k, ss.empty_k, Traits::kBytesKStage);
      } else {
        load_block(params.tma_v, tVgV, tVsV, ss.full_v, ss.empty_v, Traits::kBytesVStage);
      }
    };
  }

  // The load steps of a tile of n_iters blocks, in the order the consumers use
  // the data: first K(0) then Q (K first: the previous tile may still be
  // reading Q, but K's stage frees earlier), then step s = 1..n_iters-1 is K(s)
  // and V(s - 1), last the last V.
  template <class Loads>
  CUTE_DEVICE static void load_first(Loads& loads) {
    loads(Load::kK, 0);
    loads(Load::kQ, 0);
  }
  template <class Loads>
  CUTE_DEVICE static void load_middle(Loads& loads, int step) {
    loads(Load::kK, step);
    loads(Load::kV, step - 1);
  }
  template <class Loads>
  CUTE_DEVICE static void load_last(Loads& loads, int n_iters) { loads(Load::kV, n_iters - 1); }
  // Step `step` of 0..n_iters, for a caller that interleaves them with math.
  template <class Loads>
  CUTE_DEVICE static void load_step(Loads& loads, int step, int n_iters) {
    if (step == 0) {
      load_first(loads);
    } else if (step < n_iters) {
      load_middle(loads, step);
    } else {
      load_last(loads, n_iters);
    }
  }

  // The producer: all load steps of the tile in a row.
  template <class SharedStorage>
  CUTE_DEVICE static void load(Params const& params, SharedStorage& ss, WorkTile const& tile, int n_min,
                               int n_max, int kv_count, int q_count) {
    auto loads = tile_loads(params, ss, tile, n_max, kv_count, q_count);
    const int n_iters = n_max - n_min;
    load_first(loads);
    for (int step = 1; step < n_iters; ++step) load_middle(loads, step);
    load_last(loads, n_iters);
  }

  // Scores outside the window or beyond the end of the keys become -inf, so
  // they get probability 0; only run on blocks that need it. Per owned row
  // (2 per thread) the visible key range is computed once, relative to the
  // thread's first column: the other columns' offsets from it are constants,
  // so each score costs one compare against an immediate per bound and a
  // select. kLeft: some row's window starts inside the block (local windows);
  // otherwise only the end of the range is tested (causal, end of the keys).
  // Rows past seqlen_q are never stored, so they need no mask.
  template <bool kLeft, class TensorS, class TensorC>
  CUTE_DEVICE static void apply_mask(TensorS& tSrS, TensorC const& tScS, WindowMask const& mask, int m0,
                                     int n0) {
    using namespace cute;
    Tensor scores = rowcol_view(tSrS);
    Tensor coords = make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));
    const int col0 = n0 + get<1>(coords(0, 0));
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < size<0>(scores); ++r) {
      int begin = 0, end = mask.seqlen_k;
      if constexpr (kMasked) {
        const int i = m0 + get<0>(coords(r, 0));
        begin = mask.row_key_begin(i);
        end = mask.row_key_end(i);
      }
      begin -= col0;
      end -= col0;
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < size<1>(scores); ++c) {
        const int offset = get<1>(coords(r, c)) - get<1>(coords(0, 0));
        if (offset >= end || (kLeft && offset < begin)) { scores(r, c) = -INFINITY; }
      }
    }
  }

  // Consumer: accumulates the unnormalised O of this tile into tOrO (cleared by
  // the caller) and the softmax row statistics into `softmax`. `turns` orders
  // the GEMM issues of the consumer warpgroups (ping-pong); every call takes
  // the same number of turns in every warpgroup, whatever blocks it skips.
  // `prefetch(iter)` runs at the start of each block iter >= 1 (the loads of a
  // build without warp specialization; nothing otherwise).
  template <bool kCapped, class SharedStorage, class FragO, class Softmax, class Turns, class Prefetch>
  CUTE_DEVICE static void mma(Params const& params, SharedStorage& ss, WorkTile const& tile, int n_min,
                              int n_max, int kv_count, int q_count, int thread_idx, FragO& tOrO, Softmax& softmax,
                              Turns& turns, Prefetch&& prefetch) {
    using namespace cute;
    using Barrier = cutlass::arch::ClusterBarrier;
    typename Traits::TiledMmaQK tiled_mma_qk;
    typename Traits::TiledMmaPV tiled_mma_pv;
    auto thr_mma_qk = tiled_mma_qk.get_thread_slice(thread_idx);
    auto thr_mma_pv = tiled_mma_pv.get_thread_slice(thread_idx);

    Tensor tSrS = partition_fragment_C(tiled_mma_qk, select<0, 1>(typename Traits::TileShapeQK{}));
    Tensor cS = make_identity_tensor(select<0, 1>(typename Traits::TileShapeQK{}));
    Tensor tScS = thr_mma_qk.partition_C(cS);  // (row, col) of each score this thread holds
    // P in the register A-operand layout of the RS wgmma O += P V: the same
    // thread <-> element mapping as S, so P never goes through shared memory.
    Tensor tOrP = make_tensor<Element>(acc_layout_as_rs_a(tSrS.layout()));

    WindowMask const& mask = params.mask;
    const int m0 = tile.m_block * kBlockM;
    float o_scale[Traits::kRowsPerThread];

    // Softcap, mask and the online softmax of one block of scores; leaves
    // exp(S - max) in S and the factor O must be rescaled by in o_scale.
    // Returns whether one of this thread's rows got a new max. The softcap
    // (kCapped) and the mask test (mask_test_tag) are compile-time so that
    // the steady-state loop below is one basic block from its PV issue to the
    // PV wait: across a runtime branch with the PV GEMM in flight, ptxas
    // waits for that GEMM at the branches' join, before the row max, and the
    // softmax no longer starts under the warpgroup's own PV GEMM (head dim
    // 128, causal: +4.8% at 4k-16k in the harness,
    // benchmarks/results/2026-12-06f_h100_fa3_side_by_side.md).
    auto needs_mask = [&](int iter) CUTLASS_LAMBDA_FUNC_INLINE {
      const int n0 = n_block_at(iter, n_max) * kBlockN;
      bool need = n0 + kBlockN > mask.seqlen_k;
      if constexpr (kMasked) need = need || !mask.tile_inside_window(m0, m0 + kBlockM, n0, n0 + kBlockN);
      return need;
    };
    auto softmax_step = [&](int iter, auto mask_test_tag) CUTLASS_LAMBDA_FUNC_INLINE {
      if constexpr (kCapped) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(tSrS); ++i) {
          tSrS(i) = params.softcap * tanhf(tSrS(i) * params.softcap_in_scale);
        }
      }
      if constexpr (decltype(mask_test_tag)::value) {
        const int n0 = n_block_at(iter, n_max) * kBlockN;
        // row_key_begin grows with the row: the tile's last row starts last.
        const bool need_left = kMasked && mask.row_key_begin(m0 + kBlockM - 1) > n0;
        if (need_left) {
          apply_mask</*kLeft=*/true>(tSrS, tScS, mask, m0, n0);
        } else if (needs_mask(iter)) {
          apply_mask</*kLeft=*/false>(tSrS, tScS, mask, m0, n0);
        }
      }
      Tensor scores = rowcol_view(tSrS);
      return softmax.update(scores, o_scale);
    };
    // O *= o_scale: on every block, or (Traits::kRescaleOnNewMaxOnly) only
    // when a row of the warp got a new max (a warp-uniform branch, taken
    // where no wgmma is in flight).
    auto rescale_o = [&](bool new_max) {
      if constexpr (Traits::kRescaleOnNewMaxOnly) {
        if (__any_sync(0xffffffff, new_max)) scale_rows(tOrO, o_scale);
      } else {
        scale_rows(tOrO, o_scale);
      }
    };
    // Shared-memory operands are wgmma matrix descriptors (64-bit, one per K
    // slice and stage). K's and V's are rebuilt at each issue from a base
    // address the compiler cannot see through: hoisted out of the loop, every
    // stage's would stay live in registers. Q's depend on the thread only
    // through the warpgroup index: read as a warp-uniform shuffle (ptxas
    // cannot prove thread_idx / 128 uniform) it keeps them in uniform
    // registers, without an R2UR pair per wgmma, and up to head dim 128 (8 of
    // them) ptxas hoists them out of the loop; head dim 256's 16 would spill
    // (benchmarks/results/2026-12-04f_h200_fwd_q_descriptors.md).
    auto opaque = [](auto* ptr) {
      asm volatile("" : "+l"(ptr));
      return ptr;
    };
    auto q_base = [&] {
      if constexpr (kHeadDim <= 128) {
        return ss.smem_q.data();
      } else {
        return opaque(ss.smem_q.data());
      }
    };
    const int warpgroup = cutlass::canonical_warp_group_idx() - Traits::kNumProducerThreads / cutlass::NumThreadsPerWarpGroup;
    auto thr_mma_q = tiled_mma_qk.get_thread_slice(warpgroup * cutlass::NumThreadsPerWarpGroup);
    auto issue_qk = [&](int iter) {
      const RingSlot slot{kv_count + iter};
      Tensor sQ = make_tensor(make_smem_ptr(q_base()), typename Traits::SmemLayoutQ{});
      Tensor sK = make_tensor(make_smem_ptr(opaque(ss.smem_k.data())), typename Traits::SmemLayoutK{});
      Tensor tSrQ = thr_mma_q.partition_fragment_A(sQ);  // (MMA, MMA_M, MMA_K)
      Tensor tSrK = thr_mma_qk.partition_fragment_B(sK);  // (MMA, MMA_N, MMA_K, stage)
      Barrier::wait(&ss.full_k[slot.stage()], slot.phase());
      warpgroup_gemm</*kZeroInit=*/true, /*kARegs=*/false>(tiled_mma_qk, tSrQ, tSrK(_, _, _, slot.stage()), tSrS);
    };
    auto issue_pv = [&](int iter) {
      const RingSlot slot{kv_count + iter};
      Tensor sVt = make_tensor(make_smem_ptr(opaque(ss.smem_v.data())), typename Traits::SmemLayoutVt{});
      Tensor tOrV = thr_mma_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)
      Barrier::wait(&ss.full_v[slot.stage()], slot.phase());
      warpgroup_gemm</*kZeroInit=*/false, /*kARegs=*/true>(tiled_mma_pv, tOrP, tOrV(_, _, _, slot.stage()), tOrO);
    };
    const int n_iters = n_max - n_min;
    // Hands a stage back once the wgmmas reading it have been waited for. The
    // tile's last S GEMM is also the last read of Q: handing Q back there
    // (rather than after that block's softmax) starts the next tile's Q load
    // one softmax earlier.
    auto release_k = [&](int iter) {
      Barrier::arrive(&ss.empty_k[RingSlot{kv_count + iter}.stage()]);
      if (iter == n_iters - 1) Barrier::arrive(&ss.empty_q);
    };
    auto release_v = [&](int iter) { Barrier::arrive(&ss.empty_v[RingSlot{kv_count + iter}.stage()]); };

    // A block this warpgroup skips: its turns, and its K/V stages handed back
    // once loaded (an earlier release would count toward the previous use of
    // the stage while another warpgroup may still read it).
    constexpr int kTurnsPerBlock = Traits::kIntraWarpgroupOverlap ? 1 : 2;
    auto skip_block = [&](int iter) {
      if (iter > 0) prefetch(iter);
      for (int t = 0; t < kTurnsPerBlock; ++t) {
        turns.wait_mine();
        turns.pass();
      }
      const RingSlot slot{kv_count + iter};
      Barrier::wait(&ss.full_k[slot.stage()], slot.phase());
      release_k(iter);
      Barrier::wait(&ss.full_v[slot.stage()], slot.phase());
      release_v(iter);
    };

    // The dev timeline's events (a no-op outside JAX_FA3_FWD_TIMELINE builds).
    auto stamp = [&](FwdEvent event) { timeline_stamp(Traits::timeline(ss), event); };
    Barrier::wait(&ss.full_q, q_count & 1);
    stamp(FwdEvent::kQReady);
    const int first = first_live_block(params, tile.m_block, warpgroup, n_max, n_iters);
    for (int iter = 0; iter < first; ++iter) skip_block(iter);
    if constexpr (Traits::kIntraWarpgroupOverlap) {
      // Each branch waits for the wgmmas it issued (ptxas serialises every
      // wgmma of a kernel when one is in flight across a branch's edge).
      if (first < n_iters) {
        // Block j: S(j) and O += P(j-1) V(j-1) issued back to back. After the
        // softmax of S(j), finish_pv waits for that second GEMM, hands its V
        // stage back, rescales O (kRescaleOnNewMaxOnly) and converts S(j) into
        // P(j). Traits::kSoftmaxUnderOwnPv: finish_pv opens the next step, so
        // the whole softmax runs while the warpgroup's own PV GEMM is in
        // flight; otherwise ptxas places the PV wait inside the softmax, once
        // the row max and the shifts are done (the conversion into P must
        // wait: the PV GEMM in flight reads the previous P's registers).
        bool new_max = false;
        auto finish_pv = [&](int block) CUTLASS_LAMBDA_FUNC_INLINE {  // after the softmax of `block`
          warpgroup_wait<0>();
          if (block > first) release_v(block - 1);
          if constexpr (Traits::kRescaleOnNewMaxOnly) rescale_o(new_max);
          convert_fragment_into(tSrS, tOrP);
        };
        auto step = [&](int iter, auto mask_test_tag) CUTLASS_LAMBDA_FUNC_INLINE {
          prefetch(iter);
          if constexpr (Traits::kSoftmaxUnderOwnPv) finish_pv(iter - 1);
          turns.wait_mine();
          stamp(FwdEvent::kTurn);
          issue_qk(iter);
          // O is rescaled by the max change of block j-1 before the PV GEMM
          // adds to it: here under the S GEMM, or in finish_pv.
          if constexpr (!Traits::kRescaleOnNewMaxOnly) scale_rows(tOrO, o_scale);
          issue_pv(iter - 1);
          turns.pass();
          stamp(FwdEvent::kIssued);
          // With a softcap the tanh's registers do not fit beside P's, which
          // the PV GEMM in flight holds: wait for it before the softmax.
          if constexpr (kCapped) {
            warpgroup_wait<0>();
          } else {
            warpgroup_wait<1>();
          }
          stamp(FwdEvent::kSReady);
          release_k(iter);
          new_max = softmax_step(iter, mask_test_tag);
          stamp(FwdEvent::kSoftmaxDone);
          if constexpr (!Traits::kSoftmaxUnderOwnPv) finish_pv(iter);
        };
        // The blocks that need a mask test are a prefix of the walk (the end
        // of the keys, a causal diagonal) and, with a local window, a suffix;
        // the steady-state loop between them runs without any.
        int masked_end = first + 1, masked_begin = n_iters;
        if constexpr (kMasked && !kCapped) {
          while (masked_end < n_iters && needs_mask(masked_end)) ++masked_end;
          while (masked_begin > masked_end && needs_mask(masked_begin - 1)) --masked_begin;
        }
        // The first live block: S alone (O is still 0: no rescale).
        if (first > 0) prefetch(first);
        turns.wait_mine();
        stamp(FwdEvent::kTurn);
        issue_qk(first);
        turns.pass();
        stamp(FwdEvent::kIssued);
        warpgroup_wait<0>();
        stamp(FwdEvent::kSReady);
        release_k(first);
        softmax_step(first, cute::true_type{});
        stamp(FwdEvent::kSoftmaxDone);
        if constexpr (!Traits::kSoftmaxUnderOwnPv) finish_pv(first);
        int iter = first + 1;
        if constexpr (kCapped) {
          // The softmax waits for the PV GEMM anyway (step): one loop, fewer
          // copies of it (head dim 256's spilled with three).
          for (; iter < n_iters; ++iter) step(iter, cute::true_type{});
        } else {
          for (; iter < masked_end; ++iter) step(iter, cute::true_type{});
          for (; iter < masked_begin; ++iter) step(iter, cute::false_type{});
          for (; iter < n_iters; ++iter) step(iter, cute::true_type{});
        }
        if constexpr (Traits::kSoftmaxUnderOwnPv) finish_pv(n_iters - 1);
        turns.wait_mine();
        stamp(FwdEvent::kTurn);
        if constexpr (!Traits::kRescaleOnNewMaxOnly) scale_rows(tOrO, o_scale);
        issue_pv(n_iters - 1);
        turns.pass();
        stamp(FwdEvent::kIssued);
        warpgroup_wait<0>();
        release_v(n_iters - 1);
      } else {
        // Nothing live: the turn of the last PV, without it.
        turns.wait_mine();
        turns.pass();
      }
    } else {
      // One GEMM at a time: S(j), its softmax, then O += P(j) V(j).
      for (int iter = first; iter < n_iters; ++iter) {
        if (iter > 0) prefetch(iter);
        turns.wait_mine();
        issue_qk(iter);
        turns.pass();
        warpgroup_wait<0>();
        release_k(iter);
        rescale_o(softmax_step(iter, cute::true_type{}));
        convert_fragment_into(tSrS, tOrP);
        turns.wait_mine();
        issue_pv(iter);
        turns.pass();
        warpgroup_wait<0>();
        release_v(iter);
      }
    }
  }
};

}  // namespace jax_fa3
