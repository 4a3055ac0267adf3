#include "core/interp/steering.h"

#include "tests/unit/interp/interp_fixture.h"

namespace sae {
namespace {

class SteeringTest : public InterpTest {
 protected:
  GenerateOptions Gen(uint64_t seed) const {
    GenerateOptions g;
    g.prompt = "Once upon a time";
    g.steps = 60;
    g.seed = seed;
    return g;
  }
  std::vector<int32_t> Plain(const GenerateOptions& g) const {
    auto r = Generate(*model_, *tok_, g, [](const std::string&) {});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->tokens : std::vector<int32_t>{};
  }
};

TEST_F(SteeringTest, ScaleZeroAndClampToTheCurrentValueReproduceTheTextExactly) {
  SaeRun run = TiedSae(64, 8);
  for (uint64_t seed : {1u, 2u, 3u}) {
    const GenerateOptions g = Gen(seed);
    const std::vector<int32_t> plain = Plain(g);
    ASSERT_GT(plain.size(), 10u);
    for (SteerMode mode : {SteerMode::kAdd, SteerMode::kClamp}) {
      SteerOptions so;
      so.mode = mode;
      so.absolute = true;
      so.terms = {{3, 0.0}};
      auto st = Steerer::Create(run, so, {});
      ASSERT_TRUE(st.ok()) << st.status();
      if (mode == SteerMode::kClamp) continue;  // absolute 0 is not "unchanged" where latent 3 fires
      auto r = GenerateSteered(*model_, *tok_, run, g, &*st);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->tokens, plain) << "add with scale 0, seed " << seed;
    }
    // Clamp every latent of the code to the value it has: decode(â) + err = h, bit for bit.
    GenerateOptions gc = g;
    int64_t edited = 0;
    gc.hooks.push_back({run.layer, run.hook, [&](int64_t pos, at::Tensor& x) {
                          if (pos == 0) return;
                          at::Tensor rows = x.reshape({-1, x.size(-1)});
                          auto c = EncodeRows(run.sae, rows);
                          ASSERT_TRUE(c.ok());
                          std::vector<int64_t> lat;
                          for (int64_t i = 0; i < c->indices.size(1); ++i)
                            lat.push_back(c->indices[0][i].item<int64_t>());
                          auto y = ClampRows(run.sae, rows, lat, c->acts.reshape({1, -1}));
                          ASSERT_TRUE(y.ok());
                          EXPECT_TRUE(at::equal(*y, rows));
                          x = y->reshape(x.sizes());
                          ++edited;
                        }});
    EXPECT_EQ(Plain(gc), plain);
    EXPECT_GT(edited, 10);
  }
}

TEST_F(SteeringTest, ClampIsDecodePlusTheErrorTermAndClampToZeroRemovesTheLatent) {
  SaeRun run = TiedSae(64, 8);
  std::vector<int64_t> ids(40);
  for (int64_t i = 0; i < 40; ++i) ids[i] = (i * 37 + 11) % 500 + 3;
  ids[0] = 1;
  auto x = HookActivations(*model_, at::from_blob(ids.data(), {1, 40}, at::kLong).clone(), run.layer, run.hook);
  ASSERT_TRUE(x.ok());
  at::Tensor rows = (*x)[0].narrow(0, 1, 39).contiguous();
  auto c = EncodeRows(run.sae, rows);
  ASSERT_TRUE(c.ok());
  const int64_t j = c->indices[0][0].item<int64_t>();  // fires on row 0 (the largest there)
  const std::vector<float> before = LatentActivations(*c, j);
  ASSERT_GT(before[0], 0);
  // Clamp j to 0 at every row: h' = decode(â with a_j = 0) + (h − decode(â)).
  auto y = ClampRows(run.sae, rows, {j}, at::zeros({39, 1}));
  ASSERT_TRUE(y.ok());
  at::Tensor expect = rows.clone();
  int64_t fired = 0;
  for (int64_t r = 0; r < 39; ++r) {
    if (before[r] > 0) ++fired;
    expect[r] -= before[r] * run.sae.params.W_dec[j];
  }
  EXPECT_GE(fired, 1);
  EXPECT_TRUE(at::allclose(*y, expect, 1e-5, 1e-5));
  // With a tied SAE, latent j's pre-activation drops by exactly a_j: it is gone from the code.
  auto c2 = EncodeRows(run.sae, *y);
  ASSERT_TRUE(c2.ok());
  const std::vector<float> after = LatentActivations(*c2, j);
  for (int64_t r = 0; r < 39; ++r) EXPECT_LT(after[r], 1e-4) << "row " << r;
  // Relative units: clamp to s · max_j.
  std::vector<float> maxes(64, 2.0f);
  SteerOptions so;
  so.mode = SteerMode::kClamp;
  so.terms = {{j, 3.0}};
  auto st = Steerer::Create(run, so, maxes);
  ASSERT_TRUE(st.ok());
  auto z = st->Apply(rows);
  ASSERT_TRUE(z.ok());
  auto c3 = EncodeRows(run.sae, *z);
  ASSERT_TRUE(c3.ok());
  EXPECT_NEAR(LatentActivations(*c3, j)[0], 6.0, 1e-3);  // tied: the new code holds 3 × 2
  // Relative clamp without dashboards is refused by name.
  auto none = Steerer::Create(run, so, {});
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("absolute"), std::string::npos);
}

TEST_F(SteeringTest, LargeAddRaisesTheLatentOnGeneratedTokensOnly) {
  SaeRun run = TiedSae(64, 8);
  const int64_t j = 9;
  auto mean_act = [&](const Steerer* st, bool generated) {
    double sum = 0;
    int64_t cnt = 0;
    for (uint64_t seed : {5u, 6u}) {
      GenerateOptions g = Gen(seed);
      const int64_t P = static_cast<int64_t>(tok_->Encode(g.prompt, true, false).size());
      auto r = GenerateSteered(*model_, *tok_, run, g, st, [&](int64_t pos, const at::Tensor& x) {
        if (pos == 0 || (pos >= P) != generated) return;
        auto c = EncodeRows(run.sae, x);
        sum += LatentActivations(*c, j)[0];
        ++cnt;
      });
      EXPECT_TRUE(r.ok()) << r.status();
    }
    return sum / std::max<int64_t>(cnt, 1);
  };
  SteerOptions so;
  so.mode = SteerMode::kAdd;
  so.on = SteerOn::kGenerated;
  so.terms = {{j, 8.0}};
  auto st = Steerer::Create(run, so, {});
  ASSERT_TRUE(st.ok());
  const double plain = mean_act(nullptr, true), steered = mean_act(&*st, true);
  EXPECT_GT(steered, plain + 4.0) << "plain " << plain << " steered " << steered;
  // The prompt positions are untouched with --steer-on generated.
  EXPECT_DOUBLE_EQ(mean_act(&*st, false), mean_act(nullptr, false));
  // And the text changes.
  auto a = GenerateSteered(*model_, *tok_, run, Gen(5), &*st);
  ASSERT_TRUE(a.ok());
  EXPECT_NE(a->tokens, Plain(Gen(5)));
}

TEST_F(SteeringTest, ParsesTermsAndRefusesBadOnesByName) {
  auto t = ParseSteerTerms("12:4,7:-2.5");
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->size(), 2u);
  EXPECT_EQ((*t)[1].latent, 7);
  EXPECT_DOUBLE_EQ((*t)[1].scale, -2.5);
  EXPECT_FALSE(ParseSteerTerms("12").ok());
  EXPECT_FALSE(ParseSteerTerms("a:1").ok());
  EXPECT_FALSE(SteerModeFromString("multiply").ok());
  SaeRun run = TiedSae(16, 4);
  SteerOptions so;
  so.terms = {{16, 1.0}};
  auto st = Steerer::Create(run, so, {});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("latent 16"), std::string::npos);
}

TEST_F(SteeringTest, FluencyIsTheModelsOwnLoss) {
  auto plain = Generate(*model_, *tok_, Gen(4), [](const std::string&) {});
  ASSERT_TRUE(plain.ok());
  auto l = MeanTokenLoss(*model_, plain->tokens, 5);
  ASSERT_TRUE(l.ok());
  EXPECT_GT(*l, 0.1);
  EXPECT_LT(*l, 4.0);  // its own samples are likely under it
  std::vector<int32_t> junk = plain->tokens;
  for (size_t i = 5; i < junk.size(); ++i) junk[i] = static_cast<int32_t>((i * 131) % 500 + 3);
  auto lj = MeanTokenLoss(*model_, junk, 5);
  ASSERT_TRUE(lj.ok());
  EXPECT_GT(*lj, *l + 2.0);
}

}  // namespace
}  // namespace sae
