// How fast one warpgroup's wgmma m64nNk16 (bf16, fp32 accumulate) runs as a
// function of N, both operands from shared memory (SS, K-major, as the
// forward's S = Q K^T) and A from registers (RS): cycles per instruction
// against N / 2 (64 x N x 16 multiply-adds at the SM's 2048 a cycle), the peak
// of a warpgroup that has the tensor cores to itself (one CTA here). Question it answers: whether a key
// block width that is not a multiple of 32 or 64 (176) wastes tensor time
// (benchmarks/results/2026-12-04i_h200_fwd_blocks.md).
//
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr \
//     -Icpp/include -I<cutlass>/include tools/dev/wgmma_rate.cu -o wgmma_rate && ./wgmma_rate
#include "jax_fa3/common/arch.h"

#include <cstdio>
#include <cute/tensor.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cutlass/numeric_types.h>

#include "jax_fa3/common/utils.hpp"

using namespace cute;
using Element = cutlass::bfloat16_t;
constexpr int kK = 128;      // one 64 x kK A tile, like Q at head dim 128
constexpr int kIters = 256;  // GEMMs (kK / 16 wgmmas each) per timing

template <int N, bool kARegs>
__global__ void __launch_bounds__(128) rate_kernel(long long* cycles, float* sink) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  using LayoutA = decltype(tile_to_shape(jax_fa3::gmma_smem_atom<Element, GMMA::Major::K, kK>(), Shape<_64, Int<kK>>{}));
  using LayoutB = decltype(tile_to_shape(jax_fa3::gmma_smem_atom<Element, GMMA::Major::K, kK>(), Shape<Int<N>, Int<kK>>{}));
  Element* a_ptr = reinterpret_cast<Element*>(smem_raw);
  Element* b_ptr = a_ptr + cosize_v<LayoutA>;
  for (int i = threadIdx.x; i < cosize_v<LayoutA> + cosize_v<LayoutB>; i += 128) a_ptr[i] = Element(float(i % 7) * 0.01f);
  __syncthreads();
  Tensor sA = make_tensor(make_smem_ptr(a_ptr), LayoutA{});
  Tensor sB = make_tensor(make_smem_ptr(b_ptr), LayoutB{});
  auto mma = [] {
    if constexpr (kARegs) {
      return make_tiled_mma(GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<N>, Int<kK>>>());
    } else {
      return make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<N>, Int<kK>>>());
    }
  }();
  auto thr = mma.get_thread_slice(threadIdx.x);
  Tensor tCrB = thr.partition_fragment_B(sB);
  Tensor acc = partition_fragment_C(mma, Shape<_64, Int<N>>{});
  clear(acc);
  // Shared-memory descriptors (SS) or a register fragment (RS).
  Tensor tCrA = thr.partition_fragment_A(sA);
  if constexpr (kARegs) {
    for (int i = 0; i < size(tCrA); ++i) tCrA(i) = Element(float(i % 5) * 0.01f);
  }
  const long long start = clock64();
  for (int it = 0; it < kIters; ++it) {
    jax_fa3::warpgroup_gemm</*kZeroInit=*/false, kARegs>(mma, tCrA, tCrB, acc);
    warpgroup_wait<1>();  // two GEMMs in flight, like the forward's S and P V
  }
  warpgroup_wait<0>();
  const long long elapsed = clock64() - start;
  float s = 0.f;
  for (int i = 0; i < size(acc); ++i) s += acc(i);
  sink[threadIdx.x] = s;
  if (threadIdx.x == 0) *cycles = elapsed;
}

template <int N, bool kARegs>
void measure(long long* d_cycles, float* d_sink) {
  const int smem = (64 + N) * kK * int(sizeof(Element)) + 1024;
  auto kernel = rate_kernel<N, kARegs>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  long long best = -1;
  for (int rep = 0; rep < 5; ++rep) {
    kernel<<<1, 128, smem>>>(d_cycles, d_sink);
    long long c = 0;
    if (cudaMemcpy(&c, d_cycles, sizeof(c), cudaMemcpyDeviceToHost) != cudaSuccess) {
      std::printf("N=%d: %s\n", N, cudaGetErrorString(cudaGetLastError()));
      return;
    }
    if (best < 0 || c < best) best = c;
  }
  const double per_wgmma = double(best) / (kIters * (kK / 16));
  std::printf("%s N=%3d: %7.1f cycles per m64n%dk16 (peak N/2 = %5.1f): %.3f of peak\n", kARegs ? "RS" : "SS", N,
              per_wgmma, N, N / 2.0, (N / 2.0) / per_wgmma);
}

int main() {
  long long* d_cycles;
  float* d_sink;
  cudaMalloc(&d_cycles, sizeof(long long));
  cudaMalloc(&d_sink, 128 * sizeof(float));
  measure<64, false>(d_cycles, d_sink);
  measure<128, false>(d_cycles, d_sink);
  measure<144, false>(d_cycles, d_sink);
  measure<160, false>(d_cycles, d_sink);
  measure<176, false>(d_cycles, d_sink);
  measure<192, false>(d_cycles, d_sink);
  measure<256, false>(d_cycles, d_sink);
  measure<128, true>(d_cycles, d_sink);
  measure<160, true>(d_cycles, d_sink);
  measure<176, true>(d_cycles, d_sink);
  return 0;
}
