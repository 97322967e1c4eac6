// How fast one warpgroup's wgmma m64nNk16 (bf16, fp32 accumulate) runs as a
// function of N, both operands from shared memory (SS, K-major, as the
// forward's S = Q K^T) and A from registers (RS): cycles per instruction
// against N / 2 (64 x N x 16 multiply-adds at the SM's 2048 a cycle), the peak
// of a warpgroup that has the tensor cores to itself (one CTA here). Question it answers: whether a key
// block width that is not a multiple of 32 or 64 (176) wastes tensor time
// (benchmarks/results/2026-12-04i_h200_fwd_blocks.md).
//
// Second question (the "beside" lines): does a second warpgroup running the
// forward's softmax instruction mix on its own registers (per thread 80
// scores: a max chain, FFMA, MUFU.EX2, FADD row sums, bf16 packs, as the head
// dim 128 kernel's SASS on 160-key blocks) slow the first one's wgmmas, and
// the wgmmas the softmax? In the forward's ping-pong each warpgroup's softmax
// runs beside the other's GEMMs; the S GEMM took ~1200 cycles there against
// 704 at the peak rate with 176 keys (benchmarks/notes.md, next step 1).
//
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr \
//     -Icpp/include -I<cutlass>/include tools/dev/wgmma_rate.cu -o wgmma_rate && ./wgmma_rate
#include "jax_fa3/common/arch.h"

#include <cstdio>
#include <cute/tensor.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cuda_bf16.h>
#include <cutlass/numeric_types.h>

#include "jax_fa3/common/utils.hpp"

using namespace cute;
using Element = cutlass::bfloat16_t;
constexpr int kK = 128;      // one 64 x kK A tile, like Q at head dim 128
constexpr int kIters = 256;  // GEMMs (kK / 16 wgmmas each) per timing

// What the second warpgroup does while the first issues wgmmas: the
// softmax mix, or one of its instruction classes alone (80 a block: MUFU.EX2,
// FFMA, FMNMX, FADD, FMUL; 40: the packed half-precision exponential
// ex2.approx.f16x2, two scores an instruction), to see which of them the
// wgmmas slow down.
enum class Beside { kNothing, kSoftmax, kMufu, kFfma, kMax, kFadd, kFmul, kMufuHalf2 };

constexpr const char* beside_name(Beside b) {
  switch (b) {
    case Beside::kNothing: return "nothing";
    case Beside::kSoftmax: return "softmax mix";
    case Beside::kMufu: return "MUFU.EX2 only";
    case Beside::kFfma: return "FFMA only";
    case Beside::kMax: return "FMNMX only";
    case Beside::kFadd: return "FADD only";
    case Beside::kFmul: return "FMUL only";
    case Beside::kMufuHalf2: return "ex2.f16x2 only (40)";
  }
  return "?";
}

constexpr int kScores = 80;  // per thread: a 64 x 160 block of scores over 128 threads

// One block of the softmax instruction mix on x, leaving exp(x - max) in x
// as the forward does (so each block depends on the last and nothing is
// hoisted); the bf16 pairs are folded with an XOR (one LOP a pair more than
// the forward). Returns a value that depends on all of it.
__device__ __forceinline__ float softmax_block(float (&x)[kScores], float scale) {
  constexpr int kRow = kScores / 2;  // two rows a thread, as in an m64 wgmma accumulator
  float max0 = x[0], max1 = x[kRow];
#pragma unroll
  for (int i = 1; i < kRow; ++i) {
    max0 = fmaxf(max0, x[i]);
    max1 = fmaxf(max1, x[kRow + i]);
  }
  const float shift[2] = {max0 * scale, max1 * scale};
  float sums[4] = {0.f, 0.f, 0.f, 0.f};  // two partial sums a row
  unsigned packed = 0;
#pragma unroll
  for (int i = 0; i < kScores; ++i) {
    const int row = i / kRow;
    float e;
    asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(fmaf(x[i], scale, -shift[row])));
    sums[2 * row + i % 2] += e;
    if (i % 2 == 1) {
      __nv_bfloat162 p = __floats2bfloat162_rn(x[i - 1], e);  // x[i - 1] is already exp
      packed ^= *reinterpret_cast<unsigned*>(&p);
    }
    x[i] = e;
  }
  return sums[0] + sums[1] + sums[2] + sums[3] + __uint_as_float(packed & 0x3f800000u);
}

// One block of a single instruction class on x, 80 of them: each x[i] is
// carried from block to block and summed after the loop, so none is dead.
template <Beside kBeside>
__device__ __forceinline__ void class_block(float (&x)[kScores], float scale) {
  static_assert(kBeside != Beside::kNothing && kBeside != Beside::kSoftmax, "class_block: not an instruction class");
#pragma unroll
  for (int i = 0; i < kScores; ++i) {
    if constexpr (kBeside == Beside::kMufu) {
      asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(x[i]) : "f"(-fabsf(x[i])));
    } else if constexpr (kBeside == Beside::kFfma) {
      x[i] = fmaf(x[i], scale, -0.5f);
    } else if constexpr (kBeside == Beside::kMax) {
      x[i] = fmaxf(x[i], x[(i + 1) % kScores]);
    } else if constexpr (kBeside == Beside::kFadd) {
      x[i] = x[i] + 1e-7f;
    } else if constexpr (kBeside == Beside::kFmul) {
      x[i] = x[i] * 0.999f;
    } else if constexpr (kBeside == Beside::kMufuHalf2) {
      if (i % 2 == 0) {  // the even x[i] carry a half2's bits; the odd ones stay as they are
        unsigned h = __float_as_uint(x[i]);
        asm volatile("ex2.approx.f16x2 %0, %1;" : "=r"(h) : "r"(h ^ 0x80008000u));
        x[i] = __uint_as_float(h);
      }
    }
  }
}

// Warpgroup 0: kIters GEMMs timed (or, with kWgmma false, an idle wait of
// `idle_cycles` in their place). Warpgroup 1 (kBeside): blocks of the mix
// until warpgroup 0 is done, timed per block.
template <int N, bool kARegs, bool kWgmma, Beside kBeside>
__global__ void __launch_bounds__(256) rate_kernel(long long* cycles, long long idle_cycles, float* sink) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ volatile int done;
  using LayoutA = decltype(tile_to_shape(jax_fa3::gmma_smem_atom<Element, GMMA::Major::K, kK>(), Shape<_64, Int<kK>>{}));
  using LayoutB = decltype(tile_to_shape(jax_fa3::gmma_smem_atom<Element, GMMA::Major::K, kK>(), Shape<Int<N>, Int<kK>>{}));
  Element* a_ptr = reinterpret_cast<Element*>(smem_raw);
  Element* b_ptr = a_ptr + cosize_v<LayoutA>;
  for (int i = threadIdx.x; i < cosize_v<LayoutA> + cosize_v<LayoutB>; i += blockDim.x) a_ptr[i] = Element(float(i % 7) * 0.01f);
  if (threadIdx.x == 0) done = 0;
  __syncthreads();
  if (threadIdx.x >= 128) {
    if constexpr (kBeside != Beside::kNothing) {
      float x[kScores];
#pragma unroll
      for (int i = 0; i < kScores; ++i) x[i] = float((threadIdx.x * 7 + i) % 13) * 0.1f;
      float acc = 0.f;
      long long blocks = 0;
      const long long start = clock64();
      while (!done) {
        if constexpr (kBeside == Beside::kSoftmax) {
          acc += softmax_block(x, 1.4426950f);
        } else {
          class_block<kBeside>(x, 0.999f);
        }
        ++blocks;
      }
      const long long elapsed = clock64() - start;
#pragma unroll
      for (int i = 0; i < kScores; ++i) acc += x[i];
      sink[threadIdx.x] = acc;
      if (threadIdx.x == 128) {
        cycles[1] = elapsed;
        cycles[2] = blocks;
      }
    }
    return;
  }
  long long elapsed = 0;
  if constexpr (kWgmma) {
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
    elapsed = clock64() - start;
    float s = 0.f;
    for (int i = 0; i < size(acc); ++i) s += acc(i);
    sink[threadIdx.x] = s;
  } else {
    const long long start = clock64();
    while (clock64() - start < idle_cycles) __nanosleep(100);
    elapsed = clock64() - start;
  }
  // Warpgroup 0 only: the flag goes up once all its threads are done.
  asm volatile("bar.sync 1, 128;" ::: "memory");
  if (threadIdx.x == 0) {
    done = 1;
    cycles[0] = elapsed;
  }
}

struct Timing {
  long long wgmma_cycles, softmax_cycles, softmax_blocks;
};

// The best (fewest warpgroup-0 cycles) of 5 launches.
template <int N, bool kARegs, bool kWgmma, Beside kBeside>
Timing run(long long* d_cycles, float* d_sink, long long idle_cycles = 0) {
  const int smem = (64 + N) * kK * int(sizeof(Element)) + 1024;
  auto kernel = rate_kernel<N, kARegs, kWgmma, kBeside>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  Timing best{-1, 0, 0};
  for (int rep = 0; rep < 5; ++rep) {
    cudaMemset(d_cycles, 0, 3 * sizeof(long long));
    kernel<<<1, 256, smem>>>(d_cycles, idle_cycles, d_sink);
    long long c[3] = {0, 0, 0};
    if (cudaMemcpy(c, d_cycles, sizeof(c), cudaMemcpyDeviceToHost) != cudaSuccess) {
      std::printf("N=%d: %s\n", N, cudaGetErrorString(cudaGetLastError()));
      return best;
    }
    if (best.wgmma_cycles < 0 || c[0] < best.wgmma_cycles) best = Timing{c[0], c[1], c[2]};
  }
  return best;
}

template <int N, bool kARegs>
void measure(long long* d_cycles, float* d_sink) {
  const Timing alone = run<N, kARegs, true, Beside::kNothing>(d_cycles, d_sink);
  const double per_wgmma = double(alone.wgmma_cycles) / (kIters * (kK / 16));
  std::printf("%s N=%3d: %7.1f cycles per m64n%dk16 (peak N/2 = %5.1f): %.3f of peak\n", kARegs ? "RS" : "SS", N,
              per_wgmma, N, N / 2.0, (N / 2.0) / per_wgmma);
}

// The wgmmas with a mix beside them, and the mix beside an idle warpgroup
// for as long.
template <int N, bool kARegs, Beside kBeside = Beside::kSoftmax>
void measure_beside(long long* d_cycles, float* d_sink) {
  const Timing both = run<N, kARegs, true, kBeside>(d_cycles, d_sink);
  const Timing solo = run<N, kARegs, false, kBeside>(d_cycles, d_sink, both.wgmma_cycles);
  const double per_wgmma = double(both.wgmma_cycles) / (kIters * (kK / 16));
  auto per_block = [](const Timing& t) { return t.softmax_blocks ? double(t.softmax_cycles) / t.softmax_blocks : 0.0; };
  std::printf("%s N=%3d beside the %s: %7.1f cycles per wgmma (%.3f of peak); %7.1f cycles a block beside the "
              "wgmmas, %7.1f beside an idle warpgroup (%.2fx)\n",
              kARegs ? "RS" : "SS", N, beside_name(kBeside), per_wgmma, (N / 2.0) / per_wgmma, per_block(both),
              per_block(solo), per_block(solo) > 0 ? per_block(both) / per_block(solo) : 0.0);
}

int main() {
  long long* d_cycles;
  float* d_sink;
  cudaMalloc(&d_cycles, 3 * sizeof(long long));
  cudaMalloc(&d_sink, 256 * sizeof(float));
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
  measure_beside<160, false>(d_cycles, d_sink);
  measure_beside<128, false>(d_cycles, d_sink);
  measure_beside<160, true>(d_cycles, d_sink);
  measure_beside<128, true>(d_cycles, d_sink);
  measure_beside<160, false, Beside::kMufu>(d_cycles, d_sink);
  measure_beside<160, false, Beside::kFfma>(d_cycles, d_sink);
  measure_beside<160, false, Beside::kMax>(d_cycles, d_sink);
  measure_beside<160, false, Beside::kFadd>(d_cycles, d_sink);
  measure_beside<160, false, Beside::kFmul>(d_cycles, d_sink);
  measure_beside<160, false, Beside::kMufuHalf2>(d_cycles, d_sink);
  return 0;
}
