// The one table of tile shapes. Kernels read their sizes from here and nowhere
// else; change a row only with a measurement that justifies it
// (benchmarks/results/).
#pragma once

namespace jax_fa3 {

// Forward: kBlockM query rows x kBlockN keys per iteration, kStages-deep K/V
// pipeline, kConsumerWarpgroups warpgroups doing the math.
template <int kHeadDim>
struct FwdTile;
template <> struct FwdTile<64>  { static constexpr int kBlockM = 128, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 2; };
template <> struct FwdTile<96>  { static constexpr int kBlockM = 128, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 2; };
template <> struct FwdTile<128> { static constexpr int kBlockM = 128, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 2; };
template <> struct FwdTile<192> { static constexpr int kBlockM = 128, kBlockN = 64,  kStages = 2, kConsumerWarpgroups = 2; };
template <> struct FwdTile<256> { static constexpr int kBlockM = 128, kBlockN = 64,  kStages = 2, kConsumerWarpgroups = 2; };

// Backward: one CTA per kBlockN keys, walking the queries kBlockM at a time.
// Each consumer warpgroup owns 64 keys x (kHeadDim / (kConsumerWarpgroups /
// (kBlockN / 64))) columns of dK/dV: with kBlockN = 128 the two warpgroups split
// the keys; with kBlockN = 64 they split head_dim (dK/dV of 64 x 256 would not
// fit one warpgroup's registers). kBlockM must be 64 (the dQ wgmma's M).
// Head dim 256 has one stage: two would need 270 KB of shared memory.
template <int kHeadDim>
struct BwdTile;
template <> struct BwdTile<64>  { static constexpr int kBlockM = 64, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 2; };
template <> struct BwdTile<96>  { static constexpr int kBlockM = 64, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 2; };
template <> struct BwdTile<128> { static constexpr int kBlockM = 64, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 2; };
template <> struct BwdTile<192> { static constexpr int kBlockM = 64, kBlockN = 64,  kStages = 2, kConsumerWarpgroups = 2; };
template <> struct BwdTile<256> { static constexpr int kBlockM = 64, kBlockN = 64,  kStages = 1, kConsumerWarpgroups = 2; };

}  // namespace jax_fa3
