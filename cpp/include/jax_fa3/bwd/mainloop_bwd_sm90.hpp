// The backward main loop: loads (TMA + mbarriers) and the per-step math of a
// CTA that owns kBlockN keys and walks the query blocks that see them.
//
// Per step (query head hq, query block m), each consumer warpgroup, with its
// 64 keys (key slice ks) and its dK/dV column slice dsl:
//   S^T  = K Q^T          wgmma SS  (64 x kBlockM)
//   dP^T = V dO^T         wgmma SS
//   P^T  = exp2(S^T * scale_log2 - lse2),  dS^T = P^T (dP^T - D) [* (1 - tanh^2)]
//   dV  += P^T dO         wgmma RS  (A from the accumulator registers)
//   dK  += dS^T Q         wgmma RS
//   dS^T -> smem, then dQ[:, slice] = dS K[:, slice]   wgmma SS
//   dQ tile -> smem -> reduce-add into the fp32 workspace accumulator.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cute/tensor.hpp>
#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>
#include <math_constants.h>

#include "jax_fa3/bwd/epilogue_bwd_sm90.hpp"
#include "jax_fa3/bwd/params_bwd_sm90.hpp"
#include "jax_fa3/bwd/traits_bwd_sm90.hpp"
#include "jax_fa3/common/utils.hpp"

namespace jax_fa3::bwd {

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

  // Q, dO (TMA) and the row terms lse2, D (plain bulk copies of kBlockM
  // floats from the padded workspace) of one step into pipeline stage
  // `stage`, all completing on that stage's mbarrier.
  __device__ static void load_step(const BwdMainParams<Traits>& p, SharedStorage& ss, int stage, int hq, int b,
                                   int m) {
    uint64_t& bar = ss.full_bar[stage];
    set_barrier_transaction_bytes(bar, 2 * Traits::kTmaBytesQ + 2 * Traits::kRowTermBytes);
    Tensor mQ = p.tma_q.get_tma_tensor(make_shape(p.seqlen_q, p.head_dim, p.heads_q, p.batch));
    Tensor mdO = p.tma_do.get_tma_tensor(make_shape(p.seqlen_q, p.head_dim, p.heads_q, p.batch));
    Tensor gQ = local_tile(mQ(_, _, hq, b), Shape<typename Traits::BlockM, typename Traits::HeadDim>{},
                           make_coord(m, _0{}));
    Tensor gdO = local_tile(mdO(_, _, hq, b), Shape<typename Traits::BlockM, typename Traits::HeadDim>{},
                            make_coord(m, _0{}));
    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQ{});
    auto tma_q = p.tma_q.get_slice(_0{});
    auto tma_do = p.tma_do.get_slice(_0{});
    copy(p.tma_q.with(bar), tma_q.partition_S(gQ), tma_q.partition_D(sQ(_, _, stage)));
    copy(p.tma_do.with(bar), tma_do.partition_S(gdO), tma_do.partition_D(sdO(_, _, stage)));
    const int64_t term = (int64_t(b) * p.heads_q + hq) * p.rows + int64_t(m) * Traits::kBlockM;
    SM90_BULK_COPY_G2S::copy(p.lse2 + term, &bar, ss.lse2.data() + stage * Traits::kBlockM, Traits::kRowTermBytes);
    SM90_BULK_COPY_G2S::copy(p.dpsum + term, &bar, ss.dpsum.data() + stage * Traits::kBlockM,
                             Traits::kRowTermBytes);
  }
};

// The whole walk of one CTA. Thread 0 doubles as the TMA producer: a stage is
// refilled right after the CTA-wide barrier that ends the step using it (all
// wgmmas reading it have been waited on by then), kStages - 1 steps ahead of
// its use. No warp sits idle as a dedicated producer, and no register
// re-balancing (setmaxnreg) is needed.
template <class Traits, bool kMasked, class Acc>
__device__ __forceinline__ void bwd_mainloop(const BwdMainParams<Traits>& p, typename Traits::SharedStorage& ss,
                                             int n_block, int hkv, int b, BwdQueryRange range, Acc& tdKrdK,
                                             Acc& tdVrdV) {
  using Element = typename Traits::Element;
  using BlockM = typename Traits::BlockM;
  using BlockN = typename Traits::BlockN;
  using HeadDim = typename Traits::HeadDim;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kStages = Traits::kStages;
  constexpr int kDSlice = Traits::kDSlice, kDQSlice = Traits::kDQSlice;

  const int tid = threadIdx.x;
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  const int wg_tid = tid % 128;
  const int ks = wg % Traits::kKeySplit;
  const int dsl = wg / Traits::kKeySplit;
  const int group = p.heads_q / p.heads_kv;
  const int total = range.num_m * group;
  const int n0 = n_block * kBlockN;

  typename Traits::MmaSdP mma_sdp;
  typename Traits::MmadKV mma_dkv;
  typename Traits::MmadQ mma_dq;
  auto thr_sdp = mma_sdp.get_thread_slice(wg_tid);
  auto thr_dkv = mma_dkv.get_thread_slice(wg_tid);
  auto thr_dq = mma_dq.get_thread_slice(wg_tid);

  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sQt = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQt{});
  Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQ{});
  Tensor sdOt = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQt{});

  // Rows kDqPitch floats apart (BwdWorkspace::dq_pitch).
  Tensor sdQ = make_tensor(make_smem_ptr(ss.dq.data()),
                           make_layout(Shape<BlockM, HeadDim>{}, Stride<Int<Traits::kDqPitch>, _1>{}));
  Tensor tdQsdQ = thr_dq.partition_C(local_tile(sdQ, Shape<BlockM, Int<kDQSlice>>{}, make_coord(_0{}, wg)));
  Tensor tScS = thr_sdp.partition_C(make_identity_tensor(Shape<_64, BlockM>{}));

  const bool partial_keys = n0 + kBlockN > p.seqlen_k;
  const bool softcap = p.softcap > 0.f;

  wait_barrier(ss.kv_bar, 0);

  for (int t = 0; t < total; ++t) {
    const int stage = t % kStages;
    const int g = t / range.num_m;
    const int m = range.m_begin + t % range.num_m;
    const int hq = hkv * group + g;
    const int m0 = m * kBlockM;
    wait_barrier(ss.full_bar[stage], (t / kStages) & 1);

    // K, V and dS operands (wgmma descriptors, swizzled dS store addresses)
    // are rebuilt every step from a base the compiler cannot see through:
    // hoisted out of the loop they would stay live across the whole walk,
    // which head dim 256 cannot afford.
    Element* k_base = ss.k.data();
    Element* v_base = ss.v.data();
    Element* ds_base = ss.ds.data();
    asm volatile("" : "+l"(k_base), "+l"(v_base), "+l"(ds_base));
    Tensor sK = make_tensor(make_smem_ptr(k_base), typename Traits::SmemLayoutK{});
    Tensor sKt = make_tensor(make_smem_ptr(k_base), typename Traits::SmemLayoutKt{});
    Tensor sV = make_tensor(make_smem_ptr(v_base), typename Traits::SmemLayoutV{});
    Tensor sdS = make_tensor(make_smem_ptr(ds_base), typename Traits::SmemLayoutdS{});
    Tensor sdSt = make_tensor(make_smem_ptr(ds_base), typename Traits::SmemLayoutdSt{});
    Tensor tSsdS = thr_sdp.partition_C(local_tile(sdSt, Shape<_64, BlockM>{}, make_coord(ks, _0{})));
    Tensor tSrK = thr_sdp.partition_fragment_A(local_tile(sK, Shape<_64, HeadDim>{}, make_coord(ks, _0{})));
    Tensor tdPrV = thr_sdp.partition_fragment_A(local_tile(sV, Shape<_64, HeadDim>{}, make_coord(ks, _0{})));
    Tensor tdQrdS = thr_dq.partition_fragment_A(sdS);
    Tensor tdQrK =
        thr_dq.partition_fragment_B(local_tile(sKt, Shape<Int<kDQSlice>, BlockN>{}, make_coord(wg, _0{})));
    Tensor tSrQ = thr_sdp.partition_fragment_B(sQ(_, _, stage));
    Tensor tdPrdO = thr_sdp.partition_fragment_B(sdO(_, _, stage));
    Tensor tSrS = partition_fragment_C(mma_sdp, Shape<_64, BlockM>{});
    Tensor tdPrdP = partition_fragment_C(mma_sdp, Shape<_64, BlockM>{});
    warpgroup_gemm</*kZeroInit=*/true, /*kARegs=*/false>(mma_sdp, tSrK, tSrQ, tSrS);
    warpgroup_gemm<true, false>(mma_sdp, tdPrV, tdPrdO, tdPrdP);
    warpgroup_wait<0>();

    // kMasked: the window test only on tiles it cuts (or that cross the end
    // of the keys); otherwise only the key bound, one compare per element.
    // Query rows past seqlen_q need no mask: lse2 = +inf there, so P = 0.
    const bool need_mask = partial_keys || !p.mask.tile_inside_window(m0, m0 + kBlockM, n0, n0 + kBlockN);
    const float* lse2 = ss.lse2.data() + stage * kBlockM;
    const float* dpsum = ss.dpsum.data() + stage * kBlockM;
    Tensor rP = make_tensor_like<Element>(tSrS);
    Tensor rdS = make_tensor_like<Element>(tSrS);
    // Straight-line loop per softcap variant: a branch inside the unrolled
    // loop costs registers.
    auto compute_p_ds = [&](auto softcap_tag) {
      constexpr bool kSoftcap = decltype(softcap_tag)::value;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(tSrS); ++i) {
        const int row = get<0>(tScS(i));
        const int col = get<1>(tScS(i));
        const float x = tSrS(i);
        float s2, dcap = 1.f;
        if constexpr (kSoftcap) {
          const float th = tanhf(x * p.softcap_in);
          s2 = th * p.softcap_log2;
          dcap = 1.f - th * th;
        } else {
          s2 = x * p.scale_log2;
        }
        const int j = n0 + ks * 64 + row;
        if constexpr (kMasked) {
          if (need_mask && !p.mask.visible(m0 + col, j)) s2 = -CUDART_INF_F;
        } else {
          if (j >= p.seqlen_k) s2 = -CUDART_INF_F;
        }
        const float prob = exp2f(s2 - lse2[col]);
        rP(i) = Element(prob);
        rdS(i) = Element(prob * (tdPrdP(i) - dpsum[col]) * dcap);
      }
    };
    if (softcap) {
      compute_p_ds(cute::true_type{});
    } else {
      compute_p_ds(cute::false_type{});
    }

    Tensor tdVrP = make_tensor(rP.data(), acc_as_operand_a(tSrS.layout()));
    Tensor tdKrdS = make_tensor(rdS.data(), acc_as_operand_a(tSrS.layout()));
    Tensor tdVrdO = thr_dkv.partition_fragment_B(
        local_tile(sdOt(_, _, stage), Shape<Int<kDSlice>, BlockM>{}, make_coord(dsl, _0{})));
    Tensor tdKrQ = thr_dkv.partition_fragment_B(
        local_tile(sQt(_, _, stage), Shape<Int<kDSlice>, BlockM>{}, make_coord(dsl, _0{})));
    warpgroup_gemm<false, true>(mma_dkv, tdVrP, tdVrdO, tdVrdV);
    warpgroup_gemm<false, true>(mma_dkv, tdKrdS, tdKrQ, tdKrdK);

    // dS^T to smem for the dQ wgmma (warpgroups of another column slice hold
    // the same values). Ordinary stores read by wgmma: fence to the async proxy.
    if (dsl == 0) copy(rdS, tSsdS);
    // With wide column slices (kDSplit > 1: 64 x 128 dK and dV per
    // warpgroup) the P/dS operand registers must die before the dQ
    // accumulator is born, or the kernel spills.
    if constexpr (Traits::kDSplit > 1) warpgroup_wait<0>();
    if (tid == 0 && !p.deterministic) bulk_wait_read_all();  // previous dQ tile has left smem
    cutlass::arch::fence_view_async_shared();
    __syncthreads();

    Tensor tdQrdQ = partition_fragment_C(mma_dq, Shape<BlockM, Int<kDQSlice>>{});
    warpgroup_gemm<true, false>(mma_dq, tdQrdS, tdQrK, tdQrdQ);
    warpgroup_wait<0>();  // also retires the dV/dK wgmmas: stage and sdS are free after the barrier
    copy(tdQrdQ, tdQsdQ);
    cutlass::arch::fence_view_async_shared();
    __syncthreads();

    if (tid == 0 && t + kStages < total) {
      const int tn = t + kStages;
      BwdLoader<Traits>::load_step(p, ss, stage, hkv * group + tn / range.num_m, b,
                                   range.m_begin + tn % range.num_m);
    }
    reduce_dq_tile<Traits>(p, ss.dq.data(), b, hq, m, n_block);
  }
  if (tid == 0 && !p.deterministic) bulk_wait_all();
}

}  // namespace jax_fa3::bwd
