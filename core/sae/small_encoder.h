// The float32 encoder of small SAEs with the top-k fused into the GEMM's
// epilogue (docs/performance.md "Small models", issue 14 item 5). Internal
// to core/sae.
//
// At small d the oneDNN GEMM makes the pre-activations faster than any
// selection can read them back (d 48: 48 multiply-adds per value, against a
// top-k pass over the same B×n values in memory that cost more than the
// GEMM). This kernel computes a register tile of pre-activations (6 rows ×
// 64 latents, a broadcast multiply-add per input dimension), adds b_enc,
// and compares each 16-lane vector with its row's running threshold, the
// k-th largest value seen so far; only the values above it leave the
// registers, into a sorted per-row top-k (for k <= 32 one or two 16-lane
// vectors with branch-free insertion, a sorted list beyond). W_enc is packed
// once per step into panels of 64 latents (d × 64 floats, contiguous).
//
// Every pre-activation is computed the same way wherever it sits in a tile:
// one fused multiply-add per input dimension in ascending order from zero,
// then b_enc[j] (last, as oneDNN's bias: with bf16-rounded operands the
// products are exact and the sum often is too), so SelectTopK's values are
// bitwise those Dense writes for the same inputs (and, for d <= 256, those
// of oneDNN's avx512 f32 kernel: small_encoder_test.cc; the step runs it up
// to d 1024; at d 768 and 1024 oneDNN adds in another order, and both are
// within float rounding). AVX-512 builds run
// the vector kernel; others a portable scalar one with the same structure
// (plain multiply-adds, which the compiler may or may not contract: Dense
// and SelectTopK still agree within one build).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace sae::internal {

class SmallEncoder {
 public:
  static constexpr int64_t kPanel = 64;    // latents per packed panel (4 vectors of 16)
  static constexpr int64_t kTileRows = 6;  // rows per register tile

  // Packs W (n×d, row-major) and b (n) for this step's products. Latents past
  // n in the last panel get weight 0 and bias −inf (never selected).
  void SetWeights(const float* W, const float* b, int64_t n, int64_t d);

  // z (rows×n, row-major) = x (rows×d, row-major) Wᵀ + b.
  void Dense(const float* x, int64_t rows, float* z) const;

  // Each row's top-k (1 <= k <= n) of x Wᵀ + b in descending order, ties to
  // the lower index (as SelectTopKHeap): idx and val are rows×k. Thread-safe
  // (per-thread scratch).
  void SelectTopK(const float* x, int64_t rows, int64_t k, int64_t* idx, float* val) const;

  // Rows per block: every block passes once over the packed encoder (callers
  // hand out work in multiples of it).
  int64_t BlockRows() const;

  // Rows per work item when `threads` threads take items of a batch of
  // `rows` from a shared counter: 96 for an encoder in L2; for a larger one
  // (streamed from L3 once per block) at most BlockRows(), a multiple of the
  // tile, and as many items per thread for every thread (d 256, 4096 rows,
  // 2 threads: 12 items of 342 rows, where 384-row items made 11, one thread
  // taking 2176 rows and the other 1920).
  int64_t ItemRows(int64_t rows, int64_t threads) const;

  int64_t n() const { return n_; }
  int64_t d() const { return d_; }

  // "avx512" or "scalar": the kernel this build runs.
  static const char* Kernel();

 private:
  int64_t n_ = 0, d_ = 0, panels_ = 0;
  std::vector<float> w_store_, b_store_;  // over-allocated for 64-byte alignment
  float* w_ = nullptr;                    // panels_ × d × 64
  float* b_ = nullptr;                    // panels_ × 64
};

// Whether EncodeAndSelect runs SmallEncoder for a float32 step of this shape
// (docs/performance.md "Small models": where it measured faster than oneDNN's
// GEMM followed by the selection). Never with the scalar kernel.
bool UseSmallEncoder(int64_t n, int64_t d, int64_t k);

}  // namespace sae::internal
