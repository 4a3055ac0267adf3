// bench_int8_screen: train.encoder: int8_screened's top-k (Int8Screen::TopK)
// alone, phase by phase, on an SAE initialised as the trainer does (encoder
// uniform ±1/√d, zero bias) and Gaussian inputs. With --cpu-time the phases
// are process CPU seconds, not wall seconds: on a machine shared with other
// work, the CPU time of a --threads 1 run is what the code costs whatever the
// load, where wall time is what it got (docs/performance.md). The adaptive C
// runs as in training; --candidates pins it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/bench_util.h"
#include "cli/flags.h"
#include "core/base/blas_kernel.h"
#include "core/sae/int8_screen.h"
#include "core/sae/sae_step.h"

int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  sae::flags::Command app{"bench_int8_screen: the int8-screened top-k alone, by phase"};
  int64_t d = 768, n = 16384, k = 32, batch = 4096, reps = 5, warmup = 3, candidates = 0, block_rows = 0;
  int threads = 0;
  bool cpu_time = false;
  app.AddOption("--d", d, "input dimension");
  app.AddOption("--latents", n, "number of latents");
  app.AddOption("--k", k, "active latents per row");
  app.AddOption("--batch", batch, "rows per call");
  app.AddOption("--reps", reps, "measured calls (median)");
  app.AddOption("--warmup", warmup, "calls before measuring (the adaptive C settles in one or two)");
  app.AddOption("--candidates", candidates, "pin C (blocks of 16 latents); 0: adaptive, as in training");
  app.AddOption("--block-rows", block_rows, "rows per int8 GEMM block (0: automatic)");
  app.AddOption("--threads", threads, "LibTorch threads (0 = every core)");
  app.AddFlag("--cpu-time", cpu_time, "phases and total in process CPU seconds (use with --threads 1)");
  if (auto rc = app.Parse(argc, argv)) return *rc;
  at::set_num_threads(threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));
  if (absl::Status a = sae::Int8ScreenAvailable(); !a.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(a.message()).c_str());
    return 1;
  }
  at::manual_seed(0);
  sae::SaeParams p;
  const double bound = 1.0 / std::sqrt(static_cast<double>(d));
  p.W_enc = at::empty({n, d}, at::kFloat).uniform_(-bound, bound);
  p.b_enc = at::zeros({n}, at::kFloat);
  p.W_dec = p.W_enc.clone();
  p.b_dec = at::zeros({d}, at::kFloat);
  at::Tensor xc = at::randn({batch, d}, at::kFloat);
  auto screen = sae::Int8Screen::Create(candidates, /*adaptive=*/candidates == 0);
  if (!screen.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(screen.status().message()).c_str());
    return 1;
  }
  sae::Int8Screen& s = **screen;
  if (block_rows > 0) s.set_block_rows(block_rows);
  s.set_cpu_time_phases(cpu_time);
  std::vector<int64_t> idx(static_cast<size_t>(batch * k));
  std::vector<float> val(static_cast<size_t>(batch * k));
  std::map<std::string, std::vector<double>> phases;
  std::vector<double> total, fallback, cand, mean_cand;
  for (int64_t i = 0; i < warmup + reps; ++i) {
    std::vector<std::pair<const char*, double>> ph;
    const double t0 = cpu_time ? sae::ProcessCpuNow() : sae::bench::SteadyNow();
    absl::Status st = s.TopK(p, xc, k, idx.data(), val.data(), &ph);
    const double t1 = cpu_time ? sae::ProcessCpuNow() : sae::bench::SteadyNow();
    if (!st.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
      return 1;
    }
    if (i < warmup) continue;
    total.push_back(t1 - t0);
    for (auto& [name, sec] : ph) phases[name].push_back(sec);
    fallback.push_back(static_cast<double>(s.last().fallback_rows) / static_cast<double>(batch));
    cand.push_back(static_cast<double>(s.last().candidates));
    mean_cand.push_back(s.last().mean_candidates);
  }
  double load[3] = {0, 0, 0};
  if (std::FILE* fp = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(fp, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = -1;
    std::fclose(fp);
  }
  std::printf("machine   : %s, %u cores, load average %.2f %.2f %.2f\n", sae::bench::CpuModel().c_str(),
              std::thread::hardware_concurrency(), load[0], load[1], load[2]);
  std::printf("build     : commit %s, %s, LibTorch threads %d\n", sae::bench::Commit().c_str(), SAE_BUILD_TYPE,
              at::get_num_threads());
  std::printf("config    : d %ld, latents %ld, k %ld, batch %ld, %s seconds, median of %ld calls after %ld\n", d, n, k,
              batch, cpu_time ? "CPU" : "wall", reps, warmup);
  std::printf("  top-k    %8.4f s   C %.0f, %.1f candidates per row rescored, %.2f %% rows recomputed\n",
              sae::bench::Median(total), sae::bench::Median(cand), sae::bench::Median(mean_cand),
              100 * sae::bench::Median(fallback));
  std::printf("  phases  :");
  for (auto& [name, v] : phases) std::printf(" %s %.4f", name.c_str(), sae::bench::Median(v));
  std::printf("\n");
  return 0;
}
