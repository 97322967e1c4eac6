// Kernel-side parameters shared by every backend (CUDA kernels and the CPU
// backend). Plain C++: no CUDA, CuTe, XLA or nanobind types, so the FFI layer
// and the CPU backend can include it without a CUDA toolchain.
#pragma once

#include <cstddef>
#include <cstdint>

namespace jax_fa3 {

enum class Dtype : uint8_t { kFloat16, kBFloat16 };

// Every tensor is dense and row-major, layout BSHD:
//   q, out, dout, dq : [batch, seqlen_q, heads_q, head_dim]
//   k, v, dk, dv     : [batch, seqlen_k, heads_kv, head_dim]
//   lse, dlse        : [batch, heads_q, seqlen_q], float32, natural log
// Query head h reads key/value head h / (heads_q / heads_kv) (MQA/GQA).
struct AttnShape {
  int batch;
  int seqlen_q;
  int seqlen_k;
  int heads_q;
  int heads_kv;
  int head_dim;  // the real head dim; CUDA kernels round it up to a bucket
};

// Query i sees key j iff
//   i + diag - window_left <= j <= i + diag + window_right,  diag = seqlen_k - seqlen_q
// (masks aligned to the bottom-right corner, as FlashAttention-3). Causal is
// window_right = 0. An unbounded side is passed as seqlen_q + seqlen_k, so the
// kernels never see a sentinel and the arithmetic stays in int range.
struct AttnMask {
  int window_left;
  int window_right;
};

// What fixes the math of one attention call, forward and backward alike.
struct AttnProblem {
  AttnShape shape;
  Dtype dtype;
  float softmax_scale;  // s = softmax_scale * q.k
  float softcap;        // > 0: s -> softcap * tanh(s / softcap); 0: off
  AttnMask mask;
};

// Bytes of FwdParams::workspace (the dynamic tile scheduler's counter).
constexpr size_t kFwdWorkspaceBytes = 16;

struct FwdParams {
  AttnProblem problem;
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;  // -inf for a query row that sees no key (its out row is 0)
  // Scratch of kFwdWorkspaceBytes bytes, 16-byte aligned, contents undefined
  // on entry (the forward clears what it needs).
  void* workspace;
};

struct BwdParams {
  AttnProblem problem;
  bool deterministic;  // bitwise reproducible gradients run to run
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const void* dout;
  const float* lse;
  const float* dlse;  // cotangent of lse, folded into the row term; nullptr: zero
  void* dq;
  void* dk;
  void* dv;
  // Scratch of at least bwd_workspace_bytes(shape, deterministic) bytes,
  // 128-byte aligned (XLA's buffer alignment), contents undefined on entry (the
  // backward clears what it needs). Its size must grow at most linearly with
  // batch: vmap asks for batch x the size of one batch element.
  void* workspace;
};

// True when the window hides some (query, key) pair of the seqlen_q x seqlen_k
// rectangle, i.e. kernels need the masked code path.
inline bool mask_cuts(const AttnShape& s, const AttnMask& m) {
  return m.window_left < s.seqlen_k - 1 || m.window_right < s.seqlen_q - 1;
}

}  // namespace jax_fa3
