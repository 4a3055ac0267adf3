// Text generation as llama2.c's `run` does it: the prompt is encoded with BOS,
// fed one token per step, and sampled tokens are printed until `steps`
// positions or BOS; pieces are decoded and filtered like its safe_printf.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/lm/model.h"
#include "core/lm/tokenizer.h"

namespace sae {

// A hook that also learns the position of the token it sees: Generate feeds
// one token per forward step, so x is [1, 1, dim] for position `pos` (0: BOS).
struct PositionHook {
  int64_t layer = 0;
  HookPoint point = HookPoint::kResidPost;
  std::function<void(int64_t pos, at::Tensor& x)> fn;
};

struct GenerateOptions {
  std::string prompt;
  int64_t steps = 256;  // 0 or more than the context: the context length
  float temperature = 1.0f;
  float top_p = 0.9f;
  uint64_t seed = 1;
  std::vector<PositionHook> hooks;  // e.g. steering (core/interp/steering.h)
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // prompt (with BOS) and generated ids
  int64_t generated = 0;
  double seconds = 0;
};

// `emit` receives each printable piece.
absl::StatusOr<GenerateResult> Generate(const Transformer& model, const Tokenizer& tok, const GenerateOptions& opts,
                                        const std::function<void(const std::string&)>& emit);

// Samples `n` independent sequences of `length` tokens (BOS first, sampling
// continues past BOS/EOS with a fresh BOS) in one batch with a KV cache;
// sequence i uses the llama2.c sampler seeded with seed + i (harvest passes
// seed + window + 1: xorshift needs a nonzero state). Row-major [n, length].
// `reference`: the op-by-op ATen forward (ForwardOptions::reference), for tests.
absl::StatusOr<std::vector<int32_t>> SampleBatch(const Transformer& model, int64_t n, int64_t length, float temperature,
                                                 float top_p, uint64_t seed, bool reference = false);

}  // namespace sae
