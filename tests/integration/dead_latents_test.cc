// Dead latents on real activations (issue 12): harvests stories260K's
// residual stream after block 2 with `sae harvest` (a real process), then
// trains SAEs in-process on those rows with SaeTrainer, exactly as `sae train`
// does, at a setting where constant k leaves many latents dead (lr 0.01;
// docs/dead-latents.md). Asserted, each by a margin several times the spread
// between seeds (measured: docs/dead-latents.md, Tests):
// - AuxK and Ghost Grads end with clearly fewer dead latents than constant k
//   without remedy, at an fvu within 2% of it;
// - the k schedules (from k_start = d and with the study's proportions,
//   512 -> 8; default loss, Multi-TopK) with the remedy a job with a schedule
//   gets by default (AuxK) do too;
// - the schedules alone tie with constant k at this lr (latents die in the
//   constant-k phase after the schedule, whatever it did before: the study's
//   finding), so alone they must not end with more than 5% more dead latents
//   and must keep the fvu within 2%.
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

// 1,048,576 rows, harvested once per test run, trained on for one epoch
// (256 steps; repeated rows would be memorised). At 64 steps (the earlier
// version) AuxK had not yet acted: it ended within the seed spread of
// constant k (1262 against 1268 dead; 1349 against 1284 on seed 1), and an
// ASan build's different rounding turned that tie into a failure.
constexpr int64_t kRows = 1048576;
constexpr int64_t kTokens = 1048576;
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
  if (const char* seed = std::getenv("SAE_TEST_SEED")) base.seed = std::strtoull(seed, nullptr, 10);
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
    double max_dead;  // of constant k's count
  };
  // (max_dead 0.8: the remedies end 40-55% below constant k here, the seed
  // spread of constant k's count is about 3%.)
  for (const Run& r : {Run{"AuxK", with(Remedy::kAuxK, 0), 0.8}, Run{"Ghost Grads", with(Remedy::kGhostGrads, 0), 0.8},
                       Run{"AuxK, k schedule 64 (= d) -> 8", with(Remedy::kAuxK, 64), 0.8},
                       Run{"AuxK, k schedule 512 -> 8", with(Remedy::kAuxK, 64 * base.k), 0.8},
                       Run{"k schedule 64 (= d) -> 8 alone", with(Remedy::kNone, 64), 1.05},
                       Run{"k schedule 512 -> 8 alone", with(Remedy::kNone, 64 * base.k), 1.05}}) {
    const Outcome got = Train(acts, r.o);
    std::printf("%s: %ld dead (%.3f x constant k's), fvu %.4f (%.3f x)\n", r.name, got.dead,
                double(got.dead) / none.dead, got.fvu, got.fvu / none.fvu);
    EXPECT_LE(got.dead, r.max_dead * none.dead) << r.name;
    EXPECT_LE(got.fvu, 1.02 * none.fvu) << r.name;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sae
