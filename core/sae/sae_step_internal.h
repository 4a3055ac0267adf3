// Internals of the training step shared by its implementations (sae_step.cc,
// sae_step_aten.cc) and by the encoders that reuse its top-k selection:
// not part of the core/sae interface (tests may include it).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/sae/parallel_grain.h"
#include "core/sae/sae_step.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace sae::internal {

// What the remedy adds to this step (ALGORITHMS.md §4): the dead set, and for
// AuxK k_aux = min(d/2, |dead|) with its scale min(1, |dead| / (d/2)).
struct RemedyPlan {
  const std::vector<int64_t>* dead = nullptr;  // never null after PlanRemedy
  int64_t nd = 0;
  bool auxk = false, ghost = false;
  int64_t k_aux = 0;
  double aux_scale = 0;
};
RemedyPlan PlanRemedy(const StepConfig& cfg, int64_t d);

// Multi-TopK (ALGORITHMS.md §4): with 0 < target_k < k the first kt entries
// of each row form the target-k reconstruction and the current-k term weighs
// w_cur; otherwise kt = k and w_cur = 0.
struct MultiTopKPlan {
  int64_t kt = 0;
  bool multi = false;
  double w_cur = 0;
};
inline MultiTopKPlan PlanMultiTopK(const StepConfig& cfg) {
  MultiTopKPlan m;
  m.kt = cfg.target_k > 0 && cfg.target_k < cfg.k ? cfg.target_k : cfg.k;
  m.multi = m.kt < cfg.k;
  m.w_cur = m.multi ? cfg.current_k_weight : 0.0;
  return m;
}

// The sums over a batch that a step's metrics come from.
struct StepSums {
  double sse = 0;         // Σ‖x − x̂‖² (x̂ at the step's k)
  double sse_target = 0;  // Multi-TopK: Σ‖x − x̂_t‖² (x̂_t at the target k)
  double sse_cur = 0;     // Multi-TopK: Σ‖x − b_dec − β(x̂ − b_dec)‖²
  double aux = 0;         // Σ‖α ê − e‖² (AuxK)
  double recon_norm = 0;  // Σ‖x̂ − b_dec‖
  double input_norm = 0;  // Σ‖x − b_dec‖
};

// StepResult's metrics and loss for B rows of width d from the sums, the
// active entries, Σ‖x − x̄‖² and Ghost Grads' loss term (both step
// implementations).
void FillStepMetrics(const StepSums& s, int64_t active, double total_var, double ghost_loss, const StepConfig& cfg,
                     const RemedyPlan& rp, int64_t B, int64_t d, StepResult* res);

// Shapes, dtypes and devices of a step's or an encode's inputs.
absl::Status CheckShapes(const SaeParams& p, const at::Tensor& x, int64_t k);

// The latent counted as fired within the first fire_k of a row's top-k:
// cfg.fire_k clamped to [1, k] (0 = k).
inline int64_t FireK(const StepConfig& cfg) { return cfg.fire_k > 0 ? std::min(cfg.fire_k, cfg.k) : cfg.k; }

// Ghost Grads (ALGORITHMS.md §4) over the dead latents `dead_t` (int64, on
// the parameters' device): adds its gradients into the dead rows of W_dec and
// W_enc, into b_enc, and (through x − b_dec) into b_dec, which must already
// hold the rest of its gradient. zD: the dead latents' pre-activations (B×|D|),
// xc = x − b_dec, c = coefficient / Σ‖x − x̄‖². Returns the loss term. Used by
// both step implementations; the decoder rows are not projected here.
double AddGhostGrads(const SaeParams& p, const at::Tensor& x, const at::Tensor& xc, const at::Tensor& xhat,
                     const at::Tensor& zD, const at::Tensor& dead_t, double c, SaeGrads* grads);

// The step in device-generic ATen operations (CUDA tensors; CPU with
// StepConfig::aten). It materialises the B×n pre-activations and B·k×d
// gradient temporaries.
absl::Status ComputeGradientsATen(const SaeParams& params, const at::Tensor& x, const StepConfig& cfg, SaeGrads* grads,
                                  StepResult* result);

// AdamUpdate in ATen operations (non-CPU tensors).
void AdamUpdateATen(SaeParams* params, const SaeGrads& grads, const AdamConfig& cfg, AdamState* state,
                    at::Tensor* W_enc_lowp);

// kMinParallelWork and GrainFor: core/sae/parallel_grain.h.

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
#if defined(__AVX512F__)
  // A whole line per store where the row allows it: the latent pass at d 4096
  // / 32768 / batch 1024 took 124 ms against 129-133 with half-line stores.
  if constexpr (std::is_same_v<T, float>) {
    if (n % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 64 == 0) {
      for (int64_t i = 0; i < n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
      return;
    }
  }
#endif
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
void SelectTopKHeap(const T* z, const int64_t* ids, int64_t n, int64_t k, int64_t* idx_out, T* val_out) {
  struct Entry {
    T v;
    int64_t i;
  };
  // "a is better than b"
  auto better = [](const Entry& a, const Entry& b) { return a.v > b.v || (a.v == b.v && a.i < b.i); };
  thread_local std::vector<Entry> heap;  // (an allocation per row cost a fifth of a small row's selection)
  heap.resize(static_cast<size_t>(k));
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
  int64_t b1 = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    // The blocks above the threshold, 8 lanes per compare (the scalar pass
    // was half of a small row's selection time); the same elements, in the
    // same ascending order, as `collect`.
    const __m256 tv = _mm256_set1_ps(thr);
    for (; b1 < nb; ++b1) {
      if (!(bmax[b1] >= thr)) continue;
      const float* c = z + b1 * kBlock;
      for (int64_t j = 0; j < kBlock; j += 8) {
        unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(c + j), tv, _CMP_GE_OQ)));
        while (m != 0) {
          const int t = __builtin_ctz(m);
          m &= m - 1;
          cand_v.push_back(c[j + t]);
          cand_i.push_back(b1 * kBlock + j + t);
        }
      }
    }
  }
#endif
  for (int64_t b = b1; b < nb; ++b)
    if (bmax[b] >= thr) collect(b * kBlock, (b + 1) * kBlock);
  collect(nb * kBlock, n);  // the ragged tail
  SelectTopKHeap<T>(cand_v.data(), cand_i.data(), static_cast<int64_t>(cand_v.size()), k, idx_out, val_out);
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

inline int64_t AutoBlockRows(int64_t B, int64_t n, size_t elem) {
  // Blocks of at most 128 MiB of pre-activations, so memory stays bounded for
  // millions of latents, while the GEMM keeps enough rows to run at full
  // speed (measured on 2 cores, d 768, n 16384: 78 GFLOP/s with 256-row
  // blocks, 124 with 1024, 137 with 2048).
  int64_t rows = static_cast<int64_t>((size_t{128} << 20) / (static_cast<size_t>(n) * elem));
  rows = std::max<int64_t>(rows, 64);
  return std::min(rows, B);
}

// How the float32 step runs its oneDNN encoder GEMM (sae_step.cc
// EncodeAndSelect). per_thread: each thread multiplies blocks of `rows` rows
// on its own and selects their top-k while the block's pre-activations are
// in its L2 (about 256 KiB of them, at least 32 rows: oneDNN's f32 kernel
// runs at 137 GFLOP/s with 16-row blocks, 225-245 with 32 or more, d 64,
// 4096 latents, one core); chosen when the encoder (n·d floats)
// is at most 8 MiB, so that every block's pass over it hits the shared
// cache. Otherwise blocks of AutoBlockRows rows, each multiplied by all
// threads together. block_rows > 0 (tests) fixes the block size.
struct EncoderPlan {
  int64_t rows = 0;
  bool per_thread = false;
};
inline EncoderPlan PlanEncoder(int64_t B, int64_t n, int64_t d, int64_t block_rows) {
  EncoderPlan e;
  e.per_thread = static_cast<size_t>(n) * static_cast<size_t>(d) * sizeof(float) <= (size_t{8} << 20);
  if (block_rows > 0) {
    e.rows = std::min(block_rows, B);
  } else if (e.per_thread) {
    const int64_t r = static_cast<int64_t>((size_t{256} << 10) / (static_cast<size_t>(n) * sizeof(float)));
    e.rows = std::min(std::clamp<int64_t>(r / 8 * 8, 32, 512), B);
  } else {
    e.rows = AutoBlockRows(B, n, sizeof(float));
  }
  return e;
}

// A tensor of `shape` and `st`, reused from `slot` when it already fits.
inline at::Tensor Reuse(at::Tensor* slot, at::IntArrayRef shape, at::ScalarType st) {
  if (slot == nullptr) return at::empty(shape, st);
  if (!slot->defined() || slot->sizes() != shape || slot->scalar_type() != st) *slot = at::empty(shape, st);
  return *slot;
}

}  // namespace sae::internal
