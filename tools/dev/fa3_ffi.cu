// FlashAttention-3's own Hopper kernels as XLA FFI targets, for measuring them
// side by side with jax_fa3 and cuDNN in one benchmark run
// (`python -m jax_fa3.benchmark --impls jax_fa3,cudnn,fa3 --fa3-lib ...`).
// Dev tool only: nothing of FlashAttention is part of jax_fa3. This file fills
// FlashAttention-3's parameter structs the way its `flash_api.cpp` does for
// dense (non-varlen, non-paged, unsplit) bf16/fp16 calls and calls its launch
// entry points; tools/dev/build_fa3_ffi.sh compiles it with the
// flash-attention checkout's `hopper/` sources into one shared library.
//
// Targets (CUDA, BSHD layout like jax_fa3):
//   Fa3Fwd(q, k, v) -> (out, lse [b, h, s_q] f32, scheduler int32[4])
//       attrs: softmax_scale (f32), causal (bool)
//   Fa3Bwd(q, k, v, out, dout, lse) -> (dq, dk, dv, dpsum, lse_log2, dq_accum, dq_semaphore)
//       attrs: softmax_scale (f32), causal (bool); the last four are
//       FlashAttention-3's scratch (sizes from fa3_bwd_scratch below, which
//       the Python side mirrors).
// Scope: head dims 64..256 in FlashAttention's buckets, heads_q == heads_kv,
// the (dtype, head dim) pairs the build compiled (FA3_DTYPES, FA3_HEAD_DIMS).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include <cutlass/numeric_types.h>

#include "flash.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Only called for variable-length batches, which this build compiles out
// (FLASHATTENTION_DISABLE_VARLEN); the launch template still names it.
void prepare_varlen_num_blocks(Flash_fwd_params&, cudaStream_t, bool, int, int, bool) { std::abort(); }

namespace {

int round_up(int x, int m) { return (x + m - 1) / m * m; }

int head_dim_rounded(int d) { return d <= 64 ? 64 : d <= 96 ? 96 : d <= 128 ? 128 : d <= 192 ? 192 : 256; }

// FlashAttention-3's backward tile (flash_api.cpp, mha_bwd, sm90): the
// workspace's row padding follows it (jax_fa3.benchmark._fa3_bwd_scratch too).
int bwd_block_m(int d_rounded, bool causal) {
  return d_rounded == 64 ? 128 : d_rounded == 128 && !causal ? 80 : 64;
}
int bwd_block_n(int d_rounded) { return d_rounded <= 128 ? 128 : d_rounded <= 192 ? 96 : 80; }

struct Dims {
  int b, s_q, s_k, h, h_k, d;
};

ffi::Error dims_of(ffi::AnyBuffer q, ffi::AnyBuffer k, Dims* out) {
  auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 4 || kd.size() != 4) return ffi::Error::InvalidArgument("fa3: q, k must be [b, s, h, d]");
  *out = Dims{int(qd[0]), int(qd[1]), int(kd[1]), int(qd[2]), int(kd[2]), int(qd[3])};
  if (out->h != out->h_k) return ffi::Error::InvalidArgument("fa3: this wrapper covers heads_q == heads_kv only");
  if (q.element_type() != ffi::DataType::BF16 && q.element_type() != ffi::DataType::F16)
    return ffi::Error::InvalidArgument("fa3: dtype must be bf16 or fp16");
  return ffi::Error::Success();
}

int device_sm_count() {
  int dev = 0, n = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  return n;
}

// What set_params_fprop / mha_fwd set for a dense call.
void fill_fwd(Flash_fwd_params& p, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, const Dims& x, bool bf16,
              float scale, bool causal, int s_q_rounded, int s_k_rounded) {
  p = {};
  p.is_bf16 = bf16;
  p.q_ptr = q.untyped_data();
  p.k_ptr = k.untyped_data();
  p.v_ptr = v.untyped_data();
  const int64_t row = int64_t(x.h) * x.d;
  p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = row;
  p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = x.d;
  p.v_dim_stride = 1;
  p.q_batch_stride = p.o_batch_stride = row * x.s_q;
  p.k_batch_stride = p.v_batch_stride = row * x.s_k;
  p.b = p.b_k = x.b;
  p.h = x.h;
  p.h_k = x.h_k;
  p.seqlen_q = x.s_q;
  p.seqlen_k = x.s_k;
  p.seqlen_q_rounded = s_q_rounded;
  p.seqlen_k_rounded = s_k_rounded;
  p.d = p.dv = x.d;
  p.d_rounded = p.dv_rounded = head_dim_rounded(x.d);
  p.total_q = x.b * x.s_q;
  p.total_k = x.b * x.s_k;
  p.scale_softmax = scale;
  p.softcap = 0.f;
  p.p_dropout = 1.f;
  p.rp_dropout = 1.f;
  p.p_dropout_in_uint8_t = 255;
  p.is_causal = causal;
  p.is_local = false;
  p.window_size_left = x.s_k - 1;
  p.window_size_right = causal ? 0 : x.s_q - 1;
  p.arch = 90;
  static const int sm_count = device_sm_count();
  p.num_sm = sm_count;
  p.num_splits = 1;
  p.pack_gqa = false;
  p.varlen_sort_batches = true;  // !is_local
  p.head_swizzle = causal;
}

template <class T>
bool run_fwd_bucket(Flash_fwd_params& p, cudaStream_t stream) {
  switch (p.d_rounded) {
#ifdef FA3_HDIM64
    case 64: run_mha_fwd_<90, T, 64, 64, false, false, false, false>(p, stream); return true;
#endif
#ifdef FA3_HDIM128
    case 128: run_mha_fwd_<90, T, 128, 128, false, false, false, false>(p, stream); return true;
#endif
#ifdef FA3_HDIM256
    case 256: run_mha_fwd_<90, T, 256, 256, false, false, false, false>(p, stream); return true;
#endif
    default: return false;
  }
}

template <class T>
bool run_bwd_bucket(Flash_bwd_params& p, cudaStream_t stream) {
  switch (p.d_rounded) {
#ifdef FA3_HDIM64
    case 64: run_mha_bwd_<90, T, 64, false>(p, stream); return true;
#endif
#ifdef FA3_HDIM128
    case 128: run_mha_bwd_<90, T, 128, false>(p, stream); return true;
#endif
#ifdef FA3_HDIM256
    case 256: run_mha_bwd_<90, T, 256, false>(p, stream); return true;
#endif
    default: return false;
  }
}

// The dtypes this build compiled (FA3_BF16 / FA3_FP16, from FA3_DTYPES).
template <class Run>
bool run_dtype(bool bf16, Run&& run) {
#ifdef FA3_BF16
  if (bf16) return run(cutlass::bfloat16_t{});
#endif
#ifdef FA3_FP16
  if (!bf16) return run(cutlass::half_t{});
#endif
  return false;
}

ffi::Error launch_status(bool compiled, int d) {
  if (!compiled)
    return ffi::Error::InvalidArgument("fa3: (dtype, head dim " + std::to_string(d) + ") not in this build");
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return ffi::Error::Internal(std::string("fa3: ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

ffi::Error fa3_fwd(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                   ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                   ffi::Result<ffi::Buffer<ffi::S32>> scheduler, float softmax_scale, bool causal) {
  Dims x;
  if (auto e = dims_of(q, k, &x); e.failure()) return e;
  const bool bf16 = q.element_type() == ffi::DataType::BF16;
  Flash_fwd_params p;
  fill_fwd(p, q, k, v, x, bf16, softmax_scale, causal, round_up(x.s_q, 128), round_up(x.s_k, 128));
  p.o_ptr = out->untyped_data();
  p.softmax_lse_ptr = lse->typed_data();
  if (causal) {
    // The causal scheduler's tile counter: zeroed before every call, as
    // mha_fwd does (a memset node, part of FlashAttention-3's cost).
    p.tile_count_semaphore = scheduler->typed_data();
    cudaMemsetAsync(p.tile_count_semaphore, 0, sizeof(int), stream);
  }
  const bool compiled =
      run_dtype(bf16, [&](auto t) { return run_fwd_bucket<decltype(t)>(p, stream); });
  return launch_status(compiled, x.d);
}

ffi::Error fa3_bwd(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out,
                   ffi::AnyBuffer dout, ffi::Buffer<ffi::F32> lse, ffi::Result<ffi::AnyBuffer> dq,
                   ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                   ffi::Result<ffi::Buffer<ffi::F32>> dpsum, ffi::Result<ffi::Buffer<ffi::F32>> lse_log2,
                   ffi::Result<ffi::Buffer<ffi::F32>> dq_accum, ffi::Result<ffi::Buffer<ffi::S32>> dq_semaphore,
                   float softmax_scale, bool causal) {
  Dims x;
  if (auto e = dims_of(q, k, &x); e.failure()) return e;
  const bool bf16 = q.element_type() == ffi::DataType::BF16;
  const int dr = head_dim_rounded(x.d);
  const int s_q_rounded = round_up(x.s_q, bwd_block_m(dr, causal));
  const int s_k_rounded = round_up(x.s_k, bwd_block_n(dr));
  const size_t need_rows = size_t(x.b) * x.h * s_q_rounded;
  if (dpsum->element_count() < need_rows || lse_log2->element_count() < need_rows ||
      dq_accum->element_count() < need_rows * dr)
    return ffi::Error::InvalidArgument("fa3: scratch buffers too small");
  Flash_bwd_params p;
  fill_fwd(p, q, k, v, x, bf16, softmax_scale, causal, s_q_rounded, s_k_rounded);
  p.o_ptr = out.untyped_data();
  p.softmax_lse_ptr = lse.typed_data();
  p.do_ptr = dout.untyped_data();
  p.dq_ptr = dq->untyped_data();
  p.dk_ptr = dk->untyped_data();
  p.dv_ptr = dv->untyped_data();
  const int64_t row = int64_t(x.h) * x.d;
  p.do_row_stride = p.dq_row_stride = p.dk_row_stride = p.dv_row_stride = row;
  p.do_head_stride = p.dq_head_stride = p.dk_head_stride = p.dv_head_stride = x.d;
  p.do_batch_stride = p.dq_batch_stride = row * x.s_q;
  p.dk_batch_stride = p.dv_batch_stride = row * x.s_k;
  p.dsoftmax_sum = dpsum->typed_data();
  p.softmax_lse_log2_ptr = lse_log2->typed_data();
  p.dq_accum_ptr = dq_accum->typed_data();
  p.dq_semaphore = dq_semaphore->typed_data();  // cleared by FlashAttention-3's preprocess kernel
  p.deterministic = false;
  const bool compiled =
      run_dtype(bf16, [&](auto t) { return run_bwd_bucket<decltype(t)>(p, stream); });
  return launch_status(compiled, x.d);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Fa3Fwd, fa3_fwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("softmax_scale")
                                  .Attr<bool>("causal"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(Fa3Bwd, fa3_bwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("softmax_scale")
                                  .Attr<bool>("causal"));
