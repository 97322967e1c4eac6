// Definition of run_bwd_sm90: the backward as a short device-level pipeline,
// all enqueued on `stream` (no host synchronisation, no allocation):
//   1. clear the deterministic-order counters (deterministic mode only);
//   2. preprocess: per-row D = rowsum(dO * O) - dlse and lse * log2(e), and
//      the fp32 dq accumulator cleared;
//   3. main kernel: dK, dV (written directly) and dq partial sums;
//   4. convert: dq accumulator -> dq (Element, times softmax_scale).
// Included only by the generated instantiation files.
#pragma once

#include "jax_fa3/common/arch.h"

#include <cstdint>
#include <type_traits>

#include <cuda_runtime_api.h>
#include <cutlass/numeric_types.h>

#include "jax_fa3/bwd/kernel_bwd_sm90.hpp"
#include "jax_fa3/bwd/launch_bwd_sm90.h"
#include "jax_fa3/bwd/postprocess_bwd_sm90.hpp"
#include "jax_fa3/bwd/preprocess_bwd_sm90.hpp"
#include "jax_fa3/bwd/workspace_bwd.h"
#include "jax_fa3/common/mask.h"
#include "jax_fa3/run.h"

namespace jax_fa3 {

namespace bwd {

// Steps 1-4 with one of BwdTile's walks; the problem is validated and not
// empty. kChunkWaves > 0: the deterministic kernels' CTA order (BwdCtaOrder)
// in chunks of about that many waves of CTAs.
template <class Element, int kHeadDim, class Walk, bool kMasked, int kChunkWaves>
cudaError_t run_bwd_pipeline(const BwdParams& params, cudaStream_t stream) {
  constexpr bool kChunkedOrder = kChunkWaves > 0;
  using Traits = BwdTraitsOf<Element, kHeadDim, Walk>;
  const AttnProblem& prob = params.problem;
  const AttnShape& s = prob.shape;
  const int64_t n_blocks = (int64_t(s.seqlen_k) + Traits::kBlockN - 1) / Traits::kBlockN;
  // The chunked order numbers the CTAs in an int; the default grid is
  // (key blocks, kv heads, batch).
  if (kChunkedOrder ? n_blocks * s.heads_kv * s.batch > INT32_MAX : s.heads_kv > 65535 || s.batch > 65535) {
    return cudaErrorInvalidValue;
  }
  DeviceInfo device;
  if (cudaError_t e = current_device_info(&device)) return e;
  const BwdWorkspace ws = BwdWorkspace::make(s, params.deterministic, Traits::kBlockM, kHeadDim);
  char* base = static_cast<char*>(params.workspace);
  float* lse2 = reinterpret_cast<float*>(base + ws.lse2_offset);
  float* dpsum = reinterpret_cast<float*>(base + ws.dpsum_offset);
  float* dq_accum = reinterpret_cast<float*>(base + ws.dq_accum_offset);
  int* dq_sem = params.deterministic ? reinterpret_cast<int*>(base + ws.dq_sem_offset) : nullptr;

  // 1. The workspace arrives with undefined contents (the preprocess clears dq_accum).
  if (params.deterministic) {
    if (cudaError_t e = cudaMemsetAsync(dq_sem, 0, ws.dq_sem_bytes, stream)) return e;
  }

  // 2. Row terms, dq accumulator cleared.
  {
    constexpr int kRows = PreprocessShape<kHeadDim>::kRowsPerBlock;
    const dim3 grid(unsigned((ws.rows + kRows - 1) / kRows), s.heads_q, s.batch);
    bwd_preprocess_kernel<Element, kHeadDim><<<grid, kPreprocessThreads, 0, stream>>>(
        static_cast<const Element*>(params.out), static_cast<const Element*>(params.dout), params.lse, params.dlse,
        lse2, dpsum, dq_accum, s.seqlen_q, s.heads_q, s.head_dim, ws.rows);
    if (cudaError_t e = cudaGetLastError()) return e;
  }

  // 3. Main kernel.
  {
    constexpr float kLog2e = 1.4426950408889634f;
    const BwdMainParams<Traits> mp{
        make_tma_q<Traits>(static_cast<const Element*>(params.q), s.seqlen_q, s.head_dim, s.heads_q, s.batch),
        make_tma_q<Traits>(static_cast<const Element*>(params.dout), s.seqlen_q, s.head_dim, s.heads_q, s.batch),
        make_tma_k<Traits>(static_cast<const Element*>(params.k), s.seqlen_k, s.head_dim, s.heads_kv, s.batch),
        make_tma_v<Traits>(static_cast<const Element*>(params.v), s.seqlen_k, s.head_dim, s.heads_kv, s.batch),
        WindowMask::make(s, prob.mask),
        s.batch,
        s.seqlen_q,
        s.seqlen_k,
        s.heads_q,
        s.heads_kv,
        s.head_dim,
        prob.softmax_scale,
        prob.softmax_scale * kLog2e,
        prob.softcap,
        prob.softcap > 0.f ? prob.softmax_scale / prob.softcap : 0.f,
        prob.softcap * kLog2e,
        ws.rows,
        ws.m_blocks,
        lse2,
        dpsum,
        dq_accum,
        dq_sem,
        params.dk,
        params.dv,
        params.deterministic,
        BwdCtaOrder::make(int(n_blocks), s.heads_kv, s.batch, device.multiprocessor_count, kChunkWaves)};

    auto kernel = bwd_main_kernel<Traits, kMasked, kChunkedOrder>;
    constexpr int kSmem = bwd_main_smem_bytes<Traits>();
    if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem)) return e;
    const dim3 grid = kChunkedOrder ? dim3(unsigned(mp.order.num_ctas()))
                                    : dim3(unsigned(n_blocks), unsigned(s.heads_kv), unsigned(s.batch));
    kernel<<<grid, Traits::kThreads, kSmem, stream>>>(mp);
    if (cudaError_t e = cudaGetLastError()) return e;
  }

  // 4. dq.
  {
    constexpr int kRows = ConvertShape<kHeadDim>::kRowsPerBlock;
    const dim3 grid(unsigned((int64_t(s.seqlen_q) + kRows - 1) / kRows), s.heads_q, s.batch);
    bwd_convert_dq_kernel<Element, kHeadDim, Traits::kBlockM, Traits::kDQLayout, Traits::kDQSlice>
        <<<grid, kConvertThreads, 0, stream>>>(
        dq_accum, static_cast<Element*>(params.dq), s.seqlen_q, s.heads_q, s.head_dim, ws.rows,
        prob.softmax_scale);
    if (cudaError_t e = cudaGetLastError()) return e;
  }
  return cudaSuccess;
}

// The walk of the mode (BwdTile's Fast or Deterministic) and its CTA order.
template <class Element, int kHeadDim, bool kMasked, bool kLong, class Tile>
cudaError_t run_bwd_walk(const BwdParams& params, cudaStream_t stream) {
  using FastWalk = typename Tile::template Fast<kMasked, kLong>;
  using DeterministicWalk = typename Tile::template Deterministic<kMasked, kLong>;
  static_assert(!DeterministicWalk::kDKVTransposed, "the deterministic order is kept by BwdTraits' dQ writer warp");
  if (params.deterministic) {
    constexpr int kChunkWaves = Tile::template kDeterministicChunkWaves<kMasked>;
    if constexpr (kChunkWaves > 0 || !std::is_same_v<DeterministicWalk, FastWalk>) {
      return run_bwd_pipeline<Element, kHeadDim, DeterministicWalk, kMasked, kChunkWaves>(params, stream);
    }
  }
  return run_bwd_pipeline<Element, kHeadDim, FastWalk, kMasked, 0>(params, stream);
}

}  // namespace bwd

template <class Element, int kHeadDim, bool kMasked, class Tile>
cudaError_t run_bwd_sm90(const BwdParams& params, cudaStream_t stream) {
  const AttnProblem& prob = params.problem;
  const AttnShape& s = prob.shape;
  if (s.head_dim <= 0 || s.head_dim > kHeadDim || s.head_dim % 8 != 0 || s.heads_kv <= 0 ||
      s.heads_q % s.heads_kv != 0) {
    return cudaErrorInvalidValue;
  }
  const size_t q_bytes = size_t(s.batch) * s.seqlen_q * s.heads_q * s.head_dim * sizeof(Element);
  const size_t k_bytes = size_t(s.batch) * s.seqlen_k * s.heads_kv * s.head_dim * sizeof(Element);
  if (s.batch == 0 || s.seqlen_q == 0 || s.seqlen_k == 0 || s.heads_q == 0) {
    // Nothing attends: every gradient is zero.
    if (q_bytes) { if (cudaError_t e = cudaMemsetAsync(params.dq, 0, q_bytes, stream)) return e; }
    if (k_bytes) {
      if (cudaError_t e = cudaMemsetAsync(params.dk, 0, k_bytes, stream)) return e;
      if (cudaError_t e = cudaMemsetAsync(params.dv, 0, k_bytes, stream)) return e;
    }
    return cudaSuccess;
  }

  // The runtime choices of the backward made here rather than in dispatch.cu:
  // the mode's kernel (the deterministic one is its own where its CTAs run in
  // the chunked order, under a mask and without one where BwdTile's row says,
  // or its walk differs from the fast one) and, under a mask, the long walk
  // where the CTAs' walks reach BwdTile's kLongWalkRows.
  static_assert(Tile::kBlockN == BwdTile<kHeadDim>::kBlockN,
                "BwdTraits takes the key block from tile_config.h's row; a Tile may change the walks");
  if constexpr (kMasked && Tile::kLongWalkRows > 0) {
    if (bwd::bwd_walk_rows<Tile::kBlockN>(WindowMask::make(s, prob.mask)) >= Tile::kLongWalkRows) {
      return bwd::run_bwd_walk<Element, kHeadDim, kMasked, true, Tile>(params, stream);
    }
  }
  return bwd::run_bwd_walk<Element, kHeadDim, kMasked, false, Tile>(params, stream);
}

}  // namespace jax_fa3
