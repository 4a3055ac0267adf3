// Data-parallel training with the gloo backend: workers started as plain
// processes (not by mpirun) meet at a TCP store and train one SAE.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>

#include "tests/integration/float64_reference.h"
#include "tests/integration/test_util.h"

namespace {

using json = nlohmann::json;

// The pid of `rank` of the ranks training `job`, once the run has logged a
// step (0 if none shows up within 30 s).
pid_t RankOnceTraining(const fs::path& dir, const fs::path& job, int rank) {
  const std::string env = "SAE_RANK=" + std::to_string(rank) + '\0';
  for (int i = 0; i < 300; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (ReadAll(dir / "out.partial/metrics.jsonl").empty()) continue;
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string name = e.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      if (ReadAll(e.path() / "cmdline").find(job.string()) == std::string::npos) continue;
      if (ReadAll(e.path() / "environ").find(env) != std::string::npos) return std::stoi(name);
    }
  }
  return 0;
}

TEST(Gloo, TwoProcessesEqualOneRank) {
  const fs::path dir = fs::path(::testing::TempDir()) / "sae_gloo";
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto job = [&](const std::string& name, int workers) {
    fs::path p = dir / (name + ".yaml");
    WriteAll(p,
             "data: {kind: synthetic, d_in: 32, latents: 64, k: 3, seed: 2}\n"
             "sae: {latents: 128, k: 4, k_schedule: {start: 16, end: 4, fraction: 0.5}, "
             "dead_window_tokens: 1536, dead_remedy: ghost_grads}\n"
             "train: {tokens: 12800, batch_tokens: 512, lr: 0.002, log_every_steps: 1}\n"
             "world: {workers: " +
                 std::to_string(workers) + ", timeout_seconds: 30}\noutput: " + (dir / name).string() + "\n");
    return p;
  };
  Result a = Sh(Bin("sae") + " train " + job("one", 1).string());
  ASSERT_EQ(a.code, 0) << a.out;
  const char* src = std::getenv("SAE_SOURCE_DIR");
  const std::string runner = std::string(src ? src : ".") + "/tests/run_ranks.sh 2 ";
  Result b = Sh(runner + Bin("sae-worker") + " --job " + job("two", 2).string());
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("on 2 rank(s) (gloo)"), std::string::npos) << b.out;
  auto ta = ReadF32Tensors(dir / "one/sae.safetensors");
  auto tb = ReadF32Tensors(dir / "two/sae.safetensors");
  ASSERT_EQ(ta.size(), 4u);
  // Gloo sums the ranks' gradients in its own order: a float32 rounding of
  // the size the one-rank run makes, so both stay at the same distance from
  // the job's float64 trajectory (float64_reference.h).
  auto exact = TrainInProcess(dir / "one.yaml", /*float64=*/true);
  ASSERT_EQ(exact.size(), 4u);
  for (const auto& [name, ref] : exact) {
    const double d1 = RelDiffTo(ta[name], ref), d2 = RelDiffTo(tb[name], ref);
    std::printf("%s: one rank %.3g, two gloo ranks %.3g from float64\n", name.c_str(), d1, d2);
    EXPECT_LT(d1, 1e-2) << name;
    EXPECT_LT(d2, 4 * d1 + 1e-6) << name;
  }
  json sa = json::parse(ReadAll(dir / "one/summary.json")), sb = json::parse(ReadAll(dir / "two/summary.json"));
  EXPECT_EQ(sa["dead_latents"], sb["dead_latents"]);
  EXPECT_NEAR(sa["fvu"].get<double>(), sb["fvu"].get<double>(), 1e-5);
}

TEST(Gloo, MissingPeerTimesOut) {
  const fs::path dir = fs::path(::testing::TempDir()) / "sae_gloo_alone";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::path p = dir / "job.yaml";
  WriteAll(p,
           "data: {kind: synthetic, d_in: 16, latents: 32, k: 2}\nsae: {latents: 64, k: 4}\n"
           "train: {tokens: 10000, batch_tokens: 500}\nworld: {workers: 2, timeout_seconds: 3}\noutput: " +
               (dir / "out").string() + "\n");
  // Rank 0 alone: its peer never comes.
  Result r = Sh("SAE_RANK=0 SAE_WORLD_SIZE=2 SAE_RENDEZVOUS=127.0.0.1:$((20000 + RANDOM % 30000)) timeout 60 " +
                Bin("sae-worker") + " --job " + p.string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.code, 124) << "hung instead of timing out";
  EXPECT_NE(r.out.find("rank 0 of 2"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(Gloo, LostRankIsNamedBySurvivors) {
  const fs::path dir = fs::path(::testing::TempDir()) / "sae_gloo_kill";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path job = dir / "job.yaml";
  WriteAll(job,
           "data: {kind: synthetic, d_in: 32, latents: 64, k: 3}\nsae: {latents: 256, k: 4}\n"
           "train: {tokens: 2G, batch_tokens: 510, log_every_steps: 1}\nworld: {workers: 3, timeout_seconds: 20}\n"
           "output: " +
               (dir / "out").string() + "\n");
  const char* src = std::getenv("SAE_SOURCE_DIR");
  const fs::path log = dir / "ranks.log";
  const std::string cmd = std::string(src ? src : ".") + "/tests/run_ranks.sh 3 " + Bin("sae-worker") + " --job " +
                          job.string() + " > " + log.string() + " 2>&1";
  int rc = -1;
  std::thread runner([&] { rc = std::system(cmd.c_str()); });
  const pid_t victim = RankOnceTraining(dir, job, 2);
  ASSERT_GT(victim, 0) << ReadAll(log);
  const auto t0 = std::chrono::steady_clock::now();
  kill(victim, SIGKILL);
  runner.join();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 45);
  EXPECT_NE(rc, 0);
  const std::string out = ReadAll(log);
  // Both survivors name rank 2, and only rank 2, whichever of them noticed
  // first and exits first (rank 0 serves the store: it stays until every
  // live rank has named the lost one).
  size_t named = 0;
  for (size_t at = out.find("lost rank(s): "); at != std::string::npos; at = out.find("lost rank(s): ", at + 1)) {
    EXPECT_EQ(out.compare(at, 16, "lost rank(s): 2 "), 0) << out.substr(at, 40) << "\n" << out;
    ++named;
  }
  EXPECT_EQ(named, 2u) << out;
  EXPECT_FALSE(fs::exists(dir / "out" / "summary.json"));
}

// A signal that reaches one rank only: the ranks agree on the step to stop
// at, write one checkpoint and exit well before the collective timeout; the
// run then resumes to the end.
TEST(Gloo, SigtermToOneRankStopsBothAtOneStep) {
  const fs::path dir = fs::path(::testing::TempDir()) / "sae_gloo_term";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path job = dir / "job.yaml";
  WriteAll(job,
           "data: {kind: synthetic, d_in: 32, latents: 64, k: 3}\nsae: {latents: 256, k: 4}\n"
           "train: {tokens: 600000, batch_tokens: 512, log_every_steps: 1}\n"
           "world: {workers: 2, timeout_seconds: 60}\noutput: " +
               (dir / "out").string() + "\n");
  const char* src = std::getenv("SAE_SOURCE_DIR");
  const std::string ranks =
      std::string(src ? src : ".") + "/tests/run_ranks.sh 2 " + Bin("sae-worker") + " --job " + job.string();
  const fs::path log = dir / "ranks.log";
  int rc = -1;
  std::thread runner([&] { rc = std::system((ranks + " > " + log.string() + " 2>&1").c_str()); });
  const pid_t victim = RankOnceTraining(dir, job, 1);
  ASSERT_GT(victim, 0) << ReadAll(log);
  const auto t0 = std::chrono::steady_clock::now();
  kill(victim, SIGTERM);
  runner.join();
  // Without agreement rank 0 keeps stepping into a collective rank 1 never
  // joins, and both wait for the 60 s timeout.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30);
  const std::string out = ReadAll(log);
  EXPECT_NE(out.find("checkpoint written, continue with --resume"), std::string::npos) << out;
  EXPECT_EQ(out.find("lost rank"), std::string::npos) << out;
  ASSERT_TRUE(fs::exists(dir / "out.partial/checkpoints/latest")) << out;
  EXPECT_NE(rc, -1);
  const int resumed = std::system((ranks + " --resume >> " + log.string() + " 2>&1").c_str());
  EXPECT_EQ(resumed, 0) << ReadAll(log);
  const json summary = json::parse(ReadAll(dir / "out/summary.json"), nullptr, false);
  ASSERT_FALSE(summary.is_discarded()) << ReadAll(log);
  EXPECT_EQ(summary["tokens"].get<int64_t>(), 600000);
}

// A stop reaches a rank that waits on a lost peer within seconds, not after
// world.timeout_seconds: inside a collective (its peer frozen) and inside the
// rendezvous (its peer never started).
TEST(Gloo, StopReachesARankWaitingForALostPeer) {
  const fs::path dir = fs::path(::testing::TempDir()) / "sae_gloo_abort";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path job = dir / "job.yaml";
  WriteAll(job,
           "data: {kind: synthetic, d_in: 32, latents: 64, k: 3}\nsae: {latents: 256, k: 4}\n"
           "train: {tokens: 2G, batch_tokens: 512, log_every_steps: 1}\n"
           "world: {workers: 2, timeout_seconds: 120}\noutput: " +
               (dir / "out").string() + "\n");
  const char* src = std::getenv("SAE_SOURCE_DIR");
  const fs::path log = dir / "ranks.log";
  const std::string cmd = std::string(src ? src : ".") + "/tests/run_ranks.sh 2 " + Bin("sae-worker") + " --job " +
                          job.string() + " > " + log.string() + " 2>&1";
  int rc = -1;
  std::thread runner([&] { rc = std::system(cmd.c_str()); });
  const pid_t frozen = RankOnceTraining(dir, job, 1);
  const pid_t stopped = RankOnceTraining(dir, job, 0);
  ASSERT_GT(frozen, 0) << ReadAll(log);
  ASSERT_GT(stopped, 0) << ReadAll(log);
  kill(frozen, SIGSTOP);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // rank 0 is now waiting in a collective
  auto t0 = std::chrono::steady_clock::now();
  kill(stopped, SIGTERM);
  for (int i = 0; i < 200 && kill(stopped, 0) == 0; ++i) {
    // a zombie until run_ranks.sh reaps it: check its state
    if (ReadAll("/proc/" + std::to_string(stopped) + "/stat").find(") Z") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const double in_collective = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  kill(frozen, SIGKILL);
  kill(frozen, SIGCONT);
  runner.join();
  EXPECT_LT(in_collective, 10) << ReadAll(log);
  EXPECT_NE(ReadAll(log).find("stopped while waiting for the other ranks"), std::string::npos) << ReadAll(log);

  // Rendezvous: rank 0 alone, its peer never comes. SIGTERM once it serves
  // the store (its port listens: it is then waiting for rank 1), not after a
  // fixed time: a sanitizer-built worker takes seconds to get there.
  const int port = 20000 + static_cast<int>(std::random_device{}() % 30000);
  char hex[8];
  std::snprintf(hex, sizeof hex, "%04X", port);
  const fs::path ms = dir / "alone.ms";
  const std::string alone = "SAE_RANK=0 SAE_WORLD_SIZE=2 SAE_RENDEZVOUS=127.0.0.1:" + std::to_string(port) + " " +
                            Bin("sae-worker") + " --job " + job.string() + " > " + (dir / "alone.log").string() +
                            " 2>&1 & pid=$!; " + "for i in $(seq 1200); do grep -qE ':" + hex +
                            " [0-9A-F]+:0000 0A' /proc/net/tcp /proc/net/tcp6 && break; " +
                            "sleep 0.1; done; sleep 0.5; s=$(date +%s%N); kill -TERM $pid; wait $pid; rc=$?; " +
                            "echo $(( ($(date +%s%N) - s) / 1000000 )) > " + ms.string() + "; exit $rc";
  const int alone_rc = std::system(alone.c_str());
  const double in_rendezvous = std::atof(ReadAll(ms).c_str()) / 1000;
  std::printf("stop to exit: %.1f s inside a collective, %.1f s inside the rendezvous\n", in_collective, in_rendezvous);
  EXPECT_NE(alone_rc, 0);
  EXPECT_LT(in_rendezvous, 8) << ReadAll(dir / "alone.log");
  EXPECT_NE(ReadAll(dir / "alone.log").find("stopped while waiting for the other ranks"), std::string::npos)
      << ReadAll(dir / "alone.log");
}

}  // namespace
