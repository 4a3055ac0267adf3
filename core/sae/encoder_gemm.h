// The fp32 encoder GEMM z = x W_encᵀ + b_enc through oneDNN's matmul (the
// library LibTorch itself links; Debian libdnnl, OpenMP runtime), for the
// CPU training step and the benchmark's floor. Internal to core/sae.
//
// Why not at::addmm: LibTorch's CPU GEMM is OpenBLAS, whose pthreads pool
// runs beside LibTorch's OpenMP pool; on a machine with few cores the two
// pools spin against each other after every call (measured: the same
// 2048×48 by 48×768 product takes 1.3 ms alone and 10-20 ms between OpenMP
// loops on 2 loaded cores), and OpenBLAS's kernel is whatever its CPU table
// (or OPENBLAS_CORETYPE) says. oneDNN threads with the same OpenMP pool as
// every at::parallel_for of the step, picks its kernel from cpuid, and runs
// sequentially when called inside a parallel region, so each thread can
// multiply its own row block into a buffer that stays in its cache
// (docs/performance.md "Small models").
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "core/base/status.h"

namespace sae::internal {

class EncoderGemm {
 public:
  EncoderGemm();
  ~EncoderGemm();
  EncoderGemm(const EncoderGemm&) = delete;
  EncoderGemm& operator=(const EncoderGemm&) = delete;

  // Prepares the products of one step: W (n×d, row-major) reordered into
  // the matmul's weights layout, bias b (n), and a primitive for every row
  // count in `row_counts` (at most 4). W and b are copied (reordered); the
  // pointers need not outlive the call.
  absl::Status SetWeights(const float* W, const float* b, int64_t n, int64_t d, const int64_t* row_counts,
                          int n_row_counts);

  // z (rows×n, row-major, leading dimension n) = x (rows×d) Wᵀ + b, for a
  // `rows` given to SetWeights. Thread-safe between distinct `slot`s (0 ..
  // max threads − 1; each slot has its own scratchpad): inside an OpenMP
  // parallel region oneDNN runs sequentially on the calling thread, outside
  // one it uses every thread.
  absl::Status Run(const float* x, int64_t rows, float* z, int slot);

  // "brg:avx512_core" etc.: the kernel oneDNN chose for the first row count.
  std::string Describe() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace sae::internal
