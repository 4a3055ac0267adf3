// StepAndUpdate's fused path (the Adam update inside the latent pass) against
// the unfused sequence ComputeGradients → GlobalGradNorm → AdamUpdate, over
// many steps: the same parameters and moments to float rounding, every
// latent's rows moving every step whether or not it had a gradient.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "core/sae/sae_step.h"
#include "tests/unit/sae/random_sae.h"

namespace sae {
namespace {

double RelErr(const at::Tensor& a, const at::Tensor& b) {
  const double nb = b.to(at::kDouble).norm().item<double>();
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() / (nb > 0 ? nb : 1.0);
}

bool HasPhase(const StepResult& r, const std::string& name) {
  for (auto& [n, s] : r.phase_seconds)
    if (name == n) return true;
  return false;
}

struct FusedCase {
  const char* name;
  int64_t B, d, n, k;
  at::ScalarType st = at::kFloat;
  Remedy remedy = Remedy::kNone;
  int64_t target_k = 0;      // Multi-TopK
  bool bf16 = false;         // W_enc_lowp
  double max_norm = 0;       // > 0: clipping, the unfused path
  bool project = true;       // project_decoder_grad
  bool expect_fused = true;  // what StepAndUpdate must choose
};

void PrintTo(const FusedCase& c, std::ostream* os) { *os << c.name; }

class FusedUpdate : public ::testing::TestWithParam<FusedCase> {};

TEST_P(FusedUpdate, MatchesUnfusedSequenceOverManySteps) {
  const FusedCase c = GetParam();
  const SaeParams p0 = testing::RandomSae(c.n, c.d, 17 + c.n + c.k, c.st, 0.1);
  SaeParams p[2] = {p0.Clone(), p0.Clone()};  // 0 fused, 1 unfused
  AdamState s[2] = {AdamState::ZerosLike(p0), AdamState::ZerosLike(p0)};
  SaeGrads g[2] = {SaeGrads::ZerosLike(p0), SaeGrads::ZerosLike(p0)};
  StepWorkspace ws[2];
  at::Tensor lowp[2];
  if (c.bf16)
    for (int i = 0; i < 2; ++i) {
      lowp[i] = p[i].W_enc.clone();
      RoundToBF16InPlace(lowp[i]);
    }
  std::vector<int64_t> dead;
  for (int64_t j = 0; j < c.n; j += 3) dead.push_back(j);
  AdamConfig ac;
  ac.lr = 3e-3;  // large, so that 40 steps move the parameters far
  const double tol = c.st == at::kFloat ? 2e-5 : 1e-11;
  int64_t moved_without_gradient = 0;
  for (int step = 0; step < 40; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    at::manual_seed(1000 + step);
    const at::Tensor x = (at::randn({c.B, c.d}, at::kDouble) + 0.2).to(c.st);
    const at::Tensor W_before = p[0].W_enc.clone(), D_before = p[0].W_dec.clone();
    StepResult r[2];
    double norm[2] = {0, 0};
    for (int i = 0; i < 2; ++i) {
      StepConfig cfg;
      cfg.k = c.k;
      cfg.target_k = c.target_k;
      cfg.remedy = c.remedy;
      cfg.aux_coefficient = c.remedy == Remedy::kNone ? 0.0 : 0.37;
      cfg.dead = &dead;
      cfg.project_decoder_grad = c.project;
      cfg.workspace = &ws[i];
      if (c.bf16) cfg.W_enc_lowp = lowp[i];
      ASSERT_TRUE(StepAndUpdate(&p[i], x, cfg, ac, c.max_norm, /*fuse=*/i == 0, &s[i], c.bf16 ? &lowp[i] : nullptr,
                                &g[i], &r[i], &norm[i])
                      .ok());
    }
    EXPECT_EQ(HasPhase(r[0], "scatter_adam"), c.expect_fused);
    EXPECT_FALSE(HasPhase(r[1], "scatter_adam"));
    EXPECT_EQ(r[0].fired, r[1].fired);
    EXPECT_NEAR(r[0].loss, r[1].loss, tol * r[1].loss);
    EXPECT_NEAR(norm[0], norm[1], tol * norm[1]);
    EXPECT_EQ(s[0].step, s[1].step);
    EXPECT_LT(RelErr(p[0].W_enc, p[1].W_enc), tol);
    EXPECT_LT(RelErr(p[0].W_dec, p[1].W_dec), tol);
    EXPECT_LT(RelErr(p[0].b_enc, p[1].b_enc), tol);
    EXPECT_LT(RelErr(p[0].b_dec, p[1].b_dec), tol);
    EXPECT_LT(RelErr(s[0].m_W_enc, s[1].m_W_enc), tol);
    EXPECT_LT(RelErr(s[0].v_W_enc, s[1].v_W_enc), tol);
    EXPECT_LT(RelErr(s[0].m_W_dec, s[1].m_W_dec), tol);
    EXPECT_LT(RelErr(s[0].v_W_dec, s[1].v_W_dec), tol);
    EXPECT_LT(RelErr(s[0].m_b_dec, s[1].m_b_dec), tol);
    if (c.bf16) EXPECT_LT(RelErr(lowp[0], lowp[1]), 1e-2);  // bf16 rounding of values that differ by ulps
    // Latents that no token selected this step still move (their moments
    // decay and the parameter follows them).
    if (c.remedy == Remedy::kNone && step > 0)
      for (int64_t l = 0; l < c.n; ++l)
        if (r[0].fired[l] == 0 && !at::equal(W_before[l], p[0].W_enc[l]) && !at::equal(D_before[l], p[0].W_dec[l]))
          ++moved_without_gradient;
  }
  if (c.remedy == Remedy::kNone) EXPECT_GT(moved_without_gradient, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, FusedUpdate,
    ::testing::Values(
        // B·k << n: most latents have no gradient in a step.
        FusedCase{"sparse", 16, 32, 512, 4},
        // The per-thread small encoder, groups of entries larger than 32 rows.
        FusedCase{"dense", 256, 64, 1024, 8}, FusedCase{"odd_width", 40, 37, 300, 5},
        FusedCase{"no_projection", 64, 48, 256, 6, at::kFloat, Remedy::kNone, 0, false, 0, false},
        FusedCase{"float64", 64, 24, 200, 5, at::kDouble}, FusedCase{"auxk", 64, 32, 384, 4, at::kFloat, Remedy::kAuxK},
        FusedCase{"multi_topk", 64, 32, 384, 8, at::kFloat, Remedy::kNone, 4},
        FusedCase{"bf16", 64, 32, 384, 4, at::kFloat, Remedy::kNone, 0, true},
        // Where the update needs the whole gradient first: the unfused sequence.
        FusedCase{"ghost_grads", 64, 32, 384, 4, at::kFloat, Remedy::kGhostGrads, 0, false, 0, true, false},
        FusedCase{"clipped", 64, 32, 384, 4, at::kFloat, Remedy::kNone, 0, false, 0.05, true, false}),
    [](const ::testing::TestParamInfo<FusedCase>& i) { return std::string(i.param.name); });

TEST(FusedUpdate, NonFiniteLossLeavesEverythingUnchanged) {
  const SaeParams p0 = testing::RandomSae(64, 16, 5, at::kFloat, 0.1);
  for (int fuse = 0; fuse < 2; ++fuse) {
    SaeParams p = p0.Clone();
    AdamState s = AdamState::ZerosLike(p0);
    SaeGrads g = SaeGrads::ZerosLike(p0);
    at::Tensor x = at::randn({8, 16}, at::kFloat);
    x[3][2] = std::numeric_limits<float>::infinity();
    StepConfig cfg;
    cfg.k = 4;
    cfg.total_var = 1.0;
    StepResult r;
    double norm = 0;
    ASSERT_TRUE(StepAndUpdate(&p, x, cfg, AdamConfig{}, 0, fuse == 1, &s, nullptr, &g, &r, &norm).ok());
    EXPECT_FALSE(std::isfinite(r.loss));
    EXPECT_EQ(s.step, 0);
    EXPECT_TRUE(at::equal(p.W_enc, p0.W_enc));
    EXPECT_TRUE(at::equal(p.W_dec, p0.W_dec));
    EXPECT_TRUE(at::equal(p.b_dec, p0.b_dec));
  }
}

}  // namespace
}  // namespace sae
