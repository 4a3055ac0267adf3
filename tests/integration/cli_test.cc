// The `sae` and `sae-worker` executables as a user runs them: real processes,
// real files. Bad input must give a non-zero exit and a message naming the
// file and the field or shard, never a crash, and must not lose or fake
// outputs.
#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <thread>

#include "tests/integration/test_util.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class Cli : public ::testing::Test {
 protected:
  // Writes 3 shards of 2000 rows, d_in 16, from a planted dictionary.
  fs::path MakeShards(const std::string& name = "acts", const std::string& dtype = "float32") {
    fs::path d = dir_ / name;
    Result r = Sh(Bin("sae") + " synth --out " + d.string() +
                  " --rows 6000 --rows-per-shard 2000 --d-in 16 --atoms 32 --k 2 --seed 4 --dtype " + dtype);
    EXPECT_EQ(r.code, 0) << r.out;
    return d;
  }
  fs::path Job(const std::string& name, const std::string& body) {
    fs::path p = dir_ / name;
    WriteAll(p, body);
    return p;
  }
  std::string ShardJob(const fs::path& data, const std::string& out, int64_t tokens = 4000,
                       const std::string& extra_sae = "") {
    return "name: t\ndata: {kind: shards, path: " + data.string() +
           ", shuffle_buffer_rows: 700}\nsae: {latents: 64, k: 4" + extra_sae +
           "}\ntrain: {tokens: " + std::to_string(tokens) +
           ", batch_tokens: 250, checkpoint_every_tokens: 1000, log_every_steps: 2, lr: 0.002}\noutput: " +
           (dir_ / out).string() + "\n";
  }
  // A fresh directory per test (tests/testing), removed after a passing test.
  sae::testing::ScratchDir scratch_{"sae_cli"};
  fs::path dir_ = scratch_.fs_path();
};

TEST_F(Cli, TrainsFromShardsAndWritesTheOutputContract) {
  fs::path data = MakeShards();
  Result insp = Sh(Bin("sae") + " inspect " + data.string() + " --verify");
  ASSERT_EQ(insp.code, 0) << insp.out;
  EXPECT_NE(insp.out.find("16"), std::string::npos);
  EXPECT_NE(insp.out.find("6000"), std::string::npos);

  fs::path job = Job("job.yaml", ShardJob(data, "run", 4000,
                                          ", k_schedule: {start: 16, end: 4, fraction: 0.5}, "
                                          "dead_remedy: auxk, dead_window_tokens: 1000"));
  Result r = Sh(Bin("sae") + " train " + job.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("step 2 "), std::string::npos) << "plain log lines when not on a TTY";
  fs::path out = dir_ / "run";
  for (const char* f : {"sae.safetensors", "cfg.json", "metrics.jsonl", "summary.json", "checkpoints/latest"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  EXPECT_FALSE(fs::exists(dir_ / "run.partial"));

  json summary = json::parse(ReadAll(out / "summary.json"));
  EXPECT_EQ(summary["tokens"], 4000);
  EXPECT_EQ(summary["steps"], 16);
  for (const char* k : {"fvu", "mse", "l0", "dead_ratio", "tokens_per_second"}) EXPECT_TRUE(summary.contains(k)) << k;
  EXPECT_LE(summary["l0"].get<double>(), 4.0);

  json cfg = json::parse(ReadAll(out / "cfg.json"));
  EXPECT_EQ(cfg["d_in"], 16);
  EXPECT_EQ(cfg["num_latents"], 64);
  EXPECT_EQ(cfg["k"], 4);
  EXPECT_EQ(cfg["activation"], "topk");
  EXPECT_EQ(cfg["normalize_decoder"], true);
  EXPECT_EQ(cfg["expansion_factor"], 4);
  EXPECT_EQ(cfg["saeforge"]["k_schedule"]["start"], 16);
  EXPECT_EQ(cfg["saeforge"]["dead_remedy"], "auxk");

  // metrics.jsonl: one object per log interval, k annealed 16 → 4.
  std::istringstream lines(ReadAll(out / "metrics.jsonl"));
  std::string line;
  std::vector<json> ms;
  while (std::getline(lines, line)) ms.push_back(json::parse(line));
  ASSERT_EQ(ms.size(), 8u);
  EXPECT_EQ(ms.front()["k"], 15);  // after 250 of 2000 anneal tokens
  EXPECT_EQ(ms.back()["k"], 4);

  // sae.safetensors read by a minimal reader written here: u64 header length,
  // JSON header, F32 tensors with the sparsify names and shapes.
  std::string st = ReadAll(out / "sae.safetensors");
  ASSERT_GT(st.size(), 8u);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | static_cast<unsigned char>(st[i]);
  ASSERT_LE(8 + hlen, st.size());
  json h = json::parse(st.substr(8, hlen));
  const std::vector<std::pair<std::string, std::vector<int64_t>>> want = {
      {"encoder.weight", {64, 16}}, {"encoder.bias", {64}}, {"W_dec", {64, 16}}, {"b_dec", {16}}};
  size_t data_bytes = 0;
  for (const auto& [name, shape] : want) {
    ASSERT_TRUE(h.contains(name)) << name;
    EXPECT_EQ(h[name]["dtype"], "F32");
    EXPECT_EQ(h[name]["shape"].get<std::vector<int64_t>>(), shape);
    auto off = h[name]["data_offsets"].get<std::vector<uint64_t>>();
    data_bytes += off[1] - off[0];
  }
  EXPECT_EQ(8 + hlen + data_bytes, st.size());
  // Decoder rows are unit norm.
  auto off = h["W_dec"]["data_offsets"].get<std::vector<uint64_t>>();
  const float* w = reinterpret_cast<const float*>(st.data() + 8 + hlen + off[0]);
  for (int r = 0; r < 64; ++r) {
    double s = 0;
    for (int c = 0; c < 16; ++c) s += double(w[r * 16 + c]) * w[r * 16 + c];
    EXPECT_NEAR(s, 1.0, 1e-4);
  }
}

TEST_F(Cli, ResumeEqualsStraightRun) {
  fs::path data = MakeShards();
  fs::path a = Job("a.yaml", ShardJob(data, "a", 5000));
  fs::path b = Job("b.yaml", ShardJob(data, "b", 5000));
  ASSERT_EQ(Sh(Bin("sae") + " train " + a.string()).code, 0);
  Result first = Sh(Bin("sae") + " train " + b.string() + " --max-steps 9");
  ASSERT_EQ(first.code, 0) << first.out;
  EXPECT_FALSE(fs::exists(dir_ / "b"));
  EXPECT_TRUE(fs::exists(dir_ / "b.partial/checkpoints/latest"));
  // Without --resume the unfinished run is protected.
  Result again = Sh(Bin("sae") + " train " + b.string());
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("--resume"), std::string::npos) << again.out;
  Result resumed = Sh(Bin("sae-worker") + " --job " + b.string() + " --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.out;
  EXPECT_EQ(ReadAll(dir_ / "a/sae.safetensors"), ReadAll(dir_ / "b/sae.safetensors"));
  // metrics.jsonl of the resumed run has each step once.
  EXPECT_EQ(ReadAll(dir_ / "a/metrics.jsonl").size() > 0, true);
  std::istringstream la(ReadAll(dir_ / "a/metrics.jsonl")), lb(ReadAll(dir_ / "b/metrics.jsonl"));
  std::string x, y;
  int n = 0;
  while (std::getline(la, x) && std::getline(lb, y)) {
    EXPECT_EQ(json::parse(x)["fvu"], json::parse(y)["fvu"]);
    ++n;
  }
  EXPECT_EQ(n, 10);
  EXPECT_FALSE(std::getline(lb, y));
  // A finished output is never overwritten.
  Result over = Sh(Bin("sae") + " train " + a.string());
  EXPECT_NE(over.code, 0);
  EXPECT_NE(over.out.find("already exists"), std::string::npos);
}

struct BadJob {
  const char* name;
  const char* yaml;
  const char* field;  // must appear in the message
};

// The BLAS kernel's re-exec as `sae` makes it (core/base/blas_kernel.h),
// OpenBLAS made to look as if it had chosen Prescott so that the re-exec
// happens on every CPU: the long commands say so once on stderr, the short
// ones and --quiet say nothing (scripts read their stderr with the output),
// and the coordinator's client commands do not re-execute at all.
TEST_F(Cli, OnlyLongCommandsAnnounceTheBlasKernel) {
  const std::string env = "env -u OPENBLAS_CORETYPE SAE_BLAS_PRETEND_CORE=Prescott ";
  auto count = [](const std::string& out) {
    size_t n = 0;
    for (size_t at = out.find("BLAS kernel:"); at != std::string::npos; at = out.find("BLAS kernel:", at + 1)) ++n;
    return n;
  };
  const fs::path job = Job("bad.yaml", "data: {kind: synthetic}\nsae: {latents: 64, kk: 4}\n");
  struct Case {
    std::string args, message;  // each command fails with its own message
    size_t lines;               // "BLAS kernel:" lines expected
  };
  const std::vector<Case> cases = {
      {"train " + job.string(), "sae.kk", 1},
      {"features build --quiet --model /nonexistent --sae /nonexistent", "/nonexistent", 0},
      {"features show /nonexistent 0", "/nonexistent/features.json", 0},
      // (Before, `sae status` re-executed and printed the line first, where
      // scripts and the service tests read the job id.)
      {"status job-000001 --coordinator 127.0.0.1:1 --timeout 1", "unreachable", 0},
  };
  for (const Case& c : cases) {
    Result r = Sh(env + Bin("sae") + " " + c.args);
    EXPECT_NE(r.code, 0) << c.args << ": " << r.out;
    EXPECT_NE(r.out.find(c.message), std::string::npos) << c.args << ": " << r.out;
    EXPECT_EQ(count(r.out), c.lines) << c.args << ": " << r.out;
  }
}

TEST_F(Cli, BadJobFilesNameTheFileAndField) {
  const std::vector<BadJob> cases = {
      {"malformed", "name: x\nsae: [k: 1\n", "malformed.yaml"},
      {"unknown_key", "data: {kind: synthetic}\nsae: {latents: 64, kk: 4}\ntrain: {tokens: 1000}\noutput: o\n",
       "sae.kk"},
      {"k_gt_latents", "data: {kind: synthetic}\nsae: {latents: 64, k: 65}\ntrain: {tokens: 1000}\noutput: o\n",
       "sae.k"},
      {"schedule",
       "data: {kind: synthetic}\nsae: {latents: 64, k: 8, k_schedule: {start: 4}}\ntrain: {tokens: 1000}\noutput: o\n",
       "k_schedule.start"},
      {"zero_tokens", "data: {kind: synthetic}\nsae: {latents: 64, k: 8}\ntrain: {tokens: 0}\noutput: o\n",
       "train.tokens"},
      {"batch_lt_world",
       "data: {kind: synthetic}\nsae: {latents: 64, k: 8}\ntrain: {tokens: 1000, batch_tokens: 1}\nworld: {workers: "
       "2}\noutput: o\n",
       "world.workers"},
      {"bad_remedy",
       "data: {kind: synthetic}\nsae: {latents: 64, k: 8, dead_remedy: magic}\ntrain: {tokens: 1000}\noutput: o\n",
       "sae.dead_remedy"},
      {"cuda_device",
       "data: {kind: synthetic}\nsae: {latents: 64, k: 8}\ntrain: {tokens: 1000, device: cuda}\noutput: o\n",
       "train.device"},
      {"bad_type", "data: {kind: synthetic}\nsae: {latents: many, k: 8}\ntrain: {tokens: 1000}\noutput: o\n",
       "sae.latents"},
      // Sizes that cannot run are refused before anything is allocated.
      {"huge_latents", "data: {kind: synthetic}\nsae: {latents: 3000000000, k: 8}\ntrain: {tokens: 1000}\noutput: o\n",
       "sae.latents"},
      {"huge_d_in",
       "data: {kind: synthetic, d_in: 1000000000}\nsae: {latents: 64, k: 8}\ntrain: {tokens: 1000}\noutput: o\n",
       "data.d_in"},
      {"huge_state",
       "data: {kind: synthetic, d_in: 65536}\nsae: {latents: 100000000, k: 8}\ntrain: {tokens: 1000}\noutput: o\n",
       "sae.latents"},
      {"threads",
       "data: {kind: synthetic}\nsae: {latents: 64, k: 8}\ntrain: {tokens: 1000, threads: 1000000}\noutput: o\n",
       "train.threads"},
  };
  for (const BadJob& c : cases) {
    fs::path job = Job(std::string(c.name) + ".yaml", c.yaml);
    Result r = Sh("cd " + dir_.string() + " && " + Bin("sae") + " train " + job.string());
    EXPECT_EQ(r.code, 1) << c.name << ": " << r.out;
    EXPECT_FALSE(r.signaled) << c.name;
    EXPECT_NE(r.out.find(job.filename().string()), std::string::npos) << c.name << ": " << r.out;
    EXPECT_NE(r.out.find(c.field), std::string::npos) << c.name << ": " << r.out;
    EXPECT_FALSE(fs::exists(dir_ / "o")) << c.name;
  }
  Result missing = Sh(Bin("sae") + " train " + (dir_ / "nope.yaml").string());
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.out.find("nope.yaml"), std::string::npos);
  // A directory where a file is expected: an error naming it, not an abort.
  for (const std::string& cmd :
       {Bin("sae") + " train " + dir_.string(), Bin("sae-worker") + " --job " + dir_.string()}) {
    Result r = Sh(cmd);
    EXPECT_EQ(r.code, 1) << cmd << ": " << r.out;
    EXPECT_FALSE(r.signaled) << cmd;
    EXPECT_NE(r.out.find("is a directory"), std::string::npos) << cmd << ": " << r.out;
  }
  // A machine too small for the SAE (d_in known only once the data is open):
  // refused by the trainer with the sizes, before it allocates.
  fs::path big = Job("big.yaml",
                     "data: {kind: synthetic, d_in: 4096, latents: 64, k: 2}\nsae: {latents: 20000000, k: 8}\n"
                     "train: {tokens: 1000}\noutput: big_out\n");
  Result r = Sh("cd " + dir_.string() + " && " + Bin("sae") + " train " + big.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_FALSE(r.signaled);
  EXPECT_NE(r.out.find("sae.latents"), std::string::npos) << r.out;
  // Shard data: d_in is read from the manifest before training starts; an SAE
  // whose training state cannot exist anywhere is refused naming the field
  // and the manifest (the shard itself is never opened).
  fs::create_directories(dir_ / "wide");
  WriteAll(dir_ / "wide" / "manifest.json",
           R"({"format": "saeforge.activations.v1", "d_in": 131072, "dtype": "float32", "rows": 10,)"
           R"( "shards": [{"file": "shard-00000.safetensors", "rows": 10, "sha256": ")" +
               std::string(64, '0') + "\"}]}");
  fs::path wide = Job("wide.yaml", "data: {kind: shards, path: " + (dir_ / "wide").string() +
                                       "}\nsae: {latents: 268435456, k: 8}\ntrain: {tokens: 1000}\noutput: wide_out\n");
  Result w = Sh("cd " + dir_.string() + " && " + Bin("sae") + " train " + wide.string());
  EXPECT_EQ(w.code, 1) << w.out;
  EXPECT_FALSE(w.signaled);
  EXPECT_NE(w.out.find("sae.latents"), std::string::npos) << w.out;
  EXPECT_NE(w.out.find("wide/manifest.json"), std::string::npos) << w.out;
  EXPECT_FALSE(fs::exists(dir_ / "wide_out.partial"));
}

// Corrupts `shard` with `how`, runs the job, expects a failure naming the shard.
struct ShardDamage {
  const char* name;
  const char* expect;  // substring of the message besides the shard name
};

TEST_F(Cli, DamagedShardsFailNamingTheShard) {
  auto run_damaged = [&](const std::string& tag, const std::function<void(const fs::path&)>& damage,
                         const std::string& shard_name, const std::string& expect) {
    fs::path data = MakeShards("acts_" + tag);
    damage(data);
    fs::path job = Job(tag + ".yaml", ShardJob(data, "out_" + tag));
    Result r = Sh(Bin("sae") + " train " + job.string());
    EXPECT_EQ(r.code, 1) << tag << ": " << r.out;
    EXPECT_FALSE(r.signaled) << tag;
    EXPECT_NE(r.out.find(shard_name), std::string::npos) << tag << ": " << r.out;
    EXPECT_NE(r.out.find(expect), std::string::npos) << tag << ": " << r.out;
    EXPECT_FALSE(fs::exists(dir_ / ("out_" + tag) / "summary.json")) << tag;
    EXPECT_FALSE(fs::exists(dir_ / ("out_" + tag + ".partial") / "sae.safetensors")) << tag;
  };
  const std::string s1 = "shard-00001.safetensors";
  run_damaged(
      "missing_dir", [](const fs::path& d) { fs::remove_all(d); }, "acts_missing_dir", "manifest");
  run_damaged(
      "missing_shard", [&](const fs::path& d) { fs::remove(d / s1); }, s1, "");
  run_damaged(
      "truncated", [&](const fs::path& d) { fs::resize_file(d / s1, fs::file_size(d / s1) / 2); }, s1, "");
  run_damaged(
      "header_len",
      [&](const fs::path& d) {
        std::fstream f(d / s1, std::ios::in | std::ios::out | std::ios::binary);
        const unsigned char big[8] = {0, 0, 0, 0, 0, 0, 0, 0x7f};
        f.write(reinterpret_cast<const char*>(big), 8);
      },
      s1, "header length");
  run_damaged(
      "checksum",
      [&](const fs::path& d) {
        std::fstream f(d / s1, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(static_cast<std::streamoff>(fs::file_size(d / s1)) - 10);
        f.put('\x55');
      },
      s1, "sha256");
  run_damaged(
      "dtype",
      [&](const fs::path& d) {
        json m = json::parse(ReadAll(d / "manifest.json"));
        m["dtype"] = "float16";
        WriteAll(d / "manifest.json", m.dump());
      },
      "shard-00000.safetensors", "dtype");
  run_damaged(
      "d_in",
      [&](const fs::path& d) {
        json m = json::parse(ReadAll(d / "manifest.json"));
        m["d_in"] = 17;
        WriteAll(d / "manifest.json", m.dump());
      },
      "shard-00000.safetensors", "");
}

TEST_F(Cli, CorruptDataLaterInTheRunKeepsEarlierCheckpoints) {
  fs::path data = MakeShards();
  fs::path job = Job("job.yaml", ShardJob(data, "run", 5500));
  ASSERT_EQ(Sh(Bin("sae") + " train " + job.string() + " --max-steps 4").code, 0);
  fs::path ckpts = dir_ / "run.partial/checkpoints";
  const std::string latest = ReadAll(ckpts / "latest");
  ASSERT_FALSE(latest.empty());
  const fs::path state = ckpts / latest.substr(0, latest.find('\n')) / "state.safetensors";
  const std::string before = ReadAll(state);
  ASSERT_FALSE(before.empty());
  // Shard 2 (rows 4000..5999 in manifest order) gets a flipped byte.
  const fs::path s2 = data / "shard-00002.safetensors";
  {
    std::fstream f(s2, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(s2)) - 4);
    f.put('\x7f');
  }
  Result r = Sh(Bin("sae") + " train " + job.string() + " --resume");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("shard-00002.safetensors"), std::string::npos) << r.out;
  EXPECT_EQ(ReadAll(state), before);
  EXPECT_FALSE(fs::exists(dir_ / "run"));
  EXPECT_FALSE(fs::exists(dir_ / "run.partial/summary.json"));
}

TEST_F(Cli, NanRowsAreReportedWithShardAndRow) {
  // A float32 .npy of 300 × 8 with a NaN in row 123.
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (300, 8), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string npy = "\x93NUMPY";
  npy += '\x01';
  npy += '\x00';
  npy += static_cast<char>(header.size() & 0xff);
  npy += static_cast<char>(header.size() >> 8);
  npy += header;
  std::vector<float> v(300 * 8);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i * 37) % 101) / 50.0f - 1.0f;
  v[123 * 8 + 5] = std::nanf("");
  npy.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  WriteAll(dir_ / "x.npy", npy);
  Result imp = Sh(Bin("sae") + " inspect --import-npy " + (dir_ / "x.npy").string() + " --out " +
                  (dir_ / "npy_acts").string() + " --rows-per-shard 100");
  ASSERT_EQ(imp.code, 0) << imp.out;
  fs::path job = Job("nan.yaml", "data: {kind: shards, path: " + (dir_ / "npy_acts").string() +
                                     ", shuffle_buffer_rows: 1}\nsae: {latents: 32, k: 2}\n"
                                     "train: {tokens: 300, batch_tokens: 50}\noutput: " +
                                     (dir_ / "nanrun").string() + "\n");
  Result r = Sh(Bin("sae") + " train " + job.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("shard-00001.safetensors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("23"), std::string::npos) << r.out;  // row 23 of shard 1
  EXPECT_FALSE(fs::exists(dir_ / "nanrun"));
}

}  // namespace

namespace {

// GET http://address/metrics with curl-free sockets.
std::string Scrape(const std::string& address) {
  const std::string host = address.substr(0, address.rfind(':'));
  const std::string port = address.substr(address.rfind(':') + 1);
  return Sh("bash -c 'exec 3<>/dev/tcp/" + host + "/" + port +
            " && printf \"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\" >&3 && cat <&3'")
      .out;
}

double Value(const std::string& text, const std::string& name) {
  const size_t p = text.find("\n" + name + "{");
  if (p == std::string::npos) return -1;
  const size_t sp = text.find("} ", p);
  return std::stod(text.substr(sp + 2));
}

TEST(CliTelemetry, TrainingServesMetricsAndStopsCleanlyOnSigterm) {
  const fs::path dir = fs::path(::testing::TempDir()) / "sae_cli_metrics";
  fs::remove_all(dir);
  fs::create_directories(dir);
  WriteAll(dir / "job.yaml",
           "name: m\ndata: {kind: synthetic, d_in: 32, latents: 64, k: 3}\n"
           "sae: {latents: 128, k: 4}\ntrain: {tokens: 2G, batch_tokens: 512}\n"
           "output: " +
               (dir / "out").string() + "\n");
  const std::string log = (dir / "log").string();
  Sh("(" + Bin("sae") + " train " + (dir / "job.yaml").string() + " --metrics-listen 127.0.0.1:0 > " + log +
     " 2>&1; echo $? > " + (dir / "rc").string() + ") > /dev/null 2>&1 &");
  std::string address;
  for (int i = 0; i < 100 && address.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const std::string text = ReadAll(log);
    const size_t p = text.find("metrics at http://");
    if (p != std::string::npos) address = text.substr(p + 18, text.find("/metrics", p) - p - 18);
  }
  ASSERT_FALSE(address.empty()) << ReadAll(log);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const std::string first = Scrape(address);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const std::string second = Scrape(address);
  EXPECT_GT(Value(first, "sae_tokens_total"), 0) << first;
  EXPECT_GT(Value(second, "sae_tokens_total"), Value(first, "sae_tokens_total"));
  EXPECT_EQ(Value(second, "sae_k"), 4);
  EXPECT_GE(Value(second, "sae_fraction_variance_unexplained"), 0);
  EXPECT_NE(second.find("job=\"m\""), std::string::npos);
  // SIGTERM to the trainer itself (not the shell that waits for it).
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code ec;
    const std::string exe = fs::read_symlink(e.path() / "exe", ec).string();
    if (!ec && exe.size() >= 4 && exe.compare(exe.size() - 4, 4, "/sae") == 0 &&
        ReadAll(e.path() / "cmdline").find((dir / "job.yaml").string()) != std::string::npos)
      kill(std::stoi(name), SIGTERM);
  }
  for (int i = 0; i < 100 && ReadAll(dir / "rc").empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(ReadAll(dir / "rc"), "1\n");
  EXPECT_NE(ReadAll(log).find("checkpoint written, continue with --resume"), std::string::npos) << ReadAll(log);
  EXPECT_TRUE(fs::exists(dir / "out.partial/checkpoints/latest"));
}

}  // namespace
