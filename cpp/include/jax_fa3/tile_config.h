// The one table of tile shapes and schedules. Kernels read their sizes from
// here and nowhere else; change a row only with a measurement that justifies
// it (benchmarks/results/).
#pragma once

namespace jax_fa3 {

// Forward: kBlockM query rows x kBlockN keys per iteration, a kStages-deep K/V
// pipeline, kConsumerWarpgroups warpgroups of 64 query rows each doing the
// math. kPingPong: the consumer warpgroups take turns issuing their GEMMs
// (named barriers), so one warpgroup's softmax runs under the other's GEMMs;
// it pays where the softmax is a large share of an iteration (head dim <= 128).
// kMasked rows serve causal/local windows: a narrower kBlockN wastes less work
// on the blocks the diagonal cuts. Not at head dim 256: by our count, with 64
// keys the S = Q K^T wgmma (both operands read from shared memory by each
// warpgroup) needs about the 128 bytes per cycle shared memory supplies, and
// 80 keys ran 2-4% faster causal from 2k on, 2-3% slower at 512-1k
// (benchmarks/results/2026-12-04_h200_fwd_rescale.md).
//
// Shared memory (Q + kStages x (K + V)) must fit 227 KB and the consumer
// registers (O: kHeadDim/2, S: kBlockN/2, P: kBlockN/4 per thread) the
// setmaxnreg budget (240 with 2 consumer warpgroups, 160 with 3).
template <int kHeadDim, bool kMasked>
struct FwdTile;
template <bool kMasked> struct FwdTile<64, kMasked>  { static constexpr int kBlockM = 192, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 3; static constexpr bool kPingPong = true; };
template <bool kMasked> struct FwdTile<96, kMasked>  { static constexpr int kBlockM = 128, kBlockN = kMasked ? 128 : 160, kStages = 2, kConsumerWarpgroups = 2; static constexpr bool kPingPong = true; };
template <bool kMasked> struct FwdTile<128, kMasked> { static constexpr int kBlockM = 128, kBlockN = kMasked ? 128 : 176, kStages = 2, kConsumerWarpgroups = 2; static constexpr bool kPingPong = true; };
template <bool kMasked> struct FwdTile<192, kMasked> { static constexpr int kBlockM = 128, kBlockN = kMasked ? 96 : 112, kStages = 2, kConsumerWarpgroups = 2; static constexpr bool kPingPong = false; };
template <bool kMasked> struct FwdTile<256, kMasked> { static constexpr int kBlockM = 128, kBlockN = 80, kStages = 2, kConsumerWarpgroups = 2; static constexpr bool kPingPong = false; };

// Backward: one CTA per kBlockN keys, walking the queries. Each consumer
// warpgroup owns 64 keys x (kHeadDim / (kConsumerWarpgroups / (kBlockN / 64)))
// columns of dK/dV: with kBlockN = 128 the two warpgroups split the keys; with
// kBlockN = 64 they split head_dim (dK/dV of 64 x 256 would not fit one
// warpgroup's registers).
//
// How a CTA walks the queries differs by mode (BwdWalk): Fast and
// Deterministic. kBlockM queries per step (a multiple of 64, the dQ wgmma's M),
// a kStages-deep Q/dO ring, and where each step's dQ part goes:
//   kDQFromRegs: the MMA warpgroups add it into the fp32 accumulator straight
//     from their registers (red.global.add.v2.f32; fast mode only);
//   otherwise: through an fp32 smem tile that a writer warp bulk-reduces
//     (the deterministic mode enforces its order there).
// Head dim 64 walks 128 queries a step in both modes: against 64-query steps
// the fast mode gained 3-12% at every grid point once the 128-query kernel had
// lost its wgmma serialisation (benchmarks/results/2026-12-03b_h200_blocks.md).
// Head dim 256 keeps two Q/dO stages only without the 64 KB dQ tile (with it
// they would need 288 KB of shared memory).
template <int kBlockM_, int kStages_, bool kDQFromRegs_>
struct BwdWalk {
  static constexpr int kBlockM = kBlockM_, kStages = kStages_;
  static constexpr bool kDQFromRegs = kDQFromRegs_;
};
template <int kHeadDim>
struct BwdTile;
template <> struct BwdTile<64>  { static constexpr int kBlockN = 128, kConsumerWarpgroups = 2; using Fast = BwdWalk<128, 2, false>; using Deterministic = Fast; };
template <> struct BwdTile<96>  { static constexpr int kBlockN = 128, kConsumerWarpgroups = 2; using Fast = BwdWalk<64, 2, false>; using Deterministic = Fast; };
template <> struct BwdTile<128> { static constexpr int kBlockN = 128, kConsumerWarpgroups = 2; using Fast = BwdWalk<64, 2, false>; using Deterministic = Fast; };
template <> struct BwdTile<192> { static constexpr int kBlockN = 64,  kConsumerWarpgroups = 2; using Fast = BwdWalk<64, 2, false>; using Deterministic = Fast; };
template <> struct BwdTile<256> { static constexpr int kBlockN = 64,  kConsumerWarpgroups = 2; using Fast = BwdWalk<64, 2, true>;  using Deterministic = BwdWalk<64, 1, false>; };

template <int kHeadDim>
constexpr int bwd_block_m(bool deterministic) {
  return deterministic ? BwdTile<kHeadDim>::Deterministic::kBlockM : BwdTile<kHeadDim>::Fast::kBlockM;
}

}  // namespace jax_fa3
