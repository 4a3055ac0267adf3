// Shared fixture of the interpretability tests: stories260K and its
// tokenizer, and small SAEs built in memory (no training needed).
#pragma once

#include <memory>

#include "core/interp/sae_run.h"
#include "core/lm/loaders.h"
#include "gtest/gtest.h"
#include "tests/unit/lm/lm_test_util.h"

namespace sae {

class InterpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string bin = lm_test::StoriesDir() + "/stories260K.bin";
    if (!std::filesystem::exists(bin)) GTEST_SKIP() << "stories260K not found in " << lm_test::StoriesDir();
    auto m = LoadModel(bin);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::make_unique<Transformer>(std::move(*m));
    auto t = LoadTokenizerFor(bin, model_->config().vocab_size);
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = std::move(*t);
  }
  // A tied SAE: W_enc = W_dec = random unit rows, zero biases, reading `layer`.
  SaeRun TiedSae(int64_t n, int64_t k, int64_t layer = 2, uint64_t seed = 7) const {
    at::manual_seed(seed);
    const int64_t d = model_->config().dim;
    at::Tensor w = at::randn({n, d});
    w = w / w.norm(2, 1, true);
    SaeRun r;
    r.dir = "memory";
    r.layer = layer;
    r.sae.params.W_enc = w.clone();
    r.sae.params.W_dec = w.clone();
    r.sae.params.b_enc = at::zeros({n});
    r.sae.params.b_dec = at::zeros({d});
    r.sae.k = k;
    return r;
  }
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<Tokenizer> tok_;
};

}  // namespace sae
