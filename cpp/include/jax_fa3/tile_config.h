// The one table of tile shapes and schedules. Kernels read their sizes from
// here and nowhere else; change a row only with a measurement that justifies
// it (benchmarks/results/).
#pragma once

#include <type_traits>

namespace jax_fa3 {

// Forward: kBlockM query rows x kBlockN keys per iteration, a kStages-deep K/V
// pipeline, kConsumerWarpgroups warpgroups of 64 query rows each doing the
// math. kPingPong: the consumer warpgroups take turns issuing their GEMMs
// (named barriers), so one warpgroup's softmax runs under the other's GEMMs;
// it pays where the softmax is a large share of an iteration (head dim <= 128).
// kNarrowKeys rows serve causal/local windows: a narrower kBlockN wastes less
// work on the blocks the diagonal cuts. Not at head dim 256: by our count, with
// 64 keys the S = Q K^T wgmma (both operands read from shared memory by each
// warpgroup) needs about the 128 bytes per cycle shared memory supplies, and
// 80 keys ran 2-4% faster causal from 2k on, 2-3% slower at 512-1k
// (benchmarks/results/2026-12-04_h200_fwd_rescale.md).
//
// Head dim 128's wide blocks are 176 keys, the most the registers allow (O, S
// and P take 196 of the 232). Through JAX, against 160 (two A/B runs of the
// wheels in turns, bf16 and fp16, benchmarks/results/2026-12-06g_h100_fwd_176.md):
// +1.8-4.5% at 8k-16k keys, level at 2k-4k. (On the forward's loop before
// 2f69310, with its runtime branches, 176 had lost 1.2-3.2% to 160,
// benchmarks/results/2026-12-04i_h200_fwd_blocks.md.) Causal tiles on 144 or
// 160 keys instead of 128 ran 1-6% slower (same file).
//
// kNarrowPaysPermille: an unmasked call runs on the narrow blocks too when
//   (wide-padded keys + one wide block) * 1000
//     > (narrow-padded keys + one narrow block) * (1000 + kNarrowPaysPermille)
// (fwd_narrow_keys_pay; 0: never): about what a narrow block costs more a key,
// and a block's worth more per walk for each width, since a tile's first S
// GEMM and last PV GEMM have no other GEMM of the warpgroup to hide under. At
// head dim 128, 176-key blocks (3.1% padding) against 128-key ones (none):
// -1..-4% at 512 keys, -1.3% at 1k; at 2k-4k, with the same padding, 176 ran
// level with 160 (same file), which had beaten 128 there by 1.2-3.1%
// (2026-12-04g below): at 60 the rule picks 128 at 512 and 1k, 176 at
// 2k-16k. The earlier measurements it also reproduces: head dim 96 (128 vs
// 160 keys): +16.5% and +5.6% at 512 and 1k (25% and 9.4% padding),
// 0.991-0.999 from 2k (1.6%, at 16k 0.6%); head dim 192 (96 vs 112 keys):
// +2.9% at 1k (6.1% more padding), 0.976-0.989 from 2k (0.3-0.8%)
// (benchmarks/results/2026-12-04g_h200_fwd_narrow_unmasked.md).
//
// No CTA pairs: FlashAttention-3's 2-CTA clusters sharing K/V loads (TMA
// multicast) ran -1.1..-2.4% at head dim 128 in the harness; at head dim 256
// +2.6-3.0% at 2k-4k there, but through JAX (power-capped, 4 rounds in turns)
// -0.3..-1.8% (benchmarks/results/2026-12-06_h100_fwd_cluster.md and
// 2026-12-06b_h100_fwd_cluster_jax.md). The kernel path is in git at afd3b12.
//
// No tensor-core row sums: P x ones as RS wgmmas beside O += P V instead of
// the softmax's FADDs ran +1.4% at head dim 128 16k without a mask in the
// harness, -1..-3% on every 128-key kernel, and through JAX at most +1% at
// 16k and -0.7% at 2k (benchmarks/results/2026-12-06c_fwd_softmax_rowsums.md).
// The kernel path is in git at 5988c84.
//
// Shared memory (Q + kStages x (K + V)) must fit 227 KB and the consumer
// registers (O: kHeadDim/2, S: kBlockN/2, P: kBlockN/4 per thread) the
// setmaxnreg budget (kConsumerRegs: 232 with 2 consumer warpgroups, 160 with 3).
template <int kHeadDim, bool kNarrowKeys>
struct FwdTile;
template <bool kNarrowKeys> struct FwdTile<64, kNarrowKeys>  { static constexpr int kBlockM = 192, kBlockN = 128, kStages = 2, kConsumerWarpgroups = 3, kNarrowPaysPermille = 0; static constexpr bool kPingPong = true; };
template <bool kNarrowKeys> struct FwdTile<96, kNarrowKeys>  { static constexpr int kBlockM = 128, kBlockN = kNarrowKeys ? 128 : 160, kStages = 2, kConsumerWarpgroups = 2, kNarrowPaysPermille = 40; static constexpr bool kPingPong = true; };
template <bool kNarrowKeys> struct FwdTile<128, kNarrowKeys> { static constexpr int kBlockM = 128, kBlockN = kNarrowKeys ? 128 : 176, kStages = 2, kConsumerWarpgroups = 2, kNarrowPaysPermille = 60; static constexpr bool kPingPong = true; };
template <bool kNarrowKeys> struct FwdTile<192, kNarrowKeys> { static constexpr int kBlockM = 128, kBlockN = kNarrowKeys ? 96 : 112, kStages = 2, kConsumerWarpgroups = 2, kNarrowPaysPermille = 30; static constexpr bool kPingPong = false; };
template <bool kNarrowKeys> struct FwdTile<256, kNarrowKeys> { static constexpr int kBlockM = 128, kBlockN = 80, kStages = 2, kConsumerWarpgroups = 2, kNarrowPaysPermille = 0; static constexpr bool kPingPong = false; };

// The forward kernels of one (dtype, head dim): unmasked on the wide key
// blocks, unmasked on the narrow ones (only where kNarrowPaysPermille > 0),
// and masked (narrow blocks, dynamic schedule).
enum class FwdVariant { kUnmasked, kUnmaskedNarrow, kMasked };

template <int kHeadDim>
constexpr bool fwd_has_narrow_unmasked() {
  return FwdTile<kHeadDim, false>::kNarrowPaysPermille > 0 &&
         FwdTile<kHeadDim, true>::kBlockN < FwdTile<kHeadDim, false>::kBlockN;
}

template <int kHeadDim>
constexpr bool fwd_narrow_keys_pay(int seqlen_k) {
  if (!fwd_has_narrow_unmasked<kHeadDim>()) return false;
  constexpr long long wide = FwdTile<kHeadDim, false>::kBlockN, narrow = FwdTile<kHeadDim, true>::kBlockN;
  // The keys a width walks (padded to whole blocks), one block more.
  auto cost = [seqlen_k](long long block) { return ((seqlen_k + block - 1) / block + 1) * block; };
  return cost(wide) * 1000 > cost(narrow) * (1000 + FwdTile<kHeadDim, false>::kNarrowPaysPermille);
}

template <int kHeadDim>
constexpr FwdVariant fwd_variant(bool masked, int seqlen_k) {
  return masked ? FwdVariant::kMasked
                : fwd_narrow_keys_pay<kHeadDim>(seqlen_k) ? FwdVariant::kUnmaskedNarrow : FwdVariant::kUnmasked;
}

// Backward: one CTA per kBlockN keys, walking the queries, with two MMA
// warpgroups (BwdWarpRoles, bwd/traits_bwd_sm90.hpp). Each owns 64 keys of
// dK/dV and the columns left to it: with kBlockN = 128 the two warpgroups
// split the keys; with kBlockN = 64 they split head_dim (dK/dV of 64 x 256
// would not fit one warpgroup's registers). A walk may own another key block
// (BwdWalkDKVt: head dim 256's fast walk, 80 keys, dK^T/dV^T split by head
// dim).
//
// How a CTA walks the queries (BwdWalk) may differ by mode (Fast,
// Deterministic) and by whether the kernel applies a mask: kBlockM queries
// per step (a multiple of 64, the dQ wgmma's M, unless kDQTransposed) and a
// kStages-deep Q/dO ring. Each step's dQ part goes through an fp32 smem tile
// that a writer warp bulk-reduces into the accumulator (the deterministic
// mode enforces its order there); head dim 256's fast walk (BwdWalkDKVt)
// instead adds it from the registers. kDQTransposed: dQ computed as
// dQ^T = K^T dS^T (the dQ wgmma's M is the head dim, not the queries), so
// that kBlockM need only be a multiple of 16.
// Head dim 128 walks 80 queries a step that way without a mask (as
// FlashAttention-3 does): against 64 queries +1.9-3.5% fast and +0.2-4.3%
// deterministic at 1k-16k (benchmarks/results/2026-12-05c_h100_bwd_variants.md).
// Under a mask it walks 80 only where a CTA's walk is long
// (kLongWalkRows, bwd::bwd_walk_rows): the diagonal wastes more of 80-query
// blocks (their first starts up to 79 rows before it), which short walks do
// not earn back. Causal, in Nsight Compute cycles against 64 queries
// (fast / deterministic): 0.90 / 0.84 at 512, 0.98 / 0.96 at 1k, 1.00 / 0.99
// at 2k, 1.02 / 1.02 at 4k, 1.05 / 1.06 at 8k, 1.06 / 1.09 at 16k; a CTA's
// step costs 30.2 ns a query row against 32.0
// (benchmarks/results/2026-12-07i_h100_bwd_q80_causal.md). Through JAX at
// the 700 W cap, where a step's time follows its energy more than its
// cycles, +0.3-2.5% against FlashAttention-3 and cuDNN at 16k (notes.md,
// forty-first session).
// Head dim 64 walks 128 queries a step in both modes: against 64-query steps
// the fast mode gained 3-12% at every grid point once the 128-query kernel had
// lost its wgmma serialisation (benchmarks/results/2026-12-03b_h200_blocks.md).
// Head dim 256's deterministic walk has one Q/dO stage: two and the 64 KB dQ
// tile would need 288 KB of shared memory.
// No CTA pairs summing dQ before the reduce-adds: 2-CTA clusters on adjacent
// key blocks, each keeping half of every warpgroup's dQ columns and pushing
// the other half to its peer (st.async into its dO stage), halve the
// reduce-add bytes, which alone would be worth ~20% at head dim 256; the pairs
// ran 0.99-1.04 without a mask and 0.94-0.97 causal in the harness: their CTAs
// wait for each other every step, and the kept half's reduce-adds stall both
// (benchmarks/results/2026-12-06d_h100_bwd_dq_pairs.md). The code is in git at
// b0e6b79.
//
// The deterministic mode's CTAs run in BwdCtaOrder's chunks (key blocks
// slowest) of about kBwdMaskedChunkWaves waves of CTAs under a mask, and of
// kUnmaskedChunkWaves without one (0: blockIdx order, key blocks fastest).
// Without a mask head dims 64 and 256 gained 16% and 12-14% at 1k-2k by
// chunks of 4 waves, about nothing at 16k; head dim 128 lost 7% at 1k and 2%
// at 2k (96 and 192 not measured, left in the default order)
// (benchmarks/results/2026-12-04g_h200_bwd_det_order.md). Head dim 256
// without a mask, chunks of 1 wave against 4: +53/+18/+5% at 1k/4k/16k on an
// H100 (the mode's cost against the fast one 43/21/12% -> 13/8/12%), +7/+3/0%
// on an H200 (18/11/8% -> 11/8/7%); under the causal mask 1 wave lost 7-9%
// and 2 waves -4..+1%, so masked chunks keep 4
// (benchmarks/results/2026-12-05e_h100_bwd_det_chunks.md).
// JAX_FA3_BWD_CHUNK_WAVES: settable only so the dev harness can time other
// masked chunk sizes (tools/dev/build_bwd_variants.sh).
#ifndef JAX_FA3_BWD_CHUNK_WAVES
#define JAX_FA3_BWD_CHUNK_WAVES 4
#endif
constexpr int kBwdMaskedChunkWaves = JAX_FA3_BWD_CHUNK_WAVES;
template <int kBlockM_, int kStages_, bool kDQTransposed_ = false>
struct BwdWalk {
  static constexpr int kBlockM = kBlockM_, kStages = kStages_;
  static constexpr bool kDQTransposed = kDQTransposed_;
  static constexpr bool kDKVTransposed = false;
};
// Head dim 256's fast walk: kBlockN = 80 keys a CTA instead of the row's 64,
// FlashAttention-3's tile: 0.8x the Q/dO loads and dQ reduce-adds a key,
// which bound the 64-key kernel at L2 (95.6% L2 throughput; notes.md,
// 2026-12-07d). 80 keys x 256 columns of dK and dV fit the two warpgroups'
// registers only as dK^T/dV^T, each warpgroup 128 head-dim rows x all 80
// keys (two 64-row slices, 160 registers a thread), so S = Q K^T and
// dP = dO V^T are not transposed (40 keys a warpgroup) and P/dS reach the
// dK/dV GEMMs through smem; dQ goes out from the registers as 128-bit
// reduce-adds in two 64-column halves, each under a dK GEMM. Shared memory
// (216 KB) holds two Q stages but one dO stage (BwdTraitsDKVt). Against the
// 64-key walk (dQ from registers, 3/8 of it held to the next step) in the
// harness on an H100: 0.80x the instructions, 7-9% fewer cycles at 4k-16k,
// timed +5-8.5% at 1k-16k (benchmarks/results/2026-12-07e_h100_bwd_dkvt256.md;
// the 64-key walk is in git at fefa1c5). The deterministic mode keeps the
// 64-key walk: its dQ tile (64 KB) does not fit beside this one's smem.
struct BwdWalkDKVt {
  static constexpr int kBlockN = 80, kBlockM = 64, kStages = 2, kStagesdO = 1;
  static constexpr bool kDKVTransposed = true;
};
template <int kHeadDim>
struct BwdTile;
// A mode's walks: Masked for the kernels that apply a mask (mask_cuts),
// Unmasked for the others; with kLongWalkRows > 0, LongMasked instead of
// Masked where a CTA's walk has at least kLongWalkRows query rows.
template <class Masked, class Unmasked = Masked, class LongMasked = Masked, int kLongWalkRows_ = 0>
struct BwdWalksByMask {
  static constexpr int kLongWalkRows = kLongWalkRows_;
  template <bool kMasked, bool kLong>
  using Walk = std::conditional_t<kMasked, std::conditional_t<kLong, LongMasked, Masked>, Unmasked>;
};
// A row: kBlockN keys per CTA, and the walks of each mode (Fast<kMasked, kLong>,
// Deterministic<kMasked, kLong>; kLong: the walk is long, see BwdWalksByMask).
template <int kBlockN_, int kUnmaskedChunkWaves_, class FastWalks, class DeterministicWalks = FastWalks>
struct BwdRow {
  static constexpr int kBlockN = kBlockN_, kUnmaskedChunkWaves = kUnmaskedChunkWaves_;
  static constexpr int kLongWalkRows = FastWalks::kLongWalkRows;
  static_assert(DeterministicWalks::kLongWalkRows == kLongWalkRows, "one long-walk length for both modes");
  // Waves of CTAs per chunk of the deterministic order (0: not chunked).
  template <bool kMasked> static constexpr int kDeterministicChunkWaves = kMasked ? kBwdMaskedChunkWaves
                                                                                 : kUnmaskedChunkWaves;
  template <bool kMasked, bool kLong = false> using Fast = typename FastWalks::template Walk<kMasked, kLong>;
  template <bool kMasked, bool kLong = false>
  using Deterministic = typename DeterministicWalks::template Walk<kMasked, kLong>;
};
template <> struct BwdTile<64>  : BwdRow<128, 4, BwdWalksByMask<BwdWalk<128, 2>>> {};
template <> struct BwdTile<96>  : BwdRow<128, 0, BwdWalksByMask<BwdWalk<64, 2>>> {};
template <> struct BwdTile<128>
    : BwdRow<128, 0, BwdWalksByMask<BwdWalk<64, 2>, BwdWalk<80, 2, true>, BwdWalk<80, 2, true>, 4096>> {};
template <> struct BwdTile<192> : BwdRow<64,  0, BwdWalksByMask<BwdWalk<64, 2>>> {};
template <> struct BwdTile<256> : BwdRow<64,  1, BwdWalksByMask<BwdWalkDKVt>, BwdWalksByMask<BwdWalk<64, 1>>> {};

// The query block of one of a row's walks in a mode.
template <class Tile, bool kMasked, bool kLong>
constexpr int bwd_block_m(bool deterministic) {
  return deterministic ? Tile::template Deterministic<kMasked, kLong>::kBlockM
                       : Tile::template Fast<kMasked, kLong>::kBlockM;
}

}  // namespace jax_fa3
