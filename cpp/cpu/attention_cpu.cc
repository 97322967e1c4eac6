#include "cpu/attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "jax_fa3/common/mask.h"

namespace jax_fa3::cpu {
namespace {

// --- float16 / bfloat16 <-> float, round to nearest even --------------------

float bf16_to_float(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t u;
  if (exponent == 0x1f) {
    u = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    u = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    u = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    u = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

uint16_t float_to_fp16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to inf
  if (abs < 0x38800000u) {                        // subnormal or zero in fp16
    // Scale so the fp16 subnormal unit (2^-24) becomes 1, then round to even.
    float magnitude;
    std::memcpy(&magnitude, &abs, sizeof magnitude);
    return sign | static_cast<uint16_t>(std::nearbyint(magnitude * 16777216.0f));
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - (112u << 23)) >> 13);
}

struct Converter {
  Dtype dtype;
  float load(const void* base, size_t i) const {
    const uint16_t bits = static_cast<const uint16_t*>(base)[i];
    return dtype == Dtype::kBFloat16 ? bf16_to_float(bits) : fp16_to_float(bits);
  }
  void store(void* base, size_t i, float value) const {
    static_cast<uint16_t*>(base)[i] =
        dtype == Dtype::kBFloat16 ? float_to_bf16(value) : float_to_fp16(value);
  }
};

// Rows of one head of a BSHD tensor, as a float matrix [seqlen, head_dim].
std::vector<float> load_head(const Converter& cvt, const void* base, int b, int h, int seqlen,
                             int heads, int head_dim) {
  std::vector<float> rows(static_cast<size_t>(seqlen) * head_dim);
  for (int s = 0; s < seqlen; ++s) {
    const size_t offset = ((static_cast<size_t>(b) * seqlen + s) * heads + h) * head_dim;
    for (int d = 0; d < head_dim; ++d) rows[static_cast<size_t>(s) * head_dim + d] = cvt.load(base, offset + d);
  }
  return rows;
}

void store_head(const Converter& cvt, void* base, const std::vector<float>& rows, int b, int h,
                int seqlen, int heads, int head_dim) {
  for (int s = 0; s < seqlen; ++s) {
    const size_t offset = ((static_cast<size_t>(b) * seqlen + s) * heads + h) * head_dim;
    for (int d = 0; d < head_dim; ++d) cvt.store(base, offset + d, rows[static_cast<size_t>(s) * head_dim + d]);
  }
}

float dot(const float* a, const float* b, int n) {
  float sum = 0.f;
  for (int d = 0; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// Scores of one query row against its visible keys [key_lo, key_hi).
// raw_tanh receives tanh(scale*q.k / softcap) when softcap > 0 (for the
// backward's softcap derivative).
void row_scores(const AttnProblem& p, const float* q_row, const std::vector<float>& k_head,
                int key_lo, int key_hi, float* scores, float* raw_tanh) {
  const int d = p.shape.head_dim;
  for (int j = key_lo; j < key_hi; ++j) {
    float s = p.softmax_scale * dot(q_row, &k_head[static_cast<size_t>(j) * d], d);
    if (p.softcap > 0.f) {
      const float t = std::tanh(s / p.softcap);
      if (raw_tanh) raw_tanh[j - key_lo] = t;
      s = p.softcap * t;
    }
    scores[j - key_lo] = s;
  }
}

// Runs fn(item) for item in [0, items) on up to hardware_concurrency threads.
template <class Fn>
void parallel_for(int items, Fn fn) {
  const int workers = std::max(1, std::min<int>(items, static_cast<int>(std::thread::hardware_concurrency())));
  if (workers == 1) {
    for (int i = 0; i < items; ++i) fn(i);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(workers);
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      for (int i = w; i < items; i += workers) fn(i);
    });
  }
  for (auto& t : threads) t.join();
}

}  // namespace

void run_fwd(const FwdParams& params) {
  const AttnProblem& p = params.problem;
  const AttnShape& s = p.shape;
  const Converter cvt{p.dtype};
  const WindowMask mask = WindowMask::make(s, p.mask);
  const int group = s.heads_q / s.heads_kv;
  const int d = s.head_dim;

  parallel_for(s.batch * s.heads_q, [&](int item) {
    const int b = item / s.heads_q;
    const int h = item % s.heads_q;
    const std::vector<float> q = load_head(cvt, params.q, b, h, s.seqlen_q, s.heads_q, d);
    const std::vector<float> k = load_head(cvt, params.k, b, h / group, s.seqlen_k, s.heads_kv, d);
    const std::vector<float> v = load_head(cvt, params.v, b, h / group, s.seqlen_k, s.heads_kv, d);
    std::vector<float> out(static_cast<size_t>(s.seqlen_q) * d, 0.f);
    std::vector<float> scores(s.seqlen_k);
    for (int i = 0; i < s.seqlen_q; ++i) {
      const int lo = mask.key_begin(i);
      const int hi = mask.key_end(i + 1);
      float* lse = &params.lse[(static_cast<size_t>(b) * s.heads_q + h) * s.seqlen_q + i];
      if (lo >= hi) {
        *lse = -std::numeric_limits<float>::infinity();
        continue;
      }
      row_scores(p, &q[static_cast<size_t>(i) * d], k, lo, hi, scores.data(), nullptr);
      const float row_max = *std::max_element(scores.begin(), scores.begin() + (hi - lo));
      float row_sum = 0.f;
      float* o = &out[static_cast<size_t>(i) * d];
      for (int j = lo; j < hi; ++j) {
        const float pj = std::exp(scores[j - lo] - row_max);
        row_sum += pj;
        const float* v_row = &v[static_cast<size_t>(j) * d];
        for (int c = 0; c < d; ++c) o[c] += pj * v_row[c];
      }
      for (int c = 0; c < d; ++c) o[c] /= row_sum;
      *lse = row_max + std::log(row_sum);
    }
    store_head(cvt, params.out, out, b, h, s.seqlen_q, s.heads_q, d);
  });
}

void run_bwd(const BwdParams& params) {
  const AttnProblem& p = params.problem;
  const AttnShape& s = p.shape;
  const Converter cvt{p.dtype};
  const WindowMask mask = WindowMask::make(s, p.mask);
  const int group = s.heads_q / s.heads_kv;
  const int d = s.head_dim;

  // One work item per (batch, kv head): it owns dk/dv of that head, summed
  // over the query heads of its group, so threads never share an output.
  parallel_for(s.batch * s.heads_kv, [&](int item) {
    const int b = item / s.heads_kv;
    const int hk = item % s.heads_kv;
    const std::vector<float> k = load_head(cvt, params.k, b, hk, s.seqlen_k, s.heads_kv, d);
    const std::vector<float> v = load_head(cvt, params.v, b, hk, s.seqlen_k, s.heads_kv, d);
    std::vector<float> dk(static_cast<size_t>(s.seqlen_k) * d, 0.f);
    std::vector<float> dv(static_cast<size_t>(s.seqlen_k) * d, 0.f);
    std::vector<float> scores(s.seqlen_k), tanh_raw(s.seqlen_k);
    for (int h = hk * group; h < (hk + 1) * group; ++h) {
      const std::vector<float> q = load_head(cvt, params.q, b, h, s.seqlen_q, s.heads_q, d);
      const std::vector<float> out = load_head(cvt, params.out, b, h, s.seqlen_q, s.heads_q, d);
      const std::vector<float> dout = load_head(cvt, params.dout, b, h, s.seqlen_q, s.heads_q, d);
      std::vector<float> dq(static_cast<size_t>(s.seqlen_q) * d, 0.f);
      for (int i = 0; i < s.seqlen_q; ++i) {
        const int lo = mask.key_begin(i);
        const int hi = mask.key_end(i + 1);
        const size_t row = (static_cast<size_t>(b) * s.heads_q + h) * s.seqlen_q + i;
        const float lse = params.lse[row];
        if (lo >= hi || std::isinf(lse)) continue;  // sees no key: zero gradients
        const float* q_row = &q[static_cast<size_t>(i) * d];
        const float* do_row = &dout[static_cast<size_t>(i) * d];
        // Row term: D = rowsum(dO * O) - dlse (the lse cotangent enters here).
        const float row_term = dot(do_row, &out[static_cast<size_t>(i) * d], d) -
                               (params.dlse != nullptr ? params.dlse[row] : 0.f);
        row_scores(p, q_row, k, lo, hi, scores.data(), tanh_raw.data());
        float* dq_row = &dq[static_cast<size_t>(i) * d];
        for (int j = lo; j < hi; ++j) {
          const float pj = std::exp(scores[j - lo] - lse);
          const float* k_row = &k[static_cast<size_t>(j) * d];
          const float dp = dot(do_row, &v[static_cast<size_t>(j) * d], d);
          float ds = pj * (dp - row_term);
          if (p.softcap > 0.f) ds *= 1.f - tanh_raw[j - lo] * tanh_raw[j - lo];
          ds *= p.softmax_scale;
          float* dk_row = &dk[static_cast<size_t>(j) * d];
          float* dv_row = &dv[static_cast<size_t>(j) * d];
          for (int c = 0; c < d; ++c) {
            dq_row[c] += ds * k_row[c];
            dk_row[c] += ds * q_row[c];
            dv_row[c] += pj * do_row[c];
          }
        }
      }
      store_head(cvt, params.dq, dq, b, h, s.seqlen_q, s.heads_q, d);
    }
    store_head(cvt, params.dk, dk, b, hk, s.seqlen_k, s.heads_kv, d);
    store_head(cvt, params.dv, dv, b, hk, s.seqlen_k, s.heads_kv, d);
  });
}

}  // namespace jax_fa3::cpu
