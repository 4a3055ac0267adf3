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
  double dead_ratio = 0, grad_norm = 0, seconds = 0;
  // Σ‖x̂ − b_dec‖ / Σ‖x − b_dec‖ over the batch (1 = the input's scale).
  double recon_norm_ratio = 0;
  double allreduce_seconds = 0;  // gradient and statistics all-reduces
  int64_t allreduce_bytes = 0;
  std::vector<std::pair<const char*, double>> phase_seconds;
};

}  // namespace sae
