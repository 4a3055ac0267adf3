// Dead latents on real activations (issue 12): harvests stories260K's
// residual stream after block 2 with `sae harvest` (a real process), then
// trains SAEs in-process on those rows with SaeTrainer, exactly as `sae train`
// does: constant k without remedy, AuxK, Ghost Grads, and the k schedule with
// the study's proportions (k_start 64·k over the first 25%) and from k_start
// = d. The setting is one where constant k leaves many
// latents dead (a high learning rate; docs/dead-latents.md). Asserted: every
// one ends with fewer dead latents than constant k at an fvu within 2% of
// it (issue 12's target; the schedules with their default loss, Multi-TopK).
// Skips when the model is absent.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/data/activation_stream.h"
#include "core/sae/trainer.h"
#include "tests/integration/test_util.h"

namespace sae {
namespace {

// 262,144 rows, harvested once per test run (~12 s of one core), trained on
// for one epoch (64 steps; repeated rows would be memorised). Five trainings
// of 64 steps: about 20 s of one core; the whole test well under a minute on
// an idle machine. Measured margins and what fails when a fix is reverted:
// docs/dead-latents.md (Tests).
constexpr int64_t kRows = 262144;
constexpr int64_t kTokens = 262144;
constexpr int64_t kBatch = 4096;

struct Outcome {
  int64_t dead = 0;
  double fvu = 0;  // mean over the last 10 steps (as summary.json)
};

Outcome Train(const std::string& acts, TrainerOptions o) {
  StreamOptions so;
  auto stream = ActivationStream::Open(acts, so);
  EXPECT_TRUE(stream.ok()) << stream.status();
  auto t = SaeTrainer::Create(o);
  EXPECT_TRUE(t.ok()) << t.status();
  std::vector<float> rows;
  std::vector<double> last;
  while ((*t)->tokens_seen() < o.total_tokens) {
    EXPECT_TRUE((*stream)->Next(kBatch, &rows).ok());
    auto m = (*t)->Step(rows.data(), kBatch);
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) break;
    last.push_back(m->fvu);
    if (last.size() > 10) last.erase(last.begin());
  }
  Outcome out;
  out.dead = (*t)->dead().NumDead();
  for (double f : last) out.fvu += f / last.size();
  return out;
}

TEST(DeadLatents, ScheduleAndRemediesBeatConstantKOnRealActivations) {
  if (!fs::exists(StoriesDir() + "/stories260K.bin")) GTEST_SKIP() << "stories260K not found in " << StoriesDir();
  const fs::path dir = fs::path(::testing::TempDir()) / ("dead_latents_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // SAE_TEST_ACTS: reuse a harvest made with the same command (to rerun the
  // trainings alone); otherwise the test harvests its own rows.
  std::string acts = (dir / "acts").string();
  if (const char* reuse = std::getenv("SAE_TEST_ACTS")) {
    acts = reuse;
  } else {
    Result h = Sh(Bin("sae") + " harvest --model " + StoriesDir() + " --layer 2 --corpus generate --seed 7 --tokens " +
                  std::to_string(kRows) + " --context 256 --out " + acts);
    ASSERT_EQ(h.code, 0) << h.out;
  }

  TrainerOptions base;
  base.d_in = 64;
  base.latents = 4096;
  base.k = 8;
  base.total_tokens = kTokens;
  base.batch_tokens = kBatch;
  base.lr = 0.01;  // constant k leaves many latents dead here
  base.dead_window_tokens = kTokens / 10;
  base.schedule = KSchedule::Constant(base.k);  // (TrainerOptions' default schedule is constant at 32)
  auto with = [&](Remedy r, int64_t k_start) {
    TrainerOptions o = base;
    o.remedy = r;
    if (k_start > 0) o.schedule = KSchedule::Create(KShape::kLinear, k_start, o.k, 0.25, o.total_tokens).value();
    return o;
  };
  const Outcome none = Train(acts, with(Remedy::kNone, 0));
  std::printf("constant k, no remedy: %ld dead of %ld, fvu %.4f\n", none.dead, base.latents, none.fvu);
  EXPECT_GT(none.dead, base.latents / 10) << "the setting must leave latents dead without a remedy";
  struct Run {
    const char* name;
    TrainerOptions o;
  };
  // The remedies: fewer dead latents at an fvu within 2% (issue 12's target).
  for (const Run& r : {Run{"AuxK", with(Remedy::kAuxK, 0)}, Run{"Ghost Grads", with(Remedy::kGhostGrads, 0)}}) {
    const Outcome got = Train(acts, r.o);
    std::printf("%s: %ld dead, fvu %.4f (%.3f x constant k's)\n", r.name, got.dead, got.fvu, got.fvu / none.fvu);
    EXPECT_LT(got.dead, none.dead) << r.name;
    EXPECT_LE(got.fvu, 1.02 * none.fvu) << r.name;
  }
  // The k schedules, from k_start = d and with the study's proportions
  // (512 -> 8), with the default loss (Multi-TopK: the target k's fvu plus
  // 1/8 of the fitted one at the schedule's k). With the loss at the current
  // k alone they ended at 2.4x and 4x the fvu here (docs/dead-latents.md).
  for (const Run& r : {Run{"k schedule 64 (= d) -> 8", with(Remedy::kNone, 64)},
                       Run{"k schedule 512 -> 8", with(Remedy::kNone, 64 * base.k)}}) {
    const Outcome got = Train(acts, r.o);
    std::printf("%s: %ld dead, fvu %.4f (%.3f x constant k's)\n", r.name, got.dead, got.fvu, got.fvu / none.fvu);
    EXPECT_LT(got.dead, none.dead) << r.name;
    EXPECT_LE(got.fvu, 1.02 * none.fvu) << r.name;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sae
