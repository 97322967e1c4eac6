// Compile-time description of the backward main kernel: warpgroup roles,
// shared-memory layouts, wgmma tiled MMAs and the TMA descriptors' types.
// Every size comes from BwdTile (tile_config.h).
#pragma once

#include "jax_fa3/common/arch.h"

#include <type_traits>

#include <cute/tensor.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/numeric_types.h>

#include "jax_fa3/bwd/workspace_bwd.h"
#include "jax_fa3/common/utils.hpp"
#include "jax_fa3/tile_config.h"

namespace jax_fa3::bwd {

using namespace cute;

// The warpgroups of both backward designs: warpgroup 0 is the producer (warp
// 0 issues the TMA loads; in BwdTraits warp 1 sends the dQ tiles to the fp32
// accumulator), warpgroups 1..kWarpgroups do the math. setmaxnreg gives the
// producer's registers to them: the dK/dV accumulators, S/dP and their 16-bit
// copies live there.
struct BwdWarpRoles {
  static constexpr int kWarpgroups = 2;  // MMA warpgroups
  static constexpr int kMmaThreads = kWarpgroups * 128;
  static constexpr int kThreads = kMmaThreads + 128;
  static constexpr int kProducerRegs = 24;
  static constexpr int kMmaRegs = 240;
  static_assert(setmaxnreg_split_fits(kProducerRegs, 128, kMmaRegs, kMmaThreads),
                "setmaxnreg split exceeds the registers the CTA is launched with");
};

// The producer's loads in bytes (its mbarriers' transaction counts): a Q or
// dO tile, K and V together, a row term (lse2 or D).
template <class Element, int kBlockM, int kBlockN, int kHeadDim>
struct BwdLoadBytes {
  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesKV = 2 * kBlockN * kHeadDim * sizeof(Element);
  static constexpr uint32_t kRowTermBytes = kBlockM * sizeof(float);
};

// Shared-memory atoms come from gmma_smem_atom (common/utils.hpp): the widest
// GMMA swizzle that divides the tile's contiguous extent. The same bytes are
// read K-major by one wgmma and MN-major by another (Q is the K-major B of
// S = K Q^T and the MN-major B of dK = dS^T Q), so each buffer has a K-major
// atom view and an MN-major atom view of one layout.
// Walk: one of BwdTile's walks (Fast<kMasked> or Deterministic<kMasked>, tile_config.h).
template <class Element_, int kHeadDim_, class Walk>
struct BwdTraits : BwdWarpRoles, BwdLoadBytes<Element_, Walk::kBlockM, BwdTile<kHeadDim_>::kBlockN, kHeadDim_> {
  using Element = Element_;
  using Tile = BwdTile<kHeadDim_>;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = Walk::kBlockM;
  static constexpr int kBlockN = Tile::kBlockN;
  static constexpr int kStages = Walk::kStages;
  static constexpr bool kDQFromRegs = false;  // dQ goes out through the smem tile and the writer warp
  static constexpr bool kDQTransposed = Walk::kDQTransposed;
  static constexpr bool kDKVTransposed = false;  // BwdTraitsDKVt
  static constexpr bool kSplitdO = false;         // Q and dO share the ring's stages and barriers

  // Warpgroup w owns keys [64 * (w % kKeySplit), +64) and dK/dV columns
  // [kDSlice * (w / kKeySplit), +kDSlice). dQ = dS K is split by columns
  // over all warpgroups: kDQSlice each.
  // Warpgroups sharing a key slice (kDSplit > 1: head dims 192/256, where
  // 64 keys x the whole head dim of dK and dV would not fit one warpgroup's
  // registers) split the S/dP tile by query columns instead of both computing
  // all of it: kSdPCols each, and the P^T/dS^T halves meet in smem, where the
  // dV/dK GEMMs read them (kPdSInSmem). Otherwise P and dS stay in registers
  // as the A operands of dV/dK.
  static constexpr int kKeySplit = kBlockN / 64;
  static constexpr int kDSplit = kWarpgroups / kKeySplit;
  static constexpr int kDSlice = kHeadDim / kDSplit;
  static constexpr int kDQSlice = kHeadDim / kWarpgroups;
  static constexpr int kSdPCols = kBlockM / kDSplit;
  static constexpr bool kPdSInSmem = kDSplit > 1;
  // S and dP of 64 x 128 (kBlockM = 128) take 128 of the 240 registers: with
  // softcap, tanh's temporaries do not fit beside them (12-52 bytes of
  // spills), so dP is issued only once P is computed (bwd_mma). On every
  // tile, not only softcapped ones: a wgmma issued on one side of a runtime
  // branch only made ptxas serialise all of the kernel's wgmmas (C7514).
  // With 80 columns (head dim 128's 80-query walk) too: issued together, S
  // and dP spilled 8-16 bytes there; compiled without the softcap path they
  // fit, and still ran 2-3% slower without a mask, twice
  // (benchmarks/results/2026-12-06h_h100_bwd_dp_with_s.md).
  static constexpr bool kDPAfterP = kSdPCols > 64;
  static_assert(kDQTransposed ? kBlockM % 16 == 0 && kDQSlice == 64 : kBlockM % 64 == 0,
                "the dQ wgmma tiles kBlockM (or, transposed, is one M = 64 of kDQSlice); kBlockM is the K of dV/dK");
  // The dQ tile's order (BwdWorkspace::dq_offset): the accumulator fragment's
  // wherever a warpgroup's part is one wgmma accumulator.
  static constexpr DqLayout kDQLayout = kDQTransposed ? DqLayout::kFragmentTransposed
                                        : kBlockM == 64 ? DqLayout::kFragment
                                                        : DqLayout::kRowChunks;
  static_assert(kBlockN % 64 == 0 && kWarpgroups % kKeySplit == 0, "bad BwdTile row");
  static_assert(kHeadDim % kDSplit == 0 && kDSlice % 16 == 0, "bad BwdTile row");
  static_assert(kHeadDim % kWarpgroups == 0 && kDQSlice % 8 == 0, "bad BwdTile row");

  using BlockM = Int<kBlockM>;
  using BlockN = Int<kBlockN>;
  using HeadDim = Int<kHeadDim>;

  // Q and dO: [kBlockM, kHeadDim] per stage, K-major; transposed view
  // [kHeadDim, kBlockM] for the MN-major B of dK/dV (sliced by kDSlice).
  // Atom tiling order is chosen so both views address the same bytes.
  using SmemLayoutQ = decltype(tile_to_shape(gmma_smem_atom<Element, GMMA::Major::K, kDSlice>(),
                                             Shape<BlockM, HeadDim, Int<kStages>>{}));
  using SmemLayoutQt = decltype(tile_to_shape(gmma_smem_atom<Element, GMMA::Major::MN, kDSlice>(),
                                              Shape<HeadDim, BlockM, Int<kStages>>{}, Step<_2, _1, _3>{}));
  // K: [kBlockN, kHeadDim] K-major for S = K Q^T; transposed view for the
  // MN-major B of dQ = dS K (sliced by kDQSlice).
  using SmemLayoutK = decltype(tile_to_shape(gmma_smem_atom<Element, GMMA::Major::K, kDQSlice>(),
                                             Shape<BlockN, HeadDim>{}));
  using SmemLayoutKt = decltype(tile_to_shape(gmma_smem_atom<Element, GMMA::Major::MN, kDQSlice>(),
                                              Shape<HeadDim, BlockN>{}, Step<_2, _1>{}));
  using SmemLayoutV = decltype(tile_to_shape(gmma_smem_atom<Element, GMMA::Major::K, kHeadDim>(),
                                             Shape<BlockN, HeadDim>{}));
  // dS: written as dS^T [kBlockN, kBlockM] straight from the accumulators
  // (queries contiguous), read as the MN-major A [kBlockM, kBlockN] of dQ
  // (transposed: its B). Two buffers, alternating by step: a warpgroup may
  // write step t+1's dS while the other still runs step t's dQ GEMM on the
  // other buffer.
  static constexpr int kStagesdS = 2;
  using SmemLayoutdS = decltype(tile_to_shape(gmma_smem_atom<Element, GMMA::Major::MN, kBlockM>(),
                                              Shape<BlockM, BlockN, Int<kStagesdS>>{}));
  using SmemLayoutdSt = decltype(tile_to_shape(gmma_smem_atom<Element, GMMA::Major::K, kBlockM>(),
                                               Shape<BlockN, BlockM, Int<kStagesdS>>{}, Step<_2, _1, _3>{}));
  using SmemLayoutdO = SmemLayoutQ;  // the same ring
  // One stage of Q/dO, as the TMA box sees it.
  using SmemLayoutQStage = decltype(take<0, 2>(SmemLayoutQ{}));

  // Per-warpgroup tiled MMAs (one warpgroup each, M = 64).
  using MmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kSdPCols>, HeadDim>, GMMA::Major::K,
                           GMMA::Major::K>(),
      Layout<Shape<_1, _1, _1>>{}));
  // dV += P^T dO and dK += dS^T Q: A (P^T, dS^T) straight from the S/dP
  // accumulator registers (RS), or from smem with kPdSInSmem (SS); B MN-major
  // from smem.
  using MmadKVRegs = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kDSlice>, BlockM>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      Layout<Shape<_1, _1, _1>>{}));
  using MmadKVSmem = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kDSlice>, BlockM>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      Layout<Shape<_1, _1, _1>>{}));
  using MmadKV = std::conditional_t<kPdSInSmem, MmadKVSmem, MmadKVRegs>;
  // dQ[:, slice] = dS K[:, slice] (A = dS, B = K^T's slice), or transposed
  // dQ^T[slice, :] = K^T[slice, :] dS^T (A = K^T's slice, B = dS): the same
  // smem views, both MN-major. DQTile: the warpgroup's accumulator tile.
  using DQTile = std::conditional_t<kDQTransposed, Shape<Int<kDQSlice>, BlockM>, Shape<BlockM, Int<kDQSlice>>>;
  using MmadQ = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, decltype(append(DQTile{}, BlockN{})), GMMA::Major::MN,
                           GMMA::Major::MN>(),
      Layout<Shape<_1, _1, _1>>{}));

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> dout;
    cute::array_aligned<Element, cosize_v<SmemLayoutK>, 1024> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutV>, 1024> v;
    cute::array_aligned<Element, cosize_v<SmemLayoutdS>, 1024> ds;
    // P^T, laid out like dS^T; only used with kPdSInSmem (unused, 16 bytes:
    // aligned to 1 KB, its type would take 1 KB).
    cute::array_aligned<Element, kPdSInSmem ? cosize_v<SmemLayoutdS> : 8, kPdSInSmem ? 1024 : 16> p;
    // fp32 dQ tile of this step (BwdWorkspace::dq_offset, kDQLayout), one
    // contiguous kBlockM x kDQSlice part per MMA warpgroup: the bytes the
    // writer's bulk reduce-adds send to the workspace accumulator. Not
    // swizzled, so no 1 KB alignment (which would leave a hole behind an
    // unused p that head dim 128's 80-query walk cannot spare).
    cute::array_aligned<float, kBlockM * kHeadDim, 128> dq;
    cute::array_aligned<float, kStages * kBlockM, 16> lse2;
    cute::array_aligned<float, kStages * kBlockM, 16> dpsum;
    // Q/dO/row-term ring: full (TMA transaction count) and empty (every MMA
    // thread arrives once the step's GEMMs reading the stage are done).
    alignas(8) uint64_t full_bar[kStages];
    alignas(8) uint64_t empty_bar[kStages];
    alignas(8) uint64_t kv_bar;
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  // + 1024: the kernel aligns the storage to 1024 bytes inside its window.
  static_assert(kSmemBytes + 1024 <= 227 * 1024, "backward tile does not fit in shared memory");
};

// The traits of BwdWalkDKVt (head dim 256, 80 keys a CTA; tile_config.h):
// per step of kBlockM = 64 queries, MMA warpgroup w computes
//   S = Q K_w^T, dP = dO V_w^T       (64 x 40: keys [40 w, 40 w + 40))
//   dV_w^T += dO_w^T P, dK_w^T += Q_w^T dS   (head-dim rows [128 w, +128) x 80
//                                      keys, two 64-row slices each)
//   dQ[:, w] = dS K_w                 (64 x 128 columns, two 64-column halves)
// with P and dS (64 x 80) exchanged through smem. The producer, the K/V load
// and the dQ reduce-adds from registers are BwdTraits'; Q and dO have rings of
// their own (kStages Q stages, kStagesdO dO stages: two of each do not fit).
template <class Element_, int kHeadDim_, class Walk>
struct BwdTraitsDKVt : BwdWarpRoles, BwdLoadBytes<Element_, Walk::kBlockM, Walk::kBlockN, kHeadDim_> {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = Walk::kBlockM;
  static constexpr int kBlockN = Walk::kBlockN;
  static constexpr int kStages = Walk::kStages;
  static constexpr int kStagesdO = Walk::kStagesdO;
  static constexpr bool kDKVTransposed = true;
  static constexpr bool kSplitdO = true;
  static constexpr bool kDQFromRegs = true;  // no writer warp
  static_assert(Walk::kDKVTransposed, "a BwdWalkDKVt");
  static constexpr int kSdPKeys = kBlockN / kWarpgroups;      // S/dP columns of a warpgroup
  static constexpr int kDKVRows = kHeadDim / kWarpgroups;     // dK^T/dV^T rows of a warpgroup
  static constexpr int kDKVSlices = kDKVRows / 64;            // one wgmma (M = 64) each
  static constexpr int kDQSlice = kHeadDim / kWarpgroups;     // dQ columns of a warpgroup
  static constexpr int kDQHalves = kDQSlice / 64;             // sent one after the other
  static constexpr DqLayout kDQLayout = DqLayout::kFragment;
  static_assert(kBlockM == 64 && kSdPKeys % 8 == 0 && kDKVRows % 64 == 0 && kDQSlice % 64 == 0, "bad walk");

  using BlockM = Int<kBlockM>;
  using BlockN = Int<kBlockN>;
  using HeadDim = Int<kHeadDim>;
  using SdPKeys = Int<kSdPKeys>;

  // Q, dO: [kBlockM, kHeadDim] K-major (A of S, dP); transposed views
  // [kHeadDim, kBlockM] for the MN-major A of dK^T/dV^T (64-row slices).
  template <int kRingStages>
  using SmemLayoutRows = decltype(tile_to_shape(gmma_smem_atom<Element, GMMA::Major::K, 64>(),
                                                Shape<BlockM, HeadDim, Int<kRingStages>>{}));
  template <int kRingStages>
  using SmemLayoutRowsT = decltype(tile_to_shape(gmma_smem_atom<Element, GMMA::Major::MN, 64>(),
                                                 Shape<HeadDim, BlockM, Int<kRingStages>>{}, Step<_2, _1, _3>{}));
  using SmemLayoutQ = SmemLayoutRows<kStages>;
  using SmemLayoutQt = SmemLayoutRowsT<kStages>;
  using SmemLayoutdO = SmemLayoutRows<kStagesdO>;
  using SmemLayoutdOt = SmemLayoutRowsT<kStagesdO>;
  using SmemLayoutQStage = decltype(take<0, 2>(SmemLayoutQ{}));
  // K, V: [kBlockN, kHeadDim] K-major (B of S, dP: 40-key slices); K's
  // transposed view is the MN-major B of dQ (64-column halves).
  using SmemLayoutK = decltype(tile_to_shape(gmma_smem_atom<Element, GMMA::Major::K, 64>(),
                                             Shape<BlockN, HeadDim>{}));
  using SmemLayoutKt = decltype(tile_to_shape(gmma_smem_atom<Element, GMMA::Major::MN, 64>(),
                                              Shape<HeadDim, BlockN>{}, Step<_2, _1>{}));
  using SmemLayoutV = SmemLayoutK;
  // P and dS: [kBlockM, kBlockN] keys contiguous, written from the S/dP
  // accumulators by stmatrix, read as the K-major A of dQ and, transposed
  // ([kBlockN, kBlockM]), as the MN-major B of dK^T/dV^T. Unswizzled 8x8
  // core matrices: a warpgroup's 40 keys are not a whole swizzle atom. Two
  // stages by step parity, so that a warpgroup may write step t + 1's while
  // the other still reads step t's (as BwdTraits' dS).
  static constexpr int kStagesPdS = 2;
  using SmemLayoutPdS = decltype(tile_to_shape(GMMA::Layout_K_INTER_Atom<Element>{},
                                               Shape<BlockM, BlockN, Int<kStagesPdS>>{}));
  using SmemLayoutPdSt = decltype(tile_to_shape(GMMA::Layout_MN_INTER_Atom<Element>{},
                                                Shape<BlockN, BlockM, Int<kStagesPdS>>{}, Step<_2, _1, _3>{}));

  using MmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<BlockM, SdPKeys, HeadDim>, GMMA::Major::K,
                           GMMA::Major::K>(),
      Layout<Shape<_1, _1, _1>>{}));
  using MmadKV = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, BlockN, BlockM>, GMMA::Major::MN,
                           GMMA::Major::MN>(),
      Layout<Shape<_1, _1, _1>>{}));
  using MmadQ = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<BlockM, _64, BlockN>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      Layout<Shape<_1, _1, _1>>{}));

  // The epilogue's dK/dV tile of a warpgroup in Q's smem (free by then):
  // kBlockN keys x kDKVRows columns, rows padded by 8 elements so that
  // stmatrix's 8 rows of a matrix fall on distinct banks.
  static constexpr int kEpiloguePitch = kDKVRows + 8;
  static constexpr int kEpilogueTileElems = kBlockN * kEpiloguePitch;

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutdO>, 1024> dout;
    cute::array_aligned<Element, cosize_v<SmemLayoutK>, 1024> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutV>, 1024> v;
    cute::array_aligned<Element, cosize_v<SmemLayoutPdS>, 1024> p;
    cute::array_aligned<Element, cosize_v<SmemLayoutPdS>, 1024> ds;
    cute::array_aligned<float, kStages * kBlockM, 16> lse2;
    cute::array_aligned<float, kStagesdO * kBlockM, 16> dpsum;
    alignas(8) uint64_t full_bar[kStages];     // Q ring
    alignas(8) uint64_t empty_bar[kStages];
    alignas(8) uint64_t full_do_bar[kStagesdO];  // dO ring
    alignas(8) uint64_t empty_do_bar[kStagesdO];
    alignas(8) uint64_t kv_bar;
  };
  static_assert(kWarpgroups * kEpilogueTileElems <= cosize_v<SmemLayoutQ>, "epilogue tile must fit Q's smem");
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes + 1024 <= 227 * 1024, "backward tile does not fit in shared memory");
};

template <class Element, int kHeadDim, class Walk>
using BwdTraitsOf = std::conditional_t<Walk::kDKVTransposed, BwdTraitsDKVt<Element, kHeadDim, Walk>,
                                       BwdTraits<Element, kHeadDim, Walk>>;

// Global views with the real head_dim as the inner extent, so TMA fills the
// columns between head_dim and the bucket with zeros.
// (seqlen, head_dim, heads, batch) of a dense BSHD tensor.
template <class Element>
JAX_FA3_HOST_DEVICE auto make_bshd_tensor(const Element* ptr, int seqlen, int head_dim, int heads, int batch) {
  return make_tensor(make_gmem_ptr(ptr), make_shape(seqlen, head_dim, heads, batch),
                     make_stride(int64_t(heads) * head_dim, _1{}, int64_t(head_dim),
                                 int64_t(seqlen) * heads * head_dim));
}

template <class Traits>
auto make_tma_q(const typename Traits::Element* ptr, int seqlen, int head_dim, int heads, int batch) {
  return make_tma_copy(SM90_TMA_LOAD{}, make_bshd_tensor(ptr, seqlen, head_dim, heads, batch),
                       typename Traits::SmemLayoutQStage{},
                       Shape<typename Traits::BlockM, typename Traits::HeadDim>{}, _1{});
}
template <class Traits>
auto make_tma_k(const typename Traits::Element* ptr, int seqlen, int head_dim, int heads, int batch) {
  return make_tma_copy(SM90_TMA_LOAD{}, make_bshd_tensor(ptr, seqlen, head_dim, heads, batch),
                       typename Traits::SmemLayoutK{},
                       Shape<typename Traits::BlockN, typename Traits::HeadDim>{}, _1{});
}
template <class Traits>
auto make_tma_v(const typename Traits::Element* ptr, int seqlen, int head_dim, int heads, int batch) {
  return make_tma_copy(SM90_TMA_LOAD{}, make_bshd_tensor(ptr, seqlen, head_dim, heads, batch),
                       typename Traits::SmemLayoutV{},
                       Shape<typename Traits::BlockN, typename Traits::HeadDim>{}, _1{});
}

template <class Traits>
struct BwdTmaTypes {
  using TmaQ = decltype(make_tma_q<Traits>(nullptr, 1, 8, 1, 1));
  using TmaK = decltype(make_tma_k<Traits>(nullptr, 1, 8, 1, 1));
  using TmaV = decltype(make_tma_v<Traits>(nullptr, 1, 8, 1, 1));
};

}  // namespace jax_fa3::bwd
