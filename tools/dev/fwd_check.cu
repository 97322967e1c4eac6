// Dev harness for the Hopper forward kernel: runs jax_fa3::run_fwd_sm90 on
// random inputs, compares against a float64 CPU reference of the documented
// semantics (params.h), and times the kernel.
//
//   fwd_check all     every coverage case, then the timings
//   fwd_check coverage  every coverage case (of the compiled kernels) only
//   fwd_check small   a few small shapes (for compute-sanitizer)
//   fwd_check bench   timings only (the FA3 paper grid; BENCH_* env vars narrow it)
//   fwd_check bench16k  timings at seqlen 16k only
//
// The kernel instantiations are compiled in separate translation units (one per
// dtype x head dim x variant, like the real build) by build_fwd_check.sh, which
// also writes fwd_check_set.h: X(Element, tag, head_dim, variant) per compiled one.
#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "jax_fa3/fwd/launch_fwd_sm90.h"
#include "jax_fa3/params.h"
#include "jax_fa3/run.h"

#include "fwd_check_set.h"  // FWD_CHECK_SET(X)

#define CUDA_CHECK(expr)                                                                   \
  do {                                                                                     \
    cudaError_t err_ = (expr);                                                             \
    if (err_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(err_)); \
      std::exit(2);                                                                        \
    }                                                                                      \
  } while (0)

using jax_fa3::Dtype;

namespace {

using jax_fa3::FwdVariant;

const char* variant_name(FwdVariant v) {
  return v == FwdVariant::kMasked ? "masked" : v == FwdVariant::kUnmaskedNarrow ? "narrow" : "wide";
}

// The variant dispatch.cu would run (fwd_variant in tile_config.h), unless
// FWD_CHECK_VARIANT (masked, narrow or wide) forces one for every shape the
// mask does not cut, to time variants against each other on the same shapes.
FwdVariant variant_of(const jax_fa3::FwdParams& p) {
  static const char* forced = std::getenv("FWD_CHECK_VARIANT");
  const bool masked = jax_fa3::mask_cuts(p.problem.shape, p.problem.mask);
  if (forced != nullptr && !masked) {
    for (FwdVariant v : {FwdVariant::kUnmasked, FwdVariant::kUnmaskedNarrow, FwdVariant::kMasked}) {
      if (std::strcmp(forced, variant_name(v)) == 0) return v;
    }
    std::fprintf(stderr, "FWD_CHECK_VARIANT=%s: use masked, narrow or wide\n", forced);
    std::exit(2);
  }
  const int bucket = jax_fa3::head_dim_bucket(p.problem.shape.head_dim);
#define X(Element, tag, hd, v) \
  if (bucket == hd) return jax_fa3::fwd_variant<hd>(masked, p.problem.shape.seqlen_k);
  FWD_CHECK_SET(X)
#undef X
  return masked ? FwdVariant::kMasked : FwdVariant::kUnmasked;
}

// Returns cudaErrorNotSupported when the variant was not compiled into this
// harness.
cudaError_t launch(const jax_fa3::FwdParams& p, cudaStream_t stream) {
  const FwdVariant variant = variant_of(p);
  const int bucket = jax_fa3::head_dim_bucket(p.problem.shape.head_dim);
#define X(Element, tag, hd, v)                                                      \
  if (p.problem.dtype == Dtype::tag && bucket == hd && variant == FwdVariant::v) \
    return jax_fa3::run_fwd_sm90<Element, hd, FwdVariant::v>(p, stream);
  FWD_CHECK_SET(X)
#undef X
  return cudaErrorNotSupported;
}

struct Case {
  std::string name;
  Dtype dtype;
  int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim;
  int window_left, window_right;  // -1: unbounded (seqlen_q + seqlen_k)
  float softcap;
  float softmax_scale;  // 0: 1/sqrt(head_dim)
};

uint16_t to_bits(float x, Dtype dt) {
  if (dt == Dtype::kBFloat16) return cutlass::bfloat16_t(x).raw();
  return cutlass::half_t(x).raw();
}
float from_bits(uint16_t b, Dtype dt) {
  if (dt == Dtype::kBFloat16) return float(cutlass::bfloat16_t::bitcast(b));
  return float(cutlass::half_t::bitcast(b));
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Random N(0,1) values (counter-based, so it parallelises), rounded to the
// element type; `vals` gets the rounded values the reference must use. Exact
// zeros are nudged so no input is zero.
void make_input(size_t n, Dtype dt, uint64_t seed, std::vector<uint16_t>& bits, std::vector<double>& vals) {
  bits.resize(n);
  vals.resize(n);
  const uint64_t base = splitmix64(seed * 0x1234567ull + 1);
#pragma omp parallel for schedule(static)
  for (long long i = 0; i < (long long)n; ++i) {
    const uint64_t r = splitmix64(base ^ uint64_t(i));
    const double u1 = (double((r >> 11) & ((1ull << 26) - 1)) + 0.5) / double(1ull << 26);
    const double u2 = double(r >> 38) / double(1ull << 26);
    float x = float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    if (x == 0.f) x = 1e-3f;
    bits[i] = to_bits(x, dt);
    vals[i] = from_bits(bits[i], dt);
  }
}

// float64 reference of params.h semantics.
void reference(const Case& c, const jax_fa3::AttnMask& mask, float scale, const std::vector<double>& q,
               const std::vector<double>& k, const std::vector<double>& v, std::vector<double>& out,
               std::vector<double>& lse) {
  const int B = c.batch, SQ = c.seqlen_q, SK = c.seqlen_k, HQ = c.heads_q, HK = c.heads_kv, D = c.head_dim;
  const int group = HQ / HK;
  const long diag = SK - SQ;
  out.assign(size_t(B) * SQ * HQ * D, 0.0);
  lse.assign(size_t(B) * HQ * SQ, 0.0);
#pragma omp parallel for collapse(3) schedule(dynamic, 4)
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < HQ; ++h) {
      for (int i = 0; i < SQ; ++i) {
        const int hk = h / group;
        const double* qi = &q[((size_t(b) * SQ + i) * HQ + h) * D];
        std::vector<double> s(SK);
        std::vector<char> vis(SK);
        double mx = -std::numeric_limits<double>::infinity();
        for (int j = 0; j < SK; ++j) {
          vis[j] = (j >= i + diag - mask.window_left) && (j <= i + diag + mask.window_right);
          if (!vis[j]) continue;
          const double* kj = &k[((size_t(b) * SK + j) * HK + hk) * D];
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += qi[d] * kj[d];
          double sc = scale * dot;
          if (c.softcap > 0) sc = c.softcap * std::tanh(sc / c.softcap);
          s[j] = sc;
          mx = std::max(mx, sc);
        }
        double* o = &out[((size_t(b) * SQ + i) * HQ + h) * D];
        double& l = lse[(size_t(b) * HQ + h) * SQ + i];
        if (mx == -std::numeric_limits<double>::infinity()) {
          l = -std::numeric_limits<double>::infinity();
          continue;
        }
        double sum = 0;
        for (int j = 0; j < SK; ++j) {
          if (!vis[j]) continue;
          const double p = std::exp(s[j] - mx);
          sum += p;
          const double* vj = &v[((size_t(b) * SK + j) * HK + hk) * D];
          for (int d = 0; d < D; ++d) o[d] += p * vj[d];
        }
        for (int d = 0; d < D; ++d) o[d] /= sum;
        l = mx + std::log(sum);
      }
    }
  }
}

// A numeric environment switch of the bench, or `fallback` when unset.
double env_number(const char* name, double fallback) {
  const char* v = std::getenv(name);
  return v ? std::atof(v) : fallback;
}

// The forward's scratch (the dynamic scheduler's tile counter): one buffer,
// poisoned once with a large count, so a launch that did not clear it would
// skip tiles and leave poisoned outputs.
void* workspace() {
  static void* ws = [] {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, jax_fa3::kFwdWorkspaceBytes));
    CUDA_CHECK(cudaMemset(p, 0x7f, jax_fa3::kFwdWorkspaceBytes));
    return p;
  }();
  return ws;
}

jax_fa3::FwdParams make_params(const Case& c, jax_fa3::AttnMask mask, float scale, void* q, void* k, void* v,
                               void* o, float* lse) {
  jax_fa3::FwdParams p{};
  p.problem.shape = {c.batch, c.seqlen_q, c.seqlen_k, c.heads_q, c.heads_kv, c.head_dim};
  p.problem.dtype = c.dtype;
  p.problem.softmax_scale = scale;
  p.problem.softcap = c.softcap;
  p.problem.mask = mask;
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = o;
  p.lse = lse;
  p.workspace = workspace();
  return p;
}

jax_fa3::AttnMask mask_of(const Case& c) {
  const int unbounded = c.seqlen_q + c.seqlen_k;
  return {c.window_left < 0 ? unbounded : c.window_left, c.window_right < 0 ? unbounded : c.window_right};
}

// 0: pass, 1: fail, 2: skipped (not compiled).
int run_case(const Case& c, uint64_t seed) {
  const jax_fa3::AttnMask mask = mask_of(c);
  const float scale = c.softmax_scale > 0 ? c.softmax_scale : 1.f / std::sqrt(float(c.head_dim));
  const size_t nq = size_t(c.batch) * c.seqlen_q * c.heads_q * c.head_dim;
  const size_t nk = size_t(c.batch) * c.seqlen_k * c.heads_kv * c.head_dim;
  const size_t nlse = size_t(c.batch) * c.heads_q * c.seqlen_q;
  std::vector<uint16_t> hq, hk, hv;
  std::vector<double> rq, rk, rv;
  make_input(nq, c.dtype, 3 * seed, hq, rq);
  make_input(nk, c.dtype, 3 * seed + 1, hk, rk);
  make_input(nk, c.dtype, 3 * seed + 2, hv, rv);

  // Guard zone after out and lse: a store past the real extents (rows beyond
  // seqlen_q, columns beyond head_dim of the last head) lands there.
  const size_t kGuard = 4096;
  uint16_t *dq, *dk, *dv, *dout;
  float* dlse;
  CUDA_CHECK(cudaMalloc(&dq, std::max<size_t>(nq, 1) * 2));
  CUDA_CHECK(cudaMalloc(&dk, std::max<size_t>(nk, 1) * 2));
  CUDA_CHECK(cudaMalloc(&dv, std::max<size_t>(nk, 1) * 2));
  CUDA_CHECK(cudaMalloc(&dout, (nq + kGuard) * 2));
  CUDA_CHECK(cudaMalloc(&dlse, (nlse + kGuard) * 4));
  CUDA_CHECK(cudaMemcpy(dq, hq.data(), nq * 2, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dk, hk.data(), nk * 2, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dv, hv.data(), nk * 2, cudaMemcpyHostToDevice));
  // NaN poison (all-ones bit patterns are NaN in bf16, fp16 and fp32).
  CUDA_CHECK(cudaMemset(dout, 0xff, (nq + kGuard) * 2));
  CUDA_CHECK(cudaMemset(dlse, 0xff, (nlse + kGuard) * 4));

  auto p = make_params(c, mask, scale, dq, dk, dv, dout, dlse);
  cudaError_t err = launch(p, 0);
  if (err == cudaErrorNotSupported) {
    std::printf("SKIP %-34s (not compiled in this harness)\n", c.name.c_str());
    cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(dout); cudaFree(dlse);
    return 2;
  }
  if (err != cudaSuccess) {
    std::printf("FAIL %-34s launch error %s\n", c.name.c_str(), cudaGetErrorString(err));
    return 1;
  }
  err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    std::printf("FAIL %-34s kernel error %s\n", c.name.c_str(), cudaGetErrorString(err));
    std::exit(3);  // the context is gone; nothing else can run
  }
  std::vector<uint16_t> ho(nq + kGuard);
  std::vector<float> hl(nlse + kGuard);
  CUDA_CHECK(cudaMemcpy(ho.data(), dout, (nq + kGuard) * 2, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(hl.data(), dlse, (nlse + kGuard) * 4, cudaMemcpyDeviceToHost));
  cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(dout); cudaFree(dlse);

  std::vector<double> ro, rl;
  reference(c, mask, scale, rq, rk, rv, ro, rl);

  const bool bf16 = c.dtype == Dtype::kBFloat16;
  // Output rounding alone is 2^-9 (bf16) / 2^-12 (fp16) relative; P is rounded
  // to the element type before the second GEMM, another error of that order.
  const double out_rtol = bf16 ? 1.0 / 256 : 1.0 / 1024;
  const double out_atol = bf16 ? 4e-3 : 1e-3;
  const double lse_atol = 2e-3;
  double max_err_o = 0, max_err_l = 0, max_ref_o = 0;
  bool ok = true;
  size_t bad_o = 0, bad_l = 0, empty_rows = 0;
  for (size_t i = 0; i < nq; ++i) {
    const double got = from_bits(ho[i], c.dtype);
    const double e = std::isnan(got) ? INFINITY : std::fabs(got - ro[i]);
    max_err_o = std::max(max_err_o, e);
    max_ref_o = std::max(max_ref_o, std::fabs(ro[i]));
    if (!(e <= out_atol + out_rtol * std::fabs(ro[i]))) { ok = false; ++bad_o; }
  }
  for (size_t i = 0; i < nlse; ++i) {
    const double got = hl[i];
    double e;
    if (std::isinf(rl[i])) {
      ++empty_rows;
      e = (std::isinf(got) && got < 0) ? 0.0 : INFINITY;
    } else {
      e = std::isnan(got) ? INFINITY : std::fabs(got - rl[i]);
    }
    max_err_l = std::max(max_err_l, e);
    if (!(e <= lse_atol + 1e-5 * std::fabs(rl[i]))) { ok = false; ++bad_l; }
  }
  bool guard_ok = true;
  for (size_t i = 0; i < kGuard; ++i) guard_ok = guard_ok && ho[nq + i] == 0xffff;
  for (size_t i = 0; i < kGuard; ++i) {
    uint32_t b;
    std::memcpy(&b, &hl[nlse + i], 4);
    guard_ok = guard_ok && b == 0xffffffffu;
  }
  ok = ok && guard_ok;
  std::printf("%s %-34s %s b%d sq%-5d sk%-5d h%d/%d d%-3d win(%d,%d) cap%g %-6s | out max_err %.3e (max|ref| %.2f) "
              "lse max_err %.3e | empty rows %zu%s%s\n",
              ok ? "PASS" : "FAIL", c.name.c_str(), bf16 ? "bf16" : "fp16", c.batch, c.seqlen_q, c.seqlen_k,
              c.heads_q, c.heads_kv, c.head_dim, mask.window_left, mask.window_right, c.softcap,
              variant_name(variant_of(p)), max_err_o, max_ref_o, max_err_l, empty_rows,
              guard_ok ? "" : " | GUARD ZONE WRITTEN", (bad_o || bad_l) ? (" | bad out/lse: " + std::to_string(bad_o) + "/" + std::to_string(bad_l)).c_str() : "");
  return ok ? 0 : 1;
}

// Times the kernel on the FlashAttention-3 paper's grid point (16k tokens,
// hidden 2048: batch = 16384 / seqlen, heads = 2048 / head_dim), then
// spot-checks sampled rows of that run against the float64 reference (so the
// timing is of a kernel that computes the right thing at that size). Returns
// false when the spot check fails.
bool bench(Dtype dtype, int head_dim, int seqlen, bool causal) {
  const int batch = 16384 / seqlen, heads = 2048 / head_dim;
  Case c{causal ? "causal" : "full", dtype, batch, seqlen, seqlen, heads, heads, head_dim,
         -1, causal ? 0 : -1, 0.f, 0.f};
  const jax_fa3::AttnMask mask = mask_of(c);
  const float scale = 1.f / std::sqrt(float(c.head_dim));
  const size_t n = size_t(c.batch) * c.seqlen_q * c.heads_q * c.head_dim;
  const size_t nlse = size_t(c.batch) * c.heads_q * c.seqlen_q;
  std::vector<uint16_t> hq, hk, hv;
  std::vector<double> rq, rk, rv;
  make_input(n, c.dtype, 1001 + seqlen, hq, rq);
  make_input(n, c.dtype, 1002 + seqlen, hk, rk);
  make_input(n, c.dtype, 1003 + seqlen, hv, rv);
  uint16_t *dq, *dk, *dv, *dout;
  float* dlse;
  // BENCH_IN_OFFSET=bytes (a multiple of 16) moves Q, K and V off cudaMalloc's
  // 2 MB-aligned bases (a pool allocator's sub-buffers need not be; XLA's were,
  // at 16k: results/2026-12-03b_h200_fwd_gap.md).
  static const size_t in_offset = size_t(env_number("BENCH_IN_OFFSET", 0)) / 16 * 16;
  uint16_t* base[3];
  for (uint16_t** b : {&base[0], &base[1], &base[2]}) CUDA_CHECK(cudaMalloc(b, n * 2 + in_offset));
  dq = base[0] + in_offset / 2;
  dk = base[1] + in_offset / 2;
  dv = base[2] + in_offset / 2;
  CUDA_CHECK(cudaMalloc(&dout, n * 2));
  CUDA_CHECK(cudaMalloc(&dlse, nlse * 4));
  CUDA_CHECK(cudaMemcpy(dq, hq.data(), n * 2, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dk, hk.data(), n * 2, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dv, hv.data(), n * 2, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemset(dout, 0xff, n * 2));
  CUDA_CHECK(cudaMemset(dlse, 0xff, nlse * 4));
  auto p = make_params(c, mask, scale, dq, dk, dv, dout, dlse);
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  cudaError_t err = launch(p, 0);
  bool ok = true;
  if (err == cudaSuccess) {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint16_t> ho(n);
    std::vector<float> hl(nlse);
    CUDA_CHECK(cudaMemcpy(ho.data(), dout, n * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(hl.data(), dlse, nlse * 4, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 3; ++i) CUDA_CHECK(launch(p, 0));
    CUDA_CHECK(cudaDeviceSynchronize());
    // Each sample: back-to-back launches filling >= BENCH_SAMPLE_MS (default
    // 2 ms), so launch gaps and event resolution stay out of the number;
    // BENCH_SAMPLES (default 15) of them. Longer runs show sustained-load
    // clocks (the library's benchmark samples for seconds).
    static const float sample_ms = float(env_number("BENCH_SAMPLE_MS", 2));
    static const int samples = int(env_number("BENCH_SAMPLES", 15));
    // The launch conditions JAX has and this loop otherwise lacks (to find
    // the forward's harness-vs-JAX gap): BENCH_OUT_BUFFERS=N writes each
    // launch's O and LSE to the next of N buffers (XLA hands every call fresh
    // ones); BENCH_STREAM=1 launches on a created non-blocking stream (XLA's)
    // instead of the legacy default stream.
    static const int out_buffers = std::max(1, int(env_number("BENCH_OUT_BUFFERS", 1)));
    static const bool own_stream = env_number("BENCH_STREAM", 0) != 0;
    cudaStream_t stream = nullptr;
    if (own_stream) CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::vector<jax_fa3::FwdParams> rotation(out_buffers, p);
    for (int b = 1; b < out_buffers; ++b) {
      CUDA_CHECK(cudaMalloc(&rotation[b].out, n * 2));
      CUDA_CHECK(cudaMalloc(&rotation[b].lse, nlse * 4));
    }
    CUDA_CHECK(cudaEventRecord(e0, stream));
    CUDA_CHECK(launch(p, stream));
    CUDA_CHECK(cudaEventRecord(e1, stream));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float once;
    CUDA_CHECK(cudaEventElapsedTime(&once, e0, e1));
    const int reps = std::max(1, int(sample_ms / std::max(once, 1e-3f)));
    // BENCH_WARMUP_MS of untimed launches first: the samples then all see the
    // clock the power cap settles at, not the idle GPU's first ~100 ms.
    static const float warmup_ms = float(env_number("BENCH_WARMUP_MS", 0));
    for (int r = 0; r < int(warmup_ms / std::max(once, 1e-3f)); ++r) CUDA_CHECK(launch(p, stream));
    std::vector<float> ms;
    for (int i = 0; i < std::max(samples, 1); ++i) {
      CUDA_CHECK(cudaEventRecord(e0, stream));
      for (int r = 0; r < reps; ++r) CUDA_CHECK(launch(rotation[r % out_buffers], stream));
      CUDA_CHECK(cudaEventRecord(e1, stream));
      CUDA_CHECK(cudaEventSynchronize(e1));
      float t;
      CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t / reps);
    }
    for (int b = 1; b < out_buffers; ++b) {
      cudaFree(rotation[b].out);
      cudaFree(rotation[b].lse);
    }
    if (stream) cudaStreamDestroy(stream);
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    double flops = 4.0 * c.batch * double(c.seqlen_q) * c.seqlen_k * c.heads_q * c.head_dim;
    if (causal) flops /= 2;

    // Spot check: 48 sampled (batch, head, row) triples, float64 reference.
    const int S = c.seqlen_q, H = c.heads_q, D = c.head_dim;
    double max_err_o = 0, max_err_l = 0;
    std::mt19937 pick(11);
    for (int t = 0; t < 48; ++t) {
      const int b = pick() % c.batch;
      const int h = pick() % H;
      const int i = t < 4 ? (t < 2 ? t : S - 1 - (t - 2)) : int(pick() % S);
      const int j_end = causal ? i + 1 : S;
      std::vector<double> sc(j_end);
      double mx = -INFINITY;
      auto at = [&](const std::vector<double>& x, int row, int d) { return x[((size_t(b) * S + row) * H + h) * D + d]; };
      for (int j = 0; j < j_end; ++j) {
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += at(rq, i, d) * at(rk, j, d);
        sc[j] = scale * dot;
        mx = std::max(mx, sc[j]);
      }
      double sum = 0;
      std::vector<double> o(D, 0.0);
      for (int j = 0; j < j_end; ++j) {
        const double pj = std::exp(sc[j] - mx);
        sum += pj;
        for (int d = 0; d < D; ++d) o[d] += pj * at(rv, j, d);
      }
      for (int d = 0; d < D; ++d) {
        const double got = from_bits(ho[((size_t(b) * S + i) * H + h) * D + d], c.dtype);
        max_err_o = std::max(max_err_o, std::isnan(got) ? INFINITY : std::fabs(got - o[d] / sum));
      }
      const double lg = hl[(size_t(b) * H + h) * S + i];
      max_err_l = std::max(max_err_l, std::isnan(lg) ? INFINITY : std::fabs(lg - (mx + std::log(sum))));
    }
    ok = max_err_o < 1e-2 && max_err_l < 2e-3;
    std::printf("BENCH %s d%-3d s%-5d b%-2d h%-2d %-6s %8.3f ms (min %.3f max %.3f) %6.1f TFLOP/s | spot check out %.2e lse %.2e %s\n",
                dtype == Dtype::kBFloat16 ? "bf16" : "fp16", head_dim, seqlen, c.batch, c.heads_q, c.name.c_str(), med,
                ms.front(), ms.back(), flops / (med * 1e-3) / 1e12, max_err_o, max_err_l, ok ? "PASS" : "FAIL");
  } else if (err != cudaErrorNotSupported) {
    std::printf("BENCH %s d%d s%d %s: %s\n", dtype == Dtype::kBFloat16 ? "bf16" : "fp16", head_dim, seqlen,
                c.name.c_str(), cudaGetErrorString(err));
    ok = false;
  }
  cudaFree(base[0]); cudaFree(base[1]); cudaFree(base[2]); cudaFree(dout); cudaFree(dlse);
  cudaEventDestroy(e0); cudaEventDestroy(e1);
  return ok;
}

std::vector<Case> coverage() {
  const Dtype BF = Dtype::kBFloat16, FP = Dtype::kFloat16;
  std::vector<Case> v;
  auto add = [&](std::string name, Dtype dt, int b, int sq, int sk, int hq, int hk, int d, int wl, int wr,
                 float cap = 0.f, float scale = 0.f) {
    v.push_back(Case{name, dt, b, sq, sk, hq, hk, d, wl, wr, cap, scale});
  };
  // Head dim 128: the full matrix of sequence lengths, GQA and masks.
  for (int s : {1, 17, 113, 1000}) {
    add("d128 full sq=sk=" + std::to_string(s), BF, 2, s, s, 8, 8, 128, -1, -1);
    add("d128 causal sq=sk=" + std::to_string(s), BF, 2, s, s, 8, 4, 128, -1, 0);
  }
  add("d128 full sq<sk gqa8", BF, 2, 113, 1000, 8, 1, 128, -1, -1);
  add("d128 full sq>sk gqa2", BF, 2, 1000, 113, 8, 4, 128, -1, -1);
  add("d128 causal sq<sk", BF, 2, 113, 1000, 8, 4, 128, -1, 0);
  add("d128 causal sq>sk (empty rows)", BF, 2, 1000, 113, 8, 8, 128, -1, 0);
  add("d128 causal sq=17 sk=1", BF, 2, 17, 1, 8, 8, 128, -1, 0);
  add("d128 full sk=0 (no keys)", BF, 2, 17, 0, 8, 8, 128, -1, -1);
  // The lengths above run the narrow unmasked kernel (fwd_variant), these the
  // wide one; FWD_CHECK_VARIANT=wide|narrow runs all of them on either.
  add("d128 full sq<sk wide", BF, 2, 300, 700, 8, 2, 128, -1, -1);
  add("fp16 d128 full sq<sk wide", FP, 2, 300, 700, 8, 2, 128, -1, -1);
  add("d128 local 37/5", BF, 2, 1000, 1000, 8, 2, 128, 37, 5);
  add("d128 local 37/5 sq>sk", BF, 1, 1000, 300, 8, 8, 128, 37, 5);
  add("d128 softcap30 full", BF, 2, 257, 1000, 8, 8, 128, -1, -1, 30.f, 1.f);
  add("d128 softcap30 causal", BF, 2, 1000, 1000, 8, 8, 128, -1, 0, 30.f, 1.f);
  add("fp16 d128 full", FP, 2, 1000, 1000, 8, 8, 128, -1, -1);
  add("fp16 d128 causal sq>sk", FP, 2, 1000, 113, 8, 2, 128, -1, 0);
  add("fp16 d128 local 37/5", FP, 2, 1000, 1000, 8, 8, 128, 37, 5);
  // Head dim 256 without a mask over several query blocks a head: even and
  // odd counts, a partial last block, a head dim inside the bucket, softcap,
  // fp16.
  add("d256 full sq=512 sk=700", BF, 2, 512, 700, 8, 2, 256, -1, -1);
  add("d256 full sq=1000 sk=1600", BF, 1, 1000, 1600, 4, 4, 256, -1, -1);
  add("d256 full sq=300 sk=700", BF, 2, 300, 700, 8, 8, 256, -1, -1);
  add("d200 full sq=512 sk=700", BF, 1, 512, 700, 4, 2, 200, -1, -1);
  add("d256 softcap30 full sq=512", BF, 1, 512, 700, 4, 4, 256, -1, -1, 30.f, 1.f);
  add("fp16 d256 full sq=768", FP, 2, 768, 700, 4, 1, 256, -1, -1);
  // Every other bucket (and head dims inside a bucket).
  for (int d : {64, 96, 192, 256, 72, 136, 40}) {
    const std::string n = "d" + std::to_string(d);
    add(n + " full sq=sk=1000", BF, 2, 1000, 1000, 8, 2, d, -1, -1);
    add(n + " causal sq=sk=1000", BF, 2, 1000, 1000, 8, 8, d, -1, 0);
    add(n + " causal sq<sk", BF, 2, 113, 1000, 8, 1, d, -1, 0);
    add(n + " causal sq>sk", BF, 2, 1000, 113, 8, 4, d, -1, 0);
    add(n + " local 37/5", BF, 2, 1000, 1000, 8, 8, d, 37, 5);
    add(n + " full sq=sk=17", BF, 2, 17, 17, 8, 8, d, -1, -1);
  }
  add("d96 full sq<sk wide", BF, 2, 113, 300, 8, 2, 96, -1, -1);  // the others: narrow blocks
  add("fp16 d64 causal", FP, 2, 1000, 1000, 8, 4, 64, -1, 0);
  add("fp16 d256 full", FP, 2, 1000, 113, 8, 8, 256, -1, -1);
  add("fp16 d96 local", FP, 2, 1000, 1000, 8, 8, 96, 37, 5);
  add("fp16 d192 causal", FP, 2, 1000, 1000, 8, 2, 192, -1, 0);
  return v;
}

std::vector<Case> small_cases() {
  const Dtype BF = Dtype::kBFloat16;
  return {
      Case{"small full", BF, 1, 113, 200, 2, 1, 128, -1, -1, 0.f, 0.f},
      Case{"small full wide", BF, 1, 113, 350, 2, 1, 128, -1, -1, 0.f, 0.f},
      Case{"small d256 full", BF, 1, 256, 300, 2, 2, 256, -1, -1, 0.f, 0.f},
      Case{"small causal sq>sk", BF, 1, 200, 113, 2, 2, 128, -1, 0, 0.f, 0.f},
      Case{"small local", BF, 1, 300, 300, 2, 2, 128, 37, 5, 0.f, 0.f},
      // Tiles taller than their key blocks, where warpgroups skip blocks.
      Case{"small d64 causal sq>sk", BF, 1, 300, 200, 2, 2, 64, -1, 0, 0.f, 0.f},
      Case{"small d64 local", BF, 1, 300, 300, 2, 2, 64, 37, 5, 0.f, 0.f},
      Case{"small d256 causal", BF, 1, 300, 300, 2, 2, 256, -1, 0, 0.f, 0.f},
  };
}

}  // namespace

int main(int argc, char** argv) {
  // Line-buffered even into a log file: a hung or killed run still shows how far it got.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string mode = argc > 1 ? argv[1] : "all";
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d, %d SMs, %zu KB smem opt-in)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount, prop.sharedMemPerBlockOptin / 1024);
  int fails = 0, passes = 0, skips = 0;
  if (mode == "all" || mode == "coverage" || mode == "small") {
    const auto cases = mode == "small" ? small_cases() : coverage();
    uint64_t seed = 1;
    for (const auto& c : cases) {
      const int r = run_case(c, seed++);
      fails += r == 1;
      passes += r == 0;
      skips += r == 2;
    }
    std::printf("SUMMARY: %d passed, %d failed, %d skipped\n", passes, fails, skips);
  }
  if (mode == "all" || mode == "bench" || mode == "bench16k") {
    // BENCH_DTYPES / BENCH_HDIMS / BENCH_SEQLENS (comma lists) narrow the grid.
    auto list = [](const char* env, std::vector<int> def) {
      const char* v = std::getenv(env);
      if (!v || !*v) return def;
      std::vector<int> out;
      for (const char* q = v; *q;) {
        out.push_back(std::atoi(q));
        while (*q && *q != ',') ++q;
        if (*q == ',') ++q;
      }
      return out;
    };
    const std::vector<int> hdims = list("BENCH_HDIMS", {128, 64, 256, 96, 192});
    const std::vector<int> seqlens = mode == "bench16k" ? std::vector<int>{16384}
                                                         : list("BENCH_SEQLENS", {512, 1024, 2048, 4096, 8192, 16384});
    const char* dts = std::getenv("BENCH_DTYPES");
    const bool fp16_too = dts && std::string(dts).find("fp16") != std::string::npos;
    // BENCH_MASKS=full or causal: only that half of the grid.
    const char* masks = std::getenv("BENCH_MASKS");
    const std::string only_mask = masks ? masks : "";
    for (int fp16 = 0; fp16 <= int(fp16_too); ++fp16) {
      for (int causal = 0; causal < 2; ++causal) {
        if (!only_mask.empty() && only_mask != (causal ? "causal" : "full")) continue;
        for (int d : hdims) {
          for (int s : seqlens) fails += !bench(fp16 ? Dtype::kFloat16 : Dtype::kBFloat16, d, s, causal);
        }
      }
    }
  }
  return fails ? 1 : 0;
}
