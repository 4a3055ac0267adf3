// Helpers for the interpretability tests that run `sae` as real processes: a
// small tied SAE written as a run directory, and `sae serve` started on a free
// loopback port.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/data/safetensors.h"
#include "tests/integration/test_util.h"

namespace {

// W_enc = W_dec = random unit rows (seeded), zero biases, cfg.json naming `layer`.
void WriteTiedSae(const fs::path& dir, int64_t n, int64_t d, int64_t k, int64_t layer, uint64_t seed = 7) {
  fs::create_directories(dir);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> w(static_cast<size_t>(n * d)), zn(static_cast<size_t>(n), 0.0f), zd(static_cast<size_t>(d), 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    double sq = 0;
    for (int64_t c = 0; c < d; ++c) sq += std::pow(w[i * d + c] = normal(rng), 2);
    for (int64_t c = 0; c < d; ++c) w[i * d + c] = static_cast<float>(w[i * d + c] / std::sqrt(sq));
  }
  sae::SafetensorsWriter wr;
  ASSERT_TRUE(wr.Add("encoder.weight", sae::DType::kF32, {n, d}, w.data()).ok());
  ASSERT_TRUE(wr.Add("encoder.bias", sae::DType::kF32, {n}, zn.data()).ok());
  ASSERT_TRUE(wr.Add("W_dec", sae::DType::kF32, {n, d}, w.data()).ok());
  ASSERT_TRUE(wr.Add("b_dec", sae::DType::kF32, {d}, zd.data()).ok());
  ASSERT_TRUE(wr.Write((dir / "sae.safetensors").string()).ok());
  nlohmann::json cfg = {{"d_in", d},
                        {"num_latents", n},
                        {"k", k},
                        {"activation", "topk"},
                        {"normalize_decoder", true},
                        {"expansion_factor", n / d},
                        {"saeforge",
                         {{"format", "saeforge.sae.v1"},
                          {"provenance", {{"data", {{"kind", "lm"}, {"layer", layer}, {"hook", "resid_post"}}}}}}}};
  WriteAll(dir / "cfg.json", cfg.dump(2));
}

// `sae serve ... --listen 127.0.0.1:0`, its port read from its first line.
class ServeProcess {
 public:
  explicit ServeProcess(const std::vector<std::string>& args) {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], 1);
      close(fds[0]);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fds[1]);
    std::string line;
    char c;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline && read(fds[0], &c, 1) == 1) {
      if (c == '\n') break;
      line += c;
    }
    close(fds[0]);
    first_line_ = line;
    const size_t p = line.rfind(':');
    if (p != std::string::npos) port_ = std::atoi(line.c_str() + p + 1);
  }
  ~ServeProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int st;
      waitpid(pid_, &st, 0);
    }
  }
  int port() const { return port_; }
  const std::string& first_line() const { return first_line_; }
  // Waits for the process to exit (after it refused to start): its exit code.
  int Wait() {
    int st = 0;
    waitpid(pid_, &st, 0);
    pid_ = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string first_line_;
};

}  // namespace
