// Data-parallel training under mpirun, as a user launches it: N ranks with
// global batch B give the SAE one process gives with batch B; resume works
// across world sizes; a lost rank ends the job instead of hanging.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <thread>

#include "tests/integration/float64_reference.h"
#include "tests/integration/test_util.h"

namespace {

using json = nlohmann::json;

std::string Mpirun(int np) {
  return std::string(SAE_MPIEXEC) + " --oversubscribe --allow-run-as-root -np " + std::to_string(np) + " ";
}

class Mpi : public ::testing::Test {
 protected:
  fs::path Job(const std::string& name, int workers, const std::string& data, const std::string& sae,
               int64_t tokens = 12800) {
    fs::path p = dir_ / (name + ".yaml");
    WriteAll(p, "name: " + name + "\ndata: " + data + "\nsae: " + sae + "\ntrain: {tokens: " + std::to_string(tokens) +
                    ", batch_tokens: 512, lr: 0.002, log_every_steps: 1, checkpoint_every_tokens: 2048}\n"
                    "world: {workers: " +
                    std::to_string(workers) + ", timeout_seconds: 20}\noutput: " + (dir_ / name).string() + "\n");
    return p;
  }
  // Checks that run `b` trained the same SAE as the one-rank run `a` of job
  // file `job_a`, "to float32 rounding", measured against the exact
  // trajectory: the job trained in float64 in this process. Run a's
  // distance from it is what float32 rounding amounts to after this run's
  // amplification (Adam on near-zero gradients, Ghost Grads' error weights:
  // 1e-7 rounding grows to ~1e-4 in these runs); several ranks sum their
  // gradients in another order, a rounding of the same size, so b's distance
  // must be of the same order (within 4x: two samples of the same rounding
  // walk). A data-parallel defect (a share trained twice or not at all, a
  // gradient not averaged, a wrong resume position) moves the parameters by
  // orders of magnitude more. Summaries must agree exactly where they count.
  void ExpectSameSae(const fs::path& job_a, const std::string& a, const std::string& b) {
    auto exact = TrainInProcess(job_a, /*float64=*/true);
    auto ta = ReadF32Tensors(dir_ / a / "sae.safetensors");
    auto tb = ReadF32Tensors(dir_ / b / "sae.safetensors");
    ASSERT_EQ(exact.size(), 4u);
    ASSERT_EQ(ta.size(), 4u);
    for (const auto& [name, ref] : exact) {
      const double d1 = RelDiffTo(ta[name], ref), d2 = RelDiffTo(tb[name], ref);
      std::printf("%s vs %s, %s: %.3g and %.3g from the float64 run\n", a.c_str(), b.c_str(), name.c_str(), d1, d2);
      EXPECT_LT(d1, 1e-2) << a << " " << name << ": float32 far from the float64 run";
      EXPECT_LT(d2, 4 * d1 + 1e-6) << a << " vs " << b << ": " << name;
    }
    json sa = json::parse(ReadAll(dir_ / a / "summary.json"));
    json sb = json::parse(ReadAll(dir_ / b / "summary.json"));
    EXPECT_EQ(sa["tokens"], sb["tokens"]);
    EXPECT_EQ(sa["steps"], sb["steps"]);
    EXPECT_EQ(sa["dead_latents"], sb["dead_latents"]);
    EXPECT_NEAR(sa["fvu"].get<double>(), sb["fvu"].get<double>(), 1e-5);
  }
  // A fresh directory per test (tests/testing), removed after a passing test.
  sae::testing::ScratchDir scratch_{"sae_mpi"};
  fs::path dir_ = scratch_.fs_path();
};

const char* kSynthetic = "{kind: synthetic, d_in: 32, latents: 64, k: 3, seed: 2}";

TEST_F(Mpi, TwoRanksEqualOneRankForEachRemedy) {
  for (const std::string remedy : {"none", "auxk", "ghost_grads"}) {
    const std::string sae =
        "{latents: 128, k: 4, k_schedule: {start: 16, end: 4, fraction: 0.5}, "
        "dead_window_tokens: 1536, dead_remedy: " +
        remedy + "}";
    fs::path one = Job("one_" + remedy, 1, kSynthetic, sae);
    fs::path two = Job("two_" + remedy, 2, kSynthetic, sae);
    Result a = Sh(Bin("sae") + " train " + one.string());
    ASSERT_EQ(a.code, 0) << a.out;
    Result b = Sh(Mpirun(2) + Bin("sae-worker") + " --job " + two.string());
    ASSERT_EQ(b.code, 0) << b.out;
    EXPECT_NE(b.out.find("on 2 rank(s) (mpi)"), std::string::npos) << b.out;
    ExpectSameSae(one, "one_" + remedy, "two_" + remedy);
    // Every logged step agrees, and the run really all-reduced.
    std::istringstream la(ReadAll(dir_ / ("one_" + remedy) / "metrics.jsonl"));
    std::istringstream lb(ReadAll(dir_ / ("two_" + remedy) / "metrics.jsonl"));
    std::string x, y;
    int steps = 0;
    while (std::getline(la, x) && std::getline(lb, y)) {
      json ja = json::parse(x), jb = json::parse(y);
      EXPECT_EQ(ja["k"], jb["k"]);
      EXPECT_NEAR(ja["fvu"].get<double>(), jb["fvu"].get<double>(), 1e-5) << remedy << " step " << ja["step"];
      EXPECT_EQ(ja["dead_ratio"], jb["dead_ratio"]) << remedy << " step " << ja["step"];
      EXPECT_GT(jb["allreduce_bytes"].get<int64_t>(), 0);
      ++steps;
    }
    EXPECT_EQ(steps, 25);
  }
}

TEST_F(Mpi, ThreeRanksFromShardsAndResumeOnTwo) {
  Result w = Sh(Bin("sae") + " synth --out " + (dir_ / "acts").string() +
                " --rows 6000 --rows-per-shard 1000 --d-in 16 --atoms 32 --k 2");
  ASSERT_EQ(w.code, 0) << w.out;
  const std::string data = "{kind: shards, path: " + (dir_ / "acts").string() + ", shuffle_buffer_rows: 700}";
  const std::string sae = "{latents: 64, k: 4, dead_remedy: auxk, dead_window_tokens: 1024}";
  // 510 = 3 × 170: the batch must divide among the ranks.
  auto job = [&](const std::string& name, int workers) {
    fs::path p = dir_ / (name + ".yaml");
    WriteAll(p, "data: " + data + "\nsae: " + sae +
                    "\ntrain: {tokens: 10200, batch_tokens: 510, lr: 0.002}\nworld: {workers: " +
                    std::to_string(workers) + "}\noutput: " + (dir_ / name).string() + "\n");
    return p;
  };
  const fs::path s1 = job("s1", 1);
  ASSERT_EQ(Sh(Bin("sae") + " train " + s1.string()).code, 0);
  Result b = Sh(Mpirun(3) + Bin("sae-worker") + " --job " + job("s3", 3).string());
  ASSERT_EQ(b.code, 0) << b.out;
  ExpectSameSae(s1, "s1", "s3");
  // Each rank reads only its share of the shards; resuming with another world
  // size re-partitions the same global order: 3 ranks for 8 steps, then 2.
  Result c = Sh(Mpirun(3) + Bin("sae-worker") + " --job " + job("moved", 3).string() + " --max-steps 8");
  ASSERT_EQ(c.code, 0) << c.out;
  Result d = Sh(Mpirun(2) + Bin("sae-worker") + " --job " + job("moved", 2).string() + " --resume");
  ASSERT_EQ(d.code, 0) << d.out;
  ExpectSameSae(s1, "s1", "moved");
}

TEST_F(Mpi, ResumeWithAnotherWorldSize) {
  const std::string sae = "{latents: 128, k: 4, dead_remedy: ghost_grads, dead_window_tokens: 1536}";
  fs::path straight = Job("straight", 1, kSynthetic, sae);
  ASSERT_EQ(Sh(Bin("sae") + " train " + straight.string()).code, 0);
  // Two ranks for 10 steps, then one rank to the end, into the same output.
  fs::path two = Job("moved", 2, kSynthetic, sae);
  Result a = Sh(Mpirun(2) + Bin("sae-worker") + " --job " + two.string() + " --max-steps 10");
  ASSERT_EQ(a.code, 0) << a.out;
  fs::path one = Job("moved", 1, kSynthetic, sae);  // same output, world.workers 1
  Result b = Sh(Bin("sae") + " train " + one.string() + " --resume");
  ASSERT_EQ(b.code, 0) << b.out;
  ExpectSameSae(straight, "straight", "moved");
}

TEST_F(Mpi, WorldMismatchIsExplained) {
  fs::path two = Job("mismatch", 2, kSynthetic, "{latents: 64, k: 4}");
  Result alone = Sh(Bin("sae-worker") + " --job " + two.string());
  EXPECT_NE(alone.code, 0);
  EXPECT_NE(alone.out.find("mpirun -np 2"), std::string::npos) << alone.out;
  // Explicit mpi backend without mpirun: Open MPI makes a 1-rank world.
  std::string text = ReadAll(two);
  text.replace(text.find("workers: 2"), 10, "workers: 2, backend: mpi");
  WriteAll(two, text);
  Result singleton = Sh(Bin("sae-worker") + " --job " + two.string());
  EXPECT_NE(singleton.code, 0);
  EXPECT_NE(singleton.out.find("not started by mpirun"), std::string::npos) << singleton.out;
  // Three ranks for a two-worker job.
  Result three = Sh(Mpirun(3) + Bin("sae-worker") + " --job " + two.string());
  EXPECT_NE(three.code, 0);
  EXPECT_NE(three.out.find("world.workers is 2 but the mpi world has 3 ranks"), std::string::npos) << three.out;
  EXPECT_FALSE(fs::exists(dir_ / "mismatch"));
}

TEST_F(Mpi, LostRankEndsTheJobNamingIt) {
  fs::path job = Job("killed", 2, kSynthetic, "{latents: 256, k: 4}", 2000000000);
  const fs::path log = dir_ / "mpirun.log";
  const std::string cmd = Mpirun(2) + Bin("sae-worker") + " --job " + job.string() + " > " + log.string() +
                          " 2>&1; echo $? > " + (dir_ / "rc").string();
  std::thread runner([&] { std::system(cmd.c_str()); });
  // Find rank 1 by its environment once training has started.
  pid_t victim = 0;
  for (int i = 0; i < 300 && victim == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (ReadAll(dir_ / "killed.partial/metrics.jsonl").empty()) continue;
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string name = e.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      const std::string cmdline = ReadAll(e.path() / "cmdline");
      if (cmdline.find("sae-worker") == std::string::npos || cmdline.find(job.string()) == std::string::npos) continue;
      std::string env = ReadAll(e.path() / "environ");
      if (env.find(std::string("OMPI_COMM_WORLD_RANK=1") + '\0') != std::string::npos) victim = std::stoi(name);
    }
  }
  ASSERT_GT(victim, 0) << ReadAll(log);
  const auto t0 = std::chrono::steady_clock::now();
  kill(victim, SIGKILL);
  runner.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 30);
  EXPECT_NE(std::stoi(ReadAll(dir_ / "rc")), 0);
  const std::string out = ReadAll(log);
  EXPECT_NE(out.find("rank 1"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir_ / "killed" / "summary.json"));
}

}  // namespace
