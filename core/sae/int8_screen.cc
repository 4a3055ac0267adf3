#include "core/sae/int8_screen.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>

#include "core/base/clock.h"
#include "core/sae/sae_step.h"

#if defined(__AVX2__) || defined(__AVX512F__)
// GCC 12 warns inside its own AVX-512 headers (the masked loads' and the
// reductions' "undefined" operands); nothing here reads them.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

namespace sae {
namespace {

// int32 accumulation of d products (q_x + 128)·q_w (at most 255·127 in
// magnitude) cannot overflow below this.
constexpr int64_t kMaxD = 66000;

// The adaptive C aims at this fraction of rows not certified (recomputing
// one costs about one more pass over its bounds, cheaper than a larger C
// for every row).
constexpr double kTargetFallback = 0.03;

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
#if defined(__AVX512F__)
  __m512 mx = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(v + i)));
  if (i < d)
    mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (d - i)) - 1), v + i)));
  return _mm512_reduce_max_ps(mx);
#else
  float mx = 0;
#pragma omp simd reduction(max : mx)
  for (int64_t i = 0; i < d; ++i) mx = std::max(mx, std::fabs(v[i]));
  return mx;
#endif
}

// q = round(v·inv) (|q| <= 127, to nearest even), stored as int8, or as
// q + 128 in uint8 (u8 = true: the input rows, for the u8×s8 products the
// VNNI instructions take natively); Σv², Σ(v − s·q)² and Σ(s·q)² in
// double (upper bounds after RoundUp: the double sums' own rounding is
// ~d·2⁻⁵³ relative, far inside RoundUp's 1e-6) and Σq.
struct QuantSums {
  double v2 = 0, e2 = 0, q2 = 0;
  int64_t q = 0;
};
QuantSums Quantize(const float* v, int64_t d, float inv, float s, uint8_t* out, bool u8) {
  QuantSums r;
#if defined(__AVX512F__)
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512d vs = _mm512_set1_pd(static_cast<double>(s));
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), off = _mm512_set1_epi32(128);
  __m512d v2 = _mm512_setzero_pd(), e2 = _mm512_setzero_pd(), q2 = _mm512_setzero_pd();
  __m512i qs = _mm512_setzero_si512();
  for (int64_t i = 0; i < d; i += 16) {
    const __mmask16 m = d - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (d - i)) - 1);
    const __m512 x = _mm512_maskz_loadu_ps(m, v + i);
    // cvtps_epi32 rounds as MXCSR says (to nearest even), as std::nearbyint.
    const __m512i q = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x, vinv)), lo), hi);
    if (u8)
      _mm_mask_storeu_epi8(out + i, m, _mm512_cvtusepi32_epi8(_mm512_add_epi32(q, off)));
    else
      _mm_mask_storeu_epi8(out + i, m, _mm512_cvtsepi32_epi8(q));
    qs = _mm512_add_epi32(qs, q);  // masked-off lanes are 0
    const __m512 qf = _mm512_cvtepi32_ps(q);
    const __m512d x0 = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    const __m512d x1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    const __m512d q0 = _mm512_mul_pd(vs, _mm512_cvtps_pd(_mm512_castps512_ps256(qf)));
    const __m512d q1 =
        _mm512_mul_pd(vs, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(qf), 1))));
    const __m512d e0 = _mm512_sub_pd(x0, q0), e1 = _mm512_sub_pd(x1, q1);
    v2 = _mm512_fmadd_pd(x1, x1, _mm512_fmadd_pd(x0, x0, v2));
    e2 = _mm512_fmadd_pd(e1, e1, _mm512_fmadd_pd(e0, e0, e2));
    q2 = _mm512_fmadd_pd(q1, q1, _mm512_fmadd_pd(q0, q0, q2));
  }
  r.v2 = _mm512_reduce_add_pd(v2);
  r.e2 = _mm512_reduce_add_pd(e2);
  r.q2 = _mm512_reduce_add_pd(q2);
  r.q = _mm512_reduce_add_epi32(qs);
#else
  double v2 = 0, e2 = 0, q2 = 0;
  int64_t qs = 0;
  for (int64_t i = 0; i < d; ++i) {
    const float f = std::clamp(std::nearbyint(v[i] * inv), -127.0f, 127.0f);
    const int q = static_cast<int>(f);
    out[i] = static_cast<uint8_t>(u8 ? q + 128 : static_cast<int>(static_cast<uint8_t>(static_cast<int8_t>(q))));
    qs += q;
    const double xq = static_cast<double>(s) * static_cast<double>(f);
    const double e = static_cast<double>(v[i]) - xq;
    v2 += static_cast<double>(v[i]) * v[i];
    e2 += e * e;
    q2 += xq * xq;
  }
  r.v2 = v2;
  r.e2 = e2;
  r.q2 = q2;
  r.q = qs;
#endif
  return r;
}

// The bound u_j = ẑ_j + ε_j(x) for every latent j of one row from its
// int32 products a: (s_x·s_j)·a_j + (b_j + 2ρ|b_j|) + ‖w_j‖·α + ‖w_j − w̃_j‖·β.
// The latents are taken in chunks of kChunk = 16 vectors of 16; a block is
// one lane of a chunk (16 latents kChunk/16 apart), so block maxima are
// vertical maxima, no horizontal reductions.
constexpr int64_t kChunk = 256;
constexpr int64_t kBlocksPerChunk = 16;

struct BoundTerms {
  const float *sw, *cb, *wn, *we;  // per latent
  const int32_t* comp;             // per latent: subtracted from the u8×s8 products
};

// For G rows at once (a[g], row terms s[g], al[g], be[g]; the per-latent
// terms read once for all G): u[g] (n values, then -inf up to a multiple
// of kChunk) and bmax[g] (one per block, kBlocksPerChunk per chunk; blocks
// past n are -inf). Every row's values are computed by the same
// instructions whatever G: the same bits.
template <int G>
void RowBounds(const BoundTerms& t, const float* s, const float* al, const float* be, const int32_t* const* a,
               int64_t n, float* const* u, float* const* bmax) {
  const int64_t nc = (n + kChunk - 1) / kChunk;
  const float *sw = t.sw, *cb = t.cb, *wn = t.wn, *we = t.we;
  const int32_t* comp = t.comp;
#if defined(__AVX512F__)
  __m512 vs[G], val[G], vbe[G];
  for (int g = 0; g < G; ++g) {
    vs[g] = _mm512_set1_ps(s[g]);
    val[g] = _mm512_set1_ps(al[g]);
    vbe[g] = _mm512_set1_ps(be[g]);
  }
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t c = 0; c < nc; ++c) {
    const int64_t base = c * kChunk;
    __m512 mx[G];
    for (int g = 0; g < G; ++g) mx[g] = ninf;
    const bool full = base + kChunk <= n;
    for (int64_t j = base; j < base + kChunk; j += 16) {
      const int64_t left = full ? 16 : std::max<int64_t>(0, std::min<int64_t>(16, n - j));
      const __mmask16 m = static_cast<__mmask16>((1u << left) - 1);
      const __m512 vsw = _mm512_maskz_loadu_ps(m, sw + j), vcb = _mm512_maskz_loadu_ps(m, cb + j);
      const __m512 vwn = _mm512_maskz_loadu_ps(m, wn + j), vwe = _mm512_maskz_loadu_ps(m, we + j);
      const __m512i vcomp = _mm512_maskz_loadu_epi32(m, comp + j);
      for (int g = 0; g < G; ++g) {
        const __m512 av = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_maskz_loadu_epi32(m, a[g] + j), vcomp));
        __m512 r = _mm512_fmadd_ps(_mm512_mul_ps(vs[g], vsw), av, vcb);
        r = _mm512_fmadd_ps(vwn, val[g], r);
        r = _mm512_fmadd_ps(vwe, vbe[g], r);
        r = _mm512_mask_mov_ps(ninf, m, r);
        _mm512_storeu_ps(u[g] + j, r);
        mx[g] = _mm512_max_ps(mx[g], r);
      }
    }
    for (int g = 0; g < G; ++g) _mm512_storeu_ps(bmax[g] + c * kBlocksPerChunk, mx[g]);
  }
#else
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int g = 0; g < G; ++g) {
    for (int64_t c = 0; c < nc; ++c) {
      float* bm = bmax[g] + c * kBlocksPerChunk;
      for (int64_t l = 0; l < kBlocksPerChunk; ++l) bm[l] = ninf;
      for (int64_t j = c * kChunk; j < (c + 1) * kChunk; ++j) {
        float r = ninf;
        if (j < n) {
          r = std::fma(s[g] * sw[j], static_cast<float>(a[g][j] - comp[j]), cb[j]);
          r = std::fma(wn[j], al[g], r);
          r = std::fma(we[j], be[g], r);
        }
        u[g][j] = r;
        float& b = bm[j % kBlocksPerChunk];
        b = r > b ? r : b;
      }
    }
  }
#endif
}

// Appends to out every j (ascending within a chunk) with u[j] >= thr, for
// the chunks where some block maximum reaches thr, and returns the largest
// u below thr (over every chunk). out must have room for n + 16 more.
float Above(const float* u, const float* bmax, int64_t n, float thr, int32_t* out, int64_t* count) {
  const int64_t nc = (n + kChunk - 1) / kChunk;
  int64_t cnt = *count;
#if defined(__AVX512F__)
  const __m512 vt = _mm512_set1_ps(thr);
  __m512 mex = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t c = 0; c < nc; ++c) {
    const __m512 bm = _mm512_loadu_ps(bmax + c * kBlocksPerChunk);
    if (_mm512_cmp_ps_mask(bm, vt, _CMP_GE_OQ) == 0) {
      mex = _mm512_max_ps(mex, bm);
      continue;
    }
    for (int64_t j = c * kChunk; j < (c + 1) * kChunk; j += 16) {
      const __m512 uv = _mm512_loadu_ps(u + j);
      const __mmask16 m = _mm512_cmp_ps_mask(uv, vt, _CMP_GE_OQ);
      mex = _mm512_mask_max_ps(mex, static_cast<__mmask16>(~m), mex, uv);
      if (m != 0) {
        _mm512_mask_compressstoreu_epi32(out + cnt, m, _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(j))));
        cnt += __builtin_popcount(m);
      }
    }
  }
  *count = cnt;
  return _mm512_reduce_max_ps(mex);
#else
  float mex = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < nc; ++c) {
    bool any = false;
    for (int64_t l = 0; l < kBlocksPerChunk; ++l) any = any || bmax[c * kBlocksPerChunk + l] >= thr;
    if (!any) {
      for (int64_t l = 0; l < kBlocksPerChunk; ++l) mex = std::max(mex, bmax[c * kBlocksPerChunk + l]);
      continue;
    }
    for (int64_t j = c * kChunk; j < (c + 1) * kChunk; ++j) {
      if (u[j] >= thr)
        out[cnt++] = static_cast<int32_t>(j);
      else
        mex = std::max(mex, u[j]);
    }
  }
  *count = cnt;
  return mex;
#endif
}

// Blocks of a row of n latents that hold at least one latent.
int64_t RealBlocks(int64_t n) {
  const int64_t full = n / kChunk, rest = n - full * kChunk;
  return full * kBlocksPerChunk + std::min<int64_t>(rest, kBlocksPerChunk);
}

// The least C (in blocks) that would have certified a row whose k-th exact
// value is tau, from block maxima bm[0, cnt): every block whose maximum
// exceeds max(tau, 0), plus one, so that the C-th largest maximum (the
// candidate threshold) is <= tau.
int64_t NeededBlocks(const float* bm, int64_t cnt, float tau) {
  const float lim = std::max(tau, 0.0f);
  int64_t m = 0;
  for (int64_t i = 0; i < cnt; ++i) m += bm[i] > lim ? 1 : 0;
  return m + 1;
}

// Float order as integer order: Key(a) < Key(b) iff a < b (with -0 < +0;
// NaN never occurs), and back.
inline int32_t Key(float f) {
  int32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b ^ ((b >> 31) & 0x7FFFFFFF);
}
inline float Unkey(int32_t k) {
  const int32_t b = k ^ ((k >> 31) & 0x7FFFFFFF);
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// The C-th largest of v[0, cnt) (cnt >= C >= 1), exactly: bisection on the
// integer keys, each step one vector count (no data-dependent branches,
// unlike nth_element's partitions). keys: room for cnt.
float CthLargest(const float* v, int64_t cnt, int64_t C, int32_t* keys) {
  int32_t kmin = std::numeric_limits<int32_t>::max(), kmax = std::numeric_limits<int32_t>::min();
  int64_t i0 = 0;
#if defined(__AVX512F__)
  __m512i vmin = _mm512_set1_epi32(kmin), vmax = _mm512_set1_epi32(kmax);
  const __m512i low31 = _mm512_set1_epi32(0x7FFFFFFF);
  for (; i0 + 16 <= cnt; i0 += 16) {
    const __m512i b = _mm512_loadu_si512(v + i0);
    const __m512i key = _mm512_xor_si512(b, _mm512_and_si512(_mm512_srai_epi32(b, 31), low31));
    _mm512_storeu_si512(keys + i0, key);
    vmin = _mm512_min_epi32(vmin, key);
    vmax = _mm512_max_epi32(vmax, key);
  }
  kmin = _mm512_reduce_min_epi32(vmin);
  kmax = _mm512_reduce_max_epi32(vmax);
#endif
  for (int64_t i = i0; i < cnt; ++i) {
    keys[i] = Key(v[i]);
    kmin = std::min(kmin, keys[i]);
    kmax = std::max(kmax, keys[i]);
  }
  // count(keys >= lo) >= C > count(keys >= hi)
  int64_t lo = kmin, hi = static_cast<int64_t>(kmax) + 1;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    int64_t c = 0;
#if defined(__AVX512F__)
    const __m512i vm = _mm512_set1_epi32(static_cast<int32_t>(mid));
    int64_t i = 0;
    for (; i + 16 <= cnt; i += 16) c += __builtin_popcount(_mm512_cmpge_epi32_mask(_mm512_loadu_si512(keys + i), vm));
    for (; i < cnt; ++i) c += keys[i] >= mid ? 1 : 0;
#else
    for (int64_t i = 0; i < cnt; ++i) c += keys[i] >= mid ? 1 : 0;
#endif
    if (c >= C)
      lo = mid;
    else
      hi = mid;
  }
  return Unkey(static_cast<int32_t>(lo));
}

// The top k of (value, index) pairs, by value descending then index
// ascending, as 64-bit keys whose ascending order is that order.
inline uint64_t PairKey(float v, int32_t j) {
  const uint32_t asc = static_cast<uint32_t>(Key(v)) ^ 0x80000000u;
  return (static_cast<uint64_t>(~asc) << 32) | static_cast<uint32_t>(j);
}
inline float PairValue(uint64_t key) {
  return Unkey(static_cast<int32_t>(~static_cast<uint32_t>(key >> 32) ^ 0x80000000u));
}
inline int32_t PairIndex(uint64_t key) { return static_cast<int32_t>(static_cast<uint32_t>(key)); }
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
  // Whether w_desc is BA16a64b4a (what oneDNN's VNNI kernels choose for
  // u8×s8): then the encoder is quantised straight into it (strides below);
  // otherwise into qw (n×d, i.e. d×n "ba") and reordered by oneDNN.
  bool direct = false;
  int64_t stride_k = 0, stride_n = 0;
  std::vector<int8_t> qw;
  std::vector<float> sw, wn, we, cb;
  std::vector<int32_t> comp;  // 128·Σ_i q_ji: what the u8 inputs' offset adds to latent j's products
  std::vector<uint8_t> qx;    // R×d, q + 128
  std::vector<int32_t> acc;   // R×n int32 products
  std::vector<float> sx, alpha, beta, thr, max_excl;
  std::vector<float> top_b;  // per row: the C block maxima >= thr
  std::vector<std::vector<int32_t>> cand_i;
  std::vector<std::vector<float>> cand_v;
  std::vector<int64_t> offs;
  std::vector<std::pair<int32_t, int32_t>> pairs;  // (row, slot) sorted by latent

  absl::Status Prepare(int64_t rows, int64_t dd, int64_t nn, bool force_reorder) {
    if (rows == R && dd == d && nn == n && force_reorder == !direct) return absl::OkStatus();
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    try {
      dnnl::memory::desc src_md({rows, dd}, dt::u8, tag::ab);
      dnnl::memory::desc w_any({dd, nn}, dt::s8, tag::any);
      dnnl::memory::desc dst_md({rows, nn}, dt::s32, tag::ab);
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, w_any, dst_md), eng);
      prim = dnnl::matmul(pd);
      w_desc = pd.weights_desc();
      w_mem = dnnl::memory(w_desc, eng);
      direct = !force_reorder && w_desc == dnnl::memory::desc({dd, nn}, dt::s8, tag::BA16a64b4a);
      if (direct) {
        stride_k = w_desc.data.format_desc.blocking.strides[0];
        stride_n = w_desc.data.format_desc.blocking.strides[1];
        // The padding (d and n up to multiples of 64) stays zero.
        std::memset(w_mem.get_data_handle(), 0, w_desc.get_size());
      }
    } catch (const dnnl::error& e) {
      return absl::InternalError(
          absl::StrCat("train.encoder: int8_screened: oneDNN int8 matmul ", rows, "x", dd, "x", nn, ": ", e.what()));
    }
    R = rows;
    d = dd;
    n = nn;
    qw.resize(direct ? 0 : static_cast<size_t>(n * d));
    sw.resize(n);
    wn.resize(n);
    we.resize(n);
    cb.resize(n);
    comp.resize(n);
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
//    straight into the int8 matmul's weights layout when it is the known
//    one (Impl::direct), else reordered into it by oneDNN.
absl::Status QuantizeEncoder(Int8Screen::Impl& m, const float* W, const float* bias, float rho) {
  const int64_t d = m.d, n = m.n;
  int8_t* wdata = static_cast<int8_t*>(m.w_mem.get_data_handle());
  const int64_t dp = (d + 63) / 64 * 64;
  // Parallel over groups of 64 latents: one group fills one contiguous
  // stretch of the blocked layout.
  at::parallel_for(0, (n + 63) / 64, 1, [&](int64_t glo, int64_t ghi) {
    std::vector<uint8_t> row(static_cast<size_t>(dp), 0);
    for (int64_t j = glo * 64; j < std::min(n, ghi * 64); ++j) {
      const float* w = W + j * d;
      uint8_t* q = m.direct ? row.data() : reinterpret_cast<uint8_t*>(m.qw.data() + j * d);
      const float mx = AbsMax(w, d);
      QuantSums qs;
      const float s = mx / 127.0f;
      if (mx == 0) {
        std::memset(q, 0, static_cast<size_t>(d));
      } else {
        qs = Quantize(w, d, 127.0f / mx, s, q, /*u8=*/false);
      }
      if (m.direct) {
        // BA16a64b4a: (j/64)·stride_n + (i/64)·stride_k + ((i%64)/4)·256 + (j%64)·4 + i%4.
        int8_t* base = wdata + (j / 64) * m.stride_n + (j % 64) * 4;
        for (int64_t i = 0; i < dp; i += 4) {
          std::memcpy(base + (i / 64) * m.stride_k + ((i % 64) / 4) * 256, q + i, 4);
        }
      }
      m.sw[j] = mx == 0 ? 0.0f : s;
      m.wn[j] = RoundUp(std::sqrt(qs.v2));
      m.we[j] = RoundUp(std::sqrt(qs.e2));
      m.cb[j] = bias[j] + 2 * rho * std::fabs(bias[j]);
      m.comp[j] = static_cast<int32_t>(128 * qs.q);
    }
  });
  if (m.direct) return absl::OkStatus();
  try {
    dnnl::memory w_user({{d, n}, dnnl::memory::data_type::s8, dnnl::memory::format_tag::ba}, m.eng, m.qw.data());
    dnnl::reorder(w_user, m.w_mem).execute(m.strm, w_user, m.w_mem);
    m.strm.wait();
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("int8_screened: oneDNN weights reorder: ", e.what()));
  }
  return absl::OkStatus();
}

// 2. The block's input rows (r0 .. r0+rows-1), quantised per row (stored
//    as q + 128), with the row's bound terms; the rest of the R-row buffer
//    zeroed.
void QuantizeInputBlock(Int8Screen::Impl& m, const float* XC, int64_t r0, int64_t rows, float rho) {
  const int64_t d = m.d;
  at::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* x = XC + (r0 + r) * d;
      uint8_t* q = m.qx.data() + r * d;
      const float mx = AbsMax(x, d);
      const float s = mx / 127.0f;
      QuantSums qs;
      if (mx == 0) {
        std::memset(q, 128, static_cast<size_t>(d));
      } else {
        qs = Quantize(x, d, 127.0f / mx, s, q, /*u8=*/true);
      }
      m.sx[r] = mx == 0 ? 0.0f : s;
      const float ex = RoundUp(std::sqrt(qs.e2)), nq = RoundUp(std::sqrt(qs.q2)), nx = RoundUp(std::sqrt(qs.v2));
      m.alpha[r] = ex + rho * (nx + nq);
      m.beta[r] = nq + rho * (nx + nq);
    }
  });
  if (rows < m.R) std::memset(m.qx.data() + rows * d, 128, static_cast<size_t>((m.R - rows) * d));
}

// 3. ẑ in int32 (exact integer dot products).
absl::Status Int32Products(Int8Screen::Impl& m) {
  try {
    dnnl::memory src({{m.R, m.d}, dnnl::memory::data_type::u8, dnnl::memory::format_tag::ab}, m.eng, m.qx.data());
    dnnl::memory dst({{m.R, m.n}, dnnl::memory::data_type::s32, dnnl::memory::format_tag::ab}, m.eng, m.acc.data());
    m.prim.execute(m.strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, m.w_mem}, {DNNL_ARG_DST, dst}});
    m.strm.wait();
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("int8_screened: oneDNN int8 matmul: ", e.what()));
  }
  return absl::OkStatus();
}

// 4. Epilogue: the bounds u_j and block maxima of each row (RowBounds;
//    never kept: recomputed from the int32 products where needed), and
//    the candidates: every latent with u >= thr, thr the C-th largest
//    block maximum (so at least C candidates); max_excl = the largest u
//    outside them. The C block maxima at or above thr are kept (top_b) for
//    choosing the next C.
void SelectCandidates(Int8Screen::Impl& m, int64_t rows, int64_t C) {
  const int64_t n = m.n;
  const int64_t nc = (n + kChunk - 1) / kChunk, nbp = nc * kBlocksPerChunk;
  const bool all = RealBlocks(n) <= C;
  m.top_b.resize(static_cast<size_t>(rows * C));
  constexpr int G = 4;  // rows per bounds pass
  const BoundTerms bt{m.sw.data(), m.cb.data(), m.wn.data(), m.we.data(), m.comp.data()};
  at::parallel_for(0, (rows + G - 1) / G, 1, [&](int64_t glo, int64_t ghi) {
    std::vector<float> u(static_cast<size_t>(G * nc * kChunk)), bmax(static_cast<size_t>(G * nbp));
    std::vector<int32_t> buf(static_cast<size_t>(n + 16)), keys(static_cast<size_t>(nbp));
    std::vector<float> topb(static_cast<size_t>(nbp));
    for (int64_t r1 = glo * G; r1 < std::min(rows, ghi * G); r1 += G) {
      const int g_n = static_cast<int>(std::min<int64_t>(G, rows - r1));
      if (!all) {
        const int32_t* a[G];
        float* up[G];
        float* bp[G];
        for (int g = 0; g < G; ++g) {
          const int64_t r = r1 + std::min(g, g_n - 1);  // a short group repeats its last row
          a[g] = m.acc.data() + r * n;
          up[g] = u.data() + g * nc * kChunk;
          bp[g] = bmax.data() + g * nbp;
        }
        const int64_t rr = r1 + std::min(G, g_n) - 1;
        float s4[G], al4[G], be4[G];
        for (int g = 0; g < G; ++g) {
          const int64_t r = std::min(r1 + g, rr);
          s4[g] = m.sx[r];
          al4[g] = m.alpha[r];
          be4[g] = m.beta[r];
        }
        RowBounds<G>(bt, s4, al4, be4, a, n, up, bp);
      }
      for (int g = 0; g < g_n; ++g) {
        const int64_t r = r1 + g;
        std::vector<int32_t>& ci = m.cand_i[r];
        float thr = -std::numeric_limits<float>::infinity();
        float mex = -std::numeric_limits<float>::infinity();
        if (all) {
          ci.resize(static_cast<size_t>(n));
          for (int64_t j = 0; j < n; ++j) ci[j] = static_cast<int32_t>(j);
        } else {
          const float* ur = u.data() + g * nc * kChunk;
          const float* br = bmax.data() + g * nbp;
          thr = CthLargest(br, nbp, C, keys.data());
          // The block maxima >= thr (C of them, more only with ties).
          int64_t nt = 0;
#if defined(__AVX512F__)
          for (int64_t b = 0; b < nbp; b += 16) {
            const __m512 bm = _mm512_loadu_ps(br + b);
            const __mmask16 ge = _mm512_cmp_ps_mask(bm, _mm512_set1_ps(thr), _CMP_GE_OQ);
            _mm512_mask_compressstoreu_ps(topb.data() + nt, ge, bm);
            nt += __builtin_popcount(ge);
          }
#else
          for (int64_t b = 0; b < nbp; ++b)
            if (br[b] >= thr) topb[nt++] = br[b];
#endif
          std::copy(topb.begin(), topb.begin() + C, m.top_b.begin() + r * C);
          int64_t cnt = 0;
          mex = Above(ur, br, n, thr, buf.data(), &cnt);
          ci.assign(buf.begin(), buf.begin() + cnt);
        }
        m.thr[r] = thr;
        m.max_excl[r] = mex;
        m.cand_v[r].resize(ci.size());
      }
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
//    rows r0.. of IDX/VAL and the least C each row needed (need[r0..]);
//    adds the uncertified rows to *fallback and the latents rescored for
//    them to *rescored.
void CertifiedTopK(Int8Screen::Impl& m, const float* XC, int64_t r0, int64_t rows, const float* W, const float* bias,
                   int64_t k, int64_t C, int64_t* IDX, float* VAL, int64_t* need, int64_t* fallback,
                   int64_t* rescored) {
  const int64_t d = m.d, n = m.n;
  const int64_t nc = (n + kChunk - 1) / kChunk, nbp = nc * kBlocksPerChunk;
  const bool all = RealBlocks(n) <= C;
  std::vector<int64_t> fb_rows(static_cast<size_t>(rows), 0), extra(static_cast<size_t>(rows), 0);
  at::parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
    std::vector<int32_t> buf;
    std::vector<uint64_t> keys;
    std::vector<float> urow, bmax;
    for (int64_t r = lo; r < hi; ++r) {
      std::vector<int32_t>& ci = m.cand_i[r];
      std::vector<float>& cv = m.cand_v[r];
      // keys[0, k): the top k in order; returns the k-th value.
      auto topk = [&]() {
        keys.resize(ci.size());
        for (size_t s = 0; s < ci.size(); ++s) keys[s] = PairKey(cv[s], ci[s]);
        std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end());
        std::sort(keys.begin(), keys.begin() + (k - 1));
        return PairValue(keys[k - 1]);
      };
      float tau = topk();
      const float mex = m.max_excl[r];
      const bool certified = mex < tau || (tau <= 0 && mex <= 0);
      if (all) {
        need[r0 + r] = C;
      } else if (certified) {
        need[r0 + r] = std::min(C, NeededBlocks(m.top_b.data() + r * C, C, tau));
      } else {
        fb_rows[r] = 1;
        const BoundTerms bt{m.sw.data(), m.cb.data(), m.wn.data(), m.we.data(), m.comp.data()};
        urow.resize(static_cast<size_t>(nc * kChunk));
        bmax.resize(static_cast<size_t>(nbp));
        const int32_t* ar = m.acc.data() + r * n;
        float* up = urow.data();
        float* bp = bmax.data();
        RowBounds<1>(bt, &m.sx[r], &m.alpha[r], &m.beta[r], &ar, n, &up, &bp);
        // Every latent with u >= the threshold is a candidate already; the
        // others that can reach τ (or be positive when τ <= 0) are added.
        buf.resize(static_cast<size_t>(n + 16));
        const float lim = tau > 0 ? tau : std::nextafter(0.0f, 1.0f);
        int64_t cnt = 0;
        Above(urow.data(), bmax.data(), n, lim, buf.data(), &cnt);
        const float* x = XC + (r0 + r) * d;
        const size_t before = ci.size();
        for (int64_t t2 = 0; t2 < cnt; ++t2) {
          const int32_t j = buf[t2];
          if (urow[j] >= m.thr[r]) continue;  // already a candidate
          ci.push_back(j);
          cv.push_back(ExactPreactivation(x, W + static_cast<int64_t>(j) * d, bias[j], d));
        }
        extra[r] = static_cast<int64_t>(ci.size() - before);
        tau = topk();  // now exact: every latent left out has u < the old τ <= the new one
        need[r0 + r] = NeededBlocks(bmax.data(), nbp, tau);
      }
      const int64_t b = r0 + r;
      for (int64_t t2 = 0; t2 < k; ++t2) {
        IDX[b * k + t2] = PairIndex(keys[t2]);
        VAL[b * k + t2] = PairValue(keys[t2]);
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
  SAE_RETURN_IF_ERROR(m.Prepare(R, d, n, force_reorder_));
  const float* XC = xc_t.data_ptr<float>();
  at::Tensor W_t = p.W_enc.contiguous();
  at::Tensor b_t = p.b_enc.contiguous();
  const float* W = W_t.data_ptr<float>();
  const float* bias = b_t.data_ptr<float>();
  // fp32 rounding of the exact dot product (recursive summation bound
  // d·2⁻²⁴ on Σ|w_i x_i| <= ‖w‖‖x‖) and of computing the bound itself.
  const float rho = static_cast<float>((static_cast<double>(d) + 64) * std::ldexp(1.0, -24));
  const bool cpu = cpu_time_phases_;
  // (CPU time of the whole process for Int8Screen::set_cpu_time_phases.)
  auto now = [cpu]() { return cpu ? ProcessCpuNow() : SteadyNow(); };
  double t = now();
  double t_quant = 0, t_gemm = 0, t_select = 0, t_rescore = 0;
  SAE_RETURN_IF_ERROR(QuantizeEncoder(m, W, bias, rho));
  t_quant += now() - t;

  int64_t fallback = 0, rescored = 0;
  std::vector<int64_t> need(static_cast<size_t>(B));
  for (int64_t r0 = 0; r0 < B; r0 += R) {
    const int64_t rows = std::min(R, B - r0);
    t = now();
    QuantizeInputBlock(m, XC, r0, rows, rho);
    t_quant += now() - t;
    t = now();
    SAE_RETURN_IF_ERROR(Int32Products(m));
    t_gemm += now() - t;
    t = now();
    SelectCandidates(m, rows, C);
    t_select += now() - t;
    t = now();
    rescored += RescoreCandidates(m, XC, r0, rows, W, bias);
    CertifiedTopK(m, XC, r0, rows, W, bias, k, C, IDX, VAL, need.data(), &fallback, &rescored);
    t_rescore += now() - t;
  }
  last_.rows = B;
  last_.fallback_rows = fallback;
  last_.candidates = C;
  last_.mean_candidates = static_cast<double>(rescored) / static_cast<double>(std::max<int64_t>(B, 1));
  total_fallback_ += fallback;
  if (adaptive_ && B > 0) {
    // The next C: the least that would have certified all but
    // kTargetFallback of this call's rows (each row's own least C is known
    // from its block maxima and τ), never below k + 1.
    const int64_t at_q = std::min<int64_t>(B - 1, static_cast<int64_t>(std::floor((1 - kTargetFallback) * B)));
    std::nth_element(need.begin(), need.begin() + at_q, need.end());
    c_ = std::max<int64_t>(k + 1, need[at_q]);
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
  const double t = SteadyNow();
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
  if (phases != nullptr) phases->emplace_back("screen_dead", SteadyNow() - t);
  return absl::OkStatus();
}

}  // namespace sae
