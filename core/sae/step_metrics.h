// What one optimizer step reports (SaeTrainer::Step). Torch-free, so that
// code which only passes metrics on (the CLI, the coordinator agent)
// includes no tensor headers.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace sae {

struct StepMetrics {
  int64_t step = 0;    // optimizer steps done, including this one
  int64_t tokens = 0;  // tokens seen after this step
  int64_t k = 0;
  double lr = 0, loss = 0, fvu = 0, mse = 0, aux_loss = 0, l0 = 0;
  double fvu_target = 0;  // fvu at the target k (= fvu unless Multi-TopK is on above it)
  // int8_screened: rows of this step recomputed exactly (not certified) and
  // the candidates per row C that the screen used (both 0 otherwise).
  int64_t screen_fallback_rows = 0, screen_candidates = 0;
  double dead_ratio = 0, grad_norm = 0, seconds = 0;
  // Σ‖x̂ − b_dec‖ / Σ‖x − b_dec‖ over the batch (1 = the input's scale).
  double recon_norm_ratio = 0;
  double allreduce_seconds = 0;  // gradient and statistics all-reduces
  int64_t allreduce_bytes = 0;
  // Wall time of each phase of the step, in order, and the calling thread's
  // CPU time in the same phases (the step's own cost with one thread).
  std::vector<std::pair<const char*, double>> phase_seconds, phase_cpu_seconds;
};

}  // namespace sae
