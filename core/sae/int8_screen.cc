#include "core/sae/int8_screen.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>

#include "core/sae/sae_step.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace sae {
namespace {

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// int32 accumulation of d products of |q| <= 127 is exact below this.
constexpr int64_t kMaxD = 133000;

// Rows of the s32 result per block: at most 128 MiB of it.
int64_t AutoBlockRows(int64_t B, int64_t n) {
  int64_t rows = static_cast<int64_t>((size_t{128} << 20) / (static_cast<size_t>(n) * 4));
  rows = std::max<int64_t>(rows, 64);
  rows = std::min(rows, B);
  const int64_t blocks = (B + rows - 1) / rows;
  return (B + blocks - 1) / blocks;  // equal blocks: one oneDNN primitive
}

inline float RoundUp(double v) { return static_cast<float>(v * (1 + 1e-6)); }

// "a is better than b": larger value, then lower index.
inline bool Better(float va, int32_t ia, float vb, int32_t ib) { return va > vb || (va == vb && ia < ib); }

float AbsMax(const float* v, int64_t d) {
  float mx = 0;
#pragma omp simd reduction(max : mx)
  for (int64_t i = 0; i < d; ++i) mx = std::max(mx, std::fabs(v[i]));
  return mx;
}

// q = round(v·inv) (|q| <= 127), with Σv², Σ(v − s·q)² and Σ(s·q)² in double.
void Quantize(const float* v, int64_t d, float inv, float s, int8_t* q, double* sum_v2, double* sum_e2,
              double* sum_q2 = nullptr) {
  double v2 = 0, e2 = 0, q2 = 0;
#pragma omp simd reduction(+ : v2, e2, q2)
  for (int64_t i = 0; i < d; ++i) {
    const float r = std::clamp(std::nearbyint(v[i] * inv), -127.0f, 127.0f);
    q[i] = static_cast<int8_t>(static_cast<int>(r));
    const double xq = static_cast<double>(s) * static_cast<double>(r);
    const double e = static_cast<double>(v[i]) - xq;
    v2 += static_cast<double>(v[i]) * v[i];
    e2 += e * e;
    q2 += xq * xq;
  }
  *sum_v2 = v2;
  *sum_e2 = e2;
  if (sum_q2 != nullptr) *sum_q2 = q2;
}

// The bound u_j = ẑ_j + ε_j(x) for j in [0, cnt) from the int32 products:
// (s_x·s_j)·acc_j + (b_j + 2ρ|b_j|) + ‖w_j‖·α + ‖w_j − w̃_j‖·β, evaluated
// with the same fused operations in every path (the vector and scalar
// versions give the same bits).
struct BoundTerms {
  const float *sw, *cb, *wn, *we;
  float s, al, be;
};
inline float BoundAt(const BoundTerms& t, const int32_t* a, int64_t j) {
  float r = std::fma(t.s * t.sw[j], static_cast<float>(a[j]), t.cb[j]);
  r = std::fma(t.wn[j], t.al, r);
  return std::fma(t.we[j], t.be, r);
}
// u[lo, hi) into out (may be null) and their maximum.
inline float Bounds(const BoundTerms& t, const int32_t* a, int64_t lo, int64_t hi, float* out) {
  float mx = -std::numeric_limits<float>::infinity();
  int64_t j = lo;
#if defined(__AVX512F__)
  const __m512 s = _mm512_set1_ps(t.s), al = _mm512_set1_ps(t.al), be = _mm512_set1_ps(t.be);
  __m512 vmx = _mm512_set1_ps(mx);
  for (; j < hi; j += 16) {
    const __mmask16 m = hi - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (hi - j)) - 1);
    const __m512 av = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, a + j));
    __m512 r =
        _mm512_fmadd_ps(_mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, t.sw + j)), av, _mm512_maskz_loadu_ps(m, t.cb + j));
    r = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, t.wn + j), al, r);
    r = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, t.we + j), be, r);
    vmx = _mm512_mask_max_ps(vmx, m, vmx, r);
    if (out != nullptr) _mm512_mask_storeu_ps(out + (j - lo), m, r);
  }
  return _mm512_reduce_max_ps(vmx);
#else
  for (; j < hi; ++j) {
    const float u = BoundAt(t, a, j);
    mx = u > mx ? u : mx;
    if (out != nullptr) out[j - lo] = u;
  }
  return mx;
#endif
}
}  // namespace

__attribute__((noinline)) float ExactPreactivation(const float* x, const float* w, float b, int64_t d) {
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= d; i += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(w + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(w + i + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(w + i + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(w + i + 48), a3);
  }
  for (; i + 16 <= d; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(w + i), a0);
  if (i < d) {
    const __mmask16 m = static_cast<__mmask16>((1u << (d - i)) - 1);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, w + i), a1);
  }
  const __m512 s = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
  return _mm512_reduce_add_ps(s) + b;
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= d; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(w + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(w + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(w + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(w + i + 24), a3);
  }
  for (; i + 8 <= d; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(w + i), a0);
  const __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  float t = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (; i < d; ++i) t = std::fma(x[i], w[i], t);
  return t + b;
#else
  float t = 0;
  for (int64_t i = 0; i < d; ++i) t = std::fma(x[i], w[i], t);
  return t + b;
#endif
}

absl::Status Int8ScreenAvailable() {
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  const bool vnni = isa == dnnl::cpu_isa::avx512_core_vnni || isa == dnnl::cpu_isa::avx2_vnni ||
                    isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
  if (!vnni)
    return absl::FailedPreconditionError(
        "train.encoder: int8_screened needs a CPU with VNNI (AVX512-VNNI or AVX-VNNI): without it "
        "oneDNN's int8 products may saturate or be rescaled, and the certification needs exact "
        "integer dot products; use train.encoder: dense");
  return absl::OkStatus();
}

struct Int8Screen::Impl {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  int64_t R = 0, d = 0, n = 0;
  dnnl::matmul prim;
  dnnl::memory::desc w_desc;  // the primitive's weights layout
  dnnl::memory w_mem;         // quantised W in that layout
  std::vector<int8_t> qw;     // quantised W, n×d (= d×n "ba")
  std::vector<float> sw, wn, we, cb;
  std::vector<int8_t> qx;    // R×d
  std::vector<int32_t> acc;  // R×n int32 products
  std::vector<float> sx, alpha, beta, thr, max_excl;
  std::vector<std::vector<int32_t>> cand_i;
  std::vector<std::vector<float>> cand_v;
  std::vector<int64_t> offs;
  std::vector<std::pair<int32_t, int32_t>> pairs;  // (row, slot) sorted by latent

  absl::Status Prepare(int64_t rows, int64_t dd, int64_t nn) {
    if (rows == R && dd == d && nn == n) return absl::OkStatus();
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    try {
      dnnl::memory::desc src_md({rows, dd}, dt::s8, tag::ab);
      dnnl::memory::desc w_any({dd, nn}, dt::s8, tag::any);
      dnnl::memory::desc dst_md({rows, nn}, dt::s32, tag::ab);
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, w_any, dst_md), eng);
      prim = dnnl::matmul(pd);
      w_desc = pd.weights_desc();
      w_mem = dnnl::memory(w_desc, eng);
    } catch (const dnnl::error& e) {
      return absl::InternalError(
          absl::StrCat("train.encoder: int8_screened: oneDNN int8 matmul ", rows, "x", dd, "x", nn, ": ", e.what()));
    }
    R = rows;
    d = dd;
    n = nn;
    qw.resize(static_cast<size_t>(n * d));
    sw.resize(n);
    wn.resize(n);
    we.resize(n);
    cb.resize(n);
    qx.assign(static_cast<size_t>(R * d), 0);
    acc.resize(static_cast<size_t>(R * n));
    sx.resize(R);
    alpha.resize(R);
    beta.resize(R);
    thr.resize(R);
    max_excl.resize(R);
    cand_i.resize(R);
    cand_v.resize(R);
    return absl::OkStatus();
  }
};

Int8Screen::Int8Screen() : impl_(std::make_unique<Impl>()) {}
Int8Screen::~Int8Screen() = default;

absl::StatusOr<std::unique_ptr<Int8Screen>> Int8Screen::Create(int64_t candidates, bool adaptive) {
  SAE_RETURN_IF_ERROR(Int8ScreenAvailable());
  std::unique_ptr<Int8Screen> s(new Int8Screen());
  s->c_ = candidates;
  s->adaptive_ = adaptive;
  return s;
}

namespace {

// The steps of Int8Screen::TopK, on the screen's buffers.

// 1. The encoder rows, quantised per row (re-done every step: W changes),
//    reordered into the int8 matmul's weights layout.
absl::Status QuantizeEncoder(Int8Screen::Impl& m, const float* W, const float* bias, float rho) {
  const int64_t d = m.d, n = m.n;
  at::parallel_for(0, n, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      const float* w = W + j * d;
      int8_t* q = m.qw.data() + j * d;
      const float mx = AbsMax(w, d);
      double wn2 = 0, we2 = 0;
      const float s = mx / 127.0f;
      if (mx == 0) {
        std::memset(q, 0, static_cast<size_t>(d));
      } else {
        Quantize(w, d, 127.0f / mx, s, q, &wn2, &we2);
      }
      m.sw[j] = mx == 0 ? 0.0f : s;
      m.wn[j] = RoundUp(std::sqrt(wn2));
      m.we[j] = RoundUp(std::sqrt(we2));
      m.cb[j] = bias[j] + 2 * rho * std::fabs(bias[j]);
    }
  });
  try {
    dnnl::memory w_user({{d, n}, dnnl::memory::data_type::s8, dnnl::memory::format_tag::ba}, m.eng, m.qw.data());
    dnnl::reorder(w_user, m.w_mem).execute(m.strm, w_user, m.w_mem);
    m.strm.wait();
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("int8_screened: oneDNN weights reorder: ", e.what()));
  }
  return absl::OkStatus();
}

// 2. The block's input rows (r0 .. r0+rows-1), quantised per row, with the
//    row's bound terms; the rest of the R-row buffer zeroed.
void QuantizeInputBlock(Int8Screen::Impl& m, const float* XC, int64_t r0, int64_t rows, float rho) {
  const int64_t d = m.d;
  at::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* x = XC + (r0 + r) * d;
      int8_t* q = m.qx.data() + r * d;
      const float mx = AbsMax(x, d);
      const float s = mx / 127.0f;
      double ex2 = 0, nq2 = 0, nx2 = 0;
      if (mx == 0) {
        std::memset(q, 0, static_cast<size_t>(d));
      } else {
        Quantize(x, d, 127.0f / mx, s, q, &nx2, &ex2, &nq2);
      }
      m.sx[r] = mx == 0 ? 0.0f : s;
      const float ex = RoundUp(std::sqrt(ex2)), nq = RoundUp(std::sqrt(nq2)), nx = RoundUp(std::sqrt(nx2));
      m.alpha[r] = ex + rho * (nx + nq);
      m.beta[r] = nq + rho * (nx + nq);
    }
  });
  if (rows < m.R) std::memset(m.qx.data() + rows * d, 0, static_cast<size_t>((m.R - rows) * d));
}

// 3. ẑ in int32 (exact integer dot products).
absl::Status Int32Products(Int8Screen::Impl& m) {
  try {
    dnnl::memory src({{m.R, m.d}, dnnl::memory::data_type::s8, dnnl::memory::format_tag::ab}, m.eng, m.qx.data());
    dnnl::memory dst({{m.R, m.n}, dnnl::memory::data_type::s32, dnnl::memory::format_tag::ab}, m.eng, m.acc.data());
    m.prim.execute(m.strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, m.w_mem}, {DNNL_ARG_DST, dst}});
    m.strm.wait();
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("int8_screened: oneDNN int8 matmul: ", e.what()));
  }
  return absl::OkStatus();
}

// 4. Epilogue: the bounds u_j (never stored: recomputed from the int32
//    products where needed) and the candidates of each row: every latent
//    with u >= thr, thr the C-th largest maximum over blocks of G
//    latents (so at least C candidates); max_excl = the largest u
//    outside them.
void SelectCandidates(Int8Screen::Impl& m, int64_t rows, int64_t C) {
  const int64_t n = m.n;
  int64_t G = 16;
  while (G < 256 && n / (2 * G) >= 2 * C) G *= 2;
  const int64_t nb = (n + G - 1) / G;
  at::parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> bmax(static_cast<size_t>(nb)), tmp, ub(static_cast<size_t>(G));
    for (int64_t r = lo; r < hi; ++r) {
      const int32_t* a = m.acc.data() + r * n;
      const BoundTerms bt{m.sw.data(), m.cb.data(), m.wn.data(), m.we.data(), m.sx[r], m.alpha[r], m.beta[r]};
      std::vector<int32_t>& ci = m.cand_i[r];
      ci.clear();
      float thr = -std::numeric_limits<float>::infinity();
      float mex = -std::numeric_limits<float>::infinity();
      if (nb <= C) {
        for (int64_t j = 0; j < n; ++j) ci.push_back(static_cast<int32_t>(j));
      } else {
        for (int64_t b = 0; b < nb; ++b) bmax[b] = Bounds(bt, a, b * G, std::min(n, (b + 1) * G), nullptr);
        tmp.assign(bmax.begin(), bmax.end());
        std::nth_element(tmp.begin(), tmp.begin() + (nb - C), tmp.end());
        thr = tmp[nb - C];
        for (int64_t b = 0; b < nb; ++b) {
          const float bv = bmax[b];
          if (bv < thr) {
            mex = bv > mex ? bv : mex;
            continue;
          }
          const int64_t e = std::min(n, (b + 1) * G);
          Bounds(bt, a, b * G, e, ub.data());
          for (int64_t j = b * G; j < e; ++j) {
            const float u = ub[j - b * G];
            if (u >= thr)
              ci.push_back(static_cast<int32_t>(j));
            else
              mex = u > mex ? u : mex;
          }
        }
      }
      m.thr[r] = thr;
      m.max_excl[r] = mex;
      m.cand_v[r].resize(ci.size());
    }
  });
}

// 5. Exact fp32 values of the candidates, latent by latent (each encoder
//    row read once per block; this block's input rows stay in cache).
//    Returns the number of candidates rescored.
int64_t RescoreCandidates(Int8Screen::Impl& m, const float* XC, int64_t r0, int64_t rows, const float* W,
                          const float* bias) {
  const int64_t d = m.d, n = m.n;
  m.offs.assign(static_cast<size_t>(n) + 1, 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int32_t j : m.cand_i[r]) ++m.offs[j + 1];
  for (int64_t j = 0; j < n; ++j) m.offs[j + 1] += m.offs[j];
  m.pairs.resize(static_cast<size_t>(m.offs[n]));
  {
    std::vector<int64_t> fill(m.offs.begin(), m.offs.end() - 1);
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<int32_t>& ci = m.cand_i[r];
      for (size_t s = 0; s < ci.size(); ++s)
        m.pairs[fill[ci[s]]++] = {static_cast<int32_t>(r), static_cast<int32_t>(s)};
    }
  }
  const int64_t parts = std::max<int64_t>(1, 4 * at::get_num_threads());
  at::parallel_for(0, parts, 1, [&](int64_t plo, int64_t phi) {
    for (int64_t part = plo; part < phi; ++part) {
      // Latent ranges of about equal pair counts.
      const int64_t want_lo = m.offs[n] * part / parts, want_hi = m.offs[n] * (part + 1) / parts;
      const int64_t jlo = std::upper_bound(m.offs.begin(), m.offs.end(), want_lo) - m.offs.begin() - 1;
      const int64_t jhi =
          part + 1 == parts ? n : std::upper_bound(m.offs.begin(), m.offs.end(), want_hi) - m.offs.begin() - 1;
      for (int64_t j = jlo; j < jhi; ++j) {
        const float* w = W + j * d;
        for (int64_t tq = m.offs[j]; tq < m.offs[j + 1]; ++tq) {
          const auto [r, s] = m.pairs[tq];
          m.cand_v[r][s] = ExactPreactivation(XC + (r0 + r) * d, w, bias[j], d);
        }
      }
    }
  });
  return m.offs[n];
}

// 6. Per row: the top-k among the candidates, the certificate, and when
//    it fails, every latent whose bound reaches τ rescored as well. Writes
//    rows r0.. of IDX/VAL; adds the uncertified rows to *fallback and the
//    latents rescored for them to *rescored.
void CertifiedTopK(Int8Screen::Impl& m, const float* XC, int64_t r0, int64_t rows, const float* W, const float* bias,
                   int64_t k, int64_t* IDX, float* VAL, int64_t* fallback, int64_t* rescored) {
  const int64_t d = m.d, n = m.n;
  std::vector<int64_t> fb_rows(static_cast<size_t>(rows), 0), extra(static_cast<size_t>(rows), 0);
  at::parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
    std::vector<int32_t> order;
    std::vector<float> urow;
    for (int64_t r = lo; r < hi; ++r) {
      std::vector<int32_t>& ci = m.cand_i[r];
      std::vector<float>& cv = m.cand_v[r];
      auto topk = [&]() {
        order.resize(ci.size());
        for (size_t s = 0; s < ci.size(); ++s) order[s] = static_cast<int32_t>(s);
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [&](int32_t a, int32_t b) { return Better(cv[a], ci[a], cv[b], ci[b]); });
        return cv[order[k - 1]];
      };
      float tau = topk();
      const float mex = m.max_excl[r];
      const bool certified = mex < tau || (tau <= 0 && mex <= 0);
      if (!certified) {
        fb_rows[r] = 1;
        const BoundTerms bt{m.sw.data(), m.cb.data(), m.wn.data(), m.we.data(), m.sx[r], m.alpha[r], m.beta[r]};
        urow.resize(static_cast<size_t>(n));
        Bounds(bt, m.acc.data() + r * n, 0, n, urow.data());
        const float* u = urow.data();
        const float lim = m.thr[r];
        const float* x = XC + (r0 + r) * d;
        const size_t before = ci.size();
        for (int64_t j = 0; j < n; ++j) {
          const float uj = u[j];
          if (uj >= lim) continue;  // already a candidate
          if (tau > 0 ? uj >= tau : uj > 0) {
            ci.push_back(static_cast<int32_t>(j));
            cv.push_back(ExactPreactivation(x, W + j * d, bias[j], d));
          }
        }
        extra[r] = static_cast<int64_t>(ci.size() - before);
        tau = topk();  // now exact: every latent left out has u < the old τ <= the new one
      }
      const int64_t b = r0 + r;
      for (int64_t t2 = 0; t2 < k; ++t2) {
        IDX[b * k + t2] = ci[order[t2]];
        VAL[b * k + t2] = cv[order[t2]];
      }
    }
  });
  for (int64_t r = 0; r < rows; ++r) {
    *fallback += fb_rows[r];
    *rescored += extra[r];
  }
}

}  // namespace

absl::Status Int8Screen::TopK(const SaeParams& p, const at::Tensor& xc_t, int64_t k, int64_t* IDX, float* VAL,
                              std::vector<std::pair<const char*, double>>* phases) {
  if (p.W_enc.scalar_type() != at::kFloat || xc_t.scalar_type() != at::kFloat || !xc_t.is_contiguous())
    return absl::InvalidArgumentError("train.encoder: int8_screened is for float32 parameters on CPU");
  const int64_t B = xc_t.size(0), d = p.d_in(), n = p.latents();
  if (d >= kMaxD)
    return absl::InvalidArgumentError(
        absl::StrCat("train.encoder: int8_screened needs d_in < ", kMaxD, " (exact int32 sums); d_in is ", d));
  if (k < 1 || k > n) return absl::InvalidArgumentError("int8_screened: k out of range");
  if (c_ <= 0) c_ = 8 * k;
  c_ = std::clamp<int64_t>(c_, k + 1, n);
  const int64_t C = c_;
  const int64_t R = block_rows_ > 0 ? std::min(block_rows_, B) : AutoBlockRows(B, n);
  Impl& m = *impl_;
  SAE_RETURN_IF_ERROR(m.Prepare(R, d, n));
  const float* XC = xc_t.data_ptr<float>();
  at::Tensor W_t = p.W_enc.contiguous();
  at::Tensor b_t = p.b_enc.contiguous();
  const float* W = W_t.data_ptr<float>();
  const float* bias = b_t.data_ptr<float>();
  // fp32 rounding of the exact dot product (recursive summation bound
  // d·2⁻²⁴ on Σ|w_i x_i| <= ‖w‖‖x‖) and of computing the bound itself.
  const float rho = static_cast<float>((static_cast<double>(d) + 64) * std::ldexp(1.0, -24));
  double t = NowSeconds();
  double t_quant = 0, t_gemm = 0, t_select = 0, t_rescore = 0;
  SAE_RETURN_IF_ERROR(QuantizeEncoder(m, W, bias, rho));
  t_quant += NowSeconds() - t;

  int64_t fallback = 0, rescored = 0;
  for (int64_t r0 = 0; r0 < B; r0 += R) {
    const int64_t rows = std::min(R, B - r0);
    t = NowSeconds();
    QuantizeInputBlock(m, XC, r0, rows, rho);
    t_quant += NowSeconds() - t;
    t = NowSeconds();
    SAE_RETURN_IF_ERROR(Int32Products(m));
    t_gemm += NowSeconds() - t;
    t = NowSeconds();
    SelectCandidates(m, rows, C);
    t_select += NowSeconds() - t;
    t = NowSeconds();
    rescored += RescoreCandidates(m, XC, r0, rows, W, bias);
    CertifiedTopK(m, XC, r0, rows, W, bias, k, IDX, VAL, &fallback, &rescored);
    t_rescore += NowSeconds() - t;
  }
  last_.rows = B;
  last_.fallback_rows = fallback;
  last_.candidates = C;
  last_.mean_candidates = static_cast<double>(rescored) / static_cast<double>(std::max<int64_t>(B, 1));
  total_fallback_ += fallback;
  if (adaptive_ && B > 0) {
    const double f = static_cast<double>(fallback) / static_cast<double>(B);
    if (f > 0.05)
      c_ = std::min<int64_t>(n, static_cast<int64_t>(std::ceil(static_cast<double>(C) * 1.3)));
    else if (f < 0.01)
      c_ = std::max<int64_t>(k + 1, static_cast<int64_t>(std::floor(static_cast<double>(C) * 0.9)));
  }
  if (phases != nullptr) {
    phases->emplace_back("screen_quantize", t_quant);
    phases->emplace_back("screen_gemm", t_gemm);
    phases->emplace_back("screen_select", t_select);
    phases->emplace_back("screen_rescore", t_rescore);
  }
  return absl::OkStatus();
}

absl::Status ScreenedEncode(Int8Screen* screen, const SaeParams& p, const at::Tensor& xc, int64_t k,
                            const std::vector<int64_t>& dead, int64_t k_aux, int64_t* idx, float* val, int64_t* aux_idx,
                            float* aux_val, float* zD, std::vector<std::pair<const char*, double>>* phases) {
  SAE_RETURN_IF_ERROR(screen->TopK(p, xc, k, idx, val, phases));
  const int64_t nd = static_cast<int64_t>(dead.size());
  if (nd == 0 || (k_aux == 0 && zD == nullptr)) return absl::OkStatus();
  const double t = NowSeconds();
  const int64_t B = xc.size(0);
  at::Tensor dead_t = at::from_blob(const_cast<int64_t*>(dead.data()), {nd}, at::kLong);
  at::Tensor zd = at::addmm(p.b_enc.index_select(0, dead_t), xc, p.W_enc.index_select(0, dead_t).t());
  const float* Z = zd.data_ptr<float>();
  if (zD != nullptr) std::memcpy(zD, Z, sizeof(float) * static_cast<size_t>(B * nd));
  if (k_aux > 0) {
    at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
      std::vector<int32_t> order(static_cast<size_t>(nd));
      for (int64_t b = lo; b < hi; ++b) {
        const float* z = Z + b * nd;
        for (int64_t t2 = 0; t2 < nd; ++t2) order[t2] = static_cast<int32_t>(t2);
        // dead is ascending: a lower position is a lower latent index.
        std::partial_sort(order.begin(), order.begin() + k_aux, order.end(),
                          [&](int32_t a, int32_t c) { return Better(z[a], a, z[c], c); });
        for (int64_t t2 = 0; t2 < k_aux; ++t2) {
          aux_idx[b * k_aux + t2] = dead[order[t2]];
          aux_val[b * k_aux + t2] = z[order[t2]];
        }
      }
    });
  }
  if (phases != nullptr) phases->emplace_back("screen_dead", NowSeconds() - t);
  return absl::OkStatus();
}

}  // namespace sae
