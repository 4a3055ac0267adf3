// The coordinator's state machine in-process (no network): scheduling,
// priorities, restarts, persistence across a restart, sweeps and path roots.
#include "coordinator/coordinator.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "client/job_spec.h"
#include "coordinator/roots.h"
#include "coordinator/store.h"
#include "core/data/manifest.h"
#include "core/data/manifest_check.h"
#include "tests/testing/scratch_dir.h"

namespace sae {
namespace {

namespace fs = std::filesystem;

JobConfig SmallJob(int workers, const std::string& output) {
  auto cfg = ParseJobConfig(
      "data: {kind: synthetic, d_in: 16, latents: 32, k: 2}\nsae: {latents: 64, k: 4}\n"
      "train: {tokens: 1000, batch_tokens: 100}\nworld: {workers: " +
          std::to_string(workers) + "}\noutput: " + output + "\n",
      "t.yaml");
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  return *cfg;
}

v1::SubmitRequest Req(int workers, const std::string& output, int priority = 0) {
  v1::SubmitRequest r;
  *r.mutable_spec() = JobSpecFromConfig(SmallJob(workers, output));
  r.set_priority(priority);
  return r;
}

void Join(Coordinator* c, const std::string& id) {
  v1::RegisterRequest r;
  r.set_worker_id(id);
  r.set_host("127.0.0.1");
  r.set_rendezvous_port(4000);
  ASSERT_TRUE(c->Register(r).ok());
}

// The next order for `worker` within 3 s, heartbeating meanwhile.
v1::Assignment Next(Coordinator* c, const std::string& worker) {
  auto gen = c->ConnectAssignments(worker);
  EXPECT_TRUE(gen.ok());
  v1::Assignment a;
  for (int i = 0; i < 30; ++i) {
    v1::HeartbeatRequest hb;
    hb.set_worker_id(worker);
    EXPECT_TRUE(c->Heartbeat(hb).ok());
    auto got = c->NextAssignment(worker, *gen, &a, 0.1);
    EXPECT_TRUE(got.ok());
    if (got.ok() && *got) return a;
  }
  ADD_FAILURE() << worker << " got no assignment";
  return a;
}

v1::JobState State(Coordinator* c, const std::string& id) { return c->Get(id)->state(); }

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    opts_.db = (dir_ / "c.db").string();
    opts_.lease_seconds = 1.0;
    opts_.heartbeat_seconds = 0.2;
  }
  // A fresh directory per test (tests/testing), removed after a passing test.
  sae::testing::ScratchDir scratch_{"sae_coord"};
  fs::path dir_ = scratch_.fs_path();
  CoordinatorOptions opts_;
};

TEST_F(CoordinatorTest, PlacesAGroupWithRanksAndARendezvous) {
  auto c = Coordinator::Create(opts_);
  ASSERT_TRUE(c.ok());
  auto sub = (*c)->Submit(Req(2, "out"));
  ASSERT_TRUE(sub.ok()) << sub.status();
  Join(c->get(), "a");
  Join(c->get(), "b");
  v1::Assignment a = Next(c->get(), "a"), b = Next(c->get(), "b");
  EXPECT_EQ(a.kind(), v1::Assignment::RUN);
  EXPECT_EQ(a.job_id(), sub->id());
  EXPECT_EQ(a.rank() + b.rank(), 1);
  EXPECT_EQ(a.world_size(), 2);
  EXPECT_EQ(a.rendezvous(), "127.0.0.1:4000");
  EXPECT_EQ(State(c->get(), sub->id()), v1::SCHEDULED);
  v1::ProgressReport p;
  p.set_worker_id("a");
  p.set_job_id(sub->id());
  p.set_attempt(1);
  p.set_rank(a.rank());
  ASSERT_TRUE((*c)->ReportProgress(p).ok());
  EXPECT_EQ(State(c->get(), sub->id()), v1::RUNNING);
  v1::AttemptResult r;
  r.set_worker_id(a.rank() == 0 ? "a" : "b");
  r.set_job_id(sub->id());
  r.set_attempt(1);
  r.set_rank(0);
  r.set_finished(true);
  r.set_output("out");
  ASSERT_TRUE((*c)->ReportResult(r).ok());
  EXPECT_EQ(State(c->get(), sub->id()), v1::SUCCEEDED);
  auto cancel = (*c)->Cancel(sub->id(), "");
  EXPECT_EQ(cancel.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*c)->Get("job-424242").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CoordinatorTest, HigherPriorityFirstThenFifo) {
  auto c = Coordinator::Create(opts_);
  ASSERT_TRUE(c.ok());
  auto low = (*c)->Submit(Req(1, "low"));
  auto high = (*c)->Submit(Req(1, "high", 5));
  ASSERT_TRUE(low.ok() && high.ok());
  Join(c->get(), "a");
  EXPECT_EQ(Next(c->get(), "a").job_id(), high->id());
  EXPECT_EQ(State(c->get(), low->id()), v1::PENDING);
}

TEST_F(CoordinatorTest, RestartsUpToMaxRestartsThenFails) {
  auto c = Coordinator::Create(opts_);
  ASSERT_TRUE(c.ok());
  v1::SubmitRequest req = Req(1, "out");
  req.set_max_restarts(1);
  auto sub = (*c)->Submit(req);
  ASSERT_TRUE(sub.ok());
  Join(c->get(), "a");
  for (int attempt = 1; attempt <= 2; ++attempt) {
    v1::Assignment a = Next(c->get(), "a");
    ASSERT_EQ(a.attempt(), attempt);
    v1::AttemptResult r;
    r.set_worker_id("a");
    r.set_job_id(sub->id());
    r.set_attempt(attempt);
    r.set_code(static_cast<int>(absl::StatusCode::kUnavailable));
    r.set_message("peer reset");
    ASSERT_TRUE((*c)->ReportResult(r).ok());
    v1::HeartbeatRequest hb;
    hb.set_worker_id("a");
    ASSERT_TRUE((*c)->Heartbeat(hb).ok());
  }
  auto j = (*c)->Get(sub->id());
  EXPECT_EQ(j->state(), v1::FAILED);
  EXPECT_EQ(j->restarts(), 1);
  EXPECT_NE(j->reason().find("gave up after 1 restart"), std::string::npos) << j->reason();
  EXPECT_NE(j->reason().find("peer reset"), std::string::npos) << j->reason();
}

TEST_F(CoordinatorTest, ALostWorkerRestartsItsJobAndAPermanentErrorFailsIt) {
  auto c = Coordinator::Create(opts_);
  ASSERT_TRUE(c.ok());
  auto sub = (*c)->Submit(Req(1, "out"));
  Join(c->get(), "a");
  Next(c->get(), "a");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // no heartbeat: lease 1 s
  auto j = (*c)->Get(sub->id());
  EXPECT_EQ(j->state(), v1::RESTARTING) << j->reason();
  EXPECT_NE(j->reason().find("worker a lost"), std::string::npos) << j->reason();
  Join(c->get(), "b");
  v1::Assignment a = Next(c->get(), "b");
  EXPECT_EQ(a.attempt(), 2);
  v1::AttemptResult r;
  r.set_worker_id("b");
  r.set_job_id(sub->id());
  r.set_attempt(2);
  r.set_code(static_cast<int>(absl::StatusCode::kDataLoss));
  r.set_message("shard acts/shard-00001.safetensors: truncated");
  ASSERT_TRUE((*c)->ReportResult(r).ok());
  j = (*c)->Get(sub->id());
  EXPECT_EQ(j->state(), v1::FAILED);
  EXPECT_NE(j->reason().find("shard-00001"), std::string::npos);
}

// A worker whose heartbeats stopped reaching the coordinator (a coordinator
// restart, a slow network) is declared lost, but its attempt finishes and
// reports before a new attempt is placed: the job succeeded. Before, the
// result was ignored and the next attempt failed the job ("output ...
// already exists (a finished run)").
TEST_F(CoordinatorTest, AFinishedAttemptOfALostWorkerSucceedsItsRestartingJob) {
  auto c = Coordinator::Create(opts_);
  ASSERT_TRUE(c.ok());
  auto sub = (*c)->Submit(Req(1, "out"));
  Join(c->get(), "a");
  EXPECT_EQ(Next(c->get(), "a").attempt(), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // no heartbeat: lease 1 s
  ASSERT_EQ(State(c->get(), sub->id()), v1::RESTARTING);
  v1::AttemptResult r;
  r.set_worker_id("a");
  r.set_job_id(sub->id());
  r.set_attempt(1);
  r.set_rank(0);
  r.set_finished(true);
  r.set_output("out");
  r.mutable_progress()->set_tokens(4096);
  // Any other result of the lost attempt changes nothing: it restarts.
  v1::AttemptResult stopped = r;
  stopped.set_finished(false);
  ASSERT_TRUE((*c)->ReportResult(stopped).ok());
  EXPECT_EQ(State(c->get(), sub->id()), v1::RESTARTING);
  ASSERT_TRUE((*c)->ReportResult(r).ok());
  auto j = (*c)->Get(sub->id());
  EXPECT_EQ(j->state(), v1::SUCCEEDED) << j->reason();
  EXPECT_EQ(j->attempt(), 1);
  // And no new attempt is placed.
  Join(c->get(), "b");
  auto gen = (*c)->ConnectAssignments("b");
  ASSERT_TRUE(gen.ok());
  v1::Assignment a;
  auto got = (*c)->NextAssignment("b", *gen, &a, 0.5);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(*got) << a.DebugString();
}

// A worker told to stop that never reports the attempt over (its rank is
// stuck on a lost peer, or the report was lost) is busy only for the stop
// grace; then the next job is placed on it.
TEST_F(CoordinatorTest, AStoppingWorkerIsFreeAgainAfterTheGrace) {
  opts_.stop_grace_seconds = 1.0;
  auto c = Coordinator::Create(opts_);
  ASSERT_TRUE(c.ok());
  Join(c->get(), "a");
  auto first = (*c)->Submit(Req(1, "one"));
  ASSERT_TRUE(first.ok());
  v1::Assignment run = Next(c->get(), "a");
  ASSERT_EQ(run.kind(), v1::Assignment::RUN);
  ASSERT_TRUE((*c)->Cancel(first->id(), "test").ok());
  auto second = (*c)->Submit(Req(1, "two"));
  ASSERT_TRUE(second.ok());
  // "a" keeps saying it runs the cancelled attempt: it gets the STOP, and
  // after the grace the second job.
  auto gen = (*c)->ConnectAssignments("a");
  ASSERT_TRUE(gen.ok());
  bool stopped = false, placed = false;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 50 && !placed; ++i) {
    v1::HeartbeatRequest hb;
    hb.set_worker_id("a");
    hb.set_running_job_id(first->id());
    hb.set_running_attempt(run.attempt());
    ASSERT_TRUE((*c)->Heartbeat(hb).ok());
    v1::Assignment a;
    auto got = (*c)->NextAssignment("a", *gen, &a, 0.1);
    ASSERT_TRUE(got.ok());
    if (!*got) continue;
    if (a.kind() == v1::Assignment::STOP) stopped = true;
    if (a.kind() == v1::Assignment::RUN) {
      EXPECT_EQ(a.job_id(), second->id());
      placed = true;
    }
  }
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(stopped);
  EXPECT_TRUE(placed) << "the second job never reached the stopping worker";
  EXPECT_GE(waited, 0.9) << "placed before the grace was over";
}

// The result of an attempt carries its last progress: a failure counts the
// tokens trained up to it (not the last progress report's), and success
// keeps the checkpoint the reports named.
TEST_F(CoordinatorTest, ResultsKeepCheckpointAndCountTokensTrained) {
  auto c = Coordinator::Create(opts_);
  ASSERT_TRUE(c.ok());
  Join(c->get(), "a");
  auto job = (*c)->Submit(Req(1, "out"));
  ASSERT_TRUE(job.ok());
  v1::Assignment run = Next(c->get(), "a");
  ASSERT_EQ(run.kind(), v1::Assignment::RUN);
  auto report = [&](int64_t trained) {
    v1::ProgressReport p;
    p.set_worker_id("a");
    p.set_job_id(job->id());
    p.set_attempt(run.attempt());
    p.mutable_progress()->set_tokens(trained);
    p.mutable_progress()->set_tokens_trained(trained);
    ASSERT_TRUE((*c)->ReportProgress(p).ok());
  };
  report(300);
  v1::CheckpointReport ck;
  ck.set_worker_id("a");
  ck.set_job_id(job->id());
  ck.set_attempt(run.attempt());
  ck.set_step(2);
  ck.set_tokens(200);
  ASSERT_TRUE((*c)->ReportCheckpoint(ck).ok());
  v1::AttemptResult fail;
  fail.set_worker_id("a");
  fail.set_job_id(job->id());
  fail.set_attempt(run.attempt());
  fail.set_code(static_cast<int>(absl::StatusCode::kUnavailable));
  fail.set_message("peer reset");
  fail.mutable_progress()->set_tokens(450);
  fail.mutable_progress()->set_tokens_trained(450);
  ASSERT_TRUE((*c)->ReportResult(fail).ok());
  EXPECT_EQ((*c)->Get(job->id())->progress().tokens_trained(), 450);
  EXPECT_EQ(State(c->get(), job->id()), v1::RESTARTING);

  run = Next(c->get(), "a");  // attempt 2 resumes at 200 tokens and finishes
  ASSERT_EQ(run.attempt(), 2);
  ck.set_attempt(2);
  ck.set_step(10);
  ck.set_tokens(1000);
  ASSERT_TRUE((*c)->ReportCheckpoint(ck).ok());
  v1::AttemptResult done;
  done.set_worker_id("a");
  done.set_job_id(job->id());
  done.set_attempt(2);
  done.set_finished(true);
  done.set_output("out");
  done.mutable_progress()->set_tokens(1000);
  done.mutable_progress()->set_tokens_trained(800);
  ASSERT_TRUE((*c)->ReportResult(done).ok());
  auto got = (*c)->Get(job->id());
  EXPECT_EQ(got->state(), v1::SUCCEEDED);
  EXPECT_EQ(got->progress().checkpoint_tokens(), 1000);
  EXPECT_EQ(got->progress().checkpoint_step(), 10);
  EXPECT_EQ(got->progress().tokens_trained(), 450 + 800);
}

TEST_F(CoordinatorTest, StateSurvivesARestartAndSubmitIsIdempotent) {
  std::string id;
  {
    auto c = Coordinator::Create(opts_);
    ASSERT_TRUE(c.ok());
    v1::SubmitRequest req = Req(1, "out");
    req.set_request_id("r-1");
    auto s1 = (*c)->Submit(req);
    auto s2 = (*c)->Submit(req);
    ASSERT_TRUE(s1.ok() && s2.ok());
    EXPECT_EQ(s1->id(), s2->id());
    EXPECT_TRUE(s2->existing());
    id = s1->id();
    ASSERT_TRUE((*c)->Cancel(id, "test").ok());
  }
  auto c = Coordinator::Create(opts_);
  ASSERT_TRUE(c.ok());
  auto j = (*c)->Get(id);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->state(), v1::CANCELLED);
  ASSERT_EQ(j->history_size(), 2);
  EXPECT_EQ(j->history(1).reason(), "test");
  v1::SubmitRequest req = Req(1, "out");
  req.set_request_id("r-1");
  EXPECT_EQ((*c)->Submit(req)->id(), id);
  auto next = (*c)->Submit(Req(1, "other"));
  EXPECT_NE(next->id(), id) << "ids are not reused after a restart";
}

// Makes every write to a coordinator's database fail until Heal(): a second
// connection adds triggers that abort each insert (a real failing write of
// the real store; file permissions would not stop a root test run).
class BrokenStore {
 public:
  explicit BrokenStore(const std::string& path) {
    EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK);
    sqlite3_busy_timeout(db_, 5000);
  }
  ~BrokenStore() { sqlite3_close(db_); }
  void Break() {
    for (const char* t : kTables)
      Exec(std::string("CREATE TRIGGER fail_") + t + " BEFORE INSERT ON " + t +
           " BEGIN SELECT RAISE(ABORT, 'the disk says no'); END;");
  }
  void Heal() {
    for (const char* t : kTables) Exec(std::string("DROP TRIGGER fail_") + t);
  }

 private:
  void Exec(const std::string& sql) {
    char* err = nullptr;
    EXPECT_EQ(sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
    sqlite3_free(err);
  }
  static constexpr const char* kTables[] = {"jobs", "transitions", "workers", "checkpoints"};
  sqlite3* db_ = nullptr;
};

TEST_F(CoordinatorTest, AFailedStoreWriteIsAnErrorAndChangesNothing) {
  auto c = Coordinator::Create(opts_);
  ASSERT_TRUE(c.ok()) << c.status();
  Coordinator* co = c->get();
  // w1 registers, then stays silent: it is not placed on (its heartbeat is
  // older than the settle time) until the store is broken below.
  Join(co, "w1");
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  const std::string id = co->Submit(Req(1, "a"))->id();
  BrokenStore store(opts_.db);
  store.Break();

  v1::SubmitRequest req = Req(1, "b");
  req.set_request_id("r-2");
  auto sub = co->Submit(req);
  ASSERT_FALSE(sub.ok());
  EXPECT_NE(std::string(sub.status().message()).find("the disk says no"), std::string::npos) << sub.status();
  EXPECT_NE(std::string(sub.status().message()).find("job store " + opts_.db), std::string::npos) << sub.status();
  EXPECT_EQ(co->List(true).size(), 1u);

  EXPECT_FALSE(co->Cancel(id, "test").ok());
  EXPECT_EQ(State(co, id), v1::PENDING);
  EXPECT_EQ(co->Get(id)->history_size(), 1);

  v1::RegisterRequest w2;
  w2.set_worker_id("w2");
  w2.set_host("127.0.0.1");
  EXPECT_FALSE(co->Register(w2).ok());
  v1::HeartbeatRequest hb2;
  hb2.set_worker_id("w2");
  EXPECT_EQ(co->Heartbeat(hb2).code(), absl::StatusCode::kNotFound) << "w2 was not registered";

  // Placing the job cannot be recorded: each scheduler tick is undone (and
  // tried again), so w1 is given nothing.
  auto gen = co->ConnectAssignments("w1");
  ASSERT_TRUE(gen.ok());
  for (int i = 0; i < 10; ++i) {
    v1::HeartbeatRequest hb;
    hb.set_worker_id("w1");
    ASSERT_TRUE(co->Heartbeat(hb).ok());
    v1::Assignment a;
    auto got = co->NextAssignment("w1", *gen, &a, 0.1);
    ASSERT_TRUE(got.ok());
    EXPECT_FALSE(*got) << "assigned " << a.job_id() << " although the store could not record it";
  }
  EXPECT_EQ(State(co, id), v1::PENDING);
  EXPECT_EQ(co->Snapshot().workers_by_state["idle"], 1);
  EXPECT_EQ(co->Snapshot().workers_by_state["busy"], 0);

  store.Heal();
  EXPECT_EQ(Next(co, "w1").job_id(), id);
  EXPECT_EQ(State(co, id), v1::SCHEDULED);
  sub = co->Submit(req);
  ASSERT_TRUE(sub.ok()) << sub.status();
  EXPECT_FALSE(sub->existing()) << "the failed submit left no request id behind";
  EXPECT_EQ(sub->id(), "job-000002") << "the failed submit used no id";

  // What the store holds is what the coordinator showed.
  c->reset();
  auto again = Coordinator::Create(opts_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->List(true).size(), 2u);
  EXPECT_EQ(State(again->get(), id), v1::SCHEDULED);
  EXPECT_EQ((*again)->Get(id)->history_size(), 2);
  EXPECT_EQ((*again)->Snapshot().workers_by_state.at("idle") + (*again)->Snapshot().workers_by_state.at("busy"), 1);
}

// The assignment carries the submitted job as its YAML text: the worker
// reads back the same config, field by field; a stored job whose spec does
// not read (e.g. written before the spec was YAML) fails on load, by name.
TEST_F(CoordinatorTest, TheAssignmentCarriesTheJobAndAnUnreadableStoredSpecFails) {
  const JobConfig sent = SmallJob(1, "out");
  std::string stale_id;
  {
    auto c = Coordinator::Create(opts_);
    ASSERT_TRUE(c.ok());
    auto sub = (*c)->Submit(Req(1, "out"));
    ASSERT_TRUE(sub.ok()) << sub.status();
    Join(c->get(), "a");
    v1::Assignment a = Next(c->get(), "a");
    ASSERT_EQ(a.kind(), v1::Assignment::RUN);
    auto got = JobConfigFromSpec(a.spec(), a.job_id());
    ASSERT_TRUE(got.ok()) << got.status();
    const auto fa = ListJobFields(sent), fb = ListJobFields(*got);
    ASSERT_EQ(fa.size(), fb.size());
    for (size_t i = 0; i < fa.size(); ++i)
      if (fa[i].use != FieldUse::kNotInFile) EXPECT_EQ(fa[i].value, fb[i].value) << fa[i].name;
    auto second = (*c)->Submit(Req(1, "out2"));
    ASSERT_TRUE(second.ok());
    stale_id = second->id();
  }
  {  // The second job's stored spec, as an older coordinator wrote it.
    auto store = JobStore::Open(opts_.db);
    ASSERT_TRUE(store.ok());
    auto jobs = (*store)->LoadJobs();
    ASSERT_TRUE(jobs.ok());
    for (auto& [job, rid] : *jobs) {
      if (job.id() != stale_id) continue;
      job.mutable_spec()->clear_yaml();
      ASSERT_TRUE((*store)->PutJob(job, rid).ok());
    }
  }
  auto c = Coordinator::Create(opts_);
  ASSERT_TRUE(c.ok());
  auto j = (*c)->Get(stale_id);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->state(), v1::FAILED);
  EXPECT_NE(j->reason().find("submit it again"), std::string::npos) << j->reason();
}

TEST_F(CoordinatorTest, SweepsBecomeChildJobs) {
  auto parsed = ParseJobWithSweep(
      "data: {kind: synthetic, d_in: 16}\nsae: {latents: [64, 128], k: [4, 8, 16]}\ntrain: {tokens: 1000}\n"
      "output: runs/s\n",
      "s.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->second.size(), 2u);
  auto variants = ExpandSweep(parsed->first, parsed->second);
  ASSERT_TRUE(variants.ok()) << variants.status();
  ASSERT_EQ(variants->size(), 6u);
  EXPECT_EQ((*variants)[0].suffix, "latents-64_k-4");
  EXPECT_EQ((*variants)[0].config.output, "runs/s/latents-64_k-4");
  EXPECT_EQ((*variants)[5].config.sae.k, 16);
  EXPECT_EQ((*variants)[5].config.sae.latents, 128);
  v1::SweepAxis bad;
  bad.set_field("k");
  bad.add_values("100");
  auto err = ExpandSweep(parsed->first, {bad});
  ASSERT_FALSE(err.ok());
  EXPECT_NE(err.status().message().find("sae.k"), std::string::npos) << err.status();

  {
    // Nested fields, whole maps (null: the field is left out), train fields,
    // several axes at once: the dead-latent study's grid.
    auto grid = ParseJobWithSweep(
        "data: {kind: synthetic, d_in: 16}\n"
        "sae:\n  latents: 64\n  k: 4\n  dead_remedy: [none, auxk]\n"
        "  k_schedule: [null, {start: 32, fraction: 0.25, shape: linear}, {start: 16, shape: cosine}]\n"
        "train: {tokens: 1000, lr: [0, 0.004]}\noutput: runs/g\n",
        "g.yaml");
    ASSERT_TRUE(grid.ok()) << grid.status();
    ASSERT_EQ(grid->second.size(), 3u);
    EXPECT_EQ(grid->second[1].field(), "k_schedule");
    EXPECT_EQ(grid->second[2].field(), "train.lr");
    EXPECT_FALSE(grid->first.sae.k_schedule.enabled) << "the base takes each axis's first value";
    auto vs = ExpandSweep(grid->first, grid->second);
    ASSERT_TRUE(vs.ok()) << vs.status();
    ASSERT_EQ(vs->size(), 12u);
    EXPECT_EQ((*vs)[0].suffix, "dead_remedy-none_k_schedule-none_train.lr-0");
    const SweepVariant& v = (*vs)[2 + 1];  // auxk, the linear schedule, lr 0
    EXPECT_EQ(v.suffix, "dead_remedy-auxk_k_schedule-32_0.25_linear_train.lr-0");
    EXPECT_EQ(v.config.sae.dead_remedy, Remedy::kAuxK);
    EXPECT_TRUE(v.config.sae.k_schedule.enabled);
    EXPECT_EQ(v.config.sae.k_schedule.start, 32);
    EXPECT_EQ(v.config.sae.k_schedule.end, 4);
    EXPECT_EQ(v.config.sae.k_schedule.shape, KShape::kLinear);
    EXPECT_DOUBLE_EQ(v.config.train.lr, 0);
    const SweepVariant& last = vs->back();
    EXPECT_EQ(last.config.sae.k_schedule.shape, KShape::kCosine);
    EXPECT_DOUBLE_EQ(last.config.sae.k_schedule.fraction, 0.25) << "a field the map leaves out keeps its default";
    EXPECT_DOUBLE_EQ(last.config.train.lr, 0.004);
    EXPECT_FALSE((*vs)[0].config.sae.k_schedule.enabled);

    // One nested scalar: the schedule's shape alone.
    auto shapes = ParseJobWithSweep(
        "data: {kind: synthetic, d_in: 16}\nsae:\n  latents: 64\n  k: 4\n"
        "  k_schedule: {start: 32, shape: [linear, exponential]}\ntrain: {tokens: 1000}\noutput: runs/h\n",
        "h.yaml");
    ASSERT_TRUE(shapes.ok()) << shapes.status();
    auto sv = ExpandSweep(shapes->first, shapes->second);
    ASSERT_TRUE(sv.ok()) << sv.status();
    ASSERT_EQ(sv->size(), 2u);
    EXPECT_EQ((*sv)[1].suffix, "k_schedule.shape-exponential");
    EXPECT_EQ((*sv)[1].config.sae.k_schedule.shape, KShape::kExponential);
    EXPECT_EQ((*sv)[1].config.sae.k_schedule.start, 32);

    // Errors name the field.
    auto bad_shape = ExpandSweep(shapes->first, [] {
      v1::SweepAxis a;
      a.set_field("k_schedule.shape");
      a.add_values("square");
      return std::vector<v1::SweepAxis>{a};
    }());
    ASSERT_FALSE(bad_shape.ok());
    EXPECT_NE(bad_shape.status().message().find("shape"), std::string::npos) << bad_shape.status();
    auto bad_name = ExpandSweep(shapes->first, [] {
      v1::SweepAxis a;
      a.set_field("train.Lr;");
      a.add_values("1");
      return std::vector<v1::SweepAxis>{a};
    }());
    ASSERT_FALSE(bad_name.ok());
    EXPECT_NE(bad_name.status().message().find("not a field name"), std::string::npos) << bad_name.status();
    // together: fields that vary together (one axis), with the other axes.
    auto tog = ParseJobWithSweep(
        "data: {kind: synthetic, d_in: 16}\nsae: {latents: 64, k: 4, dead_remedy: [none, auxk]}\n"
        "train: {tokens: 1000}\noutput: runs/t\n"
        "together:\n  - {latents: 64, train.tokens: 2000}\n"
        "  - {sae.latents: 256, train.tokens: 500, sae.dead_window_tokens: 50}\n",
        "t.yaml");
    ASSERT_TRUE(tog.ok()) << tog.status();
    ASSERT_EQ(tog->second.size(), 2u);
    EXPECT_EQ(tog->second[1].field(), "together");
    EXPECT_EQ(tog->first.train.tokens, 2000) << "the base takes the first value";
    auto tv = ExpandSweep(tog->first, tog->second);
    ASSERT_TRUE(tv.ok()) << tv.status();
    ASSERT_EQ(tv->size(), 4u);
    EXPECT_EQ((*tv)[0].suffix, "dead_remedy-none_together-64_2000");
    EXPECT_EQ((*tv)[0].config.train.tokens, 2000);
    const SweepVariant& big = (*tv)[3];
    EXPECT_EQ(big.suffix, "dead_remedy-auxk_together-256_500_50");
    EXPECT_EQ(big.config.sae.latents, 256);
    EXPECT_EQ(big.config.train.tokens, 500);
    EXPECT_EQ(big.config.sae.dead_window_tokens, 50);
    EXPECT_EQ(big.config.sae.dead_remedy, Remedy::kAuxK);
    EXPECT_NE((*tv)[0].config.sae.dead_window_tokens, 50) << "a field only one value sets keeps its default elsewhere";
    auto tog_bad = ParseJobWithSweep(
        "data: {kind: synthetic, d_in: 16}\nsae: {latents: 64, k: 4}\ntrain: {tokens: 1000}\noutput: o\n"
        "together: [{latents: [64, 128]}]\n",
        "tb.yaml");
    ASSERT_FALSE(tog_bad.ok());
    EXPECT_NE(tog_bad.status().message().find("together: latents"), std::string::npos) << tog_bad.status();
    auto tog_scalar = ParseJobWithSweep(
        "data: {kind: synthetic, d_in: 16}\nsae: {latents: 64, k: 4}\ntrain: {tokens: 1000}\noutput: o\n"
        "together: [64]\n",
        "ts.yaml");
    ASSERT_FALSE(tog_scalar.ok());
    EXPECT_NE(tog_scalar.status().message().find("together"), std::string::npos) << tog_scalar.status();

    auto nested_list = ParseJobWithSweep(
        "data: {kind: synthetic, d_in: 16}\nsae: {latents: 64, k: [[4, 8]]}\ntrain: {tokens: 1000}\noutput: o\n",
        "n.yaml");
    ASSERT_FALSE(nested_list.ok());
    EXPECT_NE(nested_list.status().message().find("sae.k"), std::string::npos) << nested_list.status();
  }

  auto c = Coordinator::Create(opts_);
  v1::SubmitRequest req;
  *req.mutable_spec() = JobSpecFromConfig(parsed->first);
  for (const auto& ax : parsed->second) *req.add_sweep() = ax;
  auto sub = (*c)->Submit(req);
  ASSERT_TRUE(sub.ok()) << sub.status();
  EXPECT_EQ(sub->child_ids_size(), 6);
  // The parent's progress is its variants' together: 6 × 1000 tokens in all,
  // and the tokens one running variant reported.
  Join(c->get(), "w");
  v1::Assignment a = Next(c->get(), "w");
  ASSERT_EQ(a.kind(), v1::Assignment::RUN);
  v1::ProgressReport p;
  p.set_worker_id("w");
  p.set_job_id(a.job_id());
  p.set_attempt(a.attempt());
  p.set_rank(0);
  p.mutable_progress()->set_tokens(300);
  p.mutable_progress()->set_total_tokens(1000);
  p.mutable_progress()->set_tokens_per_second(50);
  ASSERT_TRUE((*c)->ReportProgress(p).ok());
  auto parent = (*c)->Get(sub->id());
  ASSERT_TRUE(parent.ok());
  EXPECT_EQ(parent->state(), v1::RUNNING);
  EXPECT_EQ(parent->progress().tokens(), 300);
  EXPECT_EQ(parent->progress().total_tokens(), 6000);
  EXPECT_EQ(parent->progress().tokens_per_second(), 50);
  ASSERT_TRUE((*c)->Cancel(sub->id(), "").ok());
  for (const auto& id : sub->child_ids()) EXPECT_EQ(State(c->get(), id), v1::CANCELLED);
}

// For shard data d_in is in the manifest under --data-root: an SAE whose
// training state cannot exist is refused at submit, naming the field and
// the manifest, and the coordinator serves on.
TEST_F(CoordinatorTest, AnSaeTooLargeForItsShardsIsRefusedAtSubmit) {
  const fs::path acts = dir_ / "data" / "acts";
  fs::create_directories(acts);
  Manifest m;
  m.d_in = kMaxDIn;
  m.rows = 10;
  m.shards.push_back({"shard-00000.safetensors", 10, std::string(64, '0')});
  ASSERT_TRUE(SaveManifest(acts.string(), m).ok());
  opts_.data_root = (dir_ / "data").string();
  opts_.output_root = (dir_ / "out").string();
  auto c = Coordinator::Create(opts_);
  ASSERT_TRUE(c.ok()) << c.status();
  auto submit = [&](const std::string& sae) {
    auto cfg = ParseJobConfig(
        "data: {kind: shards, path: acts}\nsae: " + sae + "\ntrain: {tokens: 1000, batch_tokens: 100}\noutput: run\n",
        "big.yaml");
    EXPECT_TRUE(cfg.ok()) << cfg.status();
    v1::SubmitRequest r;
    *r.mutable_spec() = JobSpecFromConfig(*cfg);
    return (*c)->Submit(r);
  };
  const std::string manifest = (acts / "manifest.json").string();
  // 2^28 latents x 131072: 8·n·d floats = 1 PiB of training state.
  auto huge = submit("{latents: 268435456, k: 32}");
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(huge.status().message());
  EXPECT_NE(msg.find("sae.latents"), std::string::npos) << msg;
  EXPECT_NE(msg.find("d_in 131072"), std::string::npos) << msg;
  EXPECT_NE(msg.find(manifest), std::string::npos) << msg;
  EXPECT_NE(msg.find("GiB"), std::string::npos) << msg;
  // expansion_factor x d_in past 2^28 latents, and k past the latents.
  auto wide = submit("{expansion_factor: 4096, k: 32}");
  ASSERT_FALSE(wide.ok());
  EXPECT_NE(wide.status().message().find("sae.expansion_factor"), std::string::npos) << wide.status();
  auto k = submit("{expansion_factor: 1, k: 200000}");
  ASSERT_FALSE(k.ok());
  EXPECT_NE(k.status().message().find("sae.k"), std::string::npos) << k.status();
  // Nothing was stored; a job that fits is accepted by the same coordinator.
  EXPECT_TRUE((*c)->List(true).empty());
  auto ok = submit("{latents: 1024, k: 32}");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(State(c->get(), ok->id()), v1::PENDING);
}

TEST(ResolveUnderRoot, KeepsPathsUnderTheRoot) {
  EXPECT_EQ(*ResolveUnderRoot("output", "runs/a", "/data"), "/data/runs/a");
  EXPECT_EQ(*ResolveUnderRoot("output", "/data/runs/a", "/data/"), "/data/runs/a");
  EXPECT_FALSE(ResolveUnderRoot("output", "/datax/a", "/data").ok());
  EXPECT_FALSE(ResolveUnderRoot("output", "/etc/passwd", "/data").ok());
  EXPECT_FALSE(ResolveUnderRoot("output", "runs/../../etc", "/data").ok());
  EXPECT_FALSE(ResolveUnderRoot("output", "../x", "").ok());
  EXPECT_EQ(*ResolveUnderRoot("output", "/anywhere", ""), "/anywhere");
  auto e = ResolveUnderRoot("data.path", "/etc", "/data");
  EXPECT_NE(e.status().message().find("data.path"), std::string::npos);
}

// A symbolic link inside the root that points out of it does not let a job
// read or write outside: the real path is checked (for an output that does
// not exist yet, its existing parent). Links that stay inside are fine.
TEST(ResolveUnderRoot, SymbolicLinksOutOfTheRootAreRefused) {
  namespace fs = std::filesystem;
  const fs::path base = fs::path(::testing::TempDir()) / "sae_root_links";
  fs::remove_all(base);
  fs::create_directories(base / "root" / "inside");
  fs::create_directories(base / "elsewhere");
  fs::create_directory_symlink(base / "elsewhere", base / "root" / "escape");
  fs::create_directory_symlink(base / "root" / "inside", base / "root" / "alias");
  const std::string root = (base / "root").string();
  auto out = ResolveUnderRoot("output", "escape/run", root);  // does not exist yet
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("symbolic link"), std::string::npos) << out.status();
  EXPECT_FALSE(ResolveUnderRoot("data.path", root + "/escape", root).ok());
  EXPECT_TRUE(ResolveUnderRoot("output", "alias/run", root).ok());
  EXPECT_TRUE(ResolveUnderRoot("output", "inside/new/run", root).ok());
  // The root itself is not a run directory.
  EXPECT_FALSE(ResolveUnderRoot("output", root, root).ok());
  EXPECT_FALSE(ResolveUnderRoot("output", ".", root).ok());
  fs::remove_all(base);
}

}  // namespace
}  // namespace sae
