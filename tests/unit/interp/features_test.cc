#include "core/interp/features.h"

#include <algorithm>
#include <map>

#include "tests/unit/interp/interp_fixture.h"

namespace sae {
namespace {

class FeaturesTest : public InterpTest {
 protected:
  FeatureOptions Opts() const {
    FeatureOptions o;
    o.windows.corpus = lm_test::StoriesDir() + "/tinystories_sample.txt";
    o.windows.context = 32;
    o.windows.batch = 4;
    o.tokens = 31 * 14;  // 14 windows: 3 full blocks and one of 2
    o.radius = 3;
    o.top_contexts = 5;
    o.interval_samples = 3;
    o.intervals = 4;
    return o;
  }
};

struct Event {
  float a;
  int64_t g;
};

TEST_F(FeaturesTest, StatisticsEqualABruteForceOverAllTokenLatentPairs) {
  SaeRun run = TiedSae(48, 6);
  FeatureOptions o = Opts();
  o.windows.layer = run.layer;
  auto src = WindowSource::Create(*model_, tok_.get(), o.windows);
  ASSERT_TRUE(src.ok()) << src.status();
  const int64_t T = o.windows.context, n = run.latents(), W = 2 * o.radius + 1;
  FeatureAccumulator acc(n, o);
  std::vector<at::Tensor> all_tokens, all_idx, all_act;
  for (int64_t first = 0; first < 14; first += 4) {
    const int64_t cnt = std::min<int64_t>(4, 14 - first);
    auto toks = (*src)->Windows(first, cnt);
    ASSERT_TRUE(toks.ok());
    auto x = HookActivations(*model_, *toks, run.layer, run.hook);
    ASSERT_TRUE(x.ok());
    auto c = EncodeRows(run.sae, x->narrow(1, 1, T - 1).reshape({cnt * (T - 1), -1}));
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(acc.Add(first, *toks, c->indices, c->acts).ok());
    all_tokens.push_back(toks->to(at::kInt));
    all_idx.push_back(c->indices);
    all_act.push_back(c->acts);
  }
  at::Tensor tokens = at::cat(all_tokens).contiguous(), idx = at::cat(all_idx).contiguous(),
             act = at::cat(all_act).contiguous();
  const int64_t rows = idx.size(0), k = idx.size(1);
  ASSERT_EQ(rows, 14 * (T - 1));
  EXPECT_EQ(acc.tokens(), rows);
  // Dense activations [rows, n] and every firing event per latent.
  at::Tensor dense = at::zeros({rows, n}, at::kFloat);
  std::vector<std::vector<Event>> ev(n);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < k; ++i) {
      const float a = act[r][i].item<float>();
      const int64_t j = idx[r][i].item<int64_t>();
      dense[r][j] = a;
      if (a > 0) ev[j].push_back({a, r});
    }
  auto fs = FinalizeFeatures(acc, *model_, *tok_, run);
  ASSERT_TRUE(fs.ok()) << fs.status();
  int64_t checked_contexts = 0;
  for (int64_t j = 0; j < n; ++j) {
    SCOPED_TRACE(::testing::Message() << "latent " << j);
    const FeatureDashboard& d = fs->features[j];
    auto& e = ev[j];
    ASSERT_EQ(d.count, static_cast<int64_t>(e.size()));
    EXPECT_DOUBLE_EQ(d.density, static_cast<double>(e.size()) / rows);
    double sum = 0;
    float mx = 0;
    std::vector<int64_t> hist(kHistBins, 0);
    for (const Event& x : e) {
      sum += x.a;
      mx = std::max(mx, x.a);
      int b = static_cast<int>(std::floor(std::log10(static_cast<double>(x.a)) * 10)) + 40;
      ++hist[std::clamp(b, 0, kHistBins - 1)];
    }
    EXPECT_EQ(d.max, mx);
    if (!e.empty()) EXPECT_NEAR(d.mean, sum / e.size(), 1e-6 * std::max(1.0, sum / e.size()));
    EXPECT_EQ(d.hist, hist);
    int64_t hist_sum = 0;
    for (int64_t c : d.hist) hist_sum += c;
    EXPECT_EQ(hist_sum, d.count);
    // Top contexts: largest activation first, earlier token on ties.
    std::sort(e.begin(), e.end(),
              [](const Event& a, const Event& b) { return a.a > b.a || (a.a == b.a && a.g < b.g); });
    const size_t top = std::min<size_t>(e.size(), o.top_contexts);
    ASSERT_EQ(d.top.size(), top);
    for (size_t c = 0; c < top; ++c) {
      EXPECT_EQ(d.top[c].token_index, e[c].g);
      EXPECT_EQ(d.top[c].act, e[c].a);
      const int64_t w = e[c].g / (T - 1), pos = e[c].g % (T - 1) + 1;
      for (int64_t s = 0; s < W; ++s) {
        const int64_t p = pos - o.radius + s;
        if (p < 1 || p > T - 1) {
          EXPECT_EQ(d.top[c].tokens[s], -1);
          continue;
        }
        EXPECT_EQ(d.top[c].tokens[s], tokens[w][p].item<int32_t>());
        EXPECT_EQ(d.top[c].acts[s], dense[w * (T - 1) + p - 1][j].item<float>());
        ++checked_contexts;
      }
    }
    // Intervals: cover every firing token once; samples lie inside and are distinct.
    int64_t covered = 0;
    for (const auto& iv : d.intervals) {
      covered += iv.count;
      EXPECT_LE(iv.samples.size(), static_cast<size_t>(std::min<int64_t>(iv.count, o.interval_samples)));
      EXPECT_EQ(iv.samples.size(), static_cast<size_t>(std::min<int64_t>(iv.count, o.interval_samples)));
      for (const auto& s : iv.samples) {
        EXPECT_GE(s.act, iv.lo * (1 - 1e-6));
        EXPECT_LE(s.act, iv.hi * (1 + 1e-6));
      }
    }
    EXPECT_EQ(covered, d.count);
    EXPECT_LE(static_cast<int64_t>(d.intervals.size()), o.intervals);
  }
  EXPECT_GT(checked_contexts, 100);
  // Co-firing: the most correlated latents of a brute-force correlation matrix.
  at::Tensor corr = at::corrcoef(dense.t().to(at::kDouble));
  int64_t compared = 0;
  for (int64_t j = 0; j < n; ++j) {
    const auto& cf = fs->features[j].cofire;
    for (size_t i = 0; i < cf.size(); ++i) {
      EXPECT_NEAR(cf[i].second, corr[j][cf[i].first].item<double>(), 1e-4) << j << " vs " << cf[i].first;
      ++compared;
    }
    if (!cf.empty()) {
      // No co-firing partner correlates more than the first listed.
      for (int64_t i = 0; i < n; ++i)
        if (i != j && corr[j][i].item<double>() > 0)  // a ≥ 0: positive correlation needs co-firing
          EXPECT_LE(corr[j][i].item<double>(), cf[0].second + 1e-4) << j << " " << i;
    }
  }
  EXPECT_GT(compared, 0);
  // Logit effect: lm_head · (final_norm ⊙ W_dec[j]).
  at::Tensor eff = at::matmul(run.sae.params.W_dec[5] * model_->weights().final_norm, model_->weights().lm_head.t());
  EXPECT_EQ(fs->features[5].logit_top[0].first, eff.argmax().item<int64_t>());
  EXPECT_EQ(fs->features[5].logit_bottom[0].first, eff.argmin().item<int64_t>());
  EXPECT_NEAR(fs->features[5].logit_top[0].second, eff.max().item<float>(), 1e-4);
}

TEST_F(FeaturesTest, TwoRanksMergedEqualOneProcessExactly) {
  SaeRun run = TiedSae(40, 5);
  FeatureOptions o = Opts();
  auto one = AccumulateFeatures(*model_, tok_.get(), run, o);
  ASSERT_TRUE(one.ok()) << one.status();
  o.world = 2;
  o.rank = 0;
  auto r0 = AccumulateFeatures(*model_, tok_.get(), run, o);
  o.rank = 1;
  auto r1 = AccumulateFeatures(*model_, tok_.get(), run, o);
  ASSERT_TRUE(r0.ok() && r1.ok());
  EXPECT_GT(r0->tokens(), 0);
  EXPECT_GT(r1->tokens(), 0);
  EXPECT_EQ(r0->tokens() + r1->tokens(), one->tokens());
  // Rank 1's state goes through its partial file format first.
  auto r1b = FeatureAccumulator::Deserialize(r1->Serialize(), "rank 1");
  ASSERT_TRUE(r1b.ok()) << r1b.status();
  ASSERT_TRUE(r0->Merge(*r1b).ok());
  lm_test::TempDir tmp;
  auto a = FinalizeFeatures(*one, *model_, *tok_, run);
  auto b = FinalizeFeatures(*r0, *model_, *tok_, run);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(WriteFeatures(*a, tmp.Sub("one"), "").ok());
  ASSERT_TRUE(WriteFeatures(*b, tmp.Sub("two"), "").ok());
  EXPECT_EQ(lm_test::ReadFile(tmp.Sub("one/features.safetensors")),
            lm_test::ReadFile(tmp.Sub("two/features.safetensors")));
  EXPECT_EQ(lm_test::ReadFile(tmp.Sub("one/features.json")), lm_test::ReadFile(tmp.Sub("two/features.json")));
  // And the written dashboards load back as they were.
  auto back = LoadFeatures(tmp.Sub("one"));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->features.size(), a->features.size());
  int64_t with_samples = 0;
  for (size_t j = 0; j < a->features.size(); ++j) {
    const auto &x = a->features[j], &y = back->features[j];
    EXPECT_EQ(x.count, y.count);
    EXPECT_EQ(x.hist, y.hist);
    EXPECT_FLOAT_EQ(x.max, y.max);
    ASSERT_EQ(x.top.size(), y.top.size());
    for (size_t c = 0; c < x.top.size(); ++c) {
      EXPECT_EQ(x.top[c].tokens, y.top[c].tokens);
      EXPECT_EQ(x.top[c].acts, y.top[c].acts);
    }
    ASSERT_EQ(x.intervals.size(), y.intervals.size());
    for (size_t g = 0; g < x.intervals.size(); ++g) {
      EXPECT_EQ(x.intervals[g].samples.size(), y.intervals[g].samples.size());
      with_samples += !x.intervals[g].samples.empty();
    }
    EXPECT_EQ(x.cofire.size(), y.cofire.size());
  }
  EXPECT_GT(with_samples, 10);
  EXPECT_EQ(back->vocab.size(), static_cast<size_t>(model_->config().vocab_size));
  // Search finds a latent by text from its own top context.
  const auto& f0 = back->features[0];
  ASSERT_FALSE(f0.top.empty());
  const std::string piece = back->Piece(f0.top[0].tokens[o.radius]);
  auto hits = back->Search(piece);
  EXPECT_TRUE(std::any_of(hits.begin(), hits.end(), [](const auto& h) { return h.first == 0; })) << piece;
}

TEST_F(FeaturesTest, BadInputIsAnErrorNamingTheField) {
  SaeRun run = TiedSae(16, 4);
  FeatureOptions o = Opts();
  o.windows.context = 100000;
  auto r = AccumulateFeatures(*model_, tok_.get(), run, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("context"), std::string::npos) << r.status();
  lm_test::TempDir tmp;
  lm_test::WriteFile(tmp.Sub("features.json"), "{\"format\": \"nope\"}");
  auto l = LoadFeatures(tmp.path());
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("features.json"), std::string::npos) << l.status();
  EXPECT_FALSE(FeatureAccumulator::Deserialize({1, 2, 3}, "partial").ok());
}

}  // namespace
}  // namespace sae
