#include "core/sae/sae_step.h"

#include "core/base/bf16.h"
#include "core/sae/int8_screen.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <chrono>
#include <type_traits>
#include <utility>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace sae {

absl::StatusOr<Remedy> RemedyFromString(const std::string& s) {
  if (s == "none") return Remedy::kNone;
  if (s == "auxk") return Remedy::kAuxK;
  if (s == "ghost_grads") return Remedy::kGhostGrads;
  return absl::InvalidArgumentError(
      absl::StrCat("sae.dead_remedy: '", s, "' is not one of none, ghost_grads, auxk"));
}

const char* RemedyName(Remedy r) {
  switch (r) {
    case Remedy::kNone: return "none";
    case Remedy::kAuxK: return "auxk";
    case Remedy::kGhostGrads: return "ghost_grads";
  }
  return "?";
}

double DefaultAuxCoefficient(Remedy r) {
  switch (r) {
    case Remedy::kNone: return 0.0;
    case Remedy::kAuxK: return 1.0 / 32;
    case Remedy::kGhostGrads: return 1.0 / 32;
  }
  return 0.0;
}

SaeParams SaeParams::Clone() const {
  return SaeParams{W_enc.clone(), b_enc.clone(), W_dec.clone(), b_dec.clone()};
}

SaeGrads SaeGrads::ZerosLike(const SaeParams& p) {
  const int64_t sizes[] = {p.W_enc.numel(), p.b_enc.numel(), p.W_dec.numel(), p.b_dec.numel()};
  SaeGrads g;
  g.flat = at::zeros({sizes[0] + sizes[1] + sizes[2] + sizes[3]}, p.W_enc.options());
  int64_t off = 0;
  const at::Tensor* like[] = {&p.W_enc, &p.b_enc, &p.W_dec, &p.b_dec};
  at::Tensor* out[] = {&g.W_enc, &g.b_enc, &g.W_dec, &g.b_dec};
  for (int i = 0; i < 4; ++i) {
    *out[i] = g.flat.narrow(0, off, sizes[i]).view(like[i]->sizes());
    off += sizes[i];
  }
  return g;
}

AdamState AdamState::ZerosLike(const SaeParams& p) {
  AdamState s;
  s.m_W_enc = at::zeros_like(p.W_enc);
  s.v_W_enc = at::zeros_like(p.W_enc);
  s.m_b_enc = at::zeros_like(p.b_enc);
  s.v_b_enc = at::zeros_like(p.b_enc);
  s.m_W_dec = at::zeros_like(p.W_dec);
  s.v_W_dec = at::zeros_like(p.W_dec);
  s.m_b_dec = at::zeros_like(p.b_dec);
  s.v_b_dec = at::zeros_like(p.b_dec);
  return s;
}

namespace {

// ---- small vector helpers (the compiler vectorises these loops) ----
template <typename T>
inline void Axpy(int64_t n, T a, const T* __restrict x, T* __restrict y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
template <typename T>
inline T Dot(int64_t n, const T* __restrict x, const T* __restrict y) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

// dst[0..n) = src, bypassing the cache where the CPU allows it.
template <typename T>
inline void StoreRow(int64_t n, const T* src, T* dst) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    if (n % 8 == 0 && reinterpret_cast<uintptr_t>(dst) % 32 == 0) {
      for (int64_t i = 0; i < n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
      return;
    }
  }
#endif
  std::memcpy(dst, src, sizeof(T) * n);
}

// Top-k of z[0..n) by value (ties: lower index wins), written in descending
// order, with a min-heap of the best k so far: the reference method, used for
// short rows and for the candidates of SelectTopK.
template <typename T>
void SelectTopKHeap(const T* z, const int64_t* ids, int64_t n, int64_t k, int64_t* idx_out,
                    T* val_out) {
  struct Entry {
    T v;
    int64_t i;
  };
  // "a is better than b"
  auto better = [](const Entry& a, const Entry& b) { return a.v > b.v || (a.v == b.v && a.i < b.i); };
  std::vector<Entry> heap(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) heap[j] = {z[j], ids ? ids[j] : j};
  std::make_heap(heap.begin(), heap.end(), better);  // front = worst kept
  for (int64_t j = k; j < n; ++j) {
    Entry e{z[j], ids ? ids[j] : j};
    if (!better(e, heap.front())) continue;
    std::pop_heap(heap.begin(), heap.end(), better);
    heap.back() = e;
    std::push_heap(heap.begin(), heap.end(), better);
  }
  std::sort_heap(heap.begin(), heap.end(), better);  // best first
  for (int64_t t = 0; t < k; ++t) {
    idx_out[t] = heap[t].i;
    val_out[t] = heap[t].v;
  }
}

// Top-k of z[0..n) in two vectorised passes: the maxima of 64-element blocks
// give a threshold (the k-th largest block maximum is <= the k-th largest
// element), then only elements >= it are collected and ranked. Same result
// as SelectTopKHeap, ties included.
template <typename T>
void SelectTopK(const T* z, int64_t n, int64_t k, int64_t* idx_out, T* val_out) {
  constexpr int64_t kBlock = 64;
  const int64_t nb = n / kBlock;
  if (nb < 2 * k) {
    SelectTopKHeap<T>(z, nullptr, n, k, idx_out, val_out);
    return;
  }
  thread_local std::vector<T> bmax, tmp, cand_v;
  thread_local std::vector<int64_t> cand_i;
  bmax.resize(static_cast<size_t>(nb));
  int64_t b0 = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    // GCC leaves the float max reduction scalar (NaN rules); 8 lanes by hand.
    for (; b0 < nb; ++b0) {
      const float* c = z + b0 * kBlock;
      __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_loadu_ps(c), _mm256_loadu_ps(c + 8)),
                               _mm256_max_ps(_mm256_loadu_ps(c + 16), _mm256_loadu_ps(c + 24)));
      m = _mm256_max_ps(m, _mm256_max_ps(_mm256_max_ps(_mm256_loadu_ps(c + 32), _mm256_loadu_ps(c + 40)),
                                         _mm256_max_ps(_mm256_loadu_ps(c + 48), _mm256_loadu_ps(c + 56))));
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
      bmax[b0] = _mm_cvtss_f32(h);
    }
  }
#endif
  for (int64_t b = b0; b < nb; ++b) {
    const T* c = z + b * kBlock;
    T mx = c[0];
    for (int64_t t = 1; t < kBlock; ++t) mx = c[t] > mx ? c[t] : mx;
    bmax[b] = mx;
  }
  tmp.assign(bmax.begin(), bmax.end());
  std::nth_element(tmp.begin(), tmp.begin() + (nb - k), tmp.end());
  const T thr = tmp[nb - k];
  cand_v.clear();
  cand_i.clear();
  auto collect = [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j)
      if (z[j] >= thr) {
        cand_v.push_back(z[j]);
        cand_i.push_back(j);
      }
  };
  for (int64_t b = 0; b < nb; ++b)
    if (bmax[b] >= thr) collect(b * kBlock, (b + 1) * kBlock);
  collect(nb * kBlock, n);  // the ragged tail
  SelectTopKHeap<T>(cand_v.data(), cand_i.data(), static_cast<int64_t>(cand_v.size()), k, idx_out,
                    val_out);
}

// Top-k over the values z[cand[0..m)] (cand ascending), k <= m.
template <typename T>
void SelectTopKAmong(const T* z, const int64_t* cand, int64_t m, int64_t k, std::vector<T>* scratch,
                     std::vector<int64_t>* scratch_idx, int64_t* idx_out, T* val_out) {
  scratch->resize(static_cast<size_t>(m));
  for (int64_t t = 0; t < m; ++t) (*scratch)[t] = z[cand[t]];
  scratch_idx->resize(static_cast<size_t>(k));
  SelectTopK(scratch->data(), m, k, scratch_idx->data(), val_out);
  for (int64_t t = 0; t < k; ++t) idx_out[t] = cand[(*scratch_idx)[t]];
}

int64_t AutoBlockRows(int64_t B, int64_t n, size_t elem) {
  // Blocks of at most 128 MiB of pre-activations, so memory stays bounded for
  // millions of latents, while the GEMM keeps enough rows to run at full
  // speed (measured on 2 cores, d 768, n 16384: 78 GFLOP/s with 256-row
  // blocks, 124 with 1024, 137 with 2048).
  int64_t rows = static_cast<int64_t>((size_t{128} << 20) / (static_cast<size_t>(n) * elem));
  rows = std::max<int64_t>(rows, 64);
  return std::min(rows, B);
}

// A tensor of `shape` and `st`, reused from `slot` when it already fits.
at::Tensor Reuse(at::Tensor* slot, at::IntArrayRef shape, at::ScalarType st) {
  if (slot == nullptr) return at::empty(shape, st);
  if (!slot->defined() || slot->sizes() != shape || slot->scalar_type() != st) *slot = at::empty(shape, st);
  return *slot;
}

// Σ‖x − x̄‖² over the rows of x (B×d), x̄ the column mean, accumulated in
// double in two passes (stable for activations with a large mean).
template <typename T>
double TotalVariance(const T* x, int64_t B, int64_t d) {
  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < d; ++i) mean[i] += x[b * d + i];
  for (double& m : mean) m /= static_cast<double>(B);
  return at::parallel_reduce(
      0, B, 64, 0.0,
      [&](int64_t lo, int64_t hi, double acc) {
        for (int64_t b = lo; b < hi; ++b)
          for (int64_t i = 0; i < d; ++i) {
            const double e = x[b * d + i] - mean[i];
            acc += e * e;
          }
        return acc;
      },
      std::plus<double>());
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

double AddGhostGrads(const SaeParams& p, const at::Tensor& x, const at::Tensor& xc,
                     const at::Tensor& xhat, const at::Tensor& zD, const at::Tensor& dead_t,
                     double c, SaeGrads* grads) {
  at::Tensor WdD = p.W_dec.index_select(0, dead_t);  // |D|×d
  at::Tensor WeD = p.W_enc.index_select(0, dead_t);
  at::Tensor r = x - xhat;                            // stop-gradient residual
  // exp(z − c) with c the row maximum cannot overflow. With ε scaled by
  // exp(−c) the scaled g and every gradient equal those of exp(z) exactly.
  at::Tensor zmax = std::get<0>(zD.max(1, true));
  at::Tensor E = (zD - zmax).exp();
  at::Tensor graw = at::mm(E, WdD);
  at::Tensor rn = r.norm(2, 1, true), gn = graw.norm(2, 1, true);
  const double eps = 1e-8;
  at::Tensor s = rn / (2 * gn + eps * (-zmax).exp());
  at::Tensor diff = graw * s - r;
  at::Tensor m = diff * diff;
  at::Tensor w = (r * r) / (m + eps);
  const double loss = (w * m).sum(at::kDouble).item<double>() * c;
  at::Tensor dgraw = (w * diff) * (2 * c) * s;  // ∂/∂g, through the stop-gradient scale
  at::Tensor dzD = at::mm(dgraw, WdD.t()) * E;
  grads->W_dec.index_add_(0, dead_t, at::mm(E.t(), dgraw));
  grads->W_enc.index_add_(0, dead_t, at::mm(dzD.t(), xc));
  at::Tensor colsum = dzD.sum(0);
  grads->b_enc.index_add_(0, dead_t, colsum);
  grads->b_dec.sub_(at::mv(WeD.t(), colsum));
  return loss;
}

namespace {

template <typename T>
absl::Status ComputeGradientsT(const SaeParams& p, const at::Tensor& x_in, const StepConfig& cfg,
                               SaeGrads* grads, StepResult* res) {
  const int64_t B = x_in.size(0), d = p.d_in(), n = p.latents(), k = cfg.k;
  const at::ScalarType st = p.W_enc.scalar_type();
  at::Tensor x = x_in.contiguous();
  const T* X = x.data_ptr<T>();
  const T* Wdec = p.W_dec.data_ptr<T>();
  const T* bdec = p.b_dec.data_ptr<T>();

  // Dead set and remedy sizes.
  static const std::vector<int64_t> kNoDead;
  const std::vector<int64_t>& dead = cfg.dead ? *cfg.dead : kNoDead;
  const int64_t nd = static_cast<int64_t>(dead.size());
  const bool auxk = cfg.remedy == Remedy::kAuxK && nd > 0 && cfg.aux_coefficient != 0;
  const bool ghost = cfg.remedy == Remedy::kGhostGrads && nd > 0 && cfg.aux_coefficient != 0;
  const int64_t half_d = std::max<int64_t>(1, d / 2);
  const int64_t k_aux = auxk ? std::min(half_d, nd) : 0;
  const double aux_scale = auxk ? std::min(1.0, static_cast<double>(nd) / half_d) : 0.0;

  res->phase_seconds.clear();
  double t_phase = NowSeconds();
  auto phase = [&](const char* name) {
    const double t = NowSeconds();
    res->phase_seconds.emplace_back(name, t - t_phase);
    t_phase = t;
  };
  // Σ‖x − x̄‖² (fvu's denominator) in double.
  double total_var = cfg.total_var;
  if (total_var <= 0) total_var = TotalVariance(X, B, d);
  const double denom = total_var > 0 ? total_var : 1.0;

  phase("prepare");
  // 1. Encoder GEMM in row blocks, each block reduced to its top-k at once.
  at::Tensor xc = x - p.b_dec;  // B×d
  at::Tensor enc_w = p.W_enc;
  at::Tensor enc_in = xc;
  if (cfg.W_enc_lowp.defined()) {
    enc_w = cfg.W_enc_lowp;
    enc_in = xc.clone();
    RoundToBF16InPlace(enc_in);
  }
  const T* XC = xc.data_ptr<T>();
  at::Tensor idx = at::empty({B, k}, at::kLong), val = at::empty({B, k}, st);
  at::Tensor aux_idx = at::empty({B, k_aux}, at::kLong), aux_val = at::empty({B, k_aux}, st);
  at::Tensor zD = ghost ? at::empty({B, nd}, st) : at::Tensor();
  int64_t* IDX = idx.data_ptr<int64_t>();
  T* VAL = val.data_ptr<T>();
  int64_t* AIDX = aux_idx.data_ptr<int64_t>();
  T* AVAL = aux_val.data_ptr<T>();
  T* ZD = ghost ? zD.data_ptr<T>() : nullptr;
  const int64_t R = cfg.block_rows > 0 ? std::min(cfg.block_rows, B) : AutoBlockRows(B, n, sizeof(T));
  StepWorkspace* ws = cfg.workspace;
  at::Tensor zbuf = Reuse(ws ? &ws->zbuf : nullptr, {R, n}, st);
  at::Tensor enc_wt = enc_w.t();
  double gemm_s = 0;
  if (cfg.screen != nullptr) {
    if constexpr (std::is_same_v<T, float>) {
      SAE_RETURN_IF_ERROR(ScreenedEncode(cfg.screen, p, xc, k, dead, k_aux, IDX, VAL, AIDX, AVAL, ZD,
                                         &res->phase_seconds));
      t_phase = NowSeconds();  // the screen recorded its own phases
    } else {
      return absl::InvalidArgumentError("train.encoder: int8_screened is for float32 parameters");
    }
  }
  for (int64_t r0 = 0; cfg.screen == nullptr && r0 < B; r0 += R) {
    const int64_t rows = std::min(R, B - r0);
    at::Tensor zb = zbuf.narrow(0, 0, rows);
    const double tg = NowSeconds();
    at::addmm_out(zb, p.b_enc, enc_in.narrow(0, r0, rows), enc_wt);
    gemm_s += NowSeconds() - tg;
    const T* Z = zb.data_ptr<T>();
    at::parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
      std::vector<T> scratch;
      std::vector<int64_t> scratch_idx;
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t b = r0 + r;
        const T* zr = Z + r * n;
        SelectTopK(zr, n, k, IDX + b * k, VAL + b * k);
        if (k_aux > 0)
          SelectTopKAmong(zr, dead.data(), nd, k_aux, &scratch, &scratch_idx, AIDX + b * k_aux,
                          AVAL + b * k_aux);
        if (ghost)
          for (int64_t t = 0; t < nd; ++t) ZD[b * nd + t] = zr[dead[t]];
      }
    });
  }
  if (cfg.screen == nullptr) {
    phase("encode_topk");
    res->phase_seconds.back().second -= gemm_s;
    res->phase_seconds.insert(res->phase_seconds.end() - 1, {"encode_gemm", gemm_s});
  }

  // 2. The fired entries (a > 0) of every row, sorted by latent with rows
  //    ascending within a latent (a counting sort). Both sparse passes below
  //    walk latents in order, so each decoder row is read once, sequentially,
  //    instead of once per (token, slot): random row gathers run at a third
  //    of streaming bandwidth here.
  struct Item {
    int32_t row;
    int32_t src;  // 0 main, 1 AuxK
    T a;          // the activation relu(z)
  };
  std::vector<int64_t> offs(static_cast<size_t>(n) + 1, 0);
  int64_t active = 0;
  res->fired.assign(static_cast<size_t>(n), 0);
  // Each row's top-k is in descending order: its first fire_k entries are
  // the ones that would be selected at k = fire_k.
  const int64_t fire_k = cfg.fire_k > 0 ? std::min(cfg.fire_k, k) : k;
  for (int64_t t = 0; t < B * k; ++t)
    if (VAL[t] > 0) {
      ++offs[IDX[t] + 1];
      ++active;
      if (t % k < fire_k) res->fired[IDX[t]] = 1;
    }
  for (int64_t t = 0; t < B * k_aux; ++t)
    if (AVAL[t] > 0) ++offs[AIDX[t] + 1];
  for (int64_t l = 0; l < n; ++l) offs[l + 1] += offs[l];
  std::vector<Item> items(static_cast<size_t>(offs[n]));
  {
    std::vector<int64_t> fill(offs.begin(), offs.end() - 1);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < k; ++j) {
        const int64_t t = b * k + j;
        if (VAL[t] > 0) items[fill[IDX[t]]++] = {static_cast<int32_t>(b), 0, VAL[t]};
      }
      for (int64_t j = 0; j < k_aux; ++j) {
        const int64_t t = b * k_aux + j;
        if (AVAL[t] > 0) items[fill[AIDX[t]]++] = {static_cast<int32_t>(b), 1, AVAL[t]};
      }
    }
  }
  phase("sort");

  // 3. Decode x̂ = b_dec + Σ a W_dec[i] (and AuxK's ê = Σ a W_dec[i], no b_dec):
  //    each thread owns a range of rows and streams the decoder once.
  at::Tensor xhat = Reuse(ws ? &ws->xhat : nullptr, {B, d}, st);
  at::Tensor gx = Reuse(ws ? &ws->gx : nullptr, {B, d}, st);
  at::Tensor ehat = auxk ? at::zeros({B, d}, st) : at::Tensor();
  at::Tensor gaux = auxk ? at::empty({B, d}, st) : at::Tensor();
  T* XH = xhat.data_ptr<T>();
  T* EH = auxk ? ehat.data_ptr<T>() : nullptr;
  T* GX = gx.data_ptr<T>();
  T* GA = auxk ? gaux.data_ptr<T>() : nullptr;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B));
  at::parallel_for(0, parts, 1, [&](int64_t plo, int64_t phi) {
    for (int64_t part = plo; part < phi; ++part) {
      const int64_t rlo = B * part / parts, rhi = B * (part + 1) / parts;
      for (int64_t b = rlo; b < rhi; ++b) std::memcpy(XH + b * d, bdec, sizeof(T) * d);
      for (int64_t l = 0; l < n; ++l) {
        const T* w = Wdec + l * d;
        for (int64_t t = offs[l]; t < offs[l + 1]; ++t) {
          const Item& it = items[t];
          if (it.row < rlo) continue;
          if (it.row >= rhi) break;
          Axpy(d, it.a, w, (it.src == 0 ? XH : EH) + int64_t{it.row} * d);
        }
      }
    }
  });
  phase("decode");

  // 4. Residuals and the gradients w.r.t. x̂ (fvu) and ê (AuxK), per row.
  std::vector<double> sse_row(static_cast<size_t>(B)), aux_row(static_cast<size_t>(B));
  std::vector<double> rnorm_row(static_cast<size_t>(B)), xnorm_row(static_cast<size_t>(B));
  const T c_main = static_cast<T>(2.0 / denom);
  const T c_aux = static_cast<T>(2.0 * cfg.aux_coefficient * aux_scale / denom);
  at::parallel_for(0, B, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const T* xh = XH + b * d;
      const T* xr = X + b * d;
      T* g = GX + b * d;
      const T* xcr = XC + b * d;
      double sse = 0, rn = 0, xn = 0;
      for (int64_t i = 0; i < d; ++i) {
        const T e = xh[i] - xr[i];
        sse += static_cast<double>(e) * e;
        g[i] = c_main * e;
        const double r = static_cast<double>(xh[i]) - bdec[i];
        rn += r * r;
        xn += static_cast<double>(xcr[i]) * xcr[i];
      }
      sse_row[b] = sse;
      rnorm_row[b] = std::sqrt(rn);
      xnorm_row[b] = std::sqrt(xn);
      if (k_aux > 0) {
        // target e = x − x̂ (stop-gradient); with auxk_fit, ê is compared
        // after scaling by α = clamp(⟨ê, e⟩ / ‖ê‖², 0, 1) (stop-gradient).
        const T* eh = EH + b * d;
        T* ga = GA + b * d;
        T alpha = 1;
        if (cfg.auxk_fit) {
          double num = 0, den = 0;
          for (int64_t i = 0; i < d; ++i) {
            num += static_cast<double>(eh[i]) * (static_cast<double>(xr[i]) - xh[i]);
            den += static_cast<double>(eh[i]) * eh[i];
          }
          if (den > 0) alpha = static_cast<T>(std::clamp(num / den, 0.0, 1.0));
        }
        double s = 0;
        for (int64_t i = 0; i < d; ++i) {
          const T diff = alpha * eh[i] - (xr[i] - xh[i]);
          s += static_cast<double>(diff) * diff;
          ga[i] = c_aux * alpha * diff;
        }
        aux_row[b] = s;
      }
    }
  });
  double sse = 0, aux_sum = 0, recon_norm = 0, input_norm = 0;
  for (int64_t b = 0; b < B; ++b) {
    sse += sse_row[b];
    recon_norm += rnorm_row[b];
    input_norm += xnorm_row[b];
    if (k_aux > 0) aux_sum += aux_row[b];
  }

  // 5. Weight gradients, latent by latent (one thread per latent's rows: no
  //    atomics, deterministic): ∂/∂a = g·W_dec[l] (zero unless a > 0), then
  //    ∂W_dec[l] = Σ a g, ∂W_enc[l] = Σ ∂a (x − b_dec), ∂b_enc[l] = Σ ∂a.
  T* gWenc = grads->W_enc.data_ptr<T>();
  T* gWdec = grads->W_dec.data_ptr<T>();
  T* gbenc = grads->b_enc.data_ptr<T>();
  at::parallel_for(0, n, 64, [&](int64_t lo, int64_t hi) {
    // Rows accumulate in thread-local buffers and are written once with
    // streaming stores, so the 2·n·d gradient bytes do not evict the
    // residual rows that the next latents read.
    std::vector<T> ge_buf(static_cast<size_t>(d)), gd_buf(static_cast<size_t>(d));
    const int64_t n_items = static_cast<int64_t>(items.size());
    T* ge = ge_buf.data();
    T* gd = gd_buf.data();
    for (int64_t l = lo; l < hi; ++l) {
      const T* w = Wdec + l * d;
      std::memset(ge, 0, sizeof(T) * d);
      std::memset(gd, 0, sizeof(T) * d);
      T gb = 0;
      for (int64_t t = offs[l]; t < offs[l + 1]; ++t) {
        const Item& it = items[t];
        const T* g = (it.src == 0 ? GX : GA) + int64_t{it.row} * d;
        // The rows of the next entry are random: start fetching them now.
        const int64_t tn = t + 1 < n_items ? t + 1 : t;
        const char* gn = reinterpret_cast<const char*>((items[tn].src == 0 ? GX : GA) + int64_t{items[tn].row} * d);
        const char* xn = reinterpret_cast<const char*>(XC + int64_t{items[tn].row} * d);
        for (int64_t off = 0; off < d * static_cast<int64_t>(sizeof(T)); off += 64) {
          __builtin_prefetch(gn + off);
          __builtin_prefetch(xn + off);
        }
        const T ga = Dot(d, g, w);
        Axpy(d, it.a, g, gd);
        Axpy(d, ga, XC + int64_t{it.row} * d, ge);
        gb += ga;
      }
      if (cfg.project_decoder_grad) {
        // Remove the component along the (unit) decoder row, while both are in cache.
        const T dot = Dot(d, gd, w);
        if (dot != 0) Axpy(d, -dot, w, gd);
      }
      StoreRow(d, ge, gWenc + l * d);
      StoreRow(d, gd, gWdec + l * d);
      gbenc[l] = gb;
    }
  });
#if defined(__AVX2__)
  _mm_sfence();
#endif
  phase("scatter");
  // b_dec: Σ_rows ∂/∂x̂ from the decode, minus Σ_l (∂/∂b_enc[l]) W_enc[l]
  // from the encoder input x − b_dec.
  grads->b_dec.copy_(gx.sum(0));
  grads->b_dec.sub_(at::mv(p.W_enc.t(), grads->b_enc));

  // 4. Ghost Grads: dense over the dead set only (ALGORITHMS.md §4).
  double ghost_loss = 0;
  if (ghost) {
    at::Tensor dead_t = at::from_blob(const_cast<int64_t*>(dead.data()), {nd}, at::kLong).clone();
    ghost_loss = AddGhostGrads(p, x, xc, xhat, zD, dead_t, cfg.aux_coefficient / denom, grads);
  }

  phase("b_dec_ghost");
  // 5. The decoder gradients were projected in the latent pass; Ghost Grads
  //    added to the dead rows since, so project those again (P is linear
  //    and idempotent: P(Pg + h) = Pg + Ph).
  if (cfg.project_decoder_grad && ghost) {
    at::parallel_for(0, nd, 64, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) {
        T* gd = gWdec + dead[t] * d;
        const T* w = Wdec + dead[t] * d;
        const T dot = Dot(d, gd, w);
        if (dot != 0) Axpy(d, -dot, w, gd);
      }
    });
  }

  phase("project");
  res->sse = sse;
  res->recon_norm = recon_norm;
  res->input_norm = input_norm;
  res->active = active;
  res->total_var = total_var;
  res->mse = sse / static_cast<double>(B * d);
  res->fvu = sse / denom;
  res->l0 = static_cast<double>(active) / static_cast<double>(B);
  if (auxk) res->aux_loss = cfg.aux_coefficient * aux_scale * aux_sum / denom;
  if (ghost) res->aux_loss = ghost_loss;
  if (!auxk && !ghost) res->aux_loss = 0;
  res->loss = res->fvu + res->aux_loss;
  return absl::OkStatus();
}

absl::Status CheckShapes(const SaeParams& p, const at::Tensor& x, int64_t k) {
  if (!p.W_enc.defined() || p.W_enc.dim() != 2)
    return absl::FailedPreconditionError("SAE parameters are not initialised");
  if (x.dim() != 2 || x.size(1) != p.d_in())
    return absl::InvalidArgumentError(absl::StrCat("batch has ", x.dim() == 2 ? x.size(1) : -1,
                                                   " columns, the SAE expects d_in ", p.d_in()));
  if (x.scalar_type() != p.W_enc.scalar_type())
    return absl::InvalidArgumentError("batch dtype differs from the SAE's");
  if (k < 1 || k > p.latents())
    return absl::InvalidArgumentError(absl::StrCat("k (", k, ") must be in [1, latents (", p.latents(), ")]"));
  if (x.device() != p.W_enc.device())
    return absl::InvalidArgumentError("batch and SAE parameters are on different devices");
  return absl::OkStatus();
}

}  // namespace

absl::Status ComputeGradients(const SaeParams& params, const at::Tensor& x, const StepConfig& cfg,
                              SaeGrads* grads, StepResult* result) {
  SAE_RETURN_IF_ERROR(CheckShapes(params, x, cfg.k));
  if ((cfg.aten || !params.W_enc.device().is_cpu()) && cfg.screen != nullptr)
    return absl::UnimplementedError(absl::StrCat(
        "train.encoder: int8_screened is implemented for the CPU step only, not for ",
        params.W_enc.device().is_cpu() ? std::string("the ATen step") : params.W_enc.device().str()));
  if (cfg.aten || !params.W_enc.device().is_cpu())
    return ComputeGradientsATen(params, x, cfg, grads, result);
  try {
    at::NoGradGuard no_grad;
    if (params.W_enc.scalar_type() == at::kDouble)
      return ComputeGradientsT<double>(params, x, cfg, grads, result);
    if (params.W_enc.scalar_type() == at::kFloat)
      return ComputeGradientsT<float>(params, x, cfg, grads, result);
    return absl::InvalidArgumentError("SAE parameters must be float32 or float64");
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("sae step: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<EncodeResult> Encode(const SaeParams& p, const at::Tensor& x_in, int64_t k) {
  SAE_RETURN_IF_ERROR(CheckShapes(p, x_in, k));
  try {
    at::NoGradGuard no_grad;
    at::Tensor x = x_in.contiguous();
    const int64_t B = x.size(0), n = p.latents();
    EncodeResult out;
    out.indices = at::empty({B, k}, at::kLong);
    out.acts = at::empty({B, k}, x.scalar_type());
    const int64_t R = AutoBlockRows(B, n, x.element_size());
    at::Tensor xc = x - p.b_dec;
    at::Tensor zbuf = at::empty({R, n}, x.scalar_type());
    for (int64_t r0 = 0; r0 < B; r0 += R) {
      const int64_t rows = std::min(R, B - r0);
      at::Tensor zb = zbuf.narrow(0, 0, rows);
      at::addmm_out(zb, p.b_enc, xc.narrow(0, r0, rows), p.W_enc.t());
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sae_encode", [&] {
        const scalar_t* Z = zb.data_ptr<scalar_t>();
        int64_t* I = out.indices.data_ptr<int64_t>();
        scalar_t* V = out.acts.data_ptr<scalar_t>();
        at::parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
          for (int64_t r = lo; r < hi; ++r) SelectTopK(Z + r * n, n, k, I + (r0 + r) * k, V + (r0 + r) * k);
        });
      });
    }
    out.acts.clamp_min_(0);
    // Sparse decode (B·k·d work, no B×k×d temporary).
    out.x_hat = std::get<0>(at::embedding_bag(p.W_dec, out.indices.reshape({-1}),
                                              at::arange(0, B * k, k, at::kLong), false, 0, false,
                                              out.acts.reshape({-1})));
    out.x_hat.add_(p.b_dec);
    return out;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("sae encode: ", e.what_without_backtrace()));
  }
}

double GlobalGradNorm(const SaeGrads& g) {
  double s = 0;
  for (const at::Tensor* t : {&g.W_enc, &g.b_enc, &g.W_dec, &g.b_dec}) {
    const double n = t->norm().item<double>();
    s += n * n;
  }
  return std::sqrt(s);
}

double ClipScale(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  return std::min(1.0, max_norm / (norm + 1e-6));
}

namespace {

template <typename T>
void AdamRows(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, int64_t rows, int64_t cols, const AdamConfig& cfg,
              double bc1, double bc2, bool renorm, float* lowp) {
  const T b1 = static_cast<T>(cfg.beta1), b2 = static_cast<T>(cfg.beta2);
  const T omb1 = static_cast<T>(1 - cfg.beta1), omb2 = static_cast<T>(1 - cfg.beta2);
  const T step = static_cast<T>(cfg.lr / bc1);
  const T inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2));
  const T eps = static_cast<T>(cfg.eps);
  const T cs = static_cast<T>(cfg.clip_scale);
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)),
                   [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      T* __restrict pr = p + r * cols;
      const T* __restrict gr = g + r * cols;
      T* __restrict mr = m + r * cols;
      T* __restrict vr = v + r * cols;
#pragma omp simd
      for (int64_t i = 0; i < cols; ++i) {
        const T gi = gr[i] * cs;
        const T mi = b1 * mr[i] + omb1 * gi;
        const T vi = b2 * vr[i] + omb2 * gi * gi;
        mr[i] = mi;
        vr[i] = vi;
        pr[i] -= step * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
      }
      if (renorm) {
        const T nrm = std::sqrt(Dot(cols, pr, pr));
        if (nrm > 0) {
          const T inv = T(1) / nrm;
          for (int64_t i = 0; i < cols; ++i) pr[i] *= inv;
        }
      }
      if (lowp != nullptr) {
        float* lr = lowp + r * cols;
        for (int64_t i = 0; i < cols; ++i) lr[i] = RoundToBF16(static_cast<float>(pr[i]));
      }
    }
  });
}

template <typename T>
void AdamUpdateT(SaeParams* p, const SaeGrads& g, const AdamConfig& cfg, AdamState* s,
                 at::Tensor* lowp) {
  s->step += 1;
  const double bc1 = 1 - std::pow(cfg.beta1, static_cast<double>(s->step));
  const double bc2 = 1 - std::pow(cfg.beta2, static_cast<double>(s->step));
  const int64_t n = p->latents(), d = p->d_in();
  float* lp = (lowp != nullptr && lowp->defined()) ? lowp->data_ptr<float>() : nullptr;
  AdamRows<T>(p->W_enc.data_ptr<T>(), g.W_enc.data_ptr<T>(), s->m_W_enc.data_ptr<T>(),
              s->v_W_enc.data_ptr<T>(), n, d, cfg, bc1, bc2, false, lp);
  AdamRows<T>(p->W_dec.data_ptr<T>(), g.W_dec.data_ptr<T>(), s->m_W_dec.data_ptr<T>(),
              s->v_W_dec.data_ptr<T>(), n, d, cfg, bc1, bc2, cfg.renormalize_decoder, nullptr);
  AdamRows<T>(p->b_enc.data_ptr<T>(), g.b_enc.data_ptr<T>(), s->m_b_enc.data_ptr<T>(),
              s->v_b_enc.data_ptr<T>(), 1, n, cfg, bc1, bc2, false, nullptr);
  AdamRows<T>(p->b_dec.data_ptr<T>(), g.b_dec.data_ptr<T>(), s->m_b_dec.data_ptr<T>(),
              s->v_b_dec.data_ptr<T>(), 1, d, cfg, bc1, bc2, false, nullptr);
}

}  // namespace

void AdamUpdate(SaeParams* params, const SaeGrads& grads, const AdamConfig& cfg, AdamState* state,
                at::Tensor* W_enc_lowp) {
  at::NoGradGuard no_grad;
  if (!params->W_enc.device().is_cpu()) {
    AdamUpdateATen(params, grads, cfg, state, W_enc_lowp);
  } else if (params->W_enc.scalar_type() == at::kDouble) {
    AdamUpdateT<double>(params, grads, cfg, state, nullptr);
  } else {
    AdamUpdateT<float>(params, grads, cfg, state, W_enc_lowp);
  }
}

void RoundToBF16InPlace(at::Tensor t) {
  float* f = t.data_ptr<float>();
  const int64_t n = t.numel();
  at::parallel_for(0, n, 1 << 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) f[i] = RoundToBF16(f[i]);
  });
}

}  // namespace sae
