// Outputs of the backward main kernel: the dq tile of each step (added into
// the fp32 workspace accumulator) and the dK/dV of the CTA's key block.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cute/tensor.hpp>

#include "jax_fa3/bwd/params_bwd_sm90.hpp"

namespace jax_fa3::bwd {

JAX_FA3_HOST_DEVICE void bulk_wait_read_all() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
#endif
}
JAX_FA3_HOST_DEVICE void bulk_wait_all() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

// Adds the fp32 dQ tile in smem ([kBlockM, kDqPitch], fully written
// and fenced for the async proxy by the caller) to the workspace accumulator
// of (batch b, query head hq, query block m).
//
// Default: one thread issues a bulk reduce-add (cp.reduce.async.bulk .add.f32,
// the TMA unit doing the fp32 adds at L2), so the math warps never wait on
// the atomics; the smem tile is reused only after bulk_wait_read_all().
//
// Deterministic: the key blocks visiting (b, hq, m) add in increasing n_block
// order, serialised by a counter per (b, hq, m) in the workspace. CTAs are
// dispatched in linear block order and a CTA only waits for lower n_block of
// its own (kv head, batch), which has a lower linear index in the grid (key
// block fastest), so the wait always ends. Plain loads/stores through L2
// (ld/st.cg) do the add: order, not atomicity, is what matters here.
template <class Traits>
__device__ __forceinline__ void reduce_dq_tile(const BwdMainParams<Traits>& params, float* smem_dq, int b, int hq,
                                               int m, int n_block) {
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  constexpr int kTileFloats = kBlockM * Traits::kDqPitch;
  const int64_t tile = (int64_t(b) * params.heads_q + hq) * params.rows + int64_t(m) * kBlockM;
  float* gdq = params.dq_accum + tile * Traits::kDqPitch;
  if (!params.deterministic) {
    if (threadIdx.x == 0) {
      const uint32_t smem_addr = cute::cast_smem_ptr_to_uint(smem_dq);
      asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
                   :: "l"(gdq), "r"(smem_addr), "r"(uint32_t(kTileFloats * sizeof(float)))
                   : "memory");
      asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
    }
    return;
  }
  int* sem = params.dq_sem + (int64_t(b) * params.heads_q + hq) * params.m_blocks + m;
  const int rank = n_block - params.mask.key_begin(m * kBlockM) / kBlockN;
  if (threadIdx.x == 0) {
    int seen;
    do {
      asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(seen) : "l"(sem) : "memory");
    } while (seen != rank);
  }
  __syncthreads();
  const float4* src = reinterpret_cast<const float4*>(smem_dq);
  float4* dst = reinterpret_cast<float4*>(gdq);
  for (int i = threadIdx.x; i < kTileFloats / 4; i += Traits::kThreads) {
    float4 acc = __ldcg(dst + i);
    const float4 add = src[i];
    acc.x += add.x;
    acc.y += add.y;
    acc.z += add.z;
    acc.w += add.w;
    __stcg(dst + i, acc);
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" :: "l"(sem) : "memory");
  }
}

template <class Element>
__device__ __forceinline__ void store_pair(Element* ptr, float a, float b) {
  Element v[2] = {Element(a), Element(b)};
  uint32_t packed;
  memcpy(&packed, v, sizeof(packed));
  *reinterpret_cast<uint32_t*>(ptr) = packed;
}

// dK (times softmax_scale) and dV of this warpgroup's 64 keys x kDSlice
// columns, straight from the accumulators; rows beyond seqlen_k and columns
// beyond the real head_dim are not written. Accumulator elements 2i, 2i+1 are
// adjacent columns of one row (wgmma C layout), hence the 4-byte stores.
template <class Traits, class Acc>
__device__ __forceinline__ void store_dkv(const BwdMainParams<Traits>& params, const Acc& tdKrdK, const Acc& tdVrdV,
                                          int n_block, int hkv, int b, int wg_tid, int ks, int dsl) {
  using namespace cute;
  using Element = typename Traits::Element;
  typename Traits::MmadKV mma_dkv;
  auto thr_dkv = mma_dkv.get_thread_slice(wg_tid);
  Tensor tc = thr_dkv.partition_C(make_identity_tensor(Shape<_64, Int<Traits::kDSlice>>{}));
  static_assert(decltype(size(tc))::value == decltype(size(tdKrdK))::value, "layout mismatch");
  Element* dk = static_cast<Element*>(params.dk);
  Element* dv = static_cast<Element*>(params.dv);
  const int key0 = n_block * Traits::kBlockN + ks * 64;
  const int col0 = dsl * Traits::kDSlice;
  CUTLASS_PRAGMA_UNROLL
  for (int i = 0; i < size(tdKrdK); i += 2) {
    const int j = key0 + get<0>(tc(i));
    const int d = col0 + get<1>(tc(i));
    if (j < params.seqlen_k && d < params.head_dim) {
      const int64_t off = ((int64_t(b) * params.seqlen_k + j) * params.heads_kv + hkv) * params.head_dim + d;
      store_pair(dk + off, tdKrdK(i) * params.softmax_scale, tdKrdK(i + 1) * params.softmax_scale);
      store_pair(dv + off, tdVrdV(i), tdVrdV(i + 1));
    }
  }
}

}  // namespace jax_fa3::bwd
