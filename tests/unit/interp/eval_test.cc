#include "core/interp/eval.h"

#include "core/lm/loaders.h"
#include "core/sae/trainer.h"
#include "gtest/gtest.h"
#include "tests/unit/lm/lm_test_util.h"

namespace sae {
namespace {

using lm_test::StoriesDir;

class EvalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string bin = StoriesDir() + "/stories260K.bin";
    if (!std::filesystem::exists(bin)) GTEST_SKIP() << "stories260K not found in " << StoriesDir();
    auto m = LoadModel(bin);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::make_unique<Transformer>(std::move(*m));
    opts_.windows.layer = 2;
    opts_.windows.context = 64;
    opts_.windows.batch = 8;
    opts_.windows.corpus = "generate";
    opts_.windows.seed = 999;
    opts_.num_windows = 16;
  }
  std::unique_ptr<Transformer> model_;
  SaeEvalOptions opts_;
};

TEST_F(EvalTest, IdentitySpliceGivesExactlyTheCleanLoss) {
  auto r = EvaluateReconstruction(
      *model_, nullptr, opts_,
      [](const at::Tensor& x) -> absl::StatusOr<Reconstruction> {
        return Reconstruction{x.clone(), at::Tensor(), at::Tensor()};
      },
      0);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, 16 * 63);
  EXPECT_EQ(r->ce_sae, r->ce_clean);
  EXPECT_EQ(r->kl_sae, 0.0);
  EXPECT_EQ(r->fvu, 0.0);
  EXPECT_DOUBLE_EQ(r->ce_loss_recovered, 1.0);
  EXPECT_DOUBLE_EQ(r->kl_score, 1.0);
  EXPECT_GT(r->ce_zero, r->ce_clean + 0.5);  // zero ablation hurts the model
  EXPECT_GT(r->kl_zero, 0.1);
}

TEST_F(EvalTest, TrainedSaeRecoversFarMoreThanARandomOne) {
  // Train a small SAE on harvested rows (different seed from the eval windows).
  HarvestOptions ho = opts_.windows;
  ho.seed = 1;
  auto h = Harvester::Create(*model_, nullptr, ho);
  ASSERT_TRUE(h.ok()) << h.status();
  const int64_t rows = 8 * 63 * 12, batch = 504;
  std::vector<float> x(static_cast<size_t>(rows * 64));
  ASSERT_TRUE((*h)->Rows(0, rows, x.data(), nullptr).ok());
  TrainerOptions to;
  to.d_in = 64;
  to.latents = 256;
  to.k = 16;
  to.schedule = KSchedule::Constant(16);
  to.lr = 3e-3;
  to.total_tokens = rows * 4;
  to.batch_tokens = batch;
  to.seed = 3;
  auto tr = SaeTrainer::Create(to);
  ASSERT_TRUE(tr.ok()) << tr.status();
  for (int epoch = 0; epoch < 4; ++epoch)
    for (int64_t r = 0; r < rows; r += batch) ASSERT_TRUE((*tr)->Step(x.data() + r * 64, batch).ok());
  LoadedSae trained;
  trained.params = (*tr)->params();
  trained.k = 16;
  auto good = EvaluateSae(*model_, nullptr, opts_, trained);
  ASSERT_TRUE(good.ok()) << good.status();

  LoadedSae random;
  at::manual_seed(5);
  // Untrained: random encoder, an independent random unit-norm decoder.
  random.params.W_enc = at::randn({256, 64}) / 8.0;
  at::Tensor dec = at::randn({256, 64});
  random.params.W_dec = dec / dec.norm(2, 1, true);
  random.params.b_enc = at::zeros({256});
  random.params.b_dec = at::zeros({64});
  random.k = 16;
  auto bad = EvaluateSae(*model_, nullptr, opts_, random);
  ASSERT_TRUE(bad.ok()) << bad.status();

  auto show = [](const SaeEvalResult& r) {
    return ::testing::Message() << "fvu " << r.fvu << " l0 " << r.l0 << " ce clean/sae/zero " << r.ce_clean << "/"
                                << r.ce_sae << "/" << r.ce_zero << " kl sae/zero " << r.kl_sae << "/" << r.kl_zero;
  };
  SCOPED_TRACE(show(*good) << " | random: " << show(*bad));
  EXPECT_LT(good->fvu, 0.5);
  EXPECT_GT(good->ce_loss_recovered, 0.6) << "trained";
  EXPECT_GT(good->ce_loss_recovered, bad->ce_loss_recovered + 0.4);
  EXPECT_GT(good->kl_score, bad->kl_score + 0.4);
  // The trained SAE costs the model several times less loss.
  EXPECT_LT((good->ce_sae - good->ce_clean) * 4, bad->ce_sae - bad->ce_clean);
  EXPECT_LE(good->l0, 16.0);
  EXPECT_GT(good->l0, 1.0);
  EXPECT_GE(good->dead_ratio, 0.0);
  EXPECT_LT(good->dead_ratio, 1.0);
  EXPECT_GE(good->dense_1pct_ratio, good->dense_10pct_ratio);
  // A mismatched SAE width is an error, not a crash.
  LoadedSae wrong = random;
  wrong.params.W_enc = at::zeros({256, 32});
  EXPECT_FALSE(EvaluateSae(*model_, nullptr, opts_, wrong).ok());
}

}  // namespace
}  // namespace sae
