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
  using WorkTile = FwdSingleTileScheduler::WorkTile;

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

  // Producer: a single thread issues every bulk tensor copy. Each K/V stage has
  // a `full` mbarrier (completes when the copy engine has written the stage's
  // bytes) and an `empty` one (completes when every consumer thread has
  // finished reading it), so loads run kStages blocks ahead of the math.
  template <class SharedStorage>
  CUTE_DEVICE static void load(Params const& params, SharedStorage& ss, WorkTile const& tile, int n_min,
                               int n_max) {
    using namespace cute;
    using Barrier = cutlass::arch::ClusterTransactionBarrier;
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

    Barrier::arrive_and_expect_tx(&ss.barrier_q, Traits::kBytesQ);
    copy(params.tma_q.with(ss.barrier_q), tQgQ, tQsQ);

    const int n_iters = n_max - n_min;
    for (int iter = 0; iter < n_iters; ++iter) {
      const int n_block = n_block_at(iter, n_max);
      const int stage = iter % kStages;
      // The first pass over the ring waits on parity 1 of fresh barriers,
      // which counts as already completed.
      const uint32_t empty_phase = ((iter / kStages) & 1) ^ 1;
      cutlass::arch::ClusterBarrier::wait(&ss.empty_k[stage], empty_phase);
      Barrier::arrive_and_expect_tx(&ss.full_k[stage], Traits::kBytesKStage);
      copy(params.tma_k.with(ss.full_k[stage]), tKgK(_, _, _, n_block), tKsK(_, _, _, stage));
      cutlass::arch::ClusterBarrier::wait(&ss.empty_v[stage], empty_phase);
      Barrier::arrive_and_expect_tx(&ss.full_v[stage], Traits::kBytesVStage);
      copy(params.tma_v.with(ss.full_v[stage]), tVgV(_, _, _, n_block), tVsV(_, _, _, stage));
    }
  }

  // Scores outside the window or beyond the sequence ends become -inf, so
  // they get probability 0. Element-wise test through WindowMask::visible,
  // the single definition of the mask; only run on blocks that need it.
  template <class TensorS, class TensorC>
  CUTE_DEVICE static void apply_mask(TensorS& tSrS, TensorC const& tScS, WindowMask const& mask, int m0,
                                     int n0) {
    using namespace cute;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(tSrS); ++i) {
      if (!mask.visible(m0 + get<0>(tScS(i)), n0 + get<1>(tScS(i)))) { tSrS(i) = -INFINITY; }
    }
  }

  // Consumer: accumulates the unnormalised O of this tile into tOrO (cleared by
  // the caller) and the softmax row statistics into `softmax`.
  template <class SharedStorage, class FragO, class Softmax>
  CUTE_DEVICE static void mma(Params const& params, SharedStorage& ss, WorkTile const& tile, int n_min,
                              int n_max, int thread_idx, FragO& tOrO, Softmax& softmax) {
    using namespace cute;
    typename Traits::TiledMmaQK tiled_mma_qk;
    typename Traits::TiledMmaPV tiled_mma_pv;
    auto thr_mma_qk = tiled_mma_qk.get_thread_slice(thread_idx);
    auto thr_mma_pv = tiled_mma_pv.get_thread_slice(thread_idx);

    Tensor sQ = make_tensor(make_smem_ptr(ss.smem_q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.smem_k.data()), typename Traits::SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(ss.smem_v.data()), typename Traits::SmemLayoutVt{});
    // Shared-memory operands become wgmma matrix descriptors, not registers.
    Tensor tSrQ = thr_mma_qk.partition_fragment_A(sQ);   // (MMA, MMA_M, MMA_K)
    Tensor tSrK = thr_mma_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stage)
    Tensor tOrV = thr_mma_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)

    Tensor tSrS = partition_fragment_C(tiled_mma_qk, select<0, 1>(typename Traits::TileShapeQK{}));
    Tensor cS = make_identity_tensor(select<0, 1>(typename Traits::TileShapeQK{}));
    Tensor tScS = thr_mma_qk.partition_C(cS);  // (row, col) of each score this thread holds

    WindowMask const& mask = params.mask;
    const int m0 = tile.m_block * kBlockM;
    const bool capped = params.softcap > 0.f;

    cutlass::arch::ClusterBarrier::wait(&ss.barrier_q, 0);
    const int n_iters = n_max - n_min;
    for (int iter = 0; iter < n_iters; ++iter) {
      const int n_block = n_block_at(iter, n_max);
      const int n0 = n_block * kBlockN;
      const int stage = iter % kStages;
      const uint32_t full_phase = (iter / kStages) & 1;

      cutlass::arch::ClusterBarrier::wait(&ss.full_k[stage], full_phase);
      warpgroup_gemm</*kZeroInit=*/true, /*kARegs=*/false>(tiled_mma_qk, tSrQ, tSrK(_, _, _, stage), tSrS);
      warpgroup_wait<0>();
      // The wgmma reads of this K stage are complete: hand it back.
      cutlass::arch::ClusterBarrier::arrive(&ss.empty_k[stage]);

      if (capped) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(tSrS); ++i) {
          tSrS(i) = params.softcap * tanhf(tSrS(i) * params.softcap_in_scale);
        }
      }
      const bool partial_keys = n0 + kBlockN > mask.seqlen_k;
      bool need_mask = partial_keys;
      if constexpr (kMasked) {
        need_mask = need_mask || !mask.tile_inside_window(m0, m0 + kBlockM, n0, n0 + kBlockN);
      }
      if (need_mask) { apply_mask(tSrS, tScS, mask, m0, n0); }

      float o_scale[Traits::kRowsPerThread];
      Tensor scores = rowcol_view(tSrS);
      softmax.update(scores, o_scale);
      scale_rows(tOrO, o_scale);

      // P goes straight from the S accumulator registers into the A operand
      // of the RS wgmma (same thread <-> element mapping), never to shared memory.
      Tensor tSrP = convert_fragment<Element>(tSrS);
      Tensor tOrP = make_tensor(tSrP.data(), acc_layout_as_rs_a(tSrS.layout()));

      cutlass::arch::ClusterBarrier::wait(&ss.full_v[stage], full_phase);
      warpgroup_gemm</*kZeroInit=*/false, /*kARegs=*/true>(tiled_mma_pv, tOrP, tOrV(_, _, _, stage), tOrO);
      warpgroup_wait<0>();
      cutlass::arch::ClusterBarrier::arrive(&ss.empty_v[stage]);
    }
  }
};

}  // namespace jax_fa3
