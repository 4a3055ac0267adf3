// The fused CPU forward path (core/lm/fused_forward.cc) against the op-by-op
// ATen path (ForwardOptions::reference), and the batched harvest against a
// one-window-at-a-time reference harvest.
//
// The bound. Both paths make the same GEMM calls (at::linear's mm/addmm), so
// the differences come from the elementwise work: RMSNorm's sum of squares,
// the softmax sum and the attention weighted sum are summed in a different
// order, and exp is a polynomial (2 ulp) instead of Sleef's (1 ulp). Each of
// these is a sum of at most n = max(dim, context) = 128 terms here, whose
// float32 error is below n·u·Σ|terms| (u = 2^-24 ≈ 6e-8): 128·6e-8 ≈ 8e-6
// of the magnitudes involved, and in practice √n·u ≈ 1e-6 (errors cancel).
// Through a few blocks the residual stream carries these forward without
// growing them much (each block adds to it; RMSNorm renormalises the input of
// the next). So activations and logits must agree to 2e-5 of the largest
// magnitude (max |a − b| ≤ 2e-5 · max |b|), the worst case with margin;
// measured errors are printed by the tests (about 1e-6).
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>

#include "core/lm/fast_exp.h"
#include "core/lm/generate.h"
#include "core/lm/harvest.h"
#include "core/lm/loaders.h"
#include "core/lm/model.h"
#include "gtest/gtest.h"
#include "tests/unit/lm/lm_tensor_util.h"
#include "tests/unit/lm/lm_test_util.h"

namespace sae {
namespace {

using lm_test::MaxRelErr;
using lm_test::StoriesBin;
using lm_test::StoriesDir;
using lm_test::StoryTokens;

constexpr double kBound = 2e-5;

// Logits and every block's residual stream and MLP output of one forward.
struct Trace {
  at::Tensor logits;
  std::vector<at::Tensor> resid, mlp;
};

Trace TraceForward(const Transformer& m, const at::Tensor& toks, bool reference, KvCache* cache = nullptr) {
  Trace t;
  ForwardOptions fo;
  fo.reference = reference;
  const int64_t L = m.config().n_layers;
  t.resid.resize(L);
  t.mlp.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    fo.hooks.push_back({l, HookPoint::kResidPost, [&t, l](at::Tensor& x) { t.resid[l] = x.clone(); }});
    fo.hooks.push_back({l, HookPoint::kMlpOut, [&t, l](at::Tensor& x) { t.mlp[l] = x.clone(); }});
  }
  auto r = m.Forward(toks, cache, fo);
  EXPECT_TRUE(r.ok()) << r.status();
  if (r.ok()) t.logits = *r;
  return t;
}

// The softmax's exponential against std::exp in double over the range the
// softmax uses (x <= 0 after the maximum is subtracted, down to where exp
// underflows) and the positive side (SiLU's exp(-x)), every 1/4096: within
// 2 ulp (Cephes' claim for its expf) wherever the result is a normal float,
// scalar and 16 lanes alike.
TEST(FusedForward, FastExpIsWithinTwoUlp) {
  double worst = 0, worst16 = 0;
  for (int i = -87 * 4096; i <= 88 * 4096; i += 16) {
    alignas(64) float xs[16], ys[16];
    for (int u = 0; u < 16; ++u) xs[u] = static_cast<float>(i + u) / 4096.0f;
#if defined(__AVX512F__)
    _mm512_store_ps(ys, internal::FastExp16(_mm512_load_ps(xs)));
#else
    for (int u = 0; u < 16; ++u) ys[u] = internal::FastExp(xs[u]);
#endif
    for (int u = 0; u < 16; ++u) {
      const double ref = std::exp(static_cast<double>(xs[u]));
      if (ref < 1.1754943508222875e-38 || ref > 3.4e38) continue;
      const double ulp = std::ldexp(1.0, std::ilogb(ref) - 23);
      worst = std::max(worst, std::fabs(internal::FastExp(xs[u]) - ref) / ulp);
      worst16 = std::max(worst16, std::fabs(ys[u] - ref) / ulp);
    }
  }
  std::printf("FastExp: %.2f ulp, 16 lanes %.2f ulp\n", worst, worst16);
  EXPECT_LE(worst, 2.0);
  EXPECT_LE(worst16, 2.0);
}

TEST(FusedForward, StoriesMatchesTheAtenPathEveryBlock) {
  SAE_REQUIRE_FILE(StoriesBin());
  auto m = LoadLlama2c(StoriesBin());
  ASSERT_TRUE(m.ok()) << m.status();
  const at::Tensor toks = StoryTokens(3, 70, 512, 11);
  const Trace fused = TraceForward(*m, toks, false), ref = TraceForward(*m, toks, true);
  double worst = 0;
  for (int64_t l = 0; l < m->config().n_layers; ++l) {
    const double e = MaxRelErr(fused.resid[l], ref.resid[l]), em = MaxRelErr(fused.mlp[l], ref.mlp[l]);
    EXPECT_LE(e, kBound) << "resid_post, layer " << l;
    EXPECT_LE(em, kBound) << "mlp_out, layer " << l;
    worst = std::max({worst, e, em});
  }
  const double el = MaxRelErr(fused.logits, ref.logits);
  EXPECT_LE(el, kBound);
  std::printf("fused vs ATen: activations %.2e, logits %.2e (bound %.0e)\n", worst, el, kBound);
  // Not the same code: the paths differ somewhere (else this test checks nothing).
  EXPECT_FALSE(at::equal(fused.logits, ref.logits));
}

// Head widths the attention's vector code takes in pieces: 6 and 10 (four
// dimensions at a time, then the rest one by one) and 16, over a context of
// 45 (full 16-key blocks and a masked last one), with grouped queries
// (6 heads on 3 key/value heads) and weights large enough that the
// attention is far from uniform.
TEST(FusedForward, OddHeadWidthsMatchTheAtenPath) {
  for (const int64_t hd : {6, 10, 16}) {
    SCOPED_TRACE(::testing::Message() << "head width " << hd);
    ModelConfig c;
    c.n_heads = 6;
    c.n_kv_heads = 3;
    c.dim = c.n_heads * hd;
    c.hidden_dim = 2 * c.dim + 4;
    c.n_layers = 2;
    c.vocab_size = 64;
    c.max_seq_len = 64;
    c.rope = RopeStyle::kRotateHalf;
    c.source = "random-llama";
    c.format = "random";
    at::manual_seed(40 + hd);
    auto rnd = [](std::vector<int64_t> shape) { return at::randn(shape, at::kFloat) * 0.3; };
    ModelWeights w;
    w.tok_emb = rnd({c.vocab_size, c.dim});
    w.lm_head = rnd({c.vocab_size, c.dim});
    w.final_norm = at::ones({c.dim});
    for (int64_t l = 0; l < c.n_layers; ++l) {
      BlockWeights b;
      b.attn_norm = at::ones({c.dim});
      b.ffn_norm = at::ones({c.dim});
      b.wq = rnd({c.n_heads * hd, c.dim});
      b.wk = rnd({c.n_kv_heads * hd, c.dim});
      b.wv = rnd({c.n_kv_heads * hd, c.dim});
      b.wo = rnd({c.dim, c.n_heads * hd});
      b.w1 = rnd({c.hidden_dim, c.dim});
      b.w3 = rnd({c.hidden_dim, c.dim});
      b.w2 = rnd({c.dim, c.hidden_dim});
      w.blocks.push_back(std::move(b));
    }
    auto m = Transformer::Create(std::move(c), std::move(w));
    ASSERT_TRUE(m.ok()) << m.status();
    const at::Tensor toks = at::randint(0, 64, {2, 45}, at::kLong);
    const Trace fused = TraceForward(*m, toks, false), ref = TraceForward(*m, toks, true);
    for (int64_t l = 0; l < 2; ++l) EXPECT_LE(MaxRelErr(fused.resid[l], ref.resid[l]), kBound) << "layer " << l;
    EXPECT_LE(MaxRelErr(fused.logits, ref.logits), kBound);
  }
}

TEST(FusedForward, KvCacheStepsMatchTheAtenFullSequence) {
  SAE_REQUIRE_FILE(StoriesBin());
  auto m = LoadLlama2c(StoriesBin());
  ASSERT_TRUE(m.ok()) << m.status();
  const at::Tensor toks = StoryTokens(4, 20, 512, 12);
  const Trace ref = TraceForward(*m, toks, true);
  KvCache cache = m->NewCache(4, 20);
  std::vector<at::Tensor> logits = {TraceForward(*m, toks.narrow(1, 0, 7), false, &cache).logits};
  for (int64_t t = 7; t < 20; ++t) {
    Trace s = TraceForward(*m, toks.narrow(1, t, 1), false, &cache);
    logits.push_back(s.logits);
  }
  EXPECT_EQ(cache.len, 20);
  EXPECT_LE(MaxRelErr(at::cat(logits, 1), ref.logits), kBound);
}

TEST(FusedForward, HooksKeepTheirTensorsAndSteer) {
  SAE_REQUIRE_FILE(StoriesBin());
  auto m = LoadLlama2c(StoriesBin());
  ASSERT_TRUE(m.ok()) << m.status();
  const at::Tensor toks = StoryTokens(2, 16, 512, 13);
  // A tensor a hook keeps (without cloning) is not overwritten by later blocks or calls.
  at::Tensor kept;
  ForwardOptions keep;
  keep.hooks.push_back({1, HookPoint::kResidPost, [&kept](at::Tensor& x) { kept = x; }});
  ASSERT_TRUE(m->Forward(toks, nullptr, keep).ok());
  const at::Tensor copy = kept.clone();
  ASSERT_TRUE(m->Forward(StoryTokens(2, 16, 512, 14), nullptr, {}).ok());
  EXPECT_TRUE(at::equal(kept, copy));
  // Steering through the fused path equals steering through the ATen path.
  const at::Tensor dir = m->weights().tok_emb[42];
  for (HookPoint point : {HookPoint::kResidPost, HookPoint::kMlpOut}) {
    ForwardOptions f, r;
    f.hooks.push_back({2, point, [&](at::Tensor& x) { x = x + 3.0 * dir; }});
    r = f;
    r.reference = true;
    auto a = m->Forward(toks, nullptr, f), b = m->Forward(toks, nullptr, r), clean = m->Forward(toks);
    ASSERT_TRUE(a.ok() && b.ok() && clean.ok());
    EXPECT_LE(MaxRelErr(*a, *b), kBound);
    EXPECT_GT((*a - *clean).abs().max().item<float>(), 0.1f);
  }
}

// The harvest path (batched windows, fused forward, stopped after the layer)
// against the reference: each window alone through the ATen path.
void CheckHarvestAgainstOneWindowAtATime(const std::string& corpus) {
  SAE_REQUIRE_FILE(StoriesBin());
  auto m = LoadModel(StoriesDir());
  ASSERT_TRUE(m.ok()) << m.status();
  auto tok = LoadTokenizerFor(StoriesDir(), m->config().vocab_size, "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  HarvestOptions o;
  o.corpus = corpus;
  o.layer = 2;
  o.context = 48;
  o.batch = 6;
  o.seed = 21;
  auto h = Harvester::Create(*m, tok->get(), o);
  ASSERT_TRUE(h.ok()) << h.status();
  const int64_t per = o.context - 1, windows = 14;  // two full batches and a partial third
  const int64_t rows = windows * per - 5, d = m->config().dim;
  std::vector<float> acts(rows * d);
  std::vector<int32_t> ids(rows);
  ASSERT_TRUE((*h)->Rows(0, rows, acts.data(), ids.data()).ok());
  auto src = WindowSource::Create(*m, tok->get(), o);
  ASSERT_TRUE(src.ok());
  double worst = 0;
  for (int64_t w = 0; w < windows; ++w) {
    at::Tensor win;
    if (corpus == "generate") {
      auto s = SampleBatch(*m, 1, o.context, o.temperature, o.top_p, o.seed + static_cast<uint64_t>(w) + 1,
                           /*reference=*/true);
      ASSERT_TRUE(s.ok()) << s.status();
      win = at::empty({1, o.context}, at::kLong);
      for (int64_t t = 0; t < o.context; ++t) win[0][t] = (*s)[t];
    } else {
      auto s = (*src)->Windows(w, 1);
      ASSERT_TRUE(s.ok());
      win = *s;
    }
    at::Tensor ref;
    ForwardOptions fo;
    fo.reference = true;
    fo.stop_after_layer = o.layer;
    fo.hooks.push_back({o.layer, HookPoint::kResidPost, [&ref](at::Tensor& x) { ref = x.clone(); }});
    ASSERT_TRUE(m->Forward(win, nullptr, fo).ok());
    const int64_t n = std::min(per, rows - w * per);
    for (int64_t t = 0; t < n; ++t)
      ASSERT_EQ(ids[w * per + t], win[0][t + 1].item<int64_t>()) << "window " << w << " position " << t + 1;
    at::Tensor got = at::from_blob(acts.data() + w * per * d, {n, d}, at::kFloat);
    const double e = MaxRelErr(got, ref[0].narrow(0, 1, n));
    EXPECT_LE(e, kBound) << "window " << w;
    worst = std::max(worst, e);
  }
  std::printf("%s: batched harvest vs one window at a time (ATen): %.2e (bound %.0e)\n", corpus.c_str(), worst, kBound);
}

TEST(FusedHarvest, TextCorpusRowsMatchOneWindowAtATimeReference) {
  CheckHarvestAgainstOneWindowAtATime(StoriesDir() + "/tinystories_sample.txt");
}

TEST(FusedHarvest, GeneratedRowsMatchOneWindowAtATimeReference) {
  // The sampled windows are the same tokens (the sampler sees logits equal to
  // float rounding, and a rounding-level change flips a draw only when the
  // coin lands within ~1e-6 of a cumulative-probability boundary) and the
  // activations agree within the bound.
  CheckHarvestAgainstOneWindowAtATime("generate");
}

// Streams split a block's windows across cores: the same tokens and, within
// float rounding, the same activations as one stream; a negative count is
// refused by name.
TEST(FusedHarvest, StreamsGiveTheRowsOfOneStream) {
  SAE_REQUIRE_FILE(StoriesBin());
  auto m = LoadModel(StoriesDir());
  ASSERT_TRUE(m.ok()) << m.status();
  auto tok = LoadTokenizerFor(StoriesDir(), m->config().vocab_size, "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (const std::string corpus : {std::string("generate"), StoriesDir() + "/tinystories_sample.txt"}) {
    HarvestOptions o;
    o.corpus = corpus;
    o.layer = 1;
    o.context = 24;
    o.batch = 7;
    o.seed = 5;
    const int64_t rows = 2 * o.batch * (o.context - 1) + 9, d = m->config().dim;
    std::vector<std::vector<float>> acts;
    std::vector<std::vector<int32_t>> ids;
    for (int streams : {1, 3}) {
      o.streams = streams;
      auto h = Harvester::Create(*m, tok->get(), o);
      ASSERT_TRUE(h.ok()) << h.status();
      acts.emplace_back(rows * d);
      ids.emplace_back(rows);
      ASSERT_TRUE((*h)->Rows(0, rows, acts.back().data(), ids.back().data()).ok());
    }
    EXPECT_EQ(ids[0], ids[1]) << corpus;
    const double e = MaxRelErr(at::from_blob(acts[1].data(), {rows, d}, at::kFloat),
                               at::from_blob(acts[0].data(), {rows, d}, at::kFloat));
    EXPECT_LE(e, 1e-5) << corpus;
    o.streams = -1;
    auto bad = Harvester::Create(*m, tok->get(), o);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("streams"), std::string::npos) << bad.status();
  }
}

}  // namespace
}  // namespace sae
