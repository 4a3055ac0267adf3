#include "core/sae/small_encoder.h"

#include "core/sae/parallel_grain.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace sae::internal {

namespace {

constexpr int64_t kP = SmallEncoder::kPanel;
constexpr int kR = static_cast<int>(SmallEncoder::kTileRows);
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// 64-byte aligned view into an over-allocated vector.
// Reallocated only when the size changes (the packing overwrites every
// element each step).
float* Aligned(std::vector<float>* v, size_t count) {
  if (v->size() != count + 16) v->assign(count + 16, 0.0f);
  const uintptr_t p = reinterpret_cast<uintptr_t>(v->data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t{63});
}

// The running top-k of the rows of one row block: row r's best cnt[r]
// values (descending, ties by ascending index) at v[r*k ..], their latents
// at i[r*k ..]; thr[r] is the k-th value once cnt[r] == k, −inf before.
// Latents reach a row in ascending order, so a newcomer equal to the k-th
// value loses the tie: only values strictly above thr can enter.
struct RowTops {
  int64_t k = 0;
  std::vector<float> v, thr;
  std::vector<int32_t> i;
  std::vector<int32_t> cnt;
#if defined(__AVX512F__)
  // k <= 32: each row's top-k in `lanes` (16 for k <= 16, else 32) sorted
  // lanes (descending, −inf padded) and its latents beside them, at
  // vv/vi[r*lanes ..]; InsertLane / OfferVec2 insert without branches on
  // the data (the sorted list's shifting loop cost ~85 cycles an insertion
  // at k 32: docs/performance.md "d 256: the insertion, not the panel").
  int lanes = 0;
  std::vector<float> vv;
  std::vector<int32_t> vi;
#endif
  void Reset(int64_t rows, int64_t k_) {
    k = k_;
#if defined(__AVX512F__)
    lanes = k <= 16 ? 16 : k <= 32 ? 32 : 0;
    if (lanes > 0) {
      vv.assign(static_cast<size_t>(rows * lanes), kNegInf);
      vi.assign(static_cast<size_t>(rows * lanes), 0);
      thr.assign(static_cast<size_t>(rows), kNegInf);
      return;
    }
#endif
    v.resize(static_cast<size_t>(rows * k));
    i.resize(static_cast<size_t>(rows * k));
    thr.assign(static_cast<size_t>(rows), kNegInf);
    cnt.assign(static_cast<size_t>(rows), 0);
  }
  // Offers the values z[t] (latent base + t) for the set bits t of mask, in
  // ascending t. Exact whatever the mask holds beyond the values that can
  // enter: each one is checked against the current k-th.
#if defined(__GNUC__)
  __attribute__((noinline))
#endif
  void
  Offer(int r, const float* z, uint64_t mask, int32_t base) {
    float* rv = v.data() + r * k;
    int32_t* ri = i.data() + r * k;
    int32_t c = cnt[r];
    while (mask != 0) {
      const int t = __builtin_ctzll(mask);
      mask &= mask - 1;
      const float x = z[t];
      int64_t pos;
      if (c < k) {
        pos = c++;
      } else if (x > rv[k - 1]) {
        pos = k - 1;
      } else {
        continue;
      }
      while (pos > 0 && rv[pos - 1] < x) {
        rv[pos] = rv[pos - 1];
        ri[pos] = ri[pos - 1];
        --pos;
      }
      rv[pos] = x;
      ri[pos] = base + t;
    }
    cnt[r] = c;
    if (c == k) thr[r] = rv[k - 1];
  }
#if defined(__AVX512F__)
  // Inserts the values z[t] (latent base + t, set bits t of mask) into row
  // r's 32 sorted lanes (16 < k <= 32; k <= 16 inserts in SelectTile,
  // InsertLane): hi = lanes 0-15, lo = 16-31. The lanes below v are a suffix
  // of the 32; lo's first lane takes hi's last when that one shifts down,
  // and v lands in lo only when no lane of hi is below it.
#if defined(__GNUC__)
  __attribute__((noinline))
#endif
  void
  OfferVec2(int r, const float* z, uint64_t mask, int32_t base) {
    float* pv = vv.data() + r * 32;
    int32_t* pi = vi.data() + r * 32;
    __m512 hv = _mm512_loadu_ps(pv), lv = _mm512_loadu_ps(pv + 16);
    __m512i hi = _mm512_loadu_si512(pi), li = _mm512_loadu_si512(pi + 16);
    const __m512i ninf = _mm512_castps_si512(_mm512_set1_ps(kNegInf));
    while (mask != 0) {
      const int t = __builtin_ctzll(mask);
      mask &= mask - 1;
      const __m512 v = _mm512_set1_ps(z[t]);
      const __m512i vi_ = _mm512_set1_epi32(base + t);
      const __mmask16 lth = _mm512_cmp_ps_mask(hv, v, _CMP_LT_OQ);
      const __mmask16 ltl = _mm512_cmp_ps_mask(lv, v, _CMP_LT_OQ);
      const __mmask16 ath = _kandn_mask16(_kshiftli_mask16(lth, 1), lth);
      const __mmask16 atl = _kandn_mask16(_kor_mask16(_kshiftli_mask16(ltl, 1), _kshiftri_mask16(lth, 15)), ltl);
      const __m512 hv_sh = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hv), ninf, 15));
      const __m512 lv_sh =
          _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(lv), _mm512_castps_si512(hv), 15));
      const __m512i hi_sh = _mm512_alignr_epi32(hi, hi, 15);
      const __m512i li_sh = _mm512_alignr_epi32(li, hi, 15);
      lv = _mm512_mask_mov_ps(_mm512_mask_mov_ps(lv, ltl, lv_sh), atl, v);
      li = _mm512_mask_mov_epi32(_mm512_mask_mov_epi32(li, ltl, li_sh), atl, vi_);
      hv = _mm512_mask_mov_ps(_mm512_mask_mov_ps(hv, lth, hv_sh), ath, v);
      hi = _mm512_mask_mov_epi32(_mm512_mask_mov_epi32(hi, lth, hi_sh), ath, vi_);
    }
    _mm512_storeu_ps(pv, hv);
    _mm512_storeu_ps(pv + 16, lv);
    _mm512_storeu_si512(pi, hi);
    _mm512_storeu_si512(pi + 16, li);
    thr[r] = pv[k - 1];
  }
#endif
};

#if defined(__AVX512F__)
// One insertion into 16 sorted lanes (descending, latents ti beside them):
// the lanes below v, a suffix (the vector is sorted), shift down one and v
// takes the first of them. Equal values stay ahead (lower latents). A v at or
// below the k-th lane lands past the k kept, which only the lanes beyond k
// see; v = −inf changes nothing.
inline void InsertLane(__m512& tv, __m512i& ti, float x, int32_t latent) {
  const __m512i ninf = _mm512_castps_si512(_mm512_set1_ps(kNegInf));
  const __m512 v = _mm512_set1_ps(x);
  const __mmask16 lt = _mm512_cmp_ps_mask(tv, v, _CMP_LT_OQ);
  const __mmask16 at = _kandn_mask16(_kshiftli_mask16(lt, 1), lt);
  const __m512 tv_sh = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(tv), ninf, 15));
  const __m512i ti_sh = _mm512_alignr_epi32(ti, ti, 15);
  tv = _mm512_mask_mov_ps(_mm512_mask_mov_ps(tv, lt, tv_sh), at, v);
  ti = _mm512_mask_mov_epi32(_mm512_mask_mov_epi32(ti, lt, ti_sh), at, _mm512_set1_epi32(latent));
}
#endif

// The k-th largest of 16 values (1 <= k <= 16).
inline float KthOf16(float* a, int64_t k) {
  std::nth_element(a, a + (k - 1), a + 16, std::greater<float>());
  return a[k - 1];
}

#if defined(__AVX512F__)
// The k-th largest of the 16 lanes of m (1 <= k <= 16), in registers: the
// largest lane with at least k lanes >= it (ties counted). Rotations and
// masked adds, a few dozen instructions, against ~400 cycles for
// std::nth_element over 16 floats (a third of a d 48 row's GEMM).
inline float KthOf16(__m512 m, int64_t k) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i fifteen = _mm512_set1_epi32(15);
  __m512i cnt = one;  // each lane counts itself
  // Lane i of rot is lane (i + s) mod 16 of m: a permutation by a rotating
  // index (valignd would need s as a compile-time constant, which clang
  // demands even where the loop is unrolled).
  __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#pragma GCC unroll 15
  for (int s = 1; s < 16; ++s) {
    idx = _mm512_and_si512(_mm512_add_epi32(idx, one), fifteen);
    const __m512 rot = _mm512_permutexvar_ps(idx, m);
    cnt = _mm512_mask_add_epi32(cnt, _mm512_cmp_ps_mask(rot, m, _CMP_GE_OQ), cnt, one);
  }
  const __mmask16 ok = _mm512_cmpge_epi32_mask(cnt, _mm512_set1_epi32(static_cast<int>(k)));
  return _mm512_mask_reduce_max_ps(ok, m);
}
#endif

#if defined(__AVX512F__)

// dst[c * ldd + r] = src[r * lds + c] for r, c < 16 (dst 64-byte aligned).
inline void Transpose16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512 a[16], b[16];
  for (int r = 0; r < 16; ++r) a[r] = _mm512_loadu_ps(src + r * lds);
  // Pairs of rows interleaved, then pairs of pairs, then 128-bit lanes.
  for (int r = 0; r < 16; r += 2) {
    b[r] = _mm512_unpacklo_ps(a[r], a[r + 1]);
    b[r + 1] = _mm512_unpackhi_ps(a[r], a[r + 1]);
  }
  for (int r = 0; r < 16; r += 4) {
    a[r] = _mm512_shuffle_ps(b[r], b[r + 2], _MM_SHUFFLE(1, 0, 1, 0));
    a[r + 1] = _mm512_shuffle_ps(b[r], b[r + 2], _MM_SHUFFLE(3, 2, 3, 2));
    a[r + 2] = _mm512_shuffle_ps(b[r + 1], b[r + 3], _MM_SHUFFLE(1, 0, 1, 0));
    a[r + 3] = _mm512_shuffle_ps(b[r + 1], b[r + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int r = 0; r < 4; ++r) {
    b[r] = _mm512_shuffle_f32x4(a[r], a[r + 4], 0x88);
    b[r + 4] = _mm512_shuffle_f32x4(a[r], a[r + 4], 0xdd);
    b[r + 8] = _mm512_shuffle_f32x4(a[r + 8], a[r + 12], 0x88);
    b[r + 12] = _mm512_shuffle_f32x4(a[r + 8], a[r + 12], 0xdd);
  }
  for (int r = 0; r < 4; ++r) {
    a[r] = _mm512_shuffle_f32x4(b[r], b[r + 8], 0x88);
    a[r + 8] = _mm512_shuffle_f32x4(b[r], b[r + 8], 0xdd);
    a[r + 4] = _mm512_shuffle_f32x4(b[r + 4], b[r + 12], 0x88);
    a[r + 12] = _mm512_shuffle_f32x4(b[r + 4], b[r + 12], 0xdd);
  }
  // a[c] is column c (tests: every packed value is checked through Dense).
  for (int c = 0; c < 16; ++c) _mm512_store_ps(dst + c * ldd, a[c]);
}

// acc[r][c] = x[r] · W + b over the panel (d × 64 at wp), for R rows of x:
// the multiply-adds in ascending order from zero, then the bias.
template <int R>
inline void TileAcc(const float* __restrict x, int64_t d, const float* __restrict wp, const float* __restrict bp,
                    __m512 (&acc)[R][4]) {
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < d; ++kk) {
    const float* w = wp + kk * kP;
    const __m512 w0 = _mm512_load_ps(w), w1 = _mm512_load_ps(w + 16), w2 = _mm512_load_ps(w + 32),
                 w3 = _mm512_load_ps(w + 48);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m512 xb = _mm512_set1_ps(x[r * d + kk]);
      acc[r][0] = _mm512_fmadd_ps(xb, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xb, w1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(xb, w2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(xb, w3, acc[r][3]);
    }
  }
  const __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16), b2 = _mm512_load_ps(bp + 32),
               b3 = _mm512_load_ps(bp + 48);
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    acc[r][0] = _mm512_add_ps(acc[r][0], b0);
    acc[r][1] = _mm512_add_ps(acc[r][1], b1);
    acc[r][2] = _mm512_add_ps(acc[r][2], b2);
    acc[r][3] = _mm512_add_ps(acc[r][3], b3);
  }
}

template <int R>
void DenseTile(const float* x, int64_t d, const float* wp, const float* bp, int64_t valid, float* z, int64_t ldz) {
  __m512 acc[R][4];
  TileAcc<R>(x, d, wp, bp, acc);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) {
      const int64_t lanes = std::clamp<int64_t>(valid - 16 * c, 0, 16);
      if (lanes == 16) {
        _mm512_storeu_ps(z + r * ldz + 16 * c, acc[r][c]);
      } else if (lanes > 0) {
        _mm512_mask_storeu_ps(z + r * ldz + 16 * c, static_cast<__mmask16>((1u << lanes) - 1), acc[r][c]);
      }
    }
}

// One tile's selection: rows r0 .. r0 + R − 1 of `tops`, latents base ..
// base + 63. first_k: this is the rows' first panel (all 64 latents real)
// and k <= 16: the threshold for this tile is the k-th largest of the 16
// lane maxima (k distinct values are at least that large, so every value
// of the tile's top-k is too), instead of letting all 64 values in.
template <int R>
void SelectTile(const float* x, int64_t d, const float* wp, const float* bp, RowTops* tops, int r0, int32_t base,
                bool first_k) {
  __m512 acc[R][4];
  TileAcc<R>(x, d, wp, bp, acc);
  // All rows' masks first, while the tile is in registers; the tile leaves
  // them only when some row has a value above its threshold (an Offer is a
  // call, across which no vector register survives).
  uint64_t m[R];
  uint64_t any = 0;
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    __m512 t;
    int pred;
    if (first_k) {
      const __m512 mx = _mm512_max_ps(_mm512_max_ps(acc[r][0], acc[r][1]), _mm512_max_ps(acc[r][2], acc[r][3]));
      t = _mm512_set1_ps(KthOf16(mx, tops->k));
      pred = _CMP_GE_OQ;
    } else {
      t = _mm512_set1_ps(tops->thr[r0 + r]);
      pred = _CMP_GT_OQ;
    }
    if (pred == _CMP_GE_OQ) {
      m[r] = static_cast<uint64_t>(_mm512_cmp_ps_mask(acc[r][0], t, _CMP_GE_OQ)) |
             static_cast<uint64_t>(_mm512_cmp_ps_mask(acc[r][1], t, _CMP_GE_OQ)) << 16 |
             static_cast<uint64_t>(_mm512_cmp_ps_mask(acc[r][2], t, _CMP_GE_OQ)) << 32 |
             static_cast<uint64_t>(_mm512_cmp_ps_mask(acc[r][3], t, _CMP_GE_OQ)) << 48;
    } else {
      m[r] = static_cast<uint64_t>(_mm512_cmp_ps_mask(acc[r][0], t, _CMP_GT_OQ)) |
             static_cast<uint64_t>(_mm512_cmp_ps_mask(acc[r][1], t, _CMP_GT_OQ)) << 16 |
             static_cast<uint64_t>(_mm512_cmp_ps_mask(acc[r][2], t, _CMP_GT_OQ)) << 32 |
             static_cast<uint64_t>(_mm512_cmp_ps_mask(acc[r][3], t, _CMP_GT_OQ)) << 48;
    }
    any |= m[r];
  }
  if (__builtin_expect(any == 0, 1)) return;
  // Past the tile's 64 values, one −inf: what a row with no entry left offers
  // in the lockstep rounds below.
  alignas(64) float tile[R][kP + 16];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < 4; ++c) _mm512_store_ps(tile[r] + 16 * c, acc[r][c]);
    tile[r][kP] = kNegInf;
  }
  if (tops->lanes == 16) {
    // Every row's insertions in lockstep, one entry of each row per round
    // (a row with none left inserts −inf, a no-op): R independent chains and
    // one loop exit per tile, where one call per row with its own loop left
    // each insertion's latency exposed and mispredicted every exit (d 64:
    // the selection 1.7 → 1.0 ms of an 11 ms encode on one thread;
    // docs/performance.md "The insertion in lockstep").
    float* VV = tops->vv.data() + r0 * 16;
    int32_t* VI = tops->vi.data() + r0 * 16;
    __m512 tv[R];
    __m512i ti[R];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      tv[r] = _mm512_loadu_ps(VV + r * 16);
      ti[r] = _mm512_loadu_si512(VI + r * 16);
    }
    while (any != 0) {
      any = 0;
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        const int t = m[r] != 0 ? __builtin_ctzll(m[r]) : static_cast<int>(kP);
        m[r] &= m[r] - 1;
        any |= m[r];
        InsertLane(tv[r], ti[r], tile[r][t], base + t);
      }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      _mm512_storeu_ps(VV + r * 16, tv[r]);
      _mm512_storeu_si512(VI + r * 16, ti[r]);
      tops->thr[r0 + r] = VV[r * 16 + tops->k - 1];
    }
    return;
  }
  for (int r = 0; r < R; ++r) {
    if (m[r] == 0) continue;
    if (tops->lanes == 32) {
      tops->OfferVec2(r0 + r, tile[r], m[r], base);
    } else {
      tops->Offer(r0 + r, tile[r], m[r], base);
    }
  }
}

template <typename F>
void ForTileRows(int rows, F&& f) {
  switch (rows) {
    case 6: f(std::integral_constant<int, 6>()); break;
    case 5: f(std::integral_constant<int, 5>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    default: f(std::integral_constant<int, 1>()); break;
  }
}

#else  // portable scalar kernel, the same structure

void ScalarAcc(const float* x, int64_t d, const float* wp, const float* bp, int R, float (*acc)[kP]) {
  for (int r = 0; r < R; ++r) {
    for (int64_t t = 0; t < kP; ++t) acc[r][t] = 0.0f;
    for (int64_t kk = 0; kk < d; ++kk) {
      const float xv = x[r * d + kk];
      const float* w = wp + kk * kP;
      for (int64_t t = 0; t < kP; ++t) acc[r][t] += xv * w[t];
    }
    for (int64_t t = 0; t < kP; ++t) acc[r][t] += bp[t];
  }
}

#endif

}  // namespace

int64_t SmallEncoder::BlockRows() const {
  // An encoder in L2 (<= 2 MiB): 48 rows, their inputs in L1. A larger one
  // is streamed from L3 once per block: blocks of inputs up to 384 KiB (in
  // L2), at most 384 rows (d 256, 16384 latents, one core: 137 GFLOP/s with
  // 24-row blocks, 196 with 384; d 48-128 flat from 48 to 384).
  if (n_ * d_ * static_cast<int64_t>(sizeof(float)) <= (int64_t{2} << 20)) return 48;
  return std::clamp<int64_t>((int64_t{384} << 10) / (d_ * static_cast<int64_t>(sizeof(float))) / kR * kR, 48, 384);
}

int64_t SmallEncoder::ItemRows(int64_t rows, int64_t threads) const {
  const int64_t rb = BlockRows();
  if (rb <= 96) return 96;
  const int64_t per_thread = (rows + std::max<int64_t>(threads, 1) - 1) / std::max<int64_t>(threads, 1);
  const int64_t items = (per_thread + rb - 1) / rb;  // per thread
  const int64_t item = (per_thread + items - 1) / items;
  return std::min(rb, (item + kR - 1) / kR * kR);
}

const char* SmallEncoder::Kernel() {
#if defined(__AVX512F__)
  return "avx512";
#else
  return "scalar";
#endif
}

void SmallEncoder::SetWeights(const float* W, const float* b, int64_t n, int64_t d) {
  n_ = n;
  d_ = d;
  panels_ = (n + kP - 1) / kP;
  w_ = Aligned(&w_store_, static_cast<size_t>(panels_ * d * kP));
  b_ = Aligned(&b_store_, static_cast<size_t>(panels_ * kP));
  // 16 latents × 16 input dimensions at a time, transposed in registers
  // (d 256, 16384 latents: 1.1 ms, about the machine's copy bandwidth, where
  // the element loop took 4.6 ms); the ragged edges element by element.
  // Panels on all threads once the encoder is large (d 768, 16384 latents:
  // 50 MB read and written, 4.5 ms on one thread).
  at::parallel_for(0, panels_, GrainFor(d * kP), [&](int64_t p_lo, int64_t p_hi) {
    for (int64_t p = p_lo; p < p_hi; ++p) {
      const int64_t j0 = p * kP, valid = std::min(kP, n - j0);
      float* wp = w_ + p * d * kP;
      int64_t k0 = 0;
#if defined(__AVX512F__)
      if (valid == kP)
        for (; k0 + 16 <= d; k0 += 16)
          for (int64_t t0 = 0; t0 < kP; t0 += 16) Transpose16(W + (j0 + t0) * d + k0, d, wp + k0 * kP + t0, kP);
#endif
      for (int64_t t = 0; t < valid; ++t) {
        const float* src = W + (j0 + t) * d;
        for (int64_t kk = k0; kk < d; ++kk) wp[kk * kP + t] = src[kk];
      }
      for (int64_t kk = 0; valid < kP && kk < d; ++kk) std::fill(wp + kk * kP + valid, wp + (kk + 1) * kP, 0.0f);
      for (int64_t t = 0; t < kP; ++t) b_[p * kP + t] = t < valid ? b[j0 + t] : kNegInf;
    }
  });
}

void SmallEncoder::Dense(const float* x, int64_t rows, float* z) const {
  const int64_t d = d_, n = n_, RB = BlockRows();
  for (int64_t b0 = 0; b0 < rows; b0 += RB) {
    const int64_t rb = std::min(RB, rows - b0);
    for (int64_t p = 0; p < panels_; ++p)
      for (int64_t r0 = b0; r0 < b0 + rb; r0 += kR) {
        const int R = static_cast<int>(std::min<int64_t>(kR, b0 + rb - r0));
        const int64_t valid = std::min(kP, n - p * kP);
        const float* wp = w_ + p * d * kP;
        const float* bp = b_ + p * kP;
        float* zt = z + r0 * n + p * kP;
#if defined(__AVX512F__)
        ForTileRows(R, [&](auto rc) { DenseTile<decltype(rc)::value>(x + r0 * d, d, wp, bp, valid, zt, n); });
#else
        float acc[kR][kP];
        ScalarAcc(x + r0 * d, d, wp, bp, R, acc);
        for (int r = 0; r < R; ++r) std::memcpy(zt + r * n, acc[r], sizeof(float) * valid);
#endif
      }
  }
}

void SmallEncoder::SelectTopK(const float* x, int64_t rows, int64_t k, int64_t* idx, float* val) const {
  const int64_t d = d_, RB = BlockRows();
  thread_local RowTops tops;
  const bool first_k = k <= 16 && n_ >= kP;
  for (int64_t b0 = 0; b0 < rows; b0 += RB) {
    const int64_t rb = std::min(RB, rows - b0);
    tops.Reset(rb, k);
    const float* xb = x + b0 * d;
    for (int64_t p = 0; p < panels_; ++p) {
      const float* wp = w_ + p * d * kP;
      const float* bp = b_ + p * kP;
      const int32_t base = static_cast<int32_t>(p * kP);
      const bool fk = first_k && p == 0;
      for (int r0 = 0; r0 < rb; r0 += kR) {
        const int R = static_cast<int>(std::min<int64_t>(kR, rb - r0));
#if defined(__AVX512F__)
        ForTileRows(R, [&](auto rc) { SelectTile<decltype(rc)::value>(xb + r0 * d, d, wp, bp, &tops, r0, base, fk); });
#else
        float acc[kR][kP];
        ScalarAcc(xb + r0 * d, d, wp, bp, R, acc);
        for (int r = 0; r < R; ++r) {
          float t;
          if (fk) {
            float mx[16];
            for (int l = 0; l < 16; ++l)
              mx[l] = std::max(std::max(acc[r][l], acc[r][16 + l]), std::max(acc[r][32 + l], acc[r][48 + l]));
            t = KthOf16(mx, k);
          } else {
            t = tops.thr[r0 + r];
          }
          uint64_t m = 0;
          for (int64_t l = 0; l < kP; ++l)
            if (fk ? acc[r][l] >= t : acc[r][l] > t) m |= uint64_t{1} << l;
          if (m != 0) tops.Offer(r0 + r, acc[r], m, base);
        }
#endif
      }
    }
    for (int64_t r = 0; r < rb; ++r) {
#if defined(__AVX512F__)
      const int L = tops.lanes;
      const float* rv = L > 0 ? tops.vv.data() + r * L : tops.v.data() + r * k;
      const int32_t* ri = L > 0 ? tops.vi.data() + r * L : tops.i.data() + r * k;
#else
      const float* rv = tops.v.data() + r * k;
      const int32_t* ri = tops.i.data() + r * k;
#endif
      for (int64_t t = 0; t < k; ++t) {
        idx[(b0 + r) * k + t] = ri[t];
        val[(b0 + r) * k + t] = rv[t];
      }
    }
  }
}

bool UseSmallEncoder(int64_t n, int64_t d, int64_t k) {
  // d <= 1024: where it measured faster than oneDNN's GEMM and a separate
  // top-k (docs/performance.md "The top-k in the GEMM's epilogue" and "d 768
  // and 1024 fused": ratios 1.19-1.20 against 1.29-1.30 at d 768 and 1024,
  // slower at d 2048, where a 64-latent panel of 512 KiB crowds L2). The
  // int32 latent index bounds n. Only the AVX-512 kernel: the scalar one is
  // a correctness fallback (a -DSAE_NATIVE_ARCH=OFF build measured 15x the
  // GEMM floor at d 48, where oneDNN still picks its AVX-512 kernel from
  // cpuid), tested on its own.
#if !defined(__AVX512F__)
  return false;
#endif
  return d <= 1024 && k <= n && n < (int64_t{1} << 30);
}

}  // namespace sae::internal
