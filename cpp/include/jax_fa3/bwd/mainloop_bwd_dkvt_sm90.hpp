// The MMA warpgroups of BwdTraitsDKVt (head dim 256, 80 keys a CTA): their
// walk over the query blocks and the dK/dV epilogue. The producer, the row
// terms and the dQ reduce-adds are mainloop_bwd_sm90.hpp's.
//
// Per step (query block m of head hq), warpgroup w (keys [40 w, +40) of S/dP,
// head-dim rows [128 w, +128) of dK^T/dV^T, dQ columns [128 w, +128)):
//   issue S = Q K_w^T;  issue dP = dO V_w^T;  wait S: P = exp2(S scale - lse2);
//   wait dP: dS = P (dP - D);  P, dS -> smem (step parity);  kdSReady;
//   issue dV^T += dO^T P (both slices), dQ half 0 = dS K, dK^T slice 0;
//   wait all but dK slice 0: release dO, dQ half 0 -> reduce-adds;
//   issue dQ half 1, dK^T slice 1;  wait all but dK slice 1: dQ half 1 ->
//   reduce-adds;  wait dK: release Q.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cute/tensor.hpp>
#include <cute/arch/copy_sm90.hpp>
#include <cutlass/arch/barrier.h>

#include "jax_fa3/bwd/epilogue_bwd_sm90.hpp"
#include "jax_fa3/bwd/mainloop_bwd_sm90.hpp"
#include "jax_fa3/bwd/params_bwd_sm90.hpp"
#include "jax_fa3/common/utils.hpp"

namespace jax_fa3::bwd {

using namespace cute;

// stmatrix .trans of four 8x8 blocks of 16-bit values: matrix q's row i
// (the thread's registers, as a wgmma accumulator's 8x8 block holds them)
// goes to column i of the 8 rows whose addresses lanes 8 q .. 8 q + 7 give.
CUTE_DEVICE void stmatrix_x4_trans(uint32_t smem_addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr), "r"(r0),
               "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}

CUTE_DEVICE uint32_t pack_16b(float lo, float hi, float scale, cutlass::bfloat16_t) {
  return uint32_t(cutlass::bfloat16_t(lo * scale).raw()) | (uint32_t(cutlass::bfloat16_t(hi * scale).raw()) << 16);
}
CUTE_DEVICE uint32_t pack_16b(float lo, float hi, float scale, cutlass::half_t) {
  return uint32_t(cutlass::half_t(lo * scale).raw()) | (uint32_t(cutlass::half_t(hi * scale).raw()) << 16);
}

// dK (times softmax_scale) or dV of warpgroup wg's head-dim rows, from its
// kDKVSlices accumulators of 64 head-dim rows x kBlockN keys, through its
// epilogue tile (keys x head-dim columns, Traits::kEpiloguePitch apart) in
// 16-byte row chunks to out[b, key, hkv, :]; rows past seqlen_k and chunks
// past the real head_dim are not written. Every thread of the warpgroup calls
// it; the tile is free on entry and again on return.
template <class Traits, class Acc>
CUTE_DEVICE void store_dkvt(const BwdMainParams<Traits>& p, const Acc (&acc)[Traits::kDKVSlices], float scale,
                            typename Traits::Element* tile, void* out, int n_block, int hkv, int b, int wg) {
  using Element = typename Traits::Element;
  constexpr int kPitch = Traits::kEpiloguePitch;
  constexpr int kBlocks = decltype(size<0, 2>(Acc{}))::value;  // 8-key blocks of a slice
  static_assert(kBlocks % 2 == 0, "stmatrix x4 takes two 8-key blocks");
  const int tid = int(fresh_warpgroup_thread());
  const int lane = tid % 32, warp = tid / 32;
  // Lane l addresses row (key) l % 8 of matrix l / 8: matrices 0/1 are the
  // thread's rows r / r + 8 of the first 8-key block, 2/3 of the second.
  const int q = lane / 8;
  const uint32_t base = cute::cast_smem_ptr_to_uint(tile) +
                        uint32_t(((8 * (q / 2) + lane % 8) * kPitch + 16 * warp + 8 * (q % 2)) * sizeof(Element));
  CUTLASS_PRAGMA_UNROLL
  for (int s = 0; s < Traits::kDKVSlices; ++s) {
    CUTLASS_PRAGMA_UNROLL
    for (int kb = 0; kb < kBlocks; kb += 2) {
      uint32_t r[4];
      CUTLASS_PRAGMA_UNROLL
      for (int u = 0; u < 4; ++u) {
        const int blk = kb + u / 2, row8 = u % 2;
        r[u] = pack_16b(acc[s](make_coord(make_coord(0, row8, blk), 0, 0)),
                        acc[s](make_coord(make_coord(1, row8, blk), 0, 0)), scale, Element{});
      }
      stmatrix_x4_trans(base + uint32_t((8 * kb * kPitch + 64 * s) * sizeof(Element)), r[0], r[1], r[2], r[3]);
    }
  }
  cutlass::arch::NamedBarrier::sync(128, barrier_id(BwdNamedBarrier::kdKVTile) + wg);
  constexpr int kChunksPerRow = Traits::kDKVRows / 8;
  constexpr int kChunks = Traits::kBlockN * kChunksPerRow;
  static_assert(kChunks % 128 == 0, "whole passes of the warpgroup");
  const int col0 = wg * Traits::kDKVRows;
  CUTLASS_PRAGMA_UNROLL
  for (int it = 0; it < kChunks / 128; ++it) {
    const int chunk = tid + 128 * it;
    const int row = chunk / kChunksPerRow, c = chunk % kChunksPerRow;
    const uint4 v = *reinterpret_cast<const uint4*>(tile + row * kPitch + 8 * c);
    const int key = n_block * Traits::kBlockN + row;
    const int col = col0 + 8 * c;
    Element* dst = static_cast<Element*>(out) + ((int64_t(b) * p.seqlen_k + key) * p.heads_kv + hkv) * p.head_dim + col;
    store_16b_if(dst, v, key < p.seqlen_k && col < p.head_dim);
  }
  cutlass::arch::NamedBarrier::sync(128, barrier_id(BwdNamedBarrier::kdKVTile) + wg);
}

template <class Traits, bool kMasked>
__device__ __forceinline__ void bwd_mma_dkvt(const BwdMainParams<Traits>& p, typename Traits::SharedStorage& ss,
                                             int n_block, int hkv, int b, BwdQueryRange range, int total,
                                             int mma_tid) {
  using Element = typename Traits::Element;
  using BlockM = typename Traits::BlockM;
  using BlockN = typename Traits::BlockN;
  using HeadDim = typename Traits::HeadDim;
  using SdPKeys = typename Traits::SdPKeys;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kStages = Traits::kStages;
  constexpr int kStagesdO = Traits::kStagesdO, kSlices = Traits::kDKVSlices;
  static_assert(kSlices == 2 && Traits::kDQHalves == 2, "the step's order below interleaves two slices");

  const int wg = __shfl_sync(0xffffffffu, mma_tid / 128, 0);
  const int n0 = n_block * kBlockN;
  const int k_off = wg * Traits::kSdPKeys;  // this warpgroup's S/dP keys in the block

  typename Traits::MmaSdP mma_sdp;
  typename Traits::MmadKV mma_dkv;
  typename Traits::MmadQ mma_dq;
  using AccdKV = decltype(partition_fragment_C(mma_dkv, Shape<_64, BlockN>{}));
  AccdKV acc_dk[kSlices], acc_dv[kSlices];
  CUTLASS_PRAGMA_UNROLL
  for (int s = 0; s < kSlices; ++s) {
    clear(acc_dk[s]);
    clear(acc_dv[s]);
  }

  if (total > 0) {
    const bool partial_keys = n0 + kBlockN > p.seqlen_k;
    const bool softcap = p.softcap > 0.f;
    const int hq0 = hkv * (p.heads_q / p.heads_kv);
    wait_barrier(ss.kv_bar, 0);

    // The step's query head (for its dQ): candidate
    // JAX_FA3_BWD_DKVT_HEAD_BY_STEP=1 (mainloop_bwd_sm90.hpp) follows it step
    // by step as BwdStep does instead of dividing by the walk's length every
    // step (~25 of ~600 instructions a step).
    int m = range.start_m, hq_by_step = hq0;
    for (int t = 0; t < total;
         ++t, m = m == range.m_begin ? range.last_m() : m - 1, hq_by_step += m == range.start_m) {
      const int hq = JAX_FA3_BWD_DKVT_HEAD_BY_STEP ? hq_by_step : hq0 + t / range.num_m;
      const int stage = t % kStages;
      const int do_stage = t % kStagesdO;
      const int pds_stage = t % Traits::kStagesPdS;
      const int m0 = m * kBlockM;

      // Operands from opaque bases, rebuilt each step (see bwd_mma).
      Element* q_base = ss.q.data();
      Element* do_base = ss.dout.data();
      Element* k_base = ss.k.data();
      Element* v_base = ss.v.data();
      Element* p_base = ss.p.data();
      Element* ds_base = ss.ds.data();
      const int tid = threadIdx.x % 128;
      asm volatile("" : "+l"(q_base), "+l"(do_base), "+l"(k_base), "+l"(v_base), "+l"(p_base), "+l"(ds_base));
      auto thr_sdp = mma_sdp.get_thread_slice(tid);
      auto thr_dkv = mma_dkv.get_thread_slice(tid);
      auto thr_dq = mma_dq.get_thread_slice(tid);
      Tensor sQ = make_tensor(make_smem_ptr(q_base), typename Traits::SmemLayoutQ{})(_, _, stage);
      Tensor sQt = make_tensor(make_smem_ptr(q_base), typename Traits::SmemLayoutQt{})(_, _, stage);
      Tensor sdO = make_tensor(make_smem_ptr(do_base), typename Traits::SmemLayoutdO{})(_, _, do_stage);
      Tensor sdOt = make_tensor(make_smem_ptr(do_base), typename Traits::SmemLayoutdOt{})(_, _, do_stage);
      Tensor sK = make_tensor(make_smem_ptr(k_base), typename Traits::SmemLayoutK{});
      Tensor sKt = make_tensor(make_smem_ptr(k_base), typename Traits::SmemLayoutKt{});
      Tensor sV = make_tensor(make_smem_ptr(v_base), typename Traits::SmemLayoutV{});
      Tensor sPt = make_tensor(make_smem_ptr(p_base), typename Traits::SmemLayoutPdSt{})(_, _, pds_stage);
      Tensor sdS = make_tensor(make_smem_ptr(ds_base), typename Traits::SmemLayoutPdS{})(_, _, pds_stage);
      Tensor sdSt = make_tensor(make_smem_ptr(ds_base), typename Traits::SmemLayoutPdSt{})(_, _, pds_stage);

      Tensor tSrS = partition_fragment_C(mma_sdp, Shape<BlockM, SdPKeys>{});
      Tensor tdPrdP = partition_fragment_C(mma_sdp, Shape<BlockM, SdPKeys>{});
      wait_barrier(ss.full_bar[stage], (t / kStages) & 1);
      {
        Tensor tSrQ = thr_sdp.partition_fragment_A(sQ);
        Tensor tSrK = thr_sdp.partition_fragment_B(local_tile(sK, Shape<SdPKeys, HeadDim>{}, make_coord(wg, _0{})));
        warpgroup_gemm</*kZeroInit=*/true, /*kARegs=*/false>(mma_sdp, tSrQ, tSrK, tSrS);
      }
      wait_barrier(ss.full_do_bar[do_stage], (t / kStagesdO) & 1);
      {
        Tensor tdPrdO = thr_sdp.partition_fragment_A(sdO);
        Tensor tdPrV = thr_sdp.partition_fragment_B(local_tile(sV, Shape<SdPKeys, HeadDim>{}, make_coord(wg, _0{})));
        warpgroup_gemm</*kZeroInit=*/true, /*kARegs=*/false>(mma_sdp, tdPrdO, tdPrV, tdPrdP);
      }

      // (query rows, key columns) views; the thread's two rows.
      Tensor tScS = thr_sdp.partition_C(make_identity_tensor(Shape<BlockM, SdPKeys>{}));
      Tensor c_rc = make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));
      Tensor s_rc = rowcol_view(tSrS);
      constexpr int kRows = decltype(size<0>(s_rc))::value;
      constexpr int kCols = decltype(size<1>(s_rc))::value;
      const float* lse2 = ss.lse2.data() + stage * kBlockM;
      const float* dpsum = ss.dpsum.data() + do_stage * kBlockM;
      float neg_lse[kRows];
      CUTLASS_PRAGMA_UNROLL
      for (int r = 0; r < kRows; ++r) neg_lse[r] = -lse2[get<0>(c_rc(r, 0))];

      // The mask test only on tiles that cross the end of the keys or, with
      // kMasked, that the window cuts (query rows past seqlen_q: lse2 = +inf).
      const bool need_mask =
          partial_keys || (kMasked && !p.mask.tile_inside_window(m0, m0 + kBlockM, n0, n0 + kBlockN));
      Tensor rP = make_tensor_like<Element>(tSrS);
      Tensor p_rc = rowcol_view(rP);
      auto compute_p = [&](auto softcap_tag, auto mask_tag) {
        constexpr bool kSoftcap = decltype(softcap_tag)::value;
        constexpr bool kMaskTile = decltype(mask_tag)::value;
        int k_lo[kRows], k_hi[kRows];  // visible keys of each row, in this warpgroup's columns
        if constexpr (kMaskTile) {
          CUTLASS_PRAGMA_UNROLL
          for (int r = 0; r < kRows; ++r) {
            const int i = m0 + get<0>(c_rc(r, 0));
            k_lo[r] = kMasked ? p.mask.row_key_begin(i) - n0 - k_off : -n0 - k_off;
            k_hi[r] = (kMasked ? p.mask.row_key_end(i) : p.seqlen_k) - n0 - k_off;
          }
        }
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kRows; ++r) {
          CUTLASS_PRAGMA_UNROLL
          for (int c = 0; c < kCols; ++c) {
            const float x = s_rc(r, c);
            float prob, dcap = 1.f;
            if constexpr (kSoftcap) {
              const float th = tanhf(x * p.softcap_in);
              prob = fast_exp2(fmaf(th, p.softcap_log2, neg_lse[r]));
              dcap = 1.f - th * th;
            } else {
              prob = fast_exp2(fmaf(x, p.scale_log2, neg_lse[r]));
            }
            if constexpr (kMaskTile) {
              const int col = get<1>(c_rc(0, c));
              if (col < k_lo[r] || col >= k_hi[r]) prob = 0.f;
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
      warpgroup_wait<1>();  // S done, dP running
      if (softcap) {
        compute_p_tile(cute::true_type{});
      } else {
        compute_p_tile(cute::false_type{});
        convert_fragment_into(tSrS, rP);
      }
      warpgroup_wait<0>();  // dP done
      Tensor rdS = make_tensor_like<Element>(tSrS);
      {
        Tensor dp_rc = rowcol_view(tdPrdP);
        Tensor ds_rc = rowcol_view(rdS);
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const float d = dpsum[get<0>(c_rc(r, 0))];
          CUTLASS_PRAGMA_UNROLL
          for (int c = 0; c < kCols; ++c) ds_rc(r, c) = Element(s_rc(r, c) * (dp_rc(r, c) - d));
        }
      }

      // P and dS of this warpgroup's keys to smem (stage pds_stage, last read
      // by step t - 2's GEMMs, which every warpgroup waited for before step
      // t - 1's kdSReady), then every warpgroup's part is needed.
      {
        using StoreAtom = std::conditional_t<decltype(size(tSrS))::value % 8 == 0, SM90_U32x4_STSM_N,
                                             SM90_U32x2_STSM_N>;
        auto r2s = make_tiled_copy_C(Copy_Atom<StoreAtom, Element>{}, mma_sdp);
        auto thr_store = r2s.get_thread_slice(fresh_warpgroup_thread());
        auto store = [&](auto const& frag, Element* base) {
          Tensor st = make_tensor(make_smem_ptr(base), typename Traits::SmemLayoutPdS{})(_, _, pds_stage);
          copy(r2s, thr_store.retile_S(frag),
               thr_store.partition_D(local_tile(st, Shape<BlockM, SdPKeys>{}, make_coord(_0{}, wg))));
        };
        store(rP, ss.p.data());
        store(rdS, ss.ds.data());
      }
      cutlass::arch::fence_view_async_shared();
      cutlass::arch::NamedBarrier::sync(Traits::kMmaThreads, barrier_id(BwdNamedBarrier::kdSReady));

      auto issue_dkv = [&](auto& acc, auto const& s_rows_t, auto const& s_keys_t, int slice) {
        Tensor tA = thr_dkv.partition_fragment_A(
            local_tile(s_rows_t, Shape<_64, BlockM>{}, make_coord(kSlices * wg + slice, _0{})));
        Tensor tB = thr_dkv.partition_fragment_B(s_keys_t);
        warpgroup_gemm</*kZeroInit=*/false, /*kARegs=*/false>(mma_dkv, tA, tB, acc);
      };
      Tensor tdQrdQ = partition_fragment_C(mma_dq, Shape<BlockM, _64>{});
      auto issue_dq = [&](int half) {
        Tensor tA = thr_dq.partition_fragment_A(sdS);
        Tensor tB = thr_dq.partition_fragment_B(
            local_tile(sKt, Shape<_64, BlockN>{}, make_coord(Traits::kDQHalves * wg + half, _0{})));
        warpgroup_gemm</*kZeroInit=*/true, /*kARegs=*/false>(mma_dq, tA, tB, tdQrdQ);
      };
      float* dq_base = dq_fragment_base<Traits>(
          DqReducer<Traits>::at(p, b, hq, m).gdq, wg);
      constexpr int kHalfValues = decltype(size(tdQrdQ))::value;
      auto send_dq = [&](int half) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < kHalfValues; i += 4) {
          dq_add_group(dq_base, half * kHalfValues + i, dq_group_values(tdQrdQ, i));
        }
      };

      issue_dkv(acc_dv[0], sdOt, sPt, 0);
      issue_dkv(acc_dv[1], sdOt, sPt, 1);
      issue_dq(0);
      issue_dkv(acc_dk[0], sQt, sdSt, 0);
      warpgroup_wait<1>();  // dV, dQ half 0 done; dK slice 0 running
      arrive_barrier(ss.empty_do_bar[do_stage]);  // dO read by dP and dV only
      send_dq(0);
      issue_dq(1);
      issue_dkv(acc_dk[1], sQt, sdSt, 1);
      warpgroup_wait<1>();  // dQ half 1 done; dK slice 1 running
      send_dq(1);
      warpgroup_wait<0>();
      arrive_barrier(ss.empty_bar[stage]);
    }
    // Every warpgroup's GEMMs are done: Q's smem is free for the epilogue.
    cutlass::arch::NamedBarrier::sync(Traits::kMmaThreads, barrier_id(BwdNamedBarrier::kdSReady));
  }
  // Keys that no query sees get zero dK/dV, written like any other.
  Element* tile = ss.q.data() + wg * Traits::kEpilogueTileElems;
  store_dkvt<Traits>(p, acc_dk, p.softmax_scale, tile, p.dk, n_block, hkv, b, wg);
  store_dkvt<Traits>(p, acc_dv, 1.f, tile, p.dv, n_block, hkv, b, wg);
}

}  // namespace jax_fa3::bwd
