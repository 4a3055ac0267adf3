// A random SAE for the step's unit tests (sae::testing). Header-only.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "core/sae/sae_step.h"

namespace sae::testing {

// A random n × d SAE (seeded, drawn in float64, then cast to st): encoder
// rows of norm ~1, unit decoder rows, b_enc ~ N(0, 0.1²), b_dec ~ N(0, b_dec_scale²).
inline SaeParams RandomSae(int64_t n, int64_t d, uint64_t seed, at::ScalarType st, double b_dec_scale) {
  at::manual_seed(seed);
  SaeParams p;
  p.W_enc = (at::randn({n, d}, at::kDouble) / std::sqrt(static_cast<double>(d))).to(st);
  p.b_enc = (at::randn({n}, at::kDouble) * 0.1).to(st);
  p.W_dec = at::randn({n, d}, at::kDouble);
  p.W_dec = (p.W_dec / p.W_dec.norm(2, 1, true)).to(st);
  p.b_dec = (at::randn({d}, at::kDouble) * b_dec_scale).to(st);
  return p;
}

}  // namespace sae::testing
