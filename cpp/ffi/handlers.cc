// Thin FFI handlers: decode buffers and attributes into FwdParams/BwdParams,
// validate, call the backend, turn failures into ffi::Error. Attribute names
// equal the Python keyword names of jax_fa3._ffi.
#include "ffi/handlers.h"

#include <cstdint>
#include <string>
#include <utility>

#include "cpu/attention_cpu.h"
#include "jax_fa3/params.h"

#if JAX_FA3_WITH_CUDA
#include "jax_fa3/run.h"
#endif

namespace ffi = xla::ffi;

namespace jax_fa3 {
namespace {

std::string dims_str(ffi::AnyBuffer::Dimensions dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// Leading dimensions (vmap adds them in front of [batch, ...]) fold into batch.
int64_t folded_batch(ffi::AnyBuffer::Dimensions dims) {
  int64_t batch = 1;
  for (size_t i = 0; i + 3 < dims.size(); ++i) batch *= dims[i];
  return batch;
}

// Decodes q [..., seqlen_q, heads_q, head_dim] and k/v [..., seqlen_k,
// heads_kv, head_dim] into the problem; Python validated all of it already,
// this guards against a bad direct ffi_call.
ffi::Error decode_problem(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, float softmax_scale,
                          float softcap, int32_t window_left, int32_t window_right,
                          AttnProblem* problem) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() < 4 || kd.size() != qd.size() || vd.size() != qd.size())
    return ffi::Error::InvalidArgument("jax_fa3: q, k, v must have the same rank >= 4, got q " +
                                       dims_str(qd) + ", k " + dims_str(kd) + ", v " + dims_str(vd));
  const size_t r = qd.size();
  const int64_t batch = folded_batch(qd);
  if (folded_batch(kd) != batch || folded_batch(vd) != batch || kd[r - 3] != vd[r - 3] ||
      kd[r - 2] != vd[r - 2] || kd[r - 1] != qd[r - 1] || vd[r - 1] != qd[r - 1] ||
      qd[r - 2] % kd[r - 2] != 0)
    return ffi::Error::InvalidArgument("jax_fa3: inconsistent shapes q " + dims_str(qd) + ", k " +
                                       dims_str(kd) + ", v " + dims_str(vd));
  if (q.element_type() != k.element_type() || q.element_type() != v.element_type())
    return ffi::Error::InvalidArgument("jax_fa3: q, k, v must share one dtype");
  Dtype dtype;
  switch (q.element_type()) {
    case ffi::DataType::F16: dtype = Dtype::kFloat16; break;
    case ffi::DataType::BF16: dtype = Dtype::kBFloat16; break;
    default: return ffi::Error::InvalidArgument("jax_fa3: dtype must be float16 or bfloat16");
  }
  const int64_t head_dim = qd[r - 1];
  if (head_dim <= 0 || head_dim > 256 || head_dim % 8 != 0 || qd[r - 3] <= 0 || kd[r - 3] <= 0 || batch <= 0)
    return ffi::Error::InvalidArgument("jax_fa3: unsupported shape q " + dims_str(qd) + ", k " + dims_str(kd));
  problem->shape = AttnShape{static_cast<int>(batch),        static_cast<int>(qd[r - 3]),
                             static_cast<int>(kd[r - 3]),    static_cast<int>(qd[r - 2]),
                             static_cast<int>(kd[r - 2]),    static_cast<int>(head_dim)};
  problem->dtype = dtype;
  problem->softmax_scale = softmax_scale;
  problem->softcap = softcap;
  problem->mask = AttnMask{window_left, window_right};
  return ffi::Error::Success();
}

// The outputs that must match q's shape and dtype (out, dq, dout...).
ffi::Error expect_like(const char* name, ffi::AnyBuffer::Dimensions dims, ffi::DataType dtype,
                       ffi::AnyBuffer like) {
  const auto ld = like.dimensions();
  bool same = dims.size() == ld.size() && dtype == like.element_type();
  for (size_t i = 0; same && i < dims.size(); ++i) same = dims[i] == ld[i];
  if (!same) return ffi::Error::InvalidArgument(std::string("jax_fa3: ") + name + " has shape " + dims_str(dims) + ", expected " + dims_str(ld));
  return ffi::Error::Success();
}

ffi::Error expect_row_stats(const char* name, ffi::Buffer<ffi::F32> buf, const AttnShape& s) {
  if (buf.element_count() != static_cast<size_t>(s.batch) * s.heads_q * s.seqlen_q)
    return ffi::Error::InvalidArgument(std::string("jax_fa3: ") + name + " must hold batch*heads_q*seqlen_q floats, got " + dims_str(buf.dimensions()));
  return ffi::Error::Success();
}

struct FwdCall {
  FwdParams params;
  ffi::Error error;
};

FwdCall decode_fwd(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> out,
                   ffi::Result<ffi::Buffer<ffi::F32>> lse, ffi::Result<ffi::AnyBuffer> workspace,
                   float softmax_scale, float softcap, int32_t window_left, int32_t window_right) {
  FwdCall call{};
  call.error = decode_problem(q, k, v, softmax_scale, softcap, window_left, window_right, &call.params.problem);
  if (call.error.failure()) return call;
  call.error = expect_like("out", out->dimensions(), out->element_type(), q);
  if (call.error.failure()) return call;
  call.error = expect_row_stats("lse", *lse, call.params.problem.shape);
  if (call.error.failure()) return call;
  if (workspace->size_bytes() < kFwdWorkspaceBytes)
    call.error = ffi::Error::InvalidArgument("jax_fa3: forward workspace has " + std::to_string(workspace->size_bytes()) +
                                             " bytes, needs " + std::to_string(kFwdWorkspaceBytes));
  call.params.q = q.untyped_data();
  call.params.k = k.untyped_data();
  call.params.v = v.untyped_data();
  call.params.out = out->untyped_data();
  call.params.lse = lse->typed_data();
  call.params.workspace = workspace->untyped_data();
  return call;
}

struct BwdCall {
  BwdParams params;
  ffi::Error error;
};

BwdCall decode_bwd(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out,
                   ffi::AnyBuffer dout, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dlse,
                   ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                   ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::AnyBuffer> workspace,
                   float softmax_scale, float softcap, int32_t window_left, int32_t window_right,
                   bool deterministic, bool with_dlse) {
  BwdCall call{};
  BwdParams& p = call.params;
  call.error = decode_problem(q, k, v, softmax_scale, softcap, window_left, window_right, &p.problem);
  const char* names[] = {"out", "dout", "dq", "dk", "dv"};
  const ffi::AnyBuffer::Dimensions dims[] = {out.dimensions(), dout.dimensions(), dq->dimensions(), dk->dimensions(), dv->dimensions()};
  const ffi::DataType types[] = {out.element_type(), dout.element_type(), dq->element_type(), dk->element_type(), dv->element_type()};
  const ffi::AnyBuffer likes[] = {q, q, q, k, v};
  for (int i = 0; i < 5 && call.error.success(); ++i) call.error = expect_like(names[i], dims[i], types[i], likes[i]);
  if (call.error.success()) call.error = expect_row_stats("lse", lse, p.problem.shape);
  if (call.error.success()) call.error = expect_row_stats("dlse", dlse, p.problem.shape);
  if (call.error.failure()) return call;
  p.deterministic = deterministic;
  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.out = out.untyped_data();
  p.dout = dout.untyped_data();
  p.lse = lse.typed_data();
  // Without it lse's cotangent is zero: the caller passes a stand-in of dlse's shape, never read.
  p.dlse = with_dlse ? dlse.typed_data() : nullptr;
  p.dq = dq->untyped_data();
  p.dk = dk->untyped_data();
  p.dv = dv->untyped_data();
  p.workspace = workspace->untyped_data();
  return call;
}

// ---------------------------------------------------------------- CPU

ffi::Error fwd_cpu(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> out,
                   ffi::Result<ffi::Buffer<ffi::F32>> lse, ffi::Result<ffi::AnyBuffer> workspace,
                   float softmax_scale, float softcap, int32_t window_left, int32_t window_right) {
  FwdCall call = decode_fwd(q, k, v, out, lse, workspace, softmax_scale, softcap, window_left, window_right);
  if (call.error.success()) cpu::run_fwd(call.params);
  return std::move(call.error);
}

ffi::Error bwd_cpu(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out,
                   ffi::AnyBuffer dout, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dlse,
                   ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                   ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::AnyBuffer> workspace,
                   float softmax_scale, float softcap, int32_t window_left, int32_t window_right,
                   bool deterministic, bool with_dlse) {
  BwdCall call = decode_bwd(q, k, v, out, dout, lse, dlse, dq, dk, dv, workspace, softmax_scale,
                            softcap, window_left, window_right, deterministic, with_dlse);
  if (call.error.success()) cpu::run_bwd(call.params);
  return std::move(call.error);
}

// ---------------------------------------------------------------- CUDA

#if JAX_FA3_WITH_CUDA
using Stream = cudaStream_t;

ffi::Error cuda_error(const char* what, cudaError_t err) {
  return ffi::Error::Internal(std::string("jax_fa3: ") + what + " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

// The kernels need Hopper (sm_90a) and a compiled (dtype, head dim) pair.
ffi::Error check_can_run(const AttnProblem& p) {
  DeviceInfo info;
  if (cudaError_t err = current_device_info(&info); err != cudaSuccess) return cuda_error("querying the device", err);
  if (info.major != 9)
    return ffi::Error(ffi::ErrorCode::kUnimplemented,
                      "jax_fa3: the CUDA kernels need a Hopper GPU (compute capability 9.0, e.g. H100/H200); this device is " +
                          std::to_string(info.major) + "." + std::to_string(info.minor));
  if (!kernels_compiled(p.dtype, p.shape.head_dim))
    return ffi::Error(ffi::ErrorCode::kUnimplemented,
                      "jax_fa3: kernels for " + std::string(p.dtype == Dtype::kBFloat16 ? "bfloat16" : "float16") +
                          " head_dim bucket " + std::to_string(head_dim_bucket(p.shape.head_dim)) +
                          " were not compiled in this build (see JAX_FA3_HEAD_DIMS / JAX_FA3_DTYPES); reinstall with the default kernel set");
  return ffi::Error::Success();
}

ffi::Error fwd_cuda(Stream stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                    ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                    ffi::Result<ffi::AnyBuffer> workspace, float softmax_scale, float softcap,
                    int32_t window_left, int32_t window_right) {
  FwdCall call = decode_fwd(q, k, v, out, lse, workspace, softmax_scale, softcap, window_left, window_right);
  if (call.error.failure()) return std::move(call.error);
  if (ffi::Error err = check_can_run(call.params.problem); err.failure()) return err;
  if (cudaError_t err = run_fwd(call.params, stream); err != cudaSuccess) return cuda_error("the forward kernel", err);
  return ffi::Error::Success();
}

ffi::Error bwd_cuda(Stream stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                    ffi::AnyBuffer out, ffi::AnyBuffer dout, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> dlse, ffi::Result<ffi::AnyBuffer> dq,
                    ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                    ffi::Result<ffi::AnyBuffer> workspace, float softmax_scale, float softcap,
                    int32_t window_left, int32_t window_right, bool deterministic, bool with_dlse) {
  BwdCall call = decode_bwd(q, k, v, out, dout, lse, dlse, dq, dk, dv, workspace, softmax_scale,
                            softcap, window_left, window_right, deterministic, with_dlse);
  if (call.error.failure()) return std::move(call.error);
  if (ffi::Error err = check_can_run(call.params.problem); err.failure()) return err;
  const size_t needed = bwd_workspace_bytes(call.params.problem.shape, deterministic);
  if (workspace->size_bytes() < needed)
    return ffi::Error::InvalidArgument("jax_fa3: backward workspace has " + std::to_string(workspace->size_bytes()) +
                                       " bytes, needs " + std::to_string(needed));
  if (cudaError_t err = run_bwd(call.params, stream); err != cudaSuccess) return cuda_error("the backward kernels", err);
  return ffi::Error::Success();
}

#else  // built without nvcc

using Stream = void*;
ffi::Error no_cuda() {
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    "jax_fa3 was built without its CUDA kernels (no nvcc was found at build time): "
                    "reinstall it on a machine with the CUDA toolkit (nvcc) on the PATH, or keep the "
                    "arrays on the CPU");
}
ffi::Error fwd_cuda(Stream, ffi::AnyBuffer, ffi::AnyBuffer, ffi::AnyBuffer, ffi::Result<ffi::AnyBuffer>,
                    ffi::Result<ffi::Buffer<ffi::F32>>, ffi::Result<ffi::AnyBuffer>, float, float, int32_t, int32_t) {
  return no_cuda();
}
ffi::Error bwd_cuda(Stream, ffi::AnyBuffer, ffi::AnyBuffer, ffi::AnyBuffer, ffi::AnyBuffer, ffi::AnyBuffer,
                    ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>, ffi::Result<ffi::AnyBuffer>,
                    ffi::Result<ffi::AnyBuffer>, ffi::Result<ffi::AnyBuffer>, ffi::Result<ffi::AnyBuffer>,
                    float, float, int32_t, int32_t, bool, bool) {
  return no_cuda();
}
#endif

// Bindings shared by both platforms, the CUDA ones prefixed with the stream.
template <class Binding>
auto bind_fwd(Binding binding) {
  return std::move(binding).template Arg<ffi::AnyBuffer>()        // q    [..., seqlen_q, heads_q, head_dim]
      .template Arg<ffi::AnyBuffer>()           // k    [..., seqlen_k, heads_kv, head_dim]
      .template Arg<ffi::AnyBuffer>()           // v    [..., seqlen_k, heads_kv, head_dim]
      .template Ret<ffi::AnyBuffer>()           // out  like q
      .template Ret<ffi::Buffer<ffi::F32>>()    // lse  [..., heads_q, seqlen_q]
      .template Ret<ffi::AnyBuffer>()           // workspace, >= kFwdWorkspaceBytes uint8
      .template Attr<float>("softmax_scale")
      .template Attr<float>("softcap")
      .template Attr<int32_t>("window_left")
      .template Attr<int32_t>("window_right");
}

template <class Binding>
auto bind_bwd(Binding binding) {
  return std::move(binding).template Arg<ffi::AnyBuffer>()        // q
      .template Arg<ffi::AnyBuffer>()           // k
      .template Arg<ffi::AnyBuffer>()           // v
      .template Arg<ffi::AnyBuffer>()           // out   (forward result)
      .template Arg<ffi::AnyBuffer>()           // dout  cotangent of out
      .template Arg<ffi::Buffer<ffi::F32>>()    // lse   (forward result)
      .template Arg<ffi::Buffer<ffi::F32>>()    // dlse  cotangent of lse
      .template Ret<ffi::AnyBuffer>()           // dq
      .template Ret<ffi::AnyBuffer>()           // dk
      .template Ret<ffi::AnyBuffer>()           // dv
      .template Ret<ffi::AnyBuffer>()           // workspace, bwd_workspace_bytes() uint8
      .template Attr<float>("softmax_scale")
      .template Attr<float>("softcap")
      .template Attr<int32_t>("window_left")
      .template Attr<int32_t>("window_right")
      .template Attr<bool>("deterministic")
      .template Attr<bool>("with_dlse");        // false: lse's cotangent is zero, dlse is not read
}

#if JAX_FA3_WITH_CUDA
auto cuda_binding() { return ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>(); }
#else
auto cuda_binding() { return ffi::Ffi::Bind().Ctx<ffi::PlatformStream<void*>>(); }
#endif

}  // namespace
}  // namespace jax_fa3

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFa3FwdCpu, jax_fa3::fwd_cpu, jax_fa3::bind_fwd(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFa3BwdCpu, jax_fa3::bwd_cpu, jax_fa3::bind_bwd(ffi::Ffi::Bind()));
// No host synchronisation or allocation inside: safe to capture in CUDA graphs.
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFa3FwdCuda, jax_fa3::fwd_cuda, jax_fa3::bind_fwd(jax_fa3::cuda_binding()),
                              {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFa3BwdCuda, jax_fa3::bwd_cuda, jax_fa3::bind_bwd(jax_fa3::cuda_binding()),
                              {ffi::Traits::kCmdBufferCompatible});
