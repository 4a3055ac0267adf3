#include "core/interp/concepts.h"

#include "tests/unit/interp/interp_fixture.h"

namespace sae {
namespace {

class ConceptsTest : public InterpTest {};

// Sentences with and without the word; the SAE gets one latent aligned with
// the word's mean residual at the hook and one that fires on every token.
TEST_F(ConceptsTest, AKnownDirectionRanksFirstAndTheContrastPushesDownAnEverywhereLatent) {
  const std::vector<std::string> with = {
      "Lily ran to her mom.", "Tom saw his mom in the park.", "The girl hugged her mom and smiled.",
      "His mom made a cake.", "One day, her mom said no.",    "They went home with their mom."};
  const std::vector<std::string> without = {
      "The sun was warm and bright.", "Tom and Lily played with a ball.",  "She ate a red apple.",
      "The bird sang in the tree.",   "The dog made a mess at the party.", "They went home after school."};
  std::vector<int32_t> word = tok_->Encode("mom", false, false);  // the tokenizer adds the leading space
  ASSERT_EQ(word.size(), 1u) << "the test needs ' mom' to be one token";
  const int32_t X = word[0];
  SaeRun run = TiedSae(32, 4);
  const int64_t d = model_->config().dim;
  // Mean residual of X's positions minus the mean of all others, on separate calibration sentences.
  const std::vector<std::string> calib = {"My mom is kind.", "The mom slept.",      "One day a mom came.",
                                          "He was sad.",     "It was a sunny day.", "The cat sat."};
  at::Tensor sx = at::zeros({d}), so = at::zeros({d});
  int64_t nx = 0, no = 0;
  std::vector<at::Tensor> xs, os;
  for (const auto& s : calib) {
    std::vector<int32_t> ids = tok_->Encode(s, true, false);
    std::vector<int64_t> l(ids.begin(), ids.end());
    auto h = HookActivations(*model_, at::from_blob(l.data(), {1, (int64_t)l.size()}, at::kLong).clone(), run.layer,
                             run.hook);
    ASSERT_TRUE(h.ok());
    for (size_t p = 1; p < ids.size(); ++p) {
      if (ids[p] == X) {
        sx += (*h)[0][p], ++nx, xs.push_back((*h)[0][p]);
      } else {
        so += (*h)[0][p], ++no, os.push_back((*h)[0][p]);
      }
    }
  }
  ASSERT_GT(nx, 0);
  at::Tensor u = sx / nx - so / no;
  u = u / u.norm();
  double max_other = -1e9, min_x = 1e9;
  for (auto& t : os) max_other = std::max(max_other, (t * u).sum().item<double>());
  for (auto& t : xs) min_x = std::min(min_x, (t * u).sum().item<double>());
  ASSERT_GT(min_x, max_other) << "the direction should separate the word on its calibration sentences";
  run.sae.params.W_enc[0] = u * 20;
  run.sae.params.W_dec[0] = u;
  run.sae.params.b_enc[0] = -20 * (max_other + min_x) / 2;
  run.sae.params.W_enc[1] = at::zeros({d});
  run.sae.params.b_enc[1] = 1000.0;  // fires on every token with the same value
  std::vector<std::vector<int32_t>> T, C;
  for (const auto& s : with) T.push_back(tok_->Encode(s, true, false));
  for (const auto& s : without) C.push_back(tok_->Encode(s, true, false));
  ConceptOptions opts;
  opts.threshold = 0.1;
  auto with_contrast = SearchConcepts(*model_, tok_.get(), run, T, C, {}, opts);
  ASSERT_TRUE(with_contrast.ok()) << with_contrast.status();
  const auto& hits = with_contrast->hits;
  ASSERT_FALSE(hits.empty());
  EXPECT_EQ(hits[0].latent, 0);
  EXPECT_GE(hits[0].f_texts, 5.0 / 6.0);
  EXPECT_LE(hits[0].f_contrast, 1.0 / 6.0);
  EXPECT_NEAR(hits[0].score, hits[0].f_texts - hits[0].f_contrast, 1e-12);
  for (size_t i = 0; i < hits.size(); ++i)
    if (hits[i].latent == 1) {
      EXPECT_GT(i, 0u);
      EXPECT_DOUBLE_EQ(hits[i].score, 0.0);
      EXPECT_DOUBLE_EQ(hits[i].f_contrast, 1.0);
    }
  // The heatmap of the word latent peaks on the word's token.
  ASSERT_EQ(hits[0].heat.size(), T.size());
  for (size_t t = 0; t < T.size(); ++t) {
    for (size_t p = 1; p < T[t].size(); ++p)
      if (T[t][p] != X) EXPECT_EQ(hits[0].heat[t][p - 1], 0.0f) << with[t] << " token " << p;
  }
  // Without a contrast set the everywhere-latent is not pushed down: it ranks first.
  auto alone = SearchConcepts(*model_, tok_.get(), run, T, {}, {}, opts);
  ASSERT_TRUE(alone.ok());
  EXPECT_EQ(alone->hits[0].latent, 1);
  EXPECT_DOUBLE_EQ(alone->hits[0].score, 1.0);
  // Dashboard maxima normalise per latent: a larger max lowers the latent's ratios.
  std::vector<float> maxes(32, 1e6f);
  auto norm = SearchConcepts(*model_, tok_.get(), run, T, C, maxes, opts);
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(norm->normaliser, "dashboards");
  for (const auto& h : norm->hits) EXPECT_LT(h.mean_norm, 0.01);
}

TEST_F(ConceptsTest, TheDefaultContrastIsTheModelsOwnText) {
  ConceptOptions o;
  o.contrast_windows = 4;
  o.contrast_context = 20;
  auto c = ModelContrastSet(*model_, o);
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c->size(), 4u);
  EXPECT_EQ((*c)[0].size(), 20u);
  EXPECT_EQ((*c)[0][0], model_->config().bos_id);
  EXPECT_NE((*c)[0], (*c)[1]);
  EXPECT_EQ(EncodeLines(*tok_, "a dog\n\n  \nthe cat\n").size(), 2u);
}

}  // namespace
}  // namespace sae
