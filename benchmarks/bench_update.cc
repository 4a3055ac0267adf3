// bench_update: the training step with its Adam update, fused (StepAndUpdate
// with fuse) against the separate update (fuse off), alternating the two on
// one batch so that a loaded machine slows both alike. Prints the median
// CPU-seconds of the whole call, the part outside the encoder (the non-GEMM
// share's numerator less the top-k) and each phase's CPU time on the calling
// thread, exact with --threads 1 (docs/performance.md "non-GEMM share").
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/bench_util.h"
#include "cli/flags.h"
#include "core/base/blas_kernel.h"
#include "core/sae/sae_step.h"

namespace {

double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

std::string LoadAverage() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

struct Variant {
  std::string name;
  bool fuse = true;
  sae::SaeParams p;
  sae::AdamState s;
  sae::SaeGrads g;
  sae::StepWorkspace ws;
  std::vector<double> cpu, outside_encoder;
  std::map<std::string, std::vector<double>> phases;
};

}  // namespace

int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  sae::flags::Command app{"bench_update: the step with its Adam update, fused against separate"};
  int64_t d = 768, n = 16384, k = 32, batch = 4096, rounds = 9, warmup = 2;
  int threads = 1;
  double grad_clip = 0;
  app.AddOption("--d", d, "input dimension");
  app.AddOption("--latents", n, "number of latents");
  app.AddOption("--k", k, "active latents per token");
  app.AddOption("--batch", batch, "tokens per step");
  app.AddOption("--rounds", rounds, "measured rounds (each runs both variants once; median)");
  app.AddOption("--warmup", warmup, "rounds before measuring");
  app.AddOption("--threads", threads, "LibTorch threads (0 = every core; default 1: CPU-seconds are the cost)");
  app.AddOption("--grad-clip", grad_clip, "max gradient norm (> 0: both variants take the separate update)");
  if (auto rc = app.Parse(argc, argv)) return *rc;
  at::set_num_threads(threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));
  at::manual_seed(1);
  sae::SaeParams p0;
  p0.W_enc = at::randn({n, d}, at::kFloat) / std::sqrt(static_cast<double>(d));
  p0.b_enc = at::zeros({n}, at::kFloat);
  p0.W_dec = p0.W_enc.clone();
  p0.W_dec /= p0.W_dec.norm(2, 1, true);
  p0.b_dec = at::zeros({d}, at::kFloat);
  const at::Tensor x = at::randn({batch, d}, at::kFloat);
  Variant v[2];
  v[0].name = "fused";
  v[1].name = "separate";
  v[1].fuse = false;
  for (Variant& a : v) {
    a.p = p0.Clone();
    a.s = sae::AdamState::ZerosLike(p0);
    a.g = sae::SaeGrads::ZerosLike(p0);
  }
  sae::AdamConfig ac;
  ac.lr = 2e-4;
  for (int64_t r = 0; r < warmup + rounds; ++r) {
    for (int j = 0; j < 2; ++j) {
      Variant& a = v[(r + j) % 2];  // alternate which goes first
      sae::StepConfig cfg;
      cfg.k = k;
      cfg.workspace = &a.ws;
      sae::StepResult res;
      double norm = 0;
      const double c0 = ProcessCpuSeconds();
      const absl::Status st = sae::StepAndUpdate(&a.p, x, cfg, ac, grad_clip, a.fuse, &a.s, nullptr, &a.g, &res, &norm);
      const double c1 = ProcessCpuSeconds();
      if (!st.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
        return 1;
      }
      if (r < warmup) continue;
      double encoder = 0;
      for (auto& [name, sec] : res.phase_cpu_seconds) {
        a.phases[name].push_back(sec);
        if (std::string(name).rfind("encode", 0) == 0) encoder += sec;
      }
      a.cpu.push_back(c1 - c0);
      a.outside_encoder.push_back(c1 - c0 - encoder);
    }
  }
  std::printf("machine   : %s, %u cores, load average %s\n", sae::bench::CpuModel().c_str(),
              std::thread::hardware_concurrency(), LoadAverage().c_str());
  std::printf("build     : commit %s, LibTorch threads %d\n", sae::bench::Commit().c_str(), at::get_num_threads());
  std::printf("config    : d %ld, latents %ld, k %ld, batch %ld, grad_clip %g; median of %ld rounds after %ld\n", d, n,
              k, batch, grad_clip, rounds, warmup);
  for (Variant& a : v) {
    std::printf(
        "  %-9s step+update %.4f CPU-s, outside the encoder (GEMM and top-k) %.4f; phases, CPU-s of the calling "
        "thread:",
        a.name.c_str(), sae::bench::Median(a.cpu), sae::bench::Median(a.outside_encoder));
    for (auto& [name, s] : a.phases) std::printf(" %s %.4f", name.c_str(), sae::bench::Median(s));
    std::printf("\n");
  }
  return 0;
}
