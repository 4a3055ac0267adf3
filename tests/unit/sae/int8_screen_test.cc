// train.encoder: int8_screened (core/sae/int8_screen.h): its top-k against
// the exact fp32 top-k computed independently here, on random and trained
// SAEs, on rows built to defeat the screen, and a whole training run against
// the dense fp32 one. Also the refusals and the BLAS kernel the tests run on.
#include "core/sae/int8_screen.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "core/base/blas_kernel.h"
#include "core/data/synthetic.h"
#include "core/sae/sae_step.h"
#include "core/sae/trainer.h"
#include "tests/unit/sae/sae_test_util.h"

namespace sae {
namespace {

using ::sae::testing::ConstantKTrainer;
using ::sae::testing::Planted;

struct TopK {
  std::vector<int64_t> idx;
  std::vector<float> val;
};

// Every pre-activation through ExactPreactivation, then a full sort by
// (value desc, index asc): the reference the screen must reproduce.
std::vector<TopK> ExactTopK(const SaeParams& p, const at::Tensor& xc, int64_t k) {
  const int64_t B = xc.size(0), n = p.latents(), d = p.d_in();
  const float* X = xc.data_ptr<float>();
  const float* W = p.W_enc.data_ptr<float>();
  const float* b = p.b_enc.data_ptr<float>();
  std::vector<TopK> out(static_cast<size_t>(B));
  std::vector<float> z(static_cast<size_t>(n));
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t r = 0; r < B; ++r) {
    for (int64_t j = 0; j < n; ++j) z[j] = ExactPreactivation(X + r * d, W + j * d, b[j], d);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return z[a] > z[c] || (z[a] == z[c] && a < c); });
    for (int64_t t = 0; t < k; ++t) {
      out[r].idx.push_back(order[t]);
      out[r].val.push_back(z[order[t]]);
    }
  }
  return out;
}

// Runs the screen; returns the number of rows whose positive entries (what
// training uses: a = relu(z)) differ from the reference in index or bits.
int64_t Mismatches(Int8Screen* s, const SaeParams& p, const at::Tensor& xc, int64_t k) {
  const int64_t B = xc.size(0);
  std::vector<int64_t> idx(static_cast<size_t>(B * k));
  std::vector<float> val(static_cast<size_t>(B * k));
  absl::Status st = s->TopK(p, xc, k, idx.data(), val.data(), nullptr);
  EXPECT_TRUE(st.ok()) << st;
  const std::vector<TopK> ref = ExactTopK(p, xc, k);
  int64_t bad = 0;
  for (int64_t r = 0; r < B; ++r) {
    bool same = true;
    for (int64_t t = 0; t < k; ++t) {
      const float v = val[r * k + t], rv = ref[r].val[t];
      if (rv <= 0 && v <= 0) break;  // inactive from here on
      if (idx[r * k + t] != ref[r].idx[t] || std::memcmp(&v, &rv, sizeof(float)) != 0) same = false;
    }
    bad += same ? 0 : 1;
  }
  return bad;
}

SaeParams RandomParams(int64_t n, int64_t d, uint64_t seed) {
  at::manual_seed(seed);
  SaeParams p;
  p.W_enc = at::randn({n, d}) / std::sqrt(static_cast<double>(d));
  p.b_enc = at::randn({n}) * 0.05;
  p.W_dec = at::randn({n, d});
  p.W_dec /= p.W_dec.norm(2, 1, true);
  p.b_dec = at::zeros({d});
  return p;
}

class Int8ScreenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::Status a = Int8ScreenAvailable();
    if (!a.ok()) GTEST_SKIP() << a;
  }
};

TEST_F(Int8ScreenTest, RandomSaeSelectsTheExactTopKBitForBit) {
  // d not a multiple of 16 (the dot product's tail), several row blocks,
  // a fixed small C (many rows recomputed) and the adaptive one.
  // n not a multiple of the 256-latent chunks (1000; 260: a last chunk of
  // 4 latents, fewer than its 16 blocks), and the encoder through oneDNN's
  // reorder instead of written in its layout directly (reorder = true).
  for (auto [n, d, k, c, reorder] : {std::tuple<int64_t, int64_t, int64_t, int64_t, bool>{2048, 96, 16, 24, false},
                                     {2048, 96, 16, 0, false},
                                     {2048, 96, 16, 0, true},
                                     {1000, 37, 5, 12, false},
                                     {1000, 37, 5, 12, true},
                                     {260, 48, 4, 6, false},
                                     {260, 48, 4, 0, false},
                                     {512, 64, 32, 0, false}}) {
    SaeParams p = RandomParams(n, d, 7 + n + d);
    at::Tensor xc = at::randn({300, d}) * 2 + 0.3;
    auto s = Int8Screen::Create(c, /*adaptive=*/c == 0).value();
    s->set_block_rows(128);
    s->set_force_reorder(reorder);
    for (int rep = 0; rep < 3; ++rep) {  // the adaptive C moves between calls
      EXPECT_EQ(Mismatches(s.get(), p, xc, k), 0)
          << "n " << n << " d " << d << " k " << k << " C " << c << (reorder ? " (reorder)" : "");
      EXPECT_LE(s->last().fallback_rows, 300);
    }
    if (c == 24) EXPECT_GT(s->total_fallback_rows(), 0) << "C = k + 8 should leave rows uncertified";
  }
}

TEST_F(Int8ScreenTest, TrainedSaeSelectsTheExactTopKAndMatchesTheDenseStep) {
  const PlantedDictionary dict = Planted(48, 256, 6, 5, 0.02);
  TrainerOptions o = ConstantKTrainer(48, 512, 8, 60 * 512, 512);
  auto t = SaeTrainer::Create(o).value();
  std::vector<float> x(512 * 48);
  for (int64_t step = 0; step < 60; ++step) {
    dict.Rows(step * 512, 512, x.data());
    ASSERT_TRUE(t->Step(x.data(), 512).ok());
  }
  const SaeParams& p = t->params();
  dict.Rows(1 << 20, 512, x.data());
  at::Tensor xs = at::from_blob(x.data(), {512, 48}, at::kFloat).clone();
  t->NormalizeRows(xs.data_ptr<float>(), 512);
  at::Tensor xc = (xs - p.b_dec).contiguous();
  auto s = Int8Screen::Create().value();
  for (int rep = 0; rep < 3; ++rep) EXPECT_EQ(Mismatches(s.get(), p, xc, 8), 0);
  // Against the dense step's own selection (sgemm): the same latents except
  // where two values tie within fp32 rounding, values within rounding.
  std::vector<int64_t> idx(512 * 8);
  std::vector<float> val(512 * 8);
  ASSERT_TRUE(s->TopK(p, xc, 8, idx.data(), val.data(), nullptr).ok());
  auto dense = Encode(p, xs, 8).value();
  int64_t same_rows = 0;
  for (int64_t r = 0; r < 512; ++r) {
    bool same = true;
    for (int64_t j = 0; j < 8; ++j) {
      const float dv = dense.acts[r][j].item<float>();
      if (dv <= 0) break;
      same = same && dense.indices[r][j].item<int64_t>() == idx[r * 8 + j];
      EXPECT_NEAR(val[r * 8 + j], dv, 1e-5 * (1 + std::fabs(dv)));
    }
    same_rows += same;
  }
  EXPECT_GE(same_rows, 510);
}

// Rows whose k-th and (C+1)-th exact values lie within the screen's error
// bound, with the approximate order wrong: the screen must notice (count
// them as recomputed) and return the exact top-k, not its guess.
TEST_F(Int8ScreenTest, NearTiesWithinTheBoundAreRecomputedNotGuessed) {
  const int64_t n = 256, d = 64, k = 4, C = 6, B = 32;
  at::manual_seed(3);
  at::Tensor xc = at::randn({B, d});
  SaeParams p = RandomParams(n, d, 9);
  p.W_enc *= 0.1;  // the background: far below the planted latents
  // Twelve planted latents, spread over the screen's blocks: w_j = m/2 + δ_j
  // with m the rows' common direction and δ_j tiny and random, biases on a
  // 1e-6 ladder favouring the later ones. Their exact values differ by far
  // less than the int8 error bound, and each row's quantisation noise
  // orders them differently from the exact values.
  at::Tensor m = xc.mean(0);
  m /= m.norm();
  std::vector<int64_t> planted;
  for (int64_t t = 0; t < 12; ++t) planted.push_back(5 + 21 * t);
  for (size_t t = 0; t < planted.size(); ++t) {
    const int64_t j = planted[t];
    p.W_enc[j] = m * 0.5 + at::randn({d}) * 1e-4;
    p.b_enc[j] = 3.0f + 1e-6f * static_cast<float>(t);
  }
  // Rows along m, so the planted latents are each row's largest by far.
  xc = (xc * 0.05 + m * 8).contiguous();
  auto s = Int8Screen::Create(C, /*adaptive=*/false).value();
  std::vector<int64_t> idx(B * k);
  std::vector<float> val(B * k);
  ASSERT_TRUE(s->TopK(p, xc, k, idx.data(), val.data(), nullptr).ok());
  EXPECT_EQ(s->last().fallback_rows, B) << "every row has its (C+1)-th within the bound of its k-th";
  const std::vector<TopK> ref = ExactTopK(p, xc, k);
  int64_t rows_where_guess_differs = 0;
  for (int64_t r = 0; r < B; ++r) {
    for (int64_t t = 0; t < k; ++t) {
      EXPECT_EQ(idx[r * k + t], ref[r].idx[t]) << "row " << r;
      EXPECT_EQ(val[r * k + t], ref[r].val[t]) << "row " << r;
      EXPECT_NE(std::find(planted.begin(), planted.end(), ref[r].idx[t]), planted.end());
    }
    // An independent int8 approximation (round to nearest, per-row scales):
    // where its top-k differs from the exact one, guessing would be wrong.
    const at::Tensor xr = xc[r];
    const double sx = xr.abs().max().item<double>() / 127;
    at::Tensor qx = (xr / sx).round().to(at::kDouble);
    at::Tensor sw = p.W_enc.abs().amax(1).to(at::kDouble) / 127;
    at::Tensor qw = (p.W_enc.to(at::kDouble) / sw.unsqueeze(1)).round();
    at::Tensor zh = at::mv(qw, qx) * sw * sx + p.b_enc.to(at::kDouble);
    at::Tensor top = std::get<1>(zh.topk(k));
    bool same = true;
    for (int64_t t = 0; t < k; ++t) same = same && top[t].item<int64_t>() == ref[r].idx[t];
    rows_where_guess_differs += same ? 0 : 1;
  }
  EXPECT_GT(rows_where_guess_differs, 0) << "the rows do not exercise the certificate";
}

// The adaptive C: from the default start (8k blocks) it settles within a
// call or two where about 3 % of the rows need the recompute, far below the
// start, and the results stay exact throughout.
TEST_F(Int8ScreenTest, AdaptiveCandidatesSettleNearTheTargetFallbackRate) {
  const int64_t n = 4096, d = 64, k = 8, B = 600;
  SaeParams p = RandomParams(n, d, 17);
  at::Tensor xc = at::randn({B, d});
  auto s = Int8Screen::Create().value();
  int64_t first_c = 0;
  std::vector<double> rates;
  for (int rep = 0; rep < 4; ++rep) {
    EXPECT_EQ(Mismatches(s.get(), p, xc, k), 0) << "call " << rep;
    if (rep == 0) first_c = s->last().candidates;
    rates.push_back(static_cast<double>(s->last().fallback_rows) / B);
  }
  EXPECT_EQ(first_c, 8 * k);
  EXPECT_LT(s->candidates(), first_c / 2) << "C should fall well below its start";
  EXPECT_GT(s->candidates(), k);
  // Same rows every call: the C chosen from them certifies 97 % of them.
  for (int rep = 1; rep < 4; ++rep) EXPECT_LE(rates[rep], 0.04) << "call " << rep;
  EXPECT_GT(rates[1] + rates[2] + rates[3], 0) << "at the 97th percentile some rows should need the recompute";
}

// A full training run: int8_screened follows the dense fp32 run to float
// rounding (same fire marks every step, parameters within 1e-5 relative
// after 50 steps), without a remedy and with AuxK. Ghost Grads is checked
// per step below: a Ghost Grads run is itself ill-conditioned here (the
// dense run against the dense run on inputs scaled by 1 + 1.2e-7 differs by
// 2.4e-5 relative after its first Ghost Grads step and its fire marks part
// after 5), so no two implementations that round differently agree to
// 1e-5 after 50 steps.
TEST_F(Int8ScreenTest, TrainingRunMatchesDenseFp32) {
  const PlantedDictionary dict = Planted(32, 128, 4, 21, 0.02);
  for (auto [remedy, bf16] : {std::pair{Remedy::kNone, false}, {Remedy::kAuxK, false}, {Remedy::kAuxK, true}}) {
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    TrainerOptions o;
    o.bf16 = bf16;  // with bf16: the top-k of the bf16-rounded encoder, screened the same way
    o.d_in = 32;
    o.latents = 1024;
    o.k = 4;
    o.schedule = KSchedule::Constant(4);
    o.total_tokens = 50 * 256;
    o.batch_tokens = 256;
    o.remedy = remedy;
    o.dead_window_tokens = 256;  // dead after one step without firing: the remedy acts
    auto dense = SaeTrainer::Create(o).value();
    o.int8_screened = true;
    auto screened = SaeTrainer::Create(o).value();
    std::vector<float> x(256 * 32);
    int64_t fallback = 0, max_dead = 0;
    for (int64_t step = 0; step < 50; ++step) {
      dict.Rows(step * 256, 256, x.data());
      auto a = dense->Step(x.data(), 256);
      auto b = screened->Step(x.data(), 256);
      ASSERT_TRUE(a.ok() && b.ok());
      fallback += b->screen_fallback_rows;
      max_dead = std::max(max_dead, dense->dead().NumDead());
      ASSERT_EQ(dense->dead().since_fired(), screened->dead().since_fired()) << OptionName(remedy) << " step " << step;
      EXPECT_NEAR(a->fvu, b->fvu, 1e-5 * a->fvu) << OptionName(remedy) << " step " << step;
    }
    if (remedy != Remedy::kNone) EXPECT_GT(max_dead, 0) << "no dead latents for the remedy";
    const SaeParams& p = dense->params();
    const SaeParams& q = screened->params();
    for (auto [u, v] :
         {std::pair{&p.W_enc, &q.W_enc}, {&p.W_dec, &q.W_dec}, {&p.b_enc, &q.b_enc}, {&p.b_dec, &q.b_dec}}) {
      const double rel = ((*u - *v).norm() / u->norm().clamp_min(1e-30)).item<double>();
      EXPECT_LT(rel, 1e-5) << OptionName(remedy);
    }
    RecordProperty(std::string("fallback_rows_") + OptionName(remedy), std::to_string(fallback));
  }
}

// One step with each remedy and a large dead set: the screened step's
// gradients and metrics equal the dense fp32 step's to float rounding.
TEST_F(Int8ScreenTest, StepWithEachRemedyMatchesDenseFp32) {
  const int64_t n = 1024, d = 48, B = 256;
  SaeParams p = RandomParams(n, d, 31);
  at::Tensor x = at::randn({B, d});
  std::vector<int64_t> dead;
  for (int64_t j = 0; j < n; j += 3) dead.push_back(j);
  auto screen = Int8Screen::Create().value();
  for (Remedy remedy : {Remedy::kNone, Remedy::kAuxK, Remedy::kGhostGrads}) {
    StepConfig cfg;
    cfg.k = 8;
    cfg.remedy = remedy;
    cfg.aux_coefficient = 1.0 / 32;
    cfg.dead = &dead;
    SaeGrads g1 = SaeGrads::ZerosLike(p), g2 = SaeGrads::ZerosLike(p);
    StepResult r1, r2;
    ASSERT_TRUE(ComputeGradients(p, x, cfg, &g1, &r1).ok());
    cfg.screen = screen.get();
    ASSERT_TRUE(ComputeGradients(p, x, cfg, &g2, &r2).ok());
    EXPECT_EQ(r1.fired, r2.fired) << OptionName(remedy);
    EXPECT_EQ(r1.active, r2.active) << OptionName(remedy);
    EXPECT_NEAR(r1.loss, r2.loss, 1e-6 * r1.loss) << OptionName(remedy);
    EXPECT_NEAR(r1.aux_loss, r2.aux_loss, 1e-5 * std::fabs(r1.aux_loss) + 1e-12) << OptionName(remedy);
    // Ghost Grads' weights r²/((ĝs − r)² + 1e-8) make its gradients
    // ill-conditioned: the dense step against itself on inputs scaled by
    // 1 + 1.2e-7 sets the scale of what rounding alone changes.
    SaeGrads g3 = SaeGrads::ZerosLike(p);
    StepResult r3;
    cfg.screen = nullptr;
    ASSERT_TRUE(ComputeGradients(p, x * (1 + 1.2e-7), cfg, &g3, &r3).ok());
    for (auto [u, v, w] : {std::tuple{&g1.W_enc, &g2.W_enc, &g3.W_enc},
                           {&g1.W_dec, &g2.W_dec, &g3.W_dec},
                           {&g1.b_enc, &g2.b_enc, &g3.b_enc},
                           {&g1.b_dec, &g2.b_dec, &g3.b_dec}}) {
      const double rel = ((*u - *v).norm() / u->norm().clamp_min(1e-30)).item<double>();
      const double rounding = ((*u - *w).norm() / u->norm().clamp_min(1e-30)).item<double>();
      if (remedy == Remedy::kGhostGrads)
        EXPECT_LT(rel, 1e-5 + 10 * rounding) << OptionName(remedy) << " (rounding alone: " << rounding << ")";
      else
        EXPECT_LT(rel, 1e-5) << OptionName(remedy);
    }
  }
}

TEST(Int8ScreenRefusals, UnimplementedSettingsAreRefusedByName) {
  TrainerOptions o = ConstantKTrainer(16, 64, 4, 1024, 256);
  o.int8_screened = true;
  o.aten_kernels = true;
  auto a = SaeTrainer::Create(o);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(std::string(a.status().message()).find("int8_screened"), std::string::npos) << a.status();
  o.aten_kernels = false;
  o.float64 = true;
  auto b = SaeTrainer::Create(o);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(std::string(b.status().message()).find("int8_screened"), std::string::npos) << b.status();
  o.float64 = false;
  o.device = Device::kCuda;
  auto c = SaeTrainer::Create(o);
  ASSERT_FALSE(c.ok());
  // The step itself refuses the screen on the ATen (CUDA) path.
  if (Int8ScreenAvailable().ok()) {
    SaeParams p = RandomParams(64, 16, 1);
    auto s = Int8Screen::Create().value();
    StepConfig cfg;
    cfg.k = 4;
    cfg.screen = s.get();
    cfg.aten = true;
    SaeGrads g = SaeGrads::ZerosLike(p);
    StepResult res;
    absl::Status st = ComputeGradients(p, at::randn({8, 16}), cfg, &g, &res);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
    EXPECT_NE(std::string(st.message()).find("int8_screened"), std::string::npos) << st;
  }
}

// The BLAS kernel this test runs on is the one saeforge chooses
// (tests/blas_kernel_init.cc) and its GEMM is right there.
TEST(BlasKernel, TestsRunOnTheChosenKernelAndItsGemmIsCorrect) {
  const BlasKernel& k = CurrentBlasKernel();
  ASSERT_EQ(k.library, "OpenBLAS") << k.Describe();
  if (k.source != "user") EXPECT_GE(BlasCoreLevel(k.core), BlasCoreLevel(k.cpu_best)) << k.Describe();
  at::manual_seed(2);
  at::Tensor a = at::randn({300, 200}), b = at::randn({200, 100});
  at::Tensor ref = at::mm(a.to(at::kDouble), b.to(at::kDouble));
  const double err = (at::mm(a, b).to(at::kDouble) - ref).abs().max().item<double>();
  EXPECT_LT(err, 1e-4) << k.Describe();
}

// The re-exec path, end to end, in a child of this binary: OpenBLAS made to
// look as if it had chosen "Prescott", no OPENBLAS_CORETYPE: the child
// re-executes itself (same pid) on the CPU's best core and logs it once; a
// user's OPENBLAS_CORETYPE is kept.
TEST(BlasKernel, ReexecutesOnTheCpusBestCoreAndKeepsTheUsersChoice) {
  if (const char* c = std::getenv("SAE_BLAS_TEST_CHILD")) {
    std::printf("CHOICE[%s|%s]\n", CurrentBlasKernel().core.c_str(), CurrentBlasKernel().source.c_str());
    return;
  }
  const std::string best = CpuBestBlasCore();
  if (best.empty()) GTEST_SKIP() << "no x86 vector ISA OpenBLAS could be moved to";
  auto run = [](const std::string& env) {
    const std::string cmd = env + " SAE_BLAS_TEST_CHILD=1 /proc/" + std::to_string(getpid()) +
                            "/exe --gtest_filter=BlasKernel.ReexecutesOnTheCpusBestCoreAndKeepsTheUsersChoice 2>&1";
    std::string out;
    if (FILE* f = popen(cmd.c_str(), "r")) {
      char buf[4096];
      while (size_t r = fread(buf, 1, sizeof(buf), f)) out.append(buf, r);
      pclose(f);
    }
    return out;
  };
  const std::string moved = run("env -u OPENBLAS_CORETYPE SAE_BLAS_PRETEND_CORE=Prescott");
  EXPECT_NE(moved.find("CHOICE[" + best + "|saeforge]"), std::string::npos) << moved;
  const size_t first = moved.find("BLAS kernel:");
  EXPECT_NE(first, std::string::npos) << moved;
  EXPECT_EQ(moved.find("BLAS kernel:", first + 1), std::string::npos) << "logged twice: " << moved;
  const std::string kept = run("OPENBLAS_CORETYPE=Sandybridge SAE_BLAS_PRETEND_CORE=Prescott");
  EXPECT_NE(kept.find("CHOICE[Sandybridge|user]"), std::string::npos) << kept;
  // A child of a re-executed process inherits its markers: still saeforge's
  // choice while OPENBLAS_CORETYPE is the value set, the user's once the
  // user set another (this CPU's own re-exec leaked "saeforge" into every
  // child before: model 207 Xeons, where OpenBLAS 0.3.21 picks Prescott).
  const std::string inherited = "SAE_BLAS_CHOSEN_FROM=Prescott SAE_BLAS_SET_TO=" + best;
  const std::string child = run(inherited + " OPENBLAS_CORETYPE=" + best);
  EXPECT_NE(child.find("CHOICE[" + best + "|saeforge]"), std::string::npos) << child;
  const std::string child_user = run(inherited + " OPENBLAS_CORETYPE=Sandybridge");
  EXPECT_NE(child_user.find("CHOICE[Sandybridge|user]"), std::string::npos) << child_user;
}

}  // namespace
}  // namespace sae
