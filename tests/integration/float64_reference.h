// The exact trajectory of a job, for "the same SAE to float32 rounding"
// checks: the job trained in this process, one rank, in float64. A float32
// run's distance from it is what float32 rounding amounts to after the run's
// amplification; an equivalent run (other world size, resumed elsewhere)
// must be at a distance of the same order. Links sae::worker.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "core/base/config.h"
#include "core/sae/trainer.h"
#include "tests/integration/test_util.h"
#include "worker/batch_source.h"

namespace {

// Trains the job in this process, one rank, in float32 or float64, and
// returns its parameters under their sae.safetensors names, in float64.
inline std::map<std::string, std::vector<double>> TrainInProcess(const fs::path& job_file, bool float64) {
  std::map<std::string, std::vector<double>> out;
  auto job = sae::LoadJobConfig(job_file.string());
  EXPECT_TRUE(job.ok()) << job.status();
  if (!job.ok()) return out;
  auto source = sae::OpenBatchSource(*job, 0);
  EXPECT_TRUE(source.ok()) << source.status();
  if (!source.ok()) return out;
  auto opts = sae::TrainerOptionsFromJob(*job, (*source)->d_in());
  EXPECT_TRUE(opts.ok()) << opts.status();
  if (!opts.ok()) return out;
  opts->float64 = float64;
  auto trainer = sae::SaeTrainer::Create(*opts);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  if (!trainer.ok()) return out;
  std::vector<float> x;
  while ((*trainer)->tokens_seen() < opts->total_tokens) {
    const int64_t rows = std::min(opts->batch_tokens, opts->total_tokens - (*trainer)->tokens_seen());
    EXPECT_TRUE((*source)->Next(rows, &x).ok());
    auto m = (*trainer)->Step(x.data(), rows);
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return out;
  }
  const sae::SaeParams& p = (*trainer)->params();
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"encoder.weight", &p.W_enc},
                         {"encoder.bias", &p.b_enc},
                         {"W_dec", &p.W_dec},
                         {"b_dec", &p.b_dec}}) {
    at::Tensor c = t->to(at::kDouble).contiguous();
    out[name].assign(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  }
  return out;
}

inline double RelDiffTo(const std::vector<float>& a, const std::vector<double>& ref) {
  if (a.size() != ref.size() || ref.empty()) return 1.0;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

}  // namespace
