// The fused CPU forward pass for the Llama family in float32 (see
// Transformer::ForwardFused in model.h): every projection is one GEMM over
// all B·T positions of the call (at::mm_out / at::addmm_out into a reused
// per-thread workspace, the same BLAS calls at::linear makes), and the
// elementwise work between them (RMSNorm, RoPE, causal grouped-query
// attention, SwiGLU, residual adds) is plain loops over that workspace.
// Against the ATen path this removes ~100 tensor allocations per forward
// (glibc maps and unmaps the large ones, which made system time exceed user
// time), the repeat_interleave copies of the key/value heads, the B·H·T²
// score and mask tensors, and the per-op dispatch that dominated small
// models. Numerics: same GEMMs, different summation order and exp for the
// norms and softmax, i.e. float rounding (tests/unit/lm: FusedForward*).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "core/lm/fast_exp.h"
#include "core/lm/model.h"

namespace sae {
namespace {

using internal::FastExp;
#if defined(__AVX512F__)
using internal::FastExp16;
#endif

inline float MaxOf(const float* x, int64_t n) {
  float acc[16];
  for (int u = 0; u < 16; ++u) acc[u] = -INFINITY;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int u = 0; u < 16; ++u) acc[u] = acc[u] > x[j + u] ? acc[u] : x[j + u];
  float m = -INFINITY;
  for (; j < n; ++j) m = m > x[j] ? m : x[j];
  for (int u = 0; u < 16; ++u) m = m > acc[u] ? m : acc[u];
  return m;
}

// Sum of squares with 16 independent partial sums (vectorisable).
inline float SumSquares(const float* x, int64_t d) {
  float acc[16] = {0};
  int64_t j = 0;
  for (; j + 16 <= d; j += 16)
    for (int u = 0; u < 16; ++u) acc[u] += x[j + u] * x[j + u];
  float s = 0;
  for (; j < d; ++j) s += x[j] * x[j];
  for (int u = 0; u < 16; ++u) s += acc[u];
  return s;
}

inline float Dot(const float* a, const float* b, int64_t d) {
  float acc[16] = {0};
  int64_t j = 0;
  for (; j + 16 <= d; j += 16)
    for (int u = 0; u < 16; ++u) acc[u] += a[j + u] * b[j + u];
  for (; j + 8 <= d; j += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[j + u] * b[j + u];
  float s = 0;
  for (; j < d; ++j) s += a[j] * b[j];
  for (int u = 0; u < 16; ++u) s += acc[u];
  return s;
}

// out = x·rsqrt(mean(x²) + eps)·w per row (Hugging Face's / llama2.c's RMSNorm).
void RmsNormRows(const float* x, const float* w, float* out, int64_t n, int64_t d, float eps) {
  at::parallel_for(0, n, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * d;
      float* o = out + r * d;
      const float inv = 1.0f / std::sqrt(SumSquares(xr, d) / static_cast<float>(d) + eps);
      for (int64_t j = 0; j < d; ++j) o[j] = xr[j] * inv * w[j];
    }
  });
}

// Rotates `heads` vectors of width hd in each of the n rows (row r at
// position pos0 + r % T) by the RoPE tables [positions, hd/2].
void RopeRows(float* x, int64_t n, int64_t T, int64_t heads, int64_t hd, int64_t pos0, const float* cos_t,
              const float* sin_t, bool interleaved) {
  const int64_t half = hd / 2;
  at::parallel_for(0, n, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* c = cos_t + (pos0 + r % T) * half;
      const float* s = sin_t + (pos0 + r % T) * half;
      for (int64_t h = 0; h < heads; ++h) {
        float* v = x + (r * heads + h) * hd;
        if (interleaved) {
          for (int64_t i = 0; i < half; ++i) {
            const float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * c[i] - x1 * s[i];
            v[2 * i + 1] = x0 * s[i] + x1 * c[i];
          }
        } else {
          for (int64_t i = 0; i < half; ++i) {
            const float x0 = v[i], x1 = v[i + half];
            v[i] = x0 * c[i] - x1 * s[i];
            v[i + half] = x1 * c[i] + x0 * s[i];
          }
        }
      }
    }
  });
}

// Keys and values of one layer. Either row-major, element (b, kv head h,
// position s, j) at base + b·b_stride + h·h_stride + s·s_stride + j (the
// projections' output), or transposed (the KV cache): element at
// base + b·b_stride + h·h_stride + j·s_stride + s.
struct KvView {
  const float* k;
  const float* v;
  int64_t b_stride, h_stride, s_stride;
  bool transposed;
};

struct AttnShape {
  int64_t B, T, H, KV, hd, pos0, window;
  float scale, softcap;
};

#if defined(__AVX512F__)
// The first `left` of 16 lanes (all 16 when left >= 16).
inline __mmask16 Lanes(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}
#endif

// One query's attention over n keys, in three passes over its scores sc
// (keys and values transposed: dimension j of key s at k[j·ld + s]).
// With AVX-512 each runs 16 keys a block, the last one masked: a block's
// score sums the head's dimensions in a register (each dimension adding
// itself to every score in memory, the same scores went through the store
// buffer hd times: the hottest instruction of a stories260K harvest); the
// weighted sums take four dimensions at a time, one tree reduction each
// (one dot product per dimension ended in 16 dependent adds).
// docs/performance.md "The harvest's attention".

// sc[s] = scale · q·k_s; returns the largest (exact in any order).
inline float Scores(const float* q, const float* k, int64_t ld, int64_t hd, int64_t n, float scale, float* sc) {
#if defined(__AVX512F__)
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int64_t s = 0; s < n; s += 16) {
    const __mmask16 m = Lanes(n - s);
    const float* kr = k + s;
    __m512 blk = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 4 <= hd; j += 4) {
      blk = _mm512_fmadd_ps(_mm512_set1_ps(q[j]), _mm512_maskz_loadu_ps(m, kr + j * ld), blk);
      blk = _mm512_fmadd_ps(_mm512_set1_ps(q[j + 1]), _mm512_maskz_loadu_ps(m, kr + (j + 1) * ld), blk);
      blk = _mm512_fmadd_ps(_mm512_set1_ps(q[j + 2]), _mm512_maskz_loadu_ps(m, kr + (j + 2) * ld), blk);
      blk = _mm512_fmadd_ps(_mm512_set1_ps(q[j + 3]), _mm512_maskz_loadu_ps(m, kr + (j + 3) * ld), blk);
    }
    for (; j < hd; ++j) blk = _mm512_fmadd_ps(_mm512_set1_ps(q[j]), _mm512_maskz_loadu_ps(m, kr + j * ld), blk);
    blk = _mm512_mul_ps(blk, vscale);
    _mm512_mask_storeu_ps(sc + s, m, blk);
    vmax = _mm512_mask_max_ps(vmax, m, vmax, blk);
  }
  return _mm512_reduce_max_ps(vmax);
#else
  for (int64_t s = 0; s < n; ++s) sc[s] = 0;
  for (int64_t j = 0; j < hd; ++j) {
    const float qj = q[j];
    const float* kr = k + j * ld;
    for (int64_t s = 0; s < n; ++s) sc[s] += qj * kr[s];
  }
  for (int64_t s = 0; s < n; ++s) sc[s] *= scale;
  return MaxOf(sc, n);
#endif
}

// sc[s] = exp(sc[s] − mx); returns their sum.
inline float ExpSum(float* sc, int64_t n, float mx) {
#if defined(__AVX512F__)
  const __m512 vmx = _mm512_set1_ps(mx);
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t s = 0; s < n; s += 16) {
    const __mmask16 m = Lanes(n - s);
    const __m512 e = FastExp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sc + s), vmx));
    _mm512_mask_storeu_ps(sc + s, m, e);
    vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
  }
  return _mm512_reduce_add_ps(vsum);
#else
  for (int64_t s = 0; s < n; ++s) sc[s] = FastExp(sc[s] - mx);
  float acc[16] = {0};
  int64_t s = 0;
  for (; s + 16 <= n; s += 16)
    for (int u = 0; u < 16; ++u) acc[u] += sc[s + u];
  float sum = 0;
  for (; s < n; ++s) sum += sc[s];
  for (int u = 0; u < 16; ++u) sum += acc[u];
  return sum;
#endif
}

// o[j] = inv · Σ_s p[s] v[j·ld + s] for j < hd.
inline void WeightedSums(const float* p, const float* v, int64_t ld, int64_t hd, int64_t n, float inv, float* o) {
  int64_t j = 0;
#if defined(__AVX512F__)
  for (; j + 4 <= hd; j += 4) {
    const float* v0 = v + j * ld;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int64_t s = 0; s < n; s += 16) {
      const __mmask16 m = Lanes(n - s);
      const __m512 pv = _mm512_maskz_loadu_ps(m, p + s);
      a0 = _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(m, v0 + s), a0);
      a1 = _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(m, v0 + ld + s), a1);
      a2 = _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(m, v0 + 2 * ld + s), a2);
      a3 = _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(m, v0 + 3 * ld + s), a3);
    }
    o[j] = _mm512_reduce_add_ps(a0) * inv;
    o[j + 1] = _mm512_reduce_add_ps(a1) * inv;
    o[j + 2] = _mm512_reduce_add_ps(a2) * inv;
    o[j + 3] = _mm512_reduce_add_ps(a3) * inv;
  }
#endif
  for (; j < hd; ++j) o[j] = Dot(p, v + j * ld, n) * inv;
}

#if defined(__AVX512F__)
// Two queries that share a key/value head (grouped-query attention): the
// same arithmetic as Scores and WeightedSums on each query, bit for bit, with
// every key and value block loaded once for both.
inline void ScoresPair(const float* q0, const float* q1, const float* k, int64_t ld, int64_t hd, int64_t n, float scale,
                       float* sc0, float* sc1, float* max0, float* max1) {
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
  for (int64_t s = 0; s < n; s += 16) {
    const __mmask16 m = Lanes(n - s);
    const float* kr = k + s;
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    for (int64_t j = 0; j < hd; ++j) {
      const __m512 kv = _mm512_maskz_loadu_ps(m, kr + j * ld);
      b0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[j]), kv, b0);
      b1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[j]), kv, b1);
    }
    b0 = _mm512_mul_ps(b0, vscale);
    b1 = _mm512_mul_ps(b1, vscale);
    _mm512_mask_storeu_ps(sc0 + s, m, b0);
    _mm512_mask_storeu_ps(sc1 + s, m, b1);
    m0 = _mm512_mask_max_ps(m0, m, m0, b0);
    m1 = _mm512_mask_max_ps(m1, m, m1, b1);
  }
  *max0 = _mm512_reduce_max_ps(m0);
  *max1 = _mm512_reduce_max_ps(m1);
}

inline void WeightedSumsPair(const float* p0, const float* p1, const float* v, int64_t ld, int64_t hd, int64_t n,
                             float inv0, float inv1, float* o0, float* o1) {
  int64_t j = 0;
  for (; j + 4 <= hd; j += 4) {
    const float* v0 = v + j * ld;
    __m512 a[8];
    for (int u = 0; u < 8; ++u) a[u] = _mm512_setzero_ps();
    for (int64_t s = 0; s < n; s += 16) {
      const __mmask16 m = Lanes(n - s);
      const __m512 w0 = _mm512_maskz_loadu_ps(m, p0 + s), w1 = _mm512_maskz_loadu_ps(m, p1 + s);
      for (int u = 0; u < 4; ++u) {
        const __m512 vv = _mm512_maskz_loadu_ps(m, v0 + u * ld + s);
        a[u] = _mm512_fmadd_ps(w0, vv, a[u]);
        a[4 + u] = _mm512_fmadd_ps(w1, vv, a[4 + u]);
      }
    }
    for (int u = 0; u < 4; ++u) {
      o0[j + u] = _mm512_reduce_add_ps(a[u]) * inv0;
      o1[j + u] = _mm512_reduce_add_ps(a[4 + u]) * inv1;
    }
  }
  for (; j < hd; ++j) {
    o0[j] = Dot(p0, v + j * ld, n) * inv0;
    o1[j] = Dot(p1, v + j * ld, n) * inv1;
  }
}
#endif

// Causal grouped-query attention: q and out are [B, T, H, hd]; query t of
// sequence b sits at position pos0 + t and sees keys s ≤ pos0 + t (within the
// window when one is set); query head h reads key/value head h / (H / KV).
// Keys and values are used transposed ([hd, S] per sequence and head: row-major
// ones are transposed once per call), so that scores and weighted sums run
// along the keys, vectorised for any head width (hd = 8 included).
void Attend(const float* q, const KvView& kv, float* out, const AttnShape& a) {
  const int64_t rep = a.H / a.KV, S = a.pos0 + a.T, hd = a.hd;
  at::parallel_for(0, a.B * a.KV, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scratch(kv.transposed ? 0 : static_cast<size_t>(2 * hd * S)), p(static_cast<size_t>(2 * S));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / a.KV, g = i % a.KV;
      const float* kb = kv.k + b * kv.b_stride + g * kv.h_stride;
      const float* vb = kv.v + b * kv.b_stride + g * kv.h_stride;
      const float *kt = kb, *vt = vb;
      int64_t ld = kv.s_stride;
      if (!kv.transposed) {
        // Keys the earliest query can see onwards.
        const int64_t first = a.window > 0 ? std::max<int64_t>(0, a.pos0 - a.window + 1) : 0;
        float *ks = scratch.data(), *vs = ks + hd * S;
        for (int64_t s = first; s < S; ++s)
          for (int64_t j = 0; j < hd; ++j) {
            ks[j * S + s] = kb[s * kv.s_stride + j];
            vs[j * S + s] = vb[s * kv.s_stride + j];
          }
        kt = ks;
        vt = vs;
        ld = S;
      }
      for (int64_t t = 0; t < a.T; ++t) {
        const int64_t pos = a.pos0 + t;
        const int64_t s0 = a.window > 0 ? std::max<int64_t>(0, pos - a.window + 1) : 0, n = pos - s0 + 1;
        int64_t r = 0;
#if defined(__AVX512F__)
        if (a.softcap <= 0)
          for (; r + 2 <= rep; r += 2) {
            const int64_t h = g * rep + r;
            const float* q0 = q + ((b * a.T + t) * a.H + h) * hd;
            float* o0 = out + ((b * a.T + t) * a.H + h) * hd;
            float *sc0 = p.data(), *sc1 = sc0 + S, mx0, mx1;
            ScoresPair(q0, q0 + hd, kt + s0, ld, hd, n, a.scale, sc0, sc1, &mx0, &mx1);
            const float inv0 = 1.0f / ExpSum(sc0, n, mx0), inv1 = 1.0f / ExpSum(sc1, n, mx1);
            WeightedSumsPair(sc0, sc1, vt + s0, ld, hd, n, inv0, inv1, o0, o0 + hd);
          }
#endif
        for (; r < rep; ++r) {
          const int64_t h = g * rep + r;
          const float* qv = q + ((b * a.T + t) * a.H + h) * hd;
          float* sc = p.data();
          const float smax = Scores(qv, kt + s0, ld, hd, n, a.scale, sc);
          if (a.softcap > 0)
            for (int64_t s = 0; s < n; ++s) sc[s] = std::tanh(sc[s] / a.softcap) * a.softcap;
          const float inv = 1.0f / ExpSum(sc, n, a.softcap > 0 ? MaxOf(sc, n) : smax);
          WeightedSums(sc, vt + s0, ld, hd, n, inv, out + ((b * a.T + t) * a.H + h) * hd);
        }
      }
    }
  });
}

// g = act(g) · u, act SiLU or tanh-GELU.
void GatedActivation(float* g, const float* u, int64_t n, bool gelu) {
  at::parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) {
    if (gelu) {
      const float c = std::sqrt(2.0f / static_cast<float>(M_PI));
      for (int64_t i = i0; i < i1; ++i) {
        const float x = g[i];
        g[i] = 0.5f * x * (1.0f + std::tanh(c * (x + 0.044715f * x * x * x))) * u[i];
      }
    } else {
      for (int64_t i = i0; i < i1; ++i) {
        const float x = g[i];
        g[i] = x / (1.0f + FastExp(-x)) * u[i];
      }
    }
  });
}

void AddInPlace(float* x, const float* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += a[i];
}

// A per-thread workspace, grown when needed and reused by every call on the
// thread (a nested call, e.g. from a hook, gets its own).
class Workspace {
 public:
  float* Get(int64_t floats) {
    if (floats > cap_) {
      buf_.reset(new float[static_cast<size_t>(floats)]);
      cap_ = floats;
    }
    return buf_.get();
  }

 private:
  std::unique_ptr<float[]> buf_;
  int64_t cap_ = 0;
};

thread_local Workspace tls_workspace;
thread_local bool tls_workspace_busy = false;

at::Tensor Blob(float* p, at::IntArrayRef sizes) { return at::from_blob(p, sizes, at::kFloat); }

at::Tensor AsFloat(const at::Tensor& t) { return !t.defined() || t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

// out [n, w.size(0)] = in [n, k] · wᵀ (+ bias): the calls at::linear makes.
void Gemm(const at::Tensor& in, const at::Tensor& w, const at::Tensor& bias, float* out) {
  at::Tensor o = Blob(out, {in.size(0), w.size(0)});
  if (bias.defined()) {
    at::addmm_out(o, AsFloat(bias), in, AsFloat(w).t());
  } else {
    at::mm_out(o, in, AsFloat(w).t());
  }
}

// The calling thread's workspace while a forward pass runs; a nested pass
// (a hook that runs the model) gets one of its own.
class WorkspaceLease {
 public:
  WorkspaceLease() : nested_(tls_workspace_busy) { tls_workspace_busy = true; }
  ~WorkspaceLease() {
    if (!nested_) tls_workspace_busy = false;
  }
  WorkspaceLease(const WorkspaceLease&) = delete;
  WorkspaceLease& operator=(const WorkspaceLease&) = delete;
  float* Get(int64_t floats) { return (nested_ ? local_ : tls_workspace).Get(floats); }

 private:
  const bool nested_;
  Workspace local_;
};

// Runs the hooks at (layer, point) on the [B, T, d] activation in buf. Hooks
// get a tensor of their own (they may keep it); what they leave in it is
// copied back into the workspace.
void RunHooks(const std::vector<Hook>& hooks, int64_t layer, HookPoint point, float* buf, int64_t B, int64_t T,
              int64_t d) {
  at::Tensor t;
  for (const Hook& hk : hooks)
    if (hk.point == point && (point == HookPoint::kFinalNorm || hk.layer == layer)) {
      if (!t.defined()) t = Blob(buf, {B, T, d}).clone();
      hk.fn(t);
      TORCH_CHECK(t.sizes() == at::IntArrayRef({B, T, d}), "a hook changed the activation's shape");
    }
  if (t.defined()) Blob(buf, {B, T, d}).copy_(t);
}

// Appends the T new keys and values of layer l ([B·T, KV·hd] rows) to the
// cache (layout [B, KV, hd, capacity]) at position pos0; returns the view
// attention reads them through.
KvView AppendToCache(KvCache* cache, int64_t l, const float* k, const float* v, int64_t B, int64_t T, int64_t KV,
                     int64_t hd, int64_t pos0) {
  float* ck = cache->k[l].data_ptr<float>();
  float* cv = cache->v[l].data_ptr<float>();
  const int64_t cap = cache->capacity();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < KV; ++g)
      for (int64_t j = 0; j < hd; ++j) {
        float* dk = ck + ((b * KV + g) * hd + j) * cap + pos0;
        float* dv = cv + ((b * KV + g) * hd + j) * cap + pos0;
        for (int64_t t = 0; t < T; ++t) {
          dk[t] = k[((b * T + t) * KV + g) * hd + j];
          dv[t] = v[((b * T + t) * KV + g) * hd + j];
        }
      }
  return KvView{ck, cv, KV * hd * cap, hd * cap, cap, true};
}

}  // namespace

bool Transformer::CanUseFused(const KvCache* cache, const ForwardOptions& opts) const {
  if (opts.reference || cfg_.arch != Arch::kLlama || cfg_.compute_dtype != at::kFloat) return false;
  if (!w_.tok_emb.device().is_cpu()) return false;
  for (const BlockWeights& b : w_.blocks)
    if (b.post_attn_norm.defined() || b.post_ffn_norm.defined()) return false;
  if (cache != nullptr)
    for (size_t l = 0; l < cache->k.size(); ++l)
      if (cache->k[l].scalar_type() != at::kFloat || cache->v[l].scalar_type() != at::kFloat ||
          !cache->k[l].is_contiguous() || !cache->v[l].is_contiguous() || !cache->k[l].device().is_cpu())
        return false;
  return true;
}

at::Tensor Transformer::ForwardFused(const at::Tensor& tokens, KvCache* cache, const ForwardOptions& opts) const {
  const int64_t B = tokens.size(0), T = tokens.size(1), N = B * T;
  const int64_t d = cfg_.dim, H = cfg_.n_heads, KV = cfg_.n_kv_heads, hd = cfg_.head_dim(), hid = cfg_.hidden_dim;
  const int64_t qd = H * hd, kvd = KV * hd;
  const int64_t pos0 = cache ? cache->len : 0;

  // Workspace: x, h, a [N, d]; q, att [N, qd]; k, v [N, kvd]; g, u [N, hid].
  const int64_t floats = N * (3 * d + 2 * qd + 2 * kvd + 2 * hid);
  WorkspaceLease ws;
  float* base = ws.Get(floats);
  float *x = base, *h = x + N * d, *a = h + N * d, *q = a + N * d, *att = q + N * qd, *k = att + N * qd,
        *v = k + N * kvd, *g = v + N * kvd, *u = g + N * hid;

  auto run_hooks = [&](int64_t layer, HookPoint point, float* buf) {
    RunHooks(opts.hooks, layer, point, buf, B, T, d);
  };

  {
    at::Tensor e = at::embedding(w_.tok_emb, tokens.to(w_.tok_emb.device(), at::kLong)).to(at::kFloat);
    if (cfg_.embed_scale > 0) e = e * at::scalar_tensor(cfg_.embed_scale, e.options());
    Blob(x, {B, T, d}).copy_(e);
  }
  run_hooks(-1, HookPoint::kResidPost, x);

  const bool long_rope = rope_cos_long_.defined() && pos0 + T > cfg_.rope_scaling.original_max_position;
  const float* cos_t = (long_rope ? rope_cos_long_ : rope_cos_).data_ptr<float>();
  const float* sin_t = (long_rope ? rope_sin_long_ : rope_sin_).data_ptr<float>();
  const bool interleaved = cfg_.rope == RopeStyle::kInterleaved;
  const float scale =
      static_cast<float>(cfg_.attn_scale > 0 ? cfg_.attn_scale : 1.0 / std::sqrt(static_cast<double>(hd)));
  at::Tensor h2 = Blob(h, {N, d}), att2 = Blob(att, {N, qd}), g2 = Blob(g, {N, hid});

  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    const BlockWeights& bw = w_.blocks[l];
    RmsNormRows(x, AsFloat(bw.attn_norm).data_ptr<float>(), h, N, d, cfg_.norm_eps);
    Gemm(h2, bw.wq, bw.bq, q);
    Gemm(h2, bw.wk, bw.bk, k);
    Gemm(h2, bw.wv, bw.bv, v);
    RopeRows(q, N, T, H, hd, pos0, cos_t, sin_t, interleaved);
    RopeRows(k, N, T, KV, hd, pos0, cos_t, sin_t, interleaved);
    KvView kv{k, v, T * kvd, hd, kvd, false};
    if (cache != nullptr) kv = AppendToCache(cache, l, k, v, B, T, KV, hd, pos0);
    Attend(q, kv, att, AttnShape{B, T, H, KV, hd, pos0, cfg_.window(l), scale, static_cast<float>(cfg_.attn_softcap)});
    Gemm(att2, bw.wo, bw.bo, a);
    AddInPlace(x, a, N * d);
    RmsNormRows(x, AsFloat(bw.ffn_norm).data_ptr<float>(), h, N, d, cfg_.norm_eps);
    Gemm(h2, bw.w1, at::Tensor(), g);
    Gemm(h2, bw.w3, at::Tensor(), u);
    GatedActivation(g, u, N * hid, cfg_.gelu_mlp);
    Gemm(g2, bw.w2, at::Tensor(), a);
    run_hooks(l, HookPoint::kMlpOut, a);
    AddInPlace(x, a, N * d);
    run_hooks(l, HookPoint::kResidPost, x);
    if (opts.stop_after_layer == l) {
      if (cache) cache->len += T;
      return at::Tensor();
    }
  }
  RmsNormRows(x, AsFloat(w_.final_norm).data_ptr<float>(), h, N, d, cfg_.norm_eps);
  run_hooks(-1, HookPoint::kFinalNorm, h);
  if (cache) cache->len += T;
  return LmHead(Blob(h, {B, T, d}));
}

}  // namespace sae
