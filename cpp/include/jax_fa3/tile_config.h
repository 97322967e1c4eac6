// The one table of tile shapes. Kernels read their sizes from here and nowhere
// else; change a row only with a measurement that justifies it
// (benchmarks/results/).
#pragma once

namespace jax_fa3 {

// Forward: kBlockM query rows x kBlockN keys per iteration, kStages-deep K/V
// pipeline, kConsumerWarpgroups warpgroups doing the math.
template <int kHeadDim>
struct FwdTile;
template <> struct FwdTile<64>  { static constexpr int kBlockM = 128, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 1; };
template <> struct FwdTile<96>  { static constexpr int kBlockM = 128, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 1; };
template <> struct FwdTile<128> { static constexpr int kBlockM = 128, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 1; };
template <> struct FwdTile<192> { static constexpr int kBlockM = 128, kBlockN = 64,  kStages = 2, kConsumerWarpgroups = 1; };
template <> struct FwdTile<256> { static constexpr int kBlockM = 128, kBlockN = 64,  kStages = 2, kConsumerWarpgroups = 1; };

// Backward: one CTA per kBlockN keys, walking the queries kBlockM at a time.
template <int kHeadDim>
struct BwdTile;
template <> struct BwdTile<64>  { static constexpr int kBlockM = 64, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 2; };
template <> struct BwdTile<96>  { static constexpr int kBlockM = 64, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 2; };
template <> struct BwdTile<128> { static constexpr int kBlockM = 64, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 2; };
template <> struct BwdTile<192> { static constexpr int kBlockM = 64, kBlockN = 64,  kStages = 2, kConsumerWarpgroups = 1; };
template <> struct BwdTile<256> { static constexpr int kBlockM = 64, kBlockN = 64,  kStages = 2, kConsumerWarpgroups = 1; };

}  // namespace jax_fa3
