// Compile-time shape of the Hopper forward kernel: tile sizes (from
// tile_config.h only), thread roles, the two wgmma tiled MMAs and the shared
// memory layouts they and the TMA copies agree on.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cutlass/numeric_types.h>
#include <type_traits>

#include "jax_fa3/common/utils.hpp"
#include "jax_fa3/fwd/tile_scheduler_fwd_sm90.hpp"
#include "jax_fa3/fwd/timeline_fwd_sm90.hpp"
#include "jax_fa3/tile_config.h"

namespace jax_fa3 {

// Ablation switches for the dev harness's measurements of what each schedule
// feature is worth (benchmarks/results/*_fwd_ablation.md); the library build
// never sets them.
#ifndef JAX_FA3_FWD_ABLATE_PINGPONG
#define JAX_FA3_FWD_ABLATE_PINGPONG 0
#endif
#ifndef JAX_FA3_FWD_ABLATE_OVERLAP
#define JAX_FA3_FWD_ABLATE_OVERLAP 0
#endif
#ifndef JAX_FA3_FWD_ABLATE_PERSISTENT
#define JAX_FA3_FWD_ABLATE_PERSISTENT 0
#endif
// Unmasked kernels only (the masked ones' dynamic scheduler needs the
// producer); the harness reports the masked ones as not built.
#ifndef JAX_FA3_FWD_ABLATE_WARPSPEC
#define JAX_FA3_FWD_ABLATE_WARPSPEC 0
#endif

template <class Element_, int kHeadDim_, FwdVariant kVariant>
struct FwdKernelTraitsSm90 {
  using Element = Element_;
  using ElementAccum = float;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kMasked = kVariant == FwdVariant::kMasked;

  using Tile = FwdTile<kHeadDim, kVariant != FwdVariant::kUnmasked>;
  static constexpr int kBlockM = Tile::kBlockM;
  static constexpr int kBlockN = Tile::kBlockN;
  static constexpr int kStages = Tile::kStages;
  static constexpr int kConsumerWarpgroups = Tile::kConsumerWarpgroups;
  // Ping-pong: consumer warpgroups issue their GEMMs in turn (WarpgroupTurns).
  static constexpr bool kPingPong = Tile::kPingPong && kConsumerWarpgroups > 1 && !JAX_FA3_FWD_ABLATE_PINGPONG;
  // Intra-warpgroup overlap: each warpgroup issues S(j) = Q K(j)^T and
  // O += P(j-1) V(j-1) back to back and runs the softmax of block j while the
  // second GEMM is in flight (FwdMainloopSm90::mma).
  static constexpr bool kIntraWarpgroupOverlap = !JAX_FA3_FWD_ABLATE_OVERLAP;
  // With ping-pong, O is rescaled on every block under the warpgroup's own
  // S GEMM, where the multiplies cost nothing; without it (head dims 192/256,
  // whose O is 96-128 registers a thread) only when a row of the warp got a
  // new max, after the PV GEMM: head dim 256 without a mask gained 0-4% by
  // it, head dims 64/128 lost 0-2% (benchmarks/results/2026-12-04_h200_fwd_rescale.md).
  static constexpr bool kRescaleOnNewMaxOnly = !kPingPong;
  // The softmax of block j under the warpgroup's own O += P(j-1) V(j-1)
  // (FwdMainloopSm90::mma): without ping-pong, head dim 256 gained 1-4.5%
  // by it; with ping-pong, where the other warpgroup's GEMMs already cover
  // the softmax, head dims 64/128 lost 0-3% (benchmarks/results/2026-12-04b_h200_fwd_softmax.md).
  static constexpr bool kSoftmaxUnderOwnPv = !kPingPong;
  // Persistent grid (one CTA per SM looping over tiles): the next tile's loads
  // start under this tile's last GEMM and epilogue.
  static constexpr bool kPersistent = !JAX_FA3_FWD_ABLATE_PERSISTENT;
  // Equal tiles: a static schedule; tiles a mask makes unequal: dynamic.
  using Scheduler = std::conditional_t<!kPersistent, FwdSingleTileScheduler,
                                       std::conditional_t<kMasked, FwdDynamicScheduler, FwdStaticScheduler>>;

  // Warp specialisation: warpgroup 0 only feeds shared memory through TMA (one
  // thread issues every copy), the consumer warpgroups only do math. A wgmma is
  // issued per warpgroup over 64 rows, so each consumer warpgroup owns 64 query
  // rows of the block.
  static constexpr bool kWarpSpecialized = !(JAX_FA3_FWD_ABLATE_WARPSPEC && !kMasked);
  static_assert(kBlockM == 64 * kConsumerWarpgroups, "each consumer warpgroup owns 64 query rows");
  static_assert(kBlockN % 16 == 0 && kHeadDim % 16 == 0, "wgmma K slices are 16 wide");
  static_assert(kConsumerWarpgroups >= 1 && kConsumerWarpgroups <= 3, "register budget below covers 1-3 consumers");
  static constexpr int kNumProducerThreads = kWarpSpecialized ? cutlass::NumThreadsPerWarpGroup : 0;
  static constexpr int kNumConsumerThreads = kConsumerWarpgroups * cutlass::NumThreadsPerWarpGroup;
  static constexpr int kNumThreads = kNumProducerThreads + kNumConsumerThreads;
  // setmaxnreg moves registers from the producer (which needs almost none) to
  // the consumers, which hold the O and S accumulators and P (see the budget
  // in tile_config.h), within the registers the CTA is launched with.
  static constexpr int kProducerRegs = kConsumerWarpgroups == 1 ? 56 : kConsumerWarpgroups == 2 ? 40 : 32;
  static constexpr int kConsumerRegs = kConsumerWarpgroups == 1 ? 256 : kConsumerWarpgroups == 2 ? 232 : 160;
  static_assert(setmaxnreg_split_fits(kProducerRegs, kNumProducerThreads, kConsumerRegs, kNumConsumerThreads),
                "setmaxnreg split exceeds the registers the CTA is launched with");
  static_assert(kHeadDim / 2 + kBlockN / 2 + kBlockN / 4 + 24 <= kConsumerRegs,
                "O, S and P fragments exceed the consumer register budget: shrink kBlockN");

  // S = Q K^T : (M = kBlockM, N = kBlockN, K = kHeadDim); O = P V : (M = kBlockM, N = kHeadDim, K = kBlockN).
  using TileShapeQK = cute::Shape<cute::Int<kBlockM>, cute::Int<kBlockN>, cute::Int<kHeadDim>>;
  using TileShapePV = cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>, cute::Int<kBlockN>>;
  using AtomLayoutMNK = cute::Layout<cute::Shape<cute::Int<kConsumerWarpgroups>, cute::_1, cute::_1>>;

  // Both operands of S = Q K^T come from shared memory (SS wgmma), K-major
  // (head_dim contiguous) exactly as TMA lands them.
  using TiledMmaQK = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, ElementAccum,
                                 cute::Shape<cute::_64, cute::Int<kBlockN>, cute::Int<kHeadDim>>>(),
      AtomLayoutMNK{}));
  static_assert(cute::size<1>(typename TiledMmaQK::AtomShape_MNK{}) == kBlockN,
                "S = Q K^T must be one wgmma per K slice (N = kBlockN)");
  // O += P V takes P from registers (RS wgmma: the softmax output never goes
  // through shared memory) and V from shared memory. This GEMM reduces over
  // keys while V's contiguous dimension is head_dim (its N), so V is an
  // MN-major B operand (wgmma transposes 16-bit B operands for free).
  using TiledMmaPV = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, ElementAccum,
                                 cute::Shape<cute::_64, cute::Int<kHeadDim>, cute::Int<kBlockN>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      AtomLayoutMNK{}));
  static_assert(cute::size<1>(typename TiledMmaPV::AtomShape_MNK{}) == kHeadDim,
                "O += P V must be one wgmma per K slice (N = kHeadDim)");

  // Q and K: (rows, head_dim), head_dim contiguous. V is described directly in
  // the (head_dim, keys) coordinates of the second GEMM's B operand; in memory
  // it is the same head_dim-contiguous tile, so TMA loads it with a transposed
  // view of the global tensor and no data is moved to transpose it.
  using SmemAtomQK = decltype(gmma_smem_atom<Element, cute::GMMA::Major::K, kHeadDim>());
  using SmemAtomVt = decltype(gmma_smem_atom<Element, cute::GMMA::Major::MN, kHeadDim>());
  using SmemLayoutQ = decltype(cute::tile_to_shape(SmemAtomQK{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(cute::tile_to_shape(
      SmemAtomQK{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));
  using SmemLayoutVt = decltype(cute::tile_to_shape(
      SmemAtomVt{}, cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>, cute::Int<kStages>>{}));

  // One pipeline stage, as the TMA copies see it (the stage index is the
  // outermost mode of the staged layouts, so stage 0 of those is exactly this).
  using SmemLayoutKStage = decltype(cute::tile_to_shape(SmemAtomQK{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>{}));
  using SmemLayoutVtStage = decltype(cute::tile_to_shape(SmemAtomVt{}, cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>>{}));

  // Rows of the score tile each consumer thread owns (2 per 64-row wgmma).
  static constexpr int kRowsPerThread = 2 * (kBlockM / (64 * kConsumerWarpgroups));

  static constexpr int kBytesQ = kBlockM * kHeadDim * int(sizeof(Element));
  static constexpr int kBytesKStage = kBlockN * kHeadDim * int(sizeof(Element));
  static constexpr int kBytesVStage = kBlockN * kHeadDim * int(sizeof(Element));

  // 128-byte swizzled tiles must start on 1024-byte boundaries (the swizzle
  // pattern repeats every 8 rows of 128 bytes); every stage size here is a
  // multiple of that.
  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>, 1024> smem_q;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, 1024> smem_k;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutVt>, 1024> smem_v;
    // TMA completion (full: transaction-counted) and consumer release (empty)
    // mbarriers of the K/V ring, and of the Q buffer (one tile at a time).
    alignas(8) uint64_t full_q;
    uint64_t empty_q;
    uint64_t full_k[kStages];
    uint64_t full_v[kStages];
    uint64_t empty_k[kStages];
    uint64_t empty_v[kStages];
    typename Scheduler::SharedStorage scheduler;
  };
  // The dev timeline's stamps (timeline_fwd_sm90.hpp) sit right after the
  // shared storage, and only in builds that record them.
  using Timeline = FwdTimeline<kNumThreads / 32>;
  CUTE_DEVICE static Timeline& timeline(SharedStorage& ss) { return *reinterpret_cast<Timeline*>(&ss + 1); }
  // + 1024: the dynamic shared memory window is only guaranteed 16-byte
  // alignment; the kernel rounds its base up to 1024.
  static constexpr int kSmemBytes =
      int(sizeof(SharedStorage)) + (JAX_FA3_FWD_TIMELINE ? int(sizeof(Timeline)) : 0) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit in H100 shared memory");
};

}  // namespace jax_fa3
