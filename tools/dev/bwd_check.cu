// Dev harness for the Hopper backward (run_bwd_sm90): correctness against a
// float64 CPU reference (forward and backward), determinism, timing.
//
//   bwd_check            full coverage list (exit code 1 on any failure)
//   bwd_check small      three small causal GQA shapes (d128; d64 with softcap; d256), both modes
//                        (for compute-sanitizer)
//   bwd_check bench [S,S,..]  seqlens (default 16384) x BENCH_HDIMS (default 128), 16k tokens,
//                        hidden 2048, bf16, causal and not, fast and deterministic; each
//                        timing's dq spot-checked against float64 (PASS/FAIL on its line).
//                        BENCH_CASES: the cases to time (default "full:fast,full:det,causal:fast,
//                        causal:det"). BENCH_SETTLE_MS (default 0): launches back to back for
//                        this long before a case's samples, so that they run at the clock the
//                        case's own draw settles at under the power cap (a second or more):
//                        then a build's time follows its energy a step, which is what it
//                        runs at in a training loop, not the clock the previous case left.
//   bwd_check cycles [S,..]  the bench's inputs and configurations, each launched kBwdCyclesLaunches
//                        times untimed, for Nsight Compute's cycle counts (tools/dev/bwd_cycles.sh):
//                        cycles do not move with the clock the power cap sets, timings do
//   bwd_check ctatimes [S,..]  as cycles, then the last launch's CTA times ("CT" lines; a build
//                        with -DJAX_FA3_BWD_CTA_TIMES=1, for tools/dev/bwd_cta_times.py)
//
// The harness allocates its own workspace (workspace_bytes) and computes
// out/lse with its own float64 forward, so it does not depend on the forward
// kernel. Outputs and workspace are poisoned with NaN before each launch.
#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <atomic>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "bwd_check_launch.h"
#include "jax_fa3/common/mask.h"
#include "jax_fa3/run.h"

using namespace jax_fa3;

#define CK(x)                                                                                     \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    if (e_ != cudaSuccess) {                                                                      \
      std::printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__,        \
                  cudaGetErrorString(e_));                                                        \
      std::exit(2);                                                                               \
    }                                                                                             \
  } while (0)

#ifndef BWD_CHECK_ONLY_HDIM
#define BWD_CHECK_ONLY_HDIM 0
#endif

// The launches live in bwd_check_launch.cu, one translation unit per
// (dtype, head dim, mask) like the library's.
using bwd_check::workspace_bytes;

template <class E, int kHd, bool kMasked_>
struct KernelSet {
  using Element = E;
  static constexpr int kHeadDim = kHd;
  static constexpr bool kMasked = kMasked_;
};

// Calls f(KernelSet<dtype, head dim bucket, mask cuts>{}) for p: the
// translation unit of bwd_check_launch.cu holding p's kernels, or
// cudaErrorNotSupported where this build has none for its head dim.
template <class F>
static cudaError_t with_kernel_set(const BwdParams& p, F f) {
  const bool masked = mask_cuts(p.problem.shape, p.problem.mask);
  auto with_head_dim = [&](auto element, auto head_dim) -> cudaError_t {
    using E = decltype(element);
    constexpr int kHd = decltype(head_dim)::value;
    if constexpr (BWD_CHECK_ONLY_HDIM != 0 && kHd != BWD_CHECK_ONLY_HDIM) {
      return cudaErrorNotSupported;
    } else {
      return masked ? f(KernelSet<E, kHd, true>{}) : f(KernelSet<E, kHd, false>{});
    }
  };
  auto with_element = [&](auto element) -> cudaError_t {
    switch (head_dim_bucket(p.problem.shape.head_dim)) {
      case 64: return with_head_dim(element, std::integral_constant<int, 64>{});
      case 96: return with_head_dim(element, std::integral_constant<int, 96>{});
      case 128: return with_head_dim(element, std::integral_constant<int, 128>{});
      case 192: return with_head_dim(element, std::integral_constant<int, 192>{});
      case 256: return with_head_dim(element, std::integral_constant<int, 256>{});
      default: return cudaErrorNotSupported;
    }
  };
  return p.problem.dtype == Dtype::kBFloat16 ? with_element(cutlass::bfloat16_t{}) : with_element(cutlass::half_t{});
}

static cudaError_t launch(const BwdParams& p, cudaStream_t st) {
  return with_kernel_set(p, [&](auto set) {
    using S = decltype(set);
    return bwd_check::launch<typename S::Element, S::kHeadDim, S::kMasked>(p, st);
  });
}

static cudaError_t print_cta_times(const BwdParams& p) {
  return with_kernel_set(p, [](auto set) {
    using S = decltype(set);
    return bwd_check::print_cta_times<typename S::Element, S::kHeadDim, S::kMasked>();
  });
}

// Dynamic parallel loop over [0, n) on all host cores (the float64 reference
// is the slow part of a check run).
template <class F>
static void parallel_for(int n, F f) {
  const int workers = std::max(1u, std::thread::hardware_concurrency());
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int w = 0; w < std::min(workers, n); ++w)
    pool.emplace_back([&] {
      for (int i = next++; i < n; i = next++) f(i);
    });
  for (auto& t : pool) t.join();
}

// ---------------------------------------------------------------------------
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint32_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return uint32_t(s >> 32);
  }
  float uniform() { return (next() >> 8) * (1.0f / 16777216.0f); }  // [0, 1)
  float normal() {
    float u1 = std::max(uniform(), 1e-7f), u2 = uniform();
    return std::sqrt(-2.f * std::log(u1)) * std::cos(6.2831853f * u2);
  }
};

struct Case {
  const char* name;
  Dtype dtype;
  int batch, sq, sk, hq, hkv, d;
  int wl, wr;  // window; -1 = unbounded (seqlen_q + seqlen_k)
  float softcap;
  bool dlse_zero;
};

static uint16_t to_bits(float x, Dtype dt) {
  if (dt == Dtype::kBFloat16) {
    cutlass::bfloat16_t v(x);
    return v.raw();
  }
  cutlass::half_t v(x);
  return v.raw();
}
static double from_bits(uint16_t b, Dtype dt) {
  if (dt == Dtype::kBFloat16) return double(float(cutlass::bfloat16_t::bitcast(b)));
  return double(float(cutlass::half_t::bitcast(b)));
}

struct Result {
  double err[3];   // max abs error / max abs reference: dq, dk, dv
  double maxref[3];
  long nonfinite;
};

struct HostCase {
  Case c;
  AttnProblem prob;
  std::vector<uint16_t> q, k, v, out, dout;  // raw Element bits
  std::vector<float> lse, dlse;
  std::vector<double> dq, dk, dv;            // float64 reference
};

// float64 forward (out, lse) and backward (dq, dk, dv) on the rounded inputs.
static void reference(HostCase& h) {
  const Case& c = h.c;
  const AttnShape& s = h.prob.shape;
  const WindowMask mask = WindowMask::make(s, h.prob.mask);
  const int D = c.d, group = c.hq / c.hkv;
  const double scale = h.prob.softmax_scale, cap = h.prob.softcap;
  auto qi = [&](int b, int i, int hh) { return ((size_t(b) * c.sq + i) * c.hq + hh) * D; };
  auto ki = [&](int b, int j, int hh) { return ((size_t(b) * c.sk + j) * c.hkv + hh) * D; };
  std::vector<double> qd(h.q.size()), kd(h.k.size()), vd(h.v.size()), dod(h.dout.size());
  for (size_t i = 0; i < qd.size(); ++i) qd[i] = from_bits(h.q[i], c.dtype);
  for (size_t i = 0; i < kd.size(); ++i) kd[i] = from_bits(h.k[i], c.dtype);
  for (size_t i = 0; i < vd.size(); ++i) vd[i] = from_bits(h.v[i], c.dtype);
  for (size_t i = 0; i < dod.size(); ++i) dod[i] = from_bits(h.dout[i], c.dtype);
  h.out.assign(h.q.size(), 0);
  h.lse.assign(size_t(c.batch) * c.hq * c.sq, 0.f);
  h.dq.assign(h.q.size(), 0.0);
  h.dk.assign(h.k.size(), 0.0);
  h.dv.assign(h.v.size(), 0.0);
  // Pass 1 (parallel over (b, query head)): forward, then dS; dq directly.
  // dS and P are kept per (b, hq) to form dk/dv in pass 2 without races.
  std::vector<std::vector<double>> Pall(size_t(c.batch) * c.hq), dSall(size_t(c.batch) * c.hq);
  parallel_for(c.batch * c.hq, [&](int bh) {
    const int b = bh / c.hq, hh = bh % c.hq, hk = hh / group;
    std::vector<double>& P = Pall[bh];
    std::vector<double>& dS = dSall[bh];
    P.assign(size_t(c.sq) * c.sk, 0.0);
    dS.assign(size_t(c.sq) * c.sk, 0.0);
    std::vector<double> tanhv(c.sk), o(D);
    for (int i = 0; i < c.sq; ++i) {
      double mx = -INFINITY;
      std::vector<double> sc(c.sk, -INFINITY);
      for (int j = 0; j < c.sk; ++j) {
        if (!mask.visible(i, j)) continue;
        double dot = 0;
        for (int x = 0; x < D; ++x) dot += qd[qi(b, i, hh) + x] * kd[ki(b, j, hk) + x];
        double sv = scale * dot;
        if (cap > 0) {
          tanhv[j] = std::tanh(sv / cap);
          sv = cap * tanhv[j];
        }
        sc[j] = sv;
        mx = std::max(mx, sv);
      }
      const size_t li = (size_t(b) * c.hq + hh) * c.sq + i;
      if (mx == -INFINITY) {  // sees no key
        h.lse[li] = -INFINITY;
        for (int x = 0; x < D; ++x) h.out[qi(b, i, hh) + x] = to_bits(0.f, c.dtype);
        continue;
      }
      double sum = 0;
      for (int j = 0; j < c.sk; ++j)
        if (sc[j] > -INFINITY) sum += std::exp(sc[j] - mx);
      const double lse = mx + std::log(sum);
      h.lse[li] = float(lse);
      std::fill(o.begin(), o.end(), 0.0);
      for (int j = 0; j < c.sk; ++j) {
        if (sc[j] == -INFINITY) continue;
        const double p = std::exp(sc[j] - lse);
        P[size_t(i) * c.sk + j] = p;
        for (int x = 0; x < D; ++x) o[x] += p * vd[ki(b, j, hk) + x];
      }
      double Drow = 0;
      for (int x = 0; x < D; ++x) {
        h.out[qi(b, i, hh) + x] = to_bits(float(o[x]), c.dtype);
        Drow += dod[qi(b, i, hh) + x] * from_bits(h.out[qi(b, i, hh) + x], c.dtype);
      }
      Drow -= h.dlse[li];
      for (int j = 0; j < c.sk; ++j) {
        const double p = P[size_t(i) * c.sk + j];
        if (p == 0.0) continue;
        double dp = 0;
        for (int x = 0; x < D; ++x) dp += dod[qi(b, i, hh) + x] * vd[ki(b, j, hk) + x];
        double ds = p * (dp - Drow);
        if (cap > 0) ds *= 1.0 - tanhv[j] * tanhv[j];
        dS[size_t(i) * c.sk + j] = ds;
        for (int x = 0; x < D; ++x) h.dq[qi(b, i, hh) + x] += scale * ds * kd[ki(b, j, hk) + x];
      }
    }
  });
  // Pass 2 (parallel over (b, kv head)): dk, dv summed over the group.
  parallel_for(c.batch * c.hkv, [&](int bk) {
    const int b = bk / c.hkv, hk = bk % c.hkv;
    for (int g = 0; g < group; ++g) {
      const int hh = hk * group + g;
      const std::vector<double>& P = Pall[size_t(b) * c.hq + hh];
      const std::vector<double>& dS = dSall[size_t(b) * c.hq + hh];
      for (int i = 0; i < c.sq; ++i)
        for (int j = 0; j < c.sk; ++j) {
          const double p = P[size_t(i) * c.sk + j], ds = dS[size_t(i) * c.sk + j];
          if (p == 0.0 && ds == 0.0) continue;
          for (int x = 0; x < D; ++x) {
            h.dk[ki(b, j, hk) + x] += scale * ds * qd[qi(b, i, hh) + x];
            h.dv[ki(b, j, hk) + x] += p * dod[qi(b, i, hh) + x];
          }
        }
    }
  });
}

static HostCase make_case(const Case& c, uint64_t seed) {
  HostCase h;
  h.c = c;
  const int W = c.sq + c.sk;
  h.prob.shape = AttnShape{c.batch, c.sq, c.sk, c.hq, c.hkv, c.d};
  h.prob.dtype = c.dtype;
  h.prob.softmax_scale = float(1.0 / std::sqrt(double(c.d)));
  h.prob.softcap = c.softcap;
  h.prob.mask = AttnMask{c.wl < 0 ? W : c.wl, c.wr < 0 ? W : c.wr};
  Rng r(seed);
  auto fill = [&](std::vector<uint16_t>& t, size_t n) {
    t.resize(n);
    for (auto& x : t) x = to_bits(r.normal(), c.dtype);
  };
  fill(h.q, size_t(c.batch) * c.sq * c.hq * c.d);
  fill(h.k, size_t(c.batch) * c.sk * c.hkv * c.d);
  fill(h.v, size_t(c.batch) * c.sk * c.hkv * c.d);
  fill(h.dout, size_t(c.batch) * c.sq * c.hq * c.d);
  h.dlse.resize(size_t(c.batch) * c.hq * c.sq);
  for (auto& x : h.dlse) x = c.dlse_zero ? 0.f : r.normal();
  reference(h);
  return h;
}

struct DevBufs {
  void *q, *k, *v, *out, *dout, *dq, *dk, *dv, *ws;
  float *lse, *dlse;
  size_t ws_bytes;
};

static DevBufs upload(const HostCase& h, bool deterministic) {
  DevBufs d{};
  auto up = [](void** p, const void* src, size_t bytes) {
    CK(cudaMalloc(p, std::max<size_t>(bytes, 16)));
    CK(cudaMemcpy(*p, src, bytes, cudaMemcpyHostToDevice));
  };
  up(&d.q, h.q.data(), h.q.size() * 2);
  up(&d.k, h.k.data(), h.k.size() * 2);
  up(&d.v, h.v.data(), h.v.size() * 2);
  up(&d.out, h.out.data(), h.out.size() * 2);
  up(&d.dout, h.dout.data(), h.dout.size() * 2);
  up(reinterpret_cast<void**>(&d.lse), h.lse.data(), h.lse.size() * 4);
  up(reinterpret_cast<void**>(&d.dlse), h.dlse.data(), h.dlse.size() * 4);
  CK(cudaMalloc(&d.dq, h.q.size() * 2));
  CK(cudaMalloc(&d.dk, h.k.size() * 2));
  CK(cudaMalloc(&d.dv, h.v.size() * 2));
  d.ws_bytes = workspace_bytes(h.prob.shape, deterministic);
  CK(cudaMalloc(&d.ws, std::max<size_t>(d.ws_bytes, 256)));
  return d;
}
static void release(DevBufs& d) {
  for (void* p : {d.q, d.k, d.v, d.out, d.dout, d.dq, d.dk, d.dv, d.ws, (void*)d.lse, (void*)d.dlse}) cudaFree(p);
}

static BwdParams params_of(const HostCase& h, const DevBufs& d, bool deterministic) {
  BwdParams p{};
  p.problem = h.prob;
  p.deterministic = deterministic;
  p.q = d.q;
  p.k = d.k;
  p.v = d.v;
  p.out = d.out;
  p.dout = d.dout;
  p.lse = d.lse;
  p.dlse = d.dlse;
  p.dq = d.dq;
  p.dk = d.dk;
  p.dv = d.dv;
  p.workspace = d.ws;
  return p;
}

// Poison, launch, copy back.
static void run_once(const HostCase& h, const DevBufs& d, bool deterministic, std::vector<uint16_t>& dq,
                     std::vector<uint16_t>& dk, std::vector<uint16_t>& dv) {
  CK(cudaMemset(d.dq, 0xFF, h.q.size() * 2));
  CK(cudaMemset(d.dk, 0xFF, h.k.size() * 2));
  CK(cudaMemset(d.dv, 0xFF, h.v.size() * 2));
  CK(cudaMemset(d.ws, 0xFF, d.ws_bytes));
  BwdParams p = params_of(h, d, deterministic);
  CK(launch(p, 0));
  CK(cudaDeviceSynchronize());
  dq.resize(h.q.size());
  dk.resize(h.k.size());
  dv.resize(h.v.size());
  CK(cudaMemcpy(dq.data(), d.dq, dq.size() * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(dk.data(), d.dk, dk.size() * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(dv.data(), d.dv, dv.size() * 2, cudaMemcpyDeviceToHost));
}

static Result compare(const HostCase& h, const std::vector<uint16_t>& dq, const std::vector<uint16_t>& dk,
                      const std::vector<uint16_t>& dv) {
  Result r{};
  const std::vector<uint16_t>* got[3] = {&dq, &dk, &dv};
  const std::vector<double>* ref[3] = {&h.dq, &h.dk, &h.dv};
  for (int t = 0; t < 3; ++t) {
    double maxerr = 0, maxref = 0;
    for (size_t i = 0; i < ref[t]->size(); ++i) {
      const double g = from_bits((*got[t])[i], h.c.dtype), e = (*ref[t])[i];
      if (!std::isfinite(g)) {
        ++r.nonfinite;
        continue;
      }
      maxerr = std::max(maxerr, std::fabs(g - e));
      maxref = std::max(maxref, std::fabs(e));
    }
    r.maxref[t] = maxref;
    r.err[t] = maxref > 0 ? maxerr / maxref : maxerr;
  }
  return r;
}

static bool check_case(const Case& c, uint64_t seed) {
  HostCase h = make_case(c, seed);
  DevBufs d = upload(h, true);
  const double tol = c.dtype == Dtype::kBFloat16 ? 2e-2 : 5e-3;
  bool ok = true;
  for (int det = 0; det < 2; ++det) {
    std::vector<uint16_t> dq, dk, dv;
    run_once(h, d, det, dq, dk, dv);
    Result r = compare(h, dq, dk, dv);
    bool pass = r.nonfinite == 0 && r.err[0] < tol && r.err[1] < tol && r.err[2] < tol;
    bool bitwise = true;
    if (det) {
      std::vector<uint16_t> dq2, dk2, dv2;
      run_once(h, d, true, dq2, dk2, dv2);
      bitwise = dq == dq2 && dk == dk2 && dv == dv2;
      pass = pass && bitwise;
    }
    std::printf("%-34s %s d=%3d b=%d sq=%4d sk=%4d h=%d/%d win=(%d,%d) cap=%g %s | err dq %.2e dk %.2e dv %.2e "
                "(|ref| %.2g %.2g %.2g) nonfinite %ld%s  %s\n",
                c.name, c.dtype == Dtype::kBFloat16 ? "bf16" : "fp16", c.d, c.batch, c.sq, c.sk, c.hq, c.hkv,
                h.prob.mask.window_left, h.prob.mask.window_right, c.softcap, det ? "det " : "fast", r.err[0],
                r.err[1], r.err[2], r.maxref[0], r.maxref[1], r.maxref[2], r.nonfinite,
                det ? (bitwise ? " bitwise-repeat OK" : " bitwise-repeat DIFFERS") : "", pass ? "PASS" : "FAIL");
    ok = ok && pass;
  }
  release(d);
  return ok;
}

static int run_checks(bool small) {
  const Dtype bf = Dtype::kBFloat16, fp = Dtype::kFloat16;
  std::vector<Case> cases;
  if (small) {
    cases.push_back({"small causal gqa2", bf, 1, 113, 113, 4, 2, 128, -1, 0, 0.f, false});
    cases.push_back({"small d64 causal softcap gqa2", bf, 1, 300, 300, 4, 2, 64, -1, 0, 30.f, false});
    cases.push_back({"small d256 causal gqa2", bf, 1, 200, 200, 4, 2, 256, -1, 0, 0.f, false});
  } else {
    cases = {
        {"d64 full b2", bf, 2, 113, 113, 4, 4, 64, -1, -1, 0.f, false},
        {"d64 fp16 causal gqa2", fp, 1, 1000, 1000, 4, 2, 64, -1, 0, 0.f, false},
        {"d64 softcap30 causal gqa2", bf, 1, 1000, 1000, 4, 2, 64, -1, 0, 30.f, false},
        {"d64 softcap30 full sq<sk", fp, 2, 113, 1000, 2, 1, 64, -1, -1, 30.f, false},
        {"d64 local(37,5) sq>sk", bf, 2, 1000, 500, 4, 1, 64, 37, 5, 0.f, false},
        {"d64 causal sq<sk dlse=0", bf, 1, 113, 1000, 2, 2, 64, -1, 0, 0.f, true},
        {"d64 sq=17 sk=17 full", bf, 2, 17, 17, 2, 2, 64, -1, -1, 0.f, false},
        {"d64 sq=1 sk=1000 causal", bf, 1, 1, 1000, 2, 2, 64, -1, 0, 0.f, false},
        {"d40 (bucket 64) causal sq>sk (empty rows)", bf, 1, 1000, 113, 2, 2, 40, -1, 0, 0.f, false},
        {"d96 causal gqa2", bf, 1, 1000, 1000, 2, 1, 96, -1, 0, 0.f, false},
        {"d72 (bucket 96) causal", bf, 1, 17, 17, 2, 2, 72, -1, 0, 0.f, false},
        {"d72 (bucket 96) full sq!=sk", bf, 2, 113, 1000, 2, 2, 72, -1, -1, 0.f, false},
        {"d128 full gqa8 b2", bf, 2, 1000, 1000, 8, 1, 128, -1, -1, 0.f, false},
        {"d128 fp16 full", fp, 1, 113, 113, 2, 2, 128, -1, -1, 0.f, false},
        {"d128 causal sq<sk", bf, 1, 113, 1000, 2, 2, 128, -1, 0, 0.f, false},
        {"d128 causal sq>sk (empty rows)", bf, 1, 1000, 113, 2, 2, 128, -1, 0, 0.f, false},
        {"d128 local(37,5) dlse=0", bf, 1, 1000, 1000, 2, 1, 128, 37, 5, 0.f, true},
        {"d128 local(37,5) sq>sk", bf, 2, 1000, 500, 4, 1, 128, 37, 5, 0.f, false},
        {"d128 softcap30 causal gqa2", bf, 1, 113, 113, 4, 2, 128, -1, 0, 30.f, false},
        {"d128 softcap30 full sq!=sk", bf, 1, 1000, 113, 2, 1, 128, -1, -1, 30.f, false},
        {"d128 sq=sk=1", bf, 1, 1, 1, 2, 2, 128, -1, -1, 0.f, false},
        {"d128 sq=1 sk=1000 causal", bf, 1, 1, 1000, 2, 2, 128, -1, 0, 0.f, false},
        {"d128 sq=1000 sk=1 causal", bf, 1, 1000, 1, 2, 2, 128, -1, 0, 0.f, false},
        {"d128 sq=17 sk=17 full dlse=0", bf, 2, 17, 17, 2, 2, 128, -1, -1, 0.f, true},
        {"d192 local(37,5)", bf, 1, 1000, 1000, 2, 2, 192, 37, 5, 0.f, false},
        {"d192 full b2 gqa2", bf, 2, 113, 113, 4, 2, 192, -1, -1, 0.f, false},
        {"d256 full softcap30 gqa2", bf, 2, 113, 113, 2, 1, 256, -1, -1, 30.f, false},
        {"d256 causal", bf, 1, 1000, 1000, 2, 2, 256, -1, 0, 0.f, false},
        // Head dim 256 under more shapes: an odd number of key blocks, fp16,
        // sq != sk, a local window, one query (added for the CTA pairs of
        // benchmarks/results/2026-12-06d_h100_bwd_dq_pairs.md).
        {"d256 fp16 full sq>sk (3 key blocks)", fp, 2, 300, 150, 2, 2, 256, -1, -1, 0.f, false},
        {"d256 causal sq<sk dlse=0 gqa2", bf, 1, 113, 1000, 4, 2, 256, -1, 0, 0.f, true},
        {"d256 local(37,5) sq>sk", bf, 1, 1000, 500, 2, 1, 256, 37, 5, 0.f, false},
        {"d256 sq=1 sk=1000 causal", bf, 1, 1, 1000, 2, 2, 256, -1, 0, 0.f, false},
    };
  }
  int failed = 0, skipped = 0;
  uint64_t seed = 1;
  for (const Case& c : cases) {
    if (BWD_CHECK_ONLY_HDIM != 0 && head_dim_bucket(c.d) != BWD_CHECK_ONLY_HDIM) {
      ++skipped;
      continue;
    }
    if (!check_case(c, seed++)) ++failed;
    std::fflush(stdout);
  }
  std::printf("%d case(s) failed, %d skipped (not compiled in)\n", failed, skipped);
  return failed ? 1 : 0;
}

// Head dims from BENCH_HDIMS (default 128), sequence lengths from the
// argument list (default 16384); total tokens 16k (batch = 16384 / S) and
// hidden size 2048 (heads = 2048 / d), like the project's benchmark.
static std::vector<int> int_list(const char* text, std::vector<int> fallback) {
  if (!text || !*text) return fallback;
  std::vector<int> out;
  for (const char* c = text; *c;) {
    out.push_back(std::atoi(c));
    while (*c && *c != ',') ++c;
    if (*c) ++c;
  }
  return out;
}

// dq of 16 sampled (batch, head, row) triples of the last timed launch against
// float64, for the bench's inputs (q = k = v = out = dout = `host`, constant
// lse, dlse = 0): dq_i = scale * sum_j P_ij (dP_ij - D_i) k_j with
// P_ij = exp(scale q_i.k_j - lse_i), dP_ij = dout_i.v_j, D_i = dout_i.out_i.
// Returns the largest error over the largest |reference| element (a timed
// kernel must also be a correct one).
static double spot_check_dq(const std::vector<uint16_t>& host, const void* dq_dev, const float* lse_dev, int B,
                            int S, int H, int D, float scale, bool causal) {
  const Dtype dt = Dtype::kBFloat16;
  std::vector<uint16_t> dq(host.size());
  std::vector<float> lse(size_t(B) * H * S);
  CK(cudaMemcpy(dq.data(), dq_dev, dq.size() * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(lse.data(), lse_dev, lse.size() * 4, cudaMemcpyDeviceToHost));
  auto x = [&](int b, int i, int h, int d) { return from_bits(host[((size_t(b) * S + i) * H + h) * D + d], dt); };
  Rng pick(5);
  double max_err = 0, max_ref = 0;
  for (int t = 0; t < 16; ++t) {
    const int b = pick.next() % B, h = pick.next() % H, i = t < 2 ? t * (S - 1) : int(pick.next() % S);
    double Di = 0;
    for (int d = 0; d < D; ++d) Di += x(b, i, h, d) * x(b, i, h, d);
    std::vector<double> ref(D, 0.0);
    for (int j = 0; j <= (causal ? i : S - 1); ++j) {
      double qk = 0;
      for (int d = 0; d < D; ++d) qk += x(b, i, h, d) * x(b, j, h, d);  // q_i.k_j = dout_i.v_j here
      const double p = std::exp(scale * qk - lse[(size_t(b) * H + h) * S + i]);
      const double ds = p * (qk - Di);
      for (int d = 0; d < D; ++d) ref[d] += ds * x(b, j, h, d);
    }
    for (int d = 0; d < D; ++d) {
      const double r = scale * ref[d], g = from_bits(dq[((size_t(b) * S + i) * H + h) * D + d], dt);
      max_ref = std::max(max_ref, std::fabs(r));
      max_err = std::max(max_err, std::isnan(g) ? INFINITY : std::fabs(g - r));
    }
  }
  return max_err / std::max(max_ref, 1e-30);
}

constexpr int kBwdCyclesLaunches = 4;
// The bench's dq spot check passes below this (bf16, the checks' bf16 tolerance).
constexpr double kBenchDqTolerance = 2e-2;

enum class BenchMode { kTimed, kCycles, kCtaTimes };

// kTimed: the bench's medians; otherwise kBwdCyclesLaunches launches per
// configuration (and with kCtaTimes the last one's CTA times).
// Whether BENCH_CASES (comma-separated "<full|causal>:<fast|det>"; unset:
// all) names this case.
static bool bench_case_selected(bool causal, bool det) {
  const char* cases = std::getenv("BENCH_CASES");
  if (cases == nullptr || *cases == 0) return true;
  const std::string name = std::string(causal ? "causal" : "full") + ":" + (det ? "det" : "fast");
  const std::string list = std::string(",") + cases + ",";
  return list.find("," + name + ",") != std::string::npos;
}

static void bench_one(int S, int D, BenchMode mode) {
  const int B = std::max(1, 16384 / S), H = 2048 / D;
  const Dtype dt = Dtype::kBFloat16;
  const size_t n = size_t(B) * S * H * D;
  std::vector<uint16_t> host(n);
  Rng r(7);
  for (auto& x : host) x = to_bits(r.normal() * 0.5f, dt);
  void *q, *k, *v, *o, *dO, *dq, *dk, *dv, *ws;
  float *lse, *dlse;
  for (void** p : {&q, &k, &v, &o, &dO, &dq, &dk, &dv}) {
    CK(cudaMalloc(p, n * 2));
    CK(cudaMemcpy(*p, host.data(), n * 2, cudaMemcpyHostToDevice));
  }
  std::vector<float> lh(size_t(B) * H * S, std::log(float(S)) + 1.f);
  CK(cudaMalloc(&lse, lh.size() * 4));
  CK(cudaMalloc(&dlse, lh.size() * 4));
  CK(cudaMemcpy(lse, lh.data(), lh.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemset(dlse, 0, lh.size() * 4));
  AttnProblem prob{AttnShape{B, S, S, H, H, D}, dt, float(1.0 / std::sqrt(double(D))), 0.f, AttnMask{2 * S, 2 * S}};
  const size_t wsb = std::max(workspace_bytes(prob.shape, true), workspace_bytes(prob.shape, false));
  CK(cudaMalloc(&ws, wsb));
  const char* settle_env = std::getenv("BENCH_SETTLE_MS");
  const float settle_ms = settle_env ? std::strtof(settle_env, nullptr) : 0.f;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int causal = 0; causal < 2; ++causal) {
    for (int det = 0; det < 2; ++det) {
      if (!bench_case_selected(causal, det)) continue;
      prob.mask = AttnMask{2 * S, causal ? 0 : 2 * S};
      BwdParams p{prob, bool(det), q, k, v, o, dO, lse, dlse, dq, dk, dv, ws};
      if (mode != BenchMode::kTimed) {
        for (int it = 0; it < kBwdCyclesLaunches; ++it) CK(launch(p, 0));
        CK(cudaDeviceSynchronize());
        const double err = spot_check_dq(host, dq, lse, B, S, H, D, prob.softmax_scale, causal);
        std::printf("cycles b=%d s=%d h=%d d=%d %s %s: %d launches | dq spot check %.1e %s\n", B, S, H, D,
                    causal ? "causal" : "full", det ? "det" : "fast", kBwdCyclesLaunches, err,
                    err < kBenchDqTolerance ? "PASS" : "FAIL");
        if (mode == BenchMode::kCtaTimes) CK(print_cta_times(p));
        continue;
      }
      // Each sample runs the whole backward (preprocess, main, convert)
      // enough times to last >= ~20 ms, so launch gaps do not dominate.
      auto launches_ms = [&](int launches) {
        CK(cudaEventRecord(e0));
        for (int i = 0; i < launches; ++i) CK(launch(p, 0));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float t;
        CK(cudaEventElapsedTime(&t, e0, e1));
        return t;
      };
      CK(launch(p, 0));
      const int reps = std::max(1, int(20.f / std::max(launches_ms(1), 1e-3f)));
      for (float settled = 0.f; settled < settle_ms;) settled += launches_ms(reps);
      std::vector<float> ms;
      for (int it = 0; it < 7; ++it) {
        const float t = launches_ms(reps);
        if (it >= 1) ms.push_back(t / reps);
      }
      std::sort(ms.begin(), ms.end());
      const double med = ms[ms.size() / 2];
      double flops = 2.5 * 4.0 * B * double(S) * S * H * D;
      if (causal) flops *= 0.5;
      const double err = spot_check_dq(host, dq, lse, B, S, H, D, prob.softmax_scale, causal);
      std::printf("bench bf16 b=%d s=%d h=%d d=%d %-6s %-4s: median %.3f ms  %.1f TFLOP/s (min %.3f max %.3f) | "
                  "dq spot check %.1e %s\n", B, S, H, D, causal ? "causal" : "full", det ? "det" : "fast", med,
                  flops / (med * 1e-3) / 1e12, ms.front(), ms.back(), err, err < kBenchDqTolerance ? "PASS" : "FAIL");
    }
  }
  for (void* p : {q, k, v, o, dO, dq, dk, dv, ws}) CK(cudaFree(p));
  CK(cudaFree(lse));
  CK(cudaFree(dlse));
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
}

static int run_bench(const std::vector<int>& seqlens, BenchMode mode) {
  for (int D : int_list(std::getenv("BENCH_HDIMS"), {128})) {
    if (BWD_CHECK_ONLY_HDIM != 0 && D != BWD_CHECK_ONLY_HDIM) continue;
    for (int S : seqlens) bench_one(S, D, mode);
  }
  return 0;
}

int main(int argc, char** argv) {
  // Line-buffered even into a log file: a hung or killed run still shows how far it got.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string mode = argc > 1 ? argv[1] : "check";
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  if (mode == "bench" || mode == "cycles" || mode == "ctatimes") {
    CK(cudaDeviceSetLimit(cudaLimitPrintfFifoSize, size_t(16) << 20));  // the CT lines
    const BenchMode bench_mode = mode == "bench"    ? BenchMode::kTimed
                                 : mode == "cycles" ? BenchMode::kCycles
                                                    : BenchMode::kCtaTimes;
    return run_bench(int_list(argc > 2 ? argv[2] : nullptr, {16384}), bench_mode);
  }
  return run_checks(mode == "small");
}
