// The backward main loop: loads (TMA + mbarriers) and the per-step math of a
// CTA that owns kBlockN keys and walks the query blocks that see them.
//
// Per step (query head hq, query block m), each MMA warpgroup, with its
// 64 keys (key slice ks) and its dK/dV column slice dsl:
//   S^T  = K Q^T          wgmma SS  (64 x kBlockM)
//   dP^T = V dO^T         wgmma SS
//   P^T  = exp2(S^T * scale_log2 - lse2),  dS^T = P^T (dP^T - D) [* (1 - tanh^2)]
//   dV  += P^T dO         wgmma RS  (A from the accumulator registers)
//   dK  += dS^T Q         wgmma RS
//   (head dims 192/256: the two warpgroups split S/dP by query columns and
//   dV/dK read P^T/dS^T from smem, SS)
//   dS^T -> smem, then dQ[:, slice] = dS K[:, slice]   wgmma SS
//     (kDQTransposed: dQ^T[slice, :] = K^T[slice, :] dS^T)
//   dQ part -> smem -> (writer warp) reduce-add into the fp32 accumulator.
// (Head dim 256's fast walk has its own MMA warpgroups:
// mainloop_bwd_dkvt_sm90.hpp.)
#pragma once

#include "jax_fa3/common/arch.h"

#include <cute/tensor.hpp>
#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/atom/copy_traits_sm90.hpp>
#include <cutlass/arch/barrier.h>

#include "jax_fa3/bwd/epilogue_bwd_sm90.hpp"
#include "jax_fa3/bwd/params_bwd_sm90.hpp"
#include "jax_fa3/bwd/traits_bwd_sm90.hpp"
#include "jax_fa3/common/softmax.hpp"
#include "jax_fa3/common/utils.hpp"

namespace jax_fa3::bwd {

// Candidates that cut the step's instructions (at head dim 128 together
// -7..-10%, at 256 -3..-4%; benchmarks/notes.md, forty-third session), off in
// the library until the dev harness has timed them at the power cap
// (tools/dev/build_bwd_variants.sh, bwd_ab.sh with BENCH_SETTLE_MS); each is
// described where it applies.
#ifndef JAX_FA3_BWD_ROW_TERM_PAIRS  // column_lse2_pair
#define JAX_FA3_BWD_ROW_TERM_PAIRS 0
#endif
#ifndef JAX_FA3_BWD_SWIZZLED_OFFSETS  // ds_store_stage
#define JAX_FA3_BWD_SWIZZLED_OFFSETS 0
#endif
#ifndef JAX_FA3_BWD_VISIBLE_SMEM_BASES  // bwd_mma's smem bases
#define JAX_FA3_BWD_VISIBLE_SMEM_BASES 0
#endif
#ifndef JAX_FA3_BWD_DKVT_HEAD_BY_STEP  // bwd_mma_dkvt's query head
#define JAX_FA3_BWD_DKVT_HEAD_BY_STEP 0
#endif

using namespace cute;

// A wgmma accumulator fragment ((2,2,N/8),1,1) of a 64xN tile read as the
// register A operand ((2,2,2),1,N/16) of a wgmma with K = N: for each 16-wide
// K block the A registers are the accumulator's two 8-column chunks, in the
// same (column pair, row +8) order. No data moves.
template <class AccLayout>
__device__ __forceinline__ constexpr auto acc_as_operand_a(AccLayout) {
  static_assert(size<1>(AccLayout{}) == 1 && size<2>(AccLayout{}) == 1, "one wgmma atom per tile expected");
  constexpr int kChunks = size<0, 2>(AccLayout{});
  static_assert(kChunks % 2 == 0, "N must be a multiple of 16");
  return make_layout(make_shape(make_shape(_2{}, _2{}, _2{}), _1{}, Int<kChunks / 2>{}),
                     make_stride(make_stride(_1{}, _2{}, _4{}), _0{}, _8{}));
}

template <class Traits>
struct BwdLoader {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;

  // K and V of the CTA's key block, once; rows past seqlen_k and columns past
  // head_dim arrive as zeros (TMA out-of-bounds fill).
  __device__ static void load_kv(const BwdMainParams<Traits>& p, SharedStorage& ss, int n_block, int hkv, int b) {
    set_barrier_transaction_bytes(ss.kv_bar, Traits::kTmaBytesKV);
    Tensor mK = p.tma_k.get_tma_tensor(make_shape(p.seqlen_k, p.head_dim, p.heads_kv, p.batch));
    Tensor mV = p.tma_v.get_tma_tensor(make_shape(p.seqlen_k, p.head_dim, p.heads_kv, p.batch));
    Tensor gK = local_tile(mK(_, _, hkv, b), Shape<typename Traits::BlockN, typename Traits::HeadDim>{},
                           make_coord(n_block, _0{}));
    Tensor gV = local_tile(mV(_, _, hkv, b), Shape<typename Traits::BlockN, typename Traits::HeadDim>{},
                           make_coord(n_block, _0{}));
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});
    auto tma_k = p.tma_k.get_slice(_0{});
    auto tma_v = p.tma_v.get_slice(_0{});
    copy(p.tma_k.with(ss.kv_bar), tma_k.partition_S(gK), tma_k.partition_D(sK));
    copy(p.tma_v.with(ss.kv_bar), tma_v.partition_S(gV), tma_v.partition_D(sV));
  }

  // One step's Q or dO tile (TMA) and its row term (lse2 or D: a plain bulk
  // copy of kBlockM floats from the padded workspace) into stage `stage` of
  // its ring, completing on `bar` (whose transaction bytes the caller set).
  template <class Tma, class SmemLayout>
  __device__ static void load_rows(const BwdMainParams<Traits>& p, const Tma& tma, Element* smem, SmemLayout layout,
                                   const float* term, float* smem_term, uint64_t& bar, int stage, int hq, int b,
                                   int m) {
    Tensor mX = tma.get_tma_tensor(make_shape(p.seqlen_q, p.head_dim, p.heads_q, p.batch));
    Tensor gX = local_tile(mX(_, _, hq, b), Shape<typename Traits::BlockM, typename Traits::HeadDim>{},
                           make_coord(m, _0{}));
    Tensor sX = make_tensor(make_smem_ptr(smem), layout);
    auto thr = tma.get_slice(_0{});
    copy(tma.with(bar), thr.partition_S(gX), thr.partition_D(sX(_, _, stage)));
    const int64_t row = (int64_t(b) * p.heads_q + hq) * p.rows + int64_t(m) * Traits::kBlockM;
    SM90_BULK_COPY_G2S::copy(term + row, &bar, smem_term + stage * Traits::kBlockM, Traits::kRowTermBytes);
  }
  __device__ static void load_q(const BwdMainParams<Traits>& p, SharedStorage& ss, uint64_t& bar, int stage, int hq,
                                int b, int m) {
    load_rows(p, p.tma_q, ss.q.data(), typename Traits::SmemLayoutQ{}, p.lse2, ss.lse2.data(), bar, stage, hq, b, m);
  }
  __device__ static void load_do(const BwdMainParams<Traits>& p, SharedStorage& ss, uint64_t& bar, int stage,
                                 int hq, int b, int m) {
    load_rows(p, p.tma_do, ss.dout.data(), typename Traits::SmemLayoutdO{}, p.dpsum, ss.dpsum.data(), bar, stage, hq,
              b, m);
  }
};

// A step of a CTA's walk: query head hq (of the kv head's group), query
// block m. Producer, dQ writer and MMA warpgroups all walk the same sequence:
// per query head, the blocks downwards from range.start_m, wrapping around.
// Followed step by step (no divisions: the producer warpgroup runs on 24
// registers).
// Deterministic mode starts every CTA at the last block: under a causal mask
// the CTAs in flight then work on the same query block at the same step, and
// key block n, which adds its dQ part after key block n - 1, finds that add
// done at the same step instead of starting n steps late (walking upwards,
// the CTAs of a causal walk would idle half the time). The fast mode starts
// CTA n at n blocks below the last one, so that the CTAs in flight add their
// dQ parts into different query blocks instead of all into the same one
// (same-address reduce-adds serialise at L2); Q/dO of a head still fit L2.
struct BwdStep {
  int hq;
  int m;
  JAX_FA3_HOST_DEVICE static BwdStep first(BwdQueryRange range, int hkv, int group) {
    return BwdStep{hkv * group, range.start_m};
  }
  // Back at start_m: the walk has been through every block of this head.
  JAX_FA3_HOST_DEVICE void advance(BwdQueryRange range) {
    m = m == range.m_begin ? range.last_m() : m - 1;
    hq += m == range.start_m;
  }
};

// Producer (one thread): K/V once, then Q/dO/row terms step by step into the
// kStages ring, each stage refilled once every MMA thread has released it.
template <class Traits>
__device__ __forceinline__ void bwd_load(const BwdMainParams<Traits>& p, typename Traits::SharedStorage& ss,
                                         int n_block, int hkv, int b, BwdQueryRange range) {
  constexpr int kStages = Traits::kStages;
  const int group = p.heads_q / p.heads_kv;
  BwdLoader<Traits>::load_kv(p, ss, n_block, hkv, b);
  // Until the walk reaches the next kv head's first query head (no step
  // count: a register fewer, which the 24 of the producer need).
  BwdStep step = BwdStep::first(range, hkv, group);
  const int hq_end = (hkv + 1) * group;
  constexpr uint32_t kStepBytes = Traits::kTmaBytesQ + Traits::kRowTermBytes;  // Q or dO, with its row term
  for (int t = 0; step.hq < hq_end; ++t, step.advance(range)) {
    const int stage = t % kStages;
    // Fresh barriers: waiting on parity 1 returns at once (first pass).
    wait_barrier(ss.empty_bar[stage], ((t / kStages) & 1) ^ 1);
    if constexpr (Traits::kSplitdO) {
      set_barrier_transaction_bytes(ss.full_bar[stage], kStepBytes);
      BwdLoader<Traits>::load_q(p, ss, ss.full_bar[stage], stage, step.hq, b, step.m);
      // dO's ring has fewer stages: its stage frees later in the step than Q's.
      constexpr int kStagesdO = Traits::kStagesdO;
      const int do_stage = t % kStagesdO;
      wait_barrier(ss.empty_do_bar[do_stage], ((t / kStagesdO) & 1) ^ 1);
      set_barrier_transaction_bytes(ss.full_do_bar[do_stage], kStepBytes);
      BwdLoader<Traits>::load_do(p, ss, ss.full_do_bar[do_stage], do_stage, step.hq, b, step.m);
    } else {
      set_barrier_transaction_bytes(ss.full_bar[stage], 2 * kStepBytes);
      BwdLoader<Traits>::load_q(p, ss, ss.full_bar[stage], stage, step.hq, b, step.m);
      BwdLoader<Traits>::load_do(p, ss, ss.full_bar[stage], stage, step.hq, b, step.m);
    }
  }
}

// The thread's index within its warpgroup, read afresh: addresses derived
// from it where they are used are not kept live (or spilled) through the
// math in between.
CUTE_DEVICE uint32_t fresh_warpgroup_thread() {
  uint32_t tid;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
  return tid % 128;
}

// Coordinates (row, column) in the warpgroup's dQ accumulator tile of each
// of the thread's dQ values.
template <class Traits>
CUTE_DEVICE auto dq_coords() {
  typename Traits::MmadQ mma_dq;
  return mma_dq.get_thread_slice(fresh_warpgroup_thread())
      .partition_C(make_identity_tensor(typename Traits::DQTile{}));
}

// Offset (floats) in a query block's dQ tile laid out in row chunks
// (DqLayout::kRowChunks: walks of 128 queries a step) of the thread's dQ
// value i: values i and i + 1 are adjacent columns and a warp's 64-bit
// stores of them cover 8 rows of one 8-column chunk, 256 contiguous bytes.
template <class Traits, class Coords>
CUTE_HOST_DEVICE int dq_row_chunk_offset(const Coords& cdQ, int wg, int i) {
  static_assert(Traits::kDQLayout == DqLayout::kRowChunks, "row chunks (never transposed)");
  return BwdWorkspace::dq_tile_offset(Traits::kBlockM, get<0>(cdQ(i)), wg * Traits::kDQSlice + get<1>(cdQ(i)));
}

// The thread's place in a query block's fp32 dQ tile (workspace or smem)
// laid out in a fragment order (BwdWorkspace::dq_fragment_offset): its
// values i .. i + 3 (accumulator rows r, r + 8 x columns c, c + 1 of column
// group i / 4) are the 16 bytes at dq_fragment_group(base, i).
template <class Traits>
CUTE_DEVICE float* dq_fragment_base(float* tile, int wg) {
  static_assert(Traits::kDQLayout != DqLayout::kRowChunks, "a fragment order");
  return tile + BwdWorkspace::dq_fragment_thread_offset(Traits::kBlockM * Traits::kDQSlice, wg,
                                                        int(fresh_warpgroup_thread()));
}
CUTE_DEVICE float* dq_fragment_group(float* base, int i) {
  return base + BwdWorkspace::dq_fragment_group_offset(i);
}
// The thread's accumulator values i .. i + 3: one group of the fragment order.
template <class Fragment>
CUTE_DEVICE float4 dq_group_values(const Fragment& frag, int i) {
  return make_float4(frag(i), frag(i + 1), frag(i + 2), frag(i + 3));
}

// Adds the thread's dQ values i .. i + 3 at their place (dq_fragment_base):
// one 128-bit reduction (REDG), no atomic round trip. Written as PTX red
// rather than atomicAdd with its result unused: ptxas then emits ATOMG instead
// whenever the kernel holds a memory fence anywhere, even on a branch never
// taken (the one SASS difference of note in a fast kernel that ran 15-22%
// slower with such a branch, benchmarks/results/2026-12-04j_h200_bwd_det.md).
CUTE_DEVICE void dq_add_group(float* base, int i, float4 v) {
  float* dst = dq_fragment_group(base, i);
  asm volatile("red.relaxed.gpu.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "f"(v.x), "f"(v.y),
               "f"(v.z), "f"(v.w)
               : "memory");
}

// lse2 of the thread's S^T accumulator columns c and c + 1 (c even), from the
// warpgroup's query columns `lse2` (c_rc: the accumulator's (row, column)
// coordinates), by one LDS.64: a wgmma accumulator holds pairs of adjacent
// columns, the first even (tools/dev/host_checks.cu). The compiler does not
// merge two 32-bit loads by itself (it cannot tell that the column is even),
// nor a float2 load's halves. Candidate JAX_FA3_BWD_ROW_TERM_PAIRS=1; not for
// D: with D's loads paired too, head dim 128's 80-query kernels spill 12
// bytes.
template <class CoordRC>
CUTE_DEVICE float2 column_lse2_pair(const float* lse2, const CoordRC& c_rc, int c) {
  static_assert(decltype(size<1, 0>(c_rc))::value == 2, "expects column pairs");
  const uint64_t bits = *reinterpret_cast<const uint64_t*>(lse2 + get<1>(c_rc(0, c)));
  return make_float2(__uint_as_float(uint32_t(bits)), __uint_as_float(uint32_t(bits >> 32)));
}

// Stage ds_stage of dS^T's (or P^T's) smem buffer at `base`, as the
// stmatrix stores address it. CuTe's swizzled smem pointer swizzles each
// 64-bit generic address: at head dim 128 about 30 integer instructions a
// step for the five stores' addresses. Candidate
// JAX_FA3_BWD_SWIZZLED_OFFSETS=1 swizzles the offsets from the stage's start
// instead, so that the stores share one address register with immediate
// offsets. The same bytes, since a stage starts on a whole swizzle period (a
// 1024-byte aligned buffer, stages of multiples of 1024 bytes);
// tools/dev/host_checks.cu compares the two for every thread.
template <class Traits, bool kSwizzledOffsets = JAX_FA3_BWD_SWIZZLED_OFFSETS>
CUTE_HOST_DEVICE auto ds_store_stage(typename Traits::Element* base, int ds_stage) {
  static_assert(cosize_v<typename Traits::SmemLayoutdSt> / Traits::kStagesdS * sizeof(typename Traits::Element) %
                        1024 == 0,
                "a dS stage must start on a swizzle period");
  Tensor stage = make_tensor(make_smem_ptr(base), typename Traits::SmemLayoutdSt{})(_, _, ds_stage);
  if constexpr (kSwizzledOffsets) {
    return as_position_independent_swizzle_tensor(stage);
  } else {
    return stage;
  }
}

// The MMA warpgroups' walk. Per step, each warpgroup (keys ks, dK/dV column
// slice dsl, S/dP query columns qs):
//   issue S^T = K Q^T, issue dP^T = V dO^T;  wait S: P = exp2(...) under dP
//   (kDPAfterP: dP issued after P);
//   [registers: issue dV += P^T dO];  wait dP: dS;  dS^T [and P^T] -> smem
//   (buffer t % 2);  kdSReady (every warpgroup's part is in smem);
//   [smem: issue dV += P^T dO];  issue dQ = dS K, issue dK += dS^T Q;  wait dV,
//   dQ;  dQ -> smem tile for the writer warp, under the dK GEMM;  wait dK;
//   release the Q/dO stage.
template <class Traits, bool kMasked, class Acc>
__device__ __forceinline__ void bwd_mma(const BwdMainParams<Traits>& p, typename Traits::SharedStorage& ss,
                                        int n_block, int hkv, int b, BwdQueryRange range, int total, int mma_tid,
                                        Acc& tdKrdK, Acc& tdVrdV) {
  using Element = typename Traits::Element;
  using BlockM = typename Traits::BlockM;
  using BlockN = typename Traits::BlockN;
  using HeadDim = typename Traits::HeadDim;
  using SdPCols = Int<Traits::kSdPCols>;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kStages = Traits::kStages;
  constexpr int kDSlice = Traits::kDSlice, kDQSlice = Traits::kDQSlice;
  constexpr bool kPdSInSmem = Traits::kPdSInSmem;
  using Handoff = DqHandoff<Traits>;

  const int wg = __shfl_sync(0xffffffffu, mma_tid / 128, 0);
  const int ks = wg % Traits::kKeySplit;
  const int dsl = wg / Traits::kKeySplit;
  // The S/dP query columns of this warpgroup: all of them, or its half.
  const int qs = kPdSInSmem ? dsl : 0;
  const int q_off = qs * Traits::kSdPCols;
  const int n0 = n_block * kBlockN;

  typename Traits::MmaSdP mma_sdp;
  typename Traits::MmadKV mma_dkv;
  typename Traits::MmadQ mma_dq;

  const bool partial_keys = n0 + kBlockN > p.seqlen_k;
  const bool softcap = p.softcap > 0.f;

  wait_barrier(ss.kv_bar, 0);

  // The query block walks down from start_m, wrapping around, once per query
  // head of the group (BwdStep, without the head, which only the writer warp
  // needs).
  int m = range.start_m;
  for (int t = 0; t < total; ++t, m = m == range.m_begin ? range.last_m() : m - 1) {
    const int stage = t % kStages;
    const int ds_stage = t % Traits::kStagesdS;
    const int m0 = m * kBlockM;
    wait_barrier(ss.full_bar[stage], (t / kStages) & 1);

    // Shared-memory operands (wgmma descriptors) are rebuilt every step from a
    // base the compiler cannot see through: hoisted out of the loop they would
    // stay live across the whole walk, which head dim 256 cannot afford.
    // Likewise the thread's fragment coordinates (score rows/columns, dQ
    // store addresses): rederiving them from the thread index each step is a
    // few integer ops, keeping them live across the step would spill. (Only
    // the GEMM operands go through the opaque base: a store through it would
    // be a generic store with 64-bit addresses.)
    Element* q_base = ss.q.data();
    Element* do_base = ss.dout.data();
    Element* k_base = ss.k.data();
    Element* v_base = ss.v.data();
    Element* ds_base = ss.ds.data();
    Element* p_base = ss.p.data();
    const int tid = threadIdx.x % 128;
    // Candidate JAX_FA3_BWD_VISIBLE_SMEM_BASES=1: no opaque base, -2%
    // instructions a step at head dim 128; with the other candidates no
    // spills at any head dim today (the opaque bases date from a head dim 256
    // walk that this mainloop no longer runs fast).
#if !JAX_FA3_BWD_VISIBLE_SMEM_BASES
    asm volatile("" : "+l"(q_base), "+l"(do_base), "+l"(k_base), "+l"(v_base), "+l"(ds_base), "+l"(p_base));
#endif
    auto thr_sdp = mma_sdp.get_thread_slice(tid);
    auto thr_dkv = mma_dkv.get_thread_slice(tid);
    auto thr_dq = mma_dq.get_thread_slice(tid);
    Tensor tScS = thr_sdp.partition_C(make_identity_tensor(Shape<_64, SdPCols>{}));
    Tensor sQ = make_tensor(make_smem_ptr(q_base), typename Traits::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(q_base), typename Traits::SmemLayoutQt{});
    Tensor sdO = make_tensor(make_smem_ptr(do_base), typename Traits::SmemLayoutQ{});
    Tensor sdOt = make_tensor(make_smem_ptr(do_base), typename Traits::SmemLayoutQt{});
    Tensor sK = make_tensor(make_smem_ptr(k_base), typename Traits::SmemLayoutK{});
    Tensor sKt = make_tensor(make_smem_ptr(k_base), typename Traits::SmemLayoutKt{});
    Tensor sV = make_tensor(make_smem_ptr(v_base), typename Traits::SmemLayoutV{});
    Tensor sdS = make_tensor(make_smem_ptr(ds_base), typename Traits::SmemLayoutdS{})(_, _, ds_stage);
    Tensor sdSt = make_tensor(make_smem_ptr(ds_base), typename Traits::SmemLayoutdSt{})(_, _, ds_stage);
    Tensor sPt = make_tensor(make_smem_ptr(p_base), typename Traits::SmemLayoutdSt{})(_, _, ds_stage);
    Tensor tSrK = thr_sdp.partition_fragment_A(local_tile(sK, Shape<_64, HeadDim>{}, make_coord(ks, _0{})));
    Tensor tdPrV = thr_sdp.partition_fragment_A(local_tile(sV, Shape<_64, HeadDim>{}, make_coord(ks, _0{})));
    Tensor tSrQ = thr_sdp.partition_fragment_B(local_tile(sQ(_, _, stage), Shape<SdPCols, HeadDim>{}, make_coord(qs, _0{})));
    Tensor tdPrdO =
        thr_sdp.partition_fragment_B(local_tile(sdO(_, _, stage), Shape<SdPCols, HeadDim>{}, make_coord(qs, _0{})));

    Tensor tSrS = partition_fragment_C(mma_sdp, Shape<_64, SdPCols>{});
    Tensor tdPrdP = partition_fragment_C(mma_sdp, Shape<_64, SdPCols>{});
    auto issue_dp = [&] { warpgroup_gemm<true, false>(mma_sdp, tdPrV, tdPrdO, tdPrdP); };
    warpgroup_gemm</*kZeroInit=*/true, /*kARegs=*/false>(mma_sdp, tSrK, tSrQ, tSrS);
    // P is computed under the dP GEMM, except where the registers are tight
    // (kDPAfterP).
    if constexpr (!Traits::kDPAfterP) issue_dp();

    // The mask test only on tiles that cross the end of the keys (zero-filled
    // K rows, whose P must not be exp2(-lse2): it can overflow) or, with
    // kMasked, that the window cuts. Query columns past seqlen_q need none:
    // lse2 = +inf there, so P = 0.
    const bool need_mask =
        partial_keys || (kMasked && !p.mask.tile_inside_window(m0, m0 + kBlockM, n0, n0 + kBlockN));
    const float* lse2 = ss.lse2.data() + stage * kBlockM + q_off;
    const float* dpsum = ss.dpsum.data() + stage * kBlockM + q_off;
    Tensor rP = make_tensor_like<Element>(tSrS);
    Tensor rdS = make_tensor_like<Element>(tSrS);

    // P (under the dP GEMM), then dS. P goes to rP in 16 bits for the dV
    // GEMM and stays in tSrS in fp32, times d(softcap)/d(score) = 1 - tanh^2
    // when capped, which is all dS = P (dP - D) [* (1 - tanh^2)] needs.
    // P = ex2.approx(s * scale_log2 - lse2), one FFMA + one MUFU per element
    // like the forward's softmax (flushing P < 2^-126 to 0). The loop is
    // straight-line per (softcap, mask) variant, chosen once per tile: a
    // branch inside the unrolled loop costs registers, and most tiles need no
    // mask test at all.
    auto compute_p = [&](auto softcap_tag, auto mask_tag) {
      constexpr bool kSoftcap = decltype(softcap_tag)::value;
      constexpr bool kMaskTile = decltype(mask_tag)::value;
      // (keys, queries) views: per key row the visible queries are one range,
      // computed once; per query column one lse2 load serves both rows.
      Tensor s_rc = rowcol_view(tSrS);
      Tensor p_rc = rowcol_view(rP);
      Tensor c_rc = make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));
      constexpr int kRows = decltype(size<0>(s_rc))::value;
      int q_lo[kRows], q_hi[kRows];  // in this warpgroup's query columns
      if constexpr (kMaskTile) {
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const int j = n0 + ks * 64 + get<0>(c_rc(r, 0));
          q_lo[r] = 0;
          q_hi[r] = j < p.seqlen_k ? kBlockM : 0;
          if constexpr (kMasked) {
            if (j < p.seqlen_k) {
              q_lo[r] = p.mask.row_query_begin(j) - m0 - q_off;
              q_hi[r] = p.mask.row_query_end(j) - m0 - q_off;
            }
          }
        }
      }
      [[maybe_unused]] float2 lse2_pair;
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < size<1>(s_rc); ++c) {
        const int col = get<1>(c_rc(0, c));
#if JAX_FA3_BWD_ROW_TERM_PAIRS
        if (c % 2 == 0) lse2_pair = column_lse2_pair(lse2, c_rc, c);
        const float neg_lse = -(c % 2 ? lse2_pair.y : lse2_pair.x);
#else
        const float neg_lse = -lse2[col];
#endif
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const float x = s_rc(r, c);
          float prob, dcap = 1.f;
          if constexpr (kSoftcap) {
            const float th = tanhf(x * p.softcap_in);
            prob = fast_exp2(fmaf(th, p.softcap_log2, neg_lse));
            dcap = 1.f - th * th;
          } else {
            prob = fast_exp2(fmaf(x, p.scale_log2, neg_lse));
          }
          if constexpr (kMaskTile) {
            if (col < q_lo[r] || col >= q_hi[r]) prob = 0.f;
          }
          if constexpr (kSoftcap) {
            p_rc(r, c) = Element(prob);
            s_rc(r, c) = prob * dcap;
          } else {
            s_rc(r, c) = prob;
          }
        }
      }
    };
    auto compute_p_tile = [&](auto softcap_tag) {
      if (need_mask) {
        compute_p(softcap_tag, cute::true_type{});
      } else {
        compute_p(softcap_tag, cute::false_type{});
      }
    };
    // S done (dP still running unless kDPAfterP).
    if constexpr (Traits::kDPAfterP) {
      warpgroup_wait<0>();
    } else {
      warpgroup_wait<1>();
    }
    if (softcap) {
      compute_p_tile(cute::true_type{});
    } else {
      compute_p_tile(cute::false_type{});
      // Converted after the loop (packed cvt), so the loop holds one copy.
      convert_fragment_into(tSrS, rP);
    }
    if constexpr (Traits::kDPAfterP) issue_dp();
    Tensor tdVrdO = thr_dkv.partition_fragment_B(
        local_tile(sdOt(_, _, stage), Shape<Int<kDSlice>, BlockM>{}, make_coord(dsl, _0{})));
    if constexpr (!kPdSInSmem) {
      // dV += P^T dO right away, from the registers: it runs under dS.
      Tensor tdVrP = make_tensor(rP.data(), acc_as_operand_a(tSrS.layout()));
      warpgroup_gemm<false, true>(mma_dkv, tdVrP, tdVrdO, tdVrdV);
      warpgroup_wait<1>();  // dP done (dV may still run)
    } else {
      warpgroup_wait<0>();  // dP done
    }
    {
      Tensor s_rc = rowcol_view(tSrS);
      Tensor dp_rc = rowcol_view(tdPrdP);
      Tensor ds_rc = rowcol_view(rdS);
      Tensor c_rc = make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < size<1>(s_rc); ++c) {
        const float d = dpsum[get<1>(c_rc(0, c))];
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < size<0>(s_rc); ++r) ds_rc(r, c) = Element(s_rc(r, c) * (dp_rc(r, c) - d));
      }
    }

    // dS^T (and with kPdSInSmem P^T) to smem: this warpgroup's keys x query
    // columns, by stmatrix (each 8x8 block of the accumulator is one
    // stmatrix matrix; 32 bytes per thread and instruction, shared-space
    // addresses). Read by wgmma: fence to the async proxy, then wait for
    // every warpgroup's part. Buffer ds_stage was last read by the GEMMs of
    // step t - 2, which every warpgroup waited for before arriving at step
    // t - 1's barrier. The store addresses come from a fresh read of the
    // thread index (fresh_warpgroup_thread).
    {
      auto r2s = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_sdp);
      auto thr_store = r2s.get_thread_slice(fresh_warpgroup_thread());
      auto store = [&](auto const& frag, Element* base) {
        copy(r2s, thr_store.retile_S(frag),
             thr_store.partition_D(local_tile(ds_store_stage<Traits>(base, ds_stage), Shape<_64, SdPCols>{},
                                              make_coord(ks, qs))));
      };
      store(rdS, ss.ds.data());
      if constexpr (kPdSInSmem) store(rP, ss.p.data());
    }
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(Traits::kMmaThreads, barrier_id(BwdNamedBarrier::kdSReady));

    if constexpr (kPdSInSmem) {
      Tensor tdVsP = thr_dkv.partition_fragment_A(local_tile(sPt, Shape<_64, BlockM>{}, make_coord(ks, _0{})));
      warpgroup_gemm</*kZeroInit=*/false, /*kARegs=*/false>(mma_dkv, tdVsP, tdVrdO, tdVrdV);
    }
    Tensor sKtSlice = local_tile(sKt, Shape<Int<kDQSlice>, BlockN>{}, make_coord(wg, _0{}));
    Tensor tdQrdQ = partition_fragment_C(mma_dq, typename Traits::DQTile{});
    if constexpr (Traits::kDQTransposed) {
      Tensor tdQrK = thr_dq.partition_fragment_A(sKtSlice);
      Tensor tdQrdS = thr_dq.partition_fragment_B(sdS);
      warpgroup_gemm<true, false>(mma_dq, tdQrK, tdQrdS, tdQrdQ);
    } else {
      Tensor tdQrdS = thr_dq.partition_fragment_A(sdS);
      Tensor tdQrK = thr_dq.partition_fragment_B(sKtSlice);
      warpgroup_gemm<true, false>(mma_dq, tdQrdS, tdQrK, tdQrdQ);
    }
    Tensor tdKrQ = thr_dkv.partition_fragment_B(
        local_tile(sQt(_, _, stage), Shape<Int<kDSlice>, BlockM>{}, make_coord(dsl, _0{})));
    if constexpr (kPdSInSmem) {
      Tensor tdKsdS = thr_dkv.partition_fragment_A(local_tile(sdSt, Shape<_64, BlockM>{}, make_coord(ks, _0{})));
      warpgroup_gemm</*kZeroInit=*/false, /*kARegs=*/false>(mma_dkv, tdKsdS, tdKrQ, tdKrdK);
    } else {
      Tensor tdKrdS = make_tensor(rdS.data(), acc_as_operand_a(tSrS.layout()));
      warpgroup_gemm</*kZeroInit=*/false, /*kARegs=*/true>(mma_dkv, tdKrdS, tdKrQ, tdKrdK);
    }

    // dV and dQ retired (groups retire in order), dK still running: send
    // the dQ part under it.
    warpgroup_wait<1>();
    // Into this warpgroup's part of the smem tile, for the writer warp.
    Handoff::wait_empty(wg);
    if constexpr (Traits::kDQLayout == DqLayout::kRowChunks) {
      const auto cdQ = dq_coords<Traits>();
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(tdQrdQ); i += 2) {
        *reinterpret_cast<float2*>(ss.dq.data() + dq_row_chunk_offset<Traits>(cdQ, wg, i)) =
            make_float2(tdQrdQ(i), tdQrdQ(i + 1));
      }
    } else {
      float* base = dq_fragment_base<Traits>(ss.dq.data(), wg);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(tdQrdQ); i += 4) {
        *reinterpret_cast<float4*>(dq_fragment_group(base, i)) = dq_group_values(tdQrdQ, i);
      }
    }
    cutlass::arch::fence_view_async_shared();
    Handoff::mark_full(wg);

    warpgroup_wait<0>();
    // Every GEMM reading this stage's Q/dO is done: hand it back.
    arrive_barrier(ss.empty_bar[stage]);
  }
}

}  // namespace jax_fa3::bwd
