// bench_train_step: the time of one full optimizer step of a TopK SAE (encode,
// top-k, sparse backward, Adam, decoder renormalisation) against its physical
// floor, the encoder GEMM alone in the same precision. Prints the machine and
// build first, then medians over repeated steps after warm-up.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "core/sae/sae_step.h"
#include "core/sae/trainer.h"

#include "benchmarks/bench_util.h"

namespace {

using sae::bench::SteadyNow;
using sae::bench::Median;
using sae::bench::Commit;
using sae::bench::CpuModel;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_train_step: SAE training step vs the encoder GEMM"};
  int64_t d = 768, n = 16384, k = 32, batch = 4096, steps = 7, warmup = 2;
  int threads = 0;
  std::string precision = "fp32", device = "cpu", remedy = "none";
  int64_t dead_window = 1000000000000LL;
  bool as_json = false, aten = false;
  app.add_option("--d", d, "input dimension");
  app.add_option("--latents", n, "number of latents");
  app.add_option("--k", k, "active latents per token");
  app.add_option("--batch", batch, "tokens per step");
  app.add_option("--precision", precision, "fp32|bf16")->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--device", device, "cpu|cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--steps", steps, "measured steps (median; at least 5)");
  app.add_option("--warmup", warmup, "steps before measuring");
  app.add_option("--threads", threads, "LibTorch threads (0 = every core)");
  app.add_option("--remedy", remedy, "none|auxk|ghost_grads")->check(CLI::IsMember({"none", "auxk", "ghost_grads"}));
  app.add_option("--dead-window", dead_window,
                 "dead_window_tokens (default: none ever dead; 1 = every latent that did not fire in the last step)");
  app.add_flag("--json", as_json, "one JSON object");
  app.add_flag("--aten", aten, "on CPU, time the device-generic ATen step (what CUDA runs) instead of the CPU kernels");
  CLI11_PARSE(app, argc, argv);
  steps = std::max<int64_t>(steps, 5);
  at::set_num_threads(threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));

  sae::TrainerOptions o;
  o.d_in = d;
  o.latents = n;
  o.k = k;
  o.schedule = sae::KSchedule::Constant(k);
  o.total_tokens = batch * (steps + warmup) * 1000;
  o.batch_tokens = batch;
  o.warmup_fraction = 0;
  o.bf16 = precision == "bf16";
  o.remedy = sae::ParseOption<sae::Remedy>(remedy).value();
  o.dead_window_tokens = dead_window;
  o.device = sae::ParseOption<sae::Device>(device).value();
  o.aten_kernels = aten;
  auto trainer = sae::SaeTrainer::Create(o);
  if (!trainer.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(trainer.status().message()).c_str());
    return 1;
  }
  at::manual_seed(0);
  at::Tensor x = at::randn({batch, d}, at::kFloat);

  std::vector<double> step_s;
  std::map<std::string, std::vector<double>> phases;
  for (int64_t i = 0; i < warmup + steps; ++i) {
    auto m = (*trainer)->Step(x.data_ptr<float>(), batch);
    if (!m.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(m.status().message()).c_str());
      return 1;
    }
    if (i >= warmup) {
      step_s.push_back(m->seconds);
      for (auto& [name, s] : m->phase_seconds) phases[name].push_back(s);
    }
  }

  // The floor: the encoder GEMM (with bias) alone, same shapes and precision
  // as the step uses: fp32 sgemm; bf16 on CPU multiplies bf16-rounded
  // operands in fp32 (see docs/performance.md for LibTorch's own bf16 GEMM).
  // On CUDA the floor is the same fp32 addmm on the device, synchronised by
  // reading one element back.
  at::Tensor W = (*trainer)->params().W_enc.cpu().clone();
  at::Tensor b = at::zeros({n});
  at::Tensor xin = x.clone();
  if (o.bf16) {
    sae::RoundToBF16InPlace(W);
    sae::RoundToBF16InPlace(xin);
  }
  const at::Device dev = device == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  W = W.to(dev);
  b = b.to(dev);
  xin = xin.to(dev);
  at::Tensor z = at::empty({batch, n}, W.options());
  std::vector<double> gemm_s;
  for (int64_t i = 0; i < warmup + steps; ++i) {
    const double t0 = SteadyNow();
    at::addmm_out(z, b, xin, W.t());
    if (!dev.is_cpu()) z.select(0, 0).select(0, 0).item<float>();
    if (i >= warmup) gemm_s.push_back(SteadyNow() - t0);
  }
  const double step_med = Median(step_s), gemm_med = Median(gemm_s);
  const double tok_s = batch / step_med;
  const double ratio = step_med / gemm_med;
  const double gflops = 2.0 * batch * d * n / gemm_med / 1e9;

  if (as_json) {
    nlohmann::json j = {{"tokens_per_second", tok_s}, {"step_seconds", step_med},
                        {"gemm_seconds", gemm_med}, {"ratio", ratio}, {"gemm_gflops", gflops},
                        {"d", d}, {"latents", n}, {"k", k}, {"batch", batch},
                        {"precision", precision}, {"device", device}, {"threads", at::get_num_threads()},
                        {"commit", Commit()}, {"build_type", SAE_BUILD_TYPE}};
    nlohmann::json ph;
    for (auto& [name, v] : phases) ph[name] = Median(v);
    j["phases"] = ph;
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  utsname u;
  uname(&u);
  std::printf("machine   : %s, %u cores, %s %s\n", CpuModel().c_str(), std::thread::hardware_concurrency(),
              u.sysname, u.release);
  std::printf("build     : commit %s, %s, LibTorch threads %d\n", Commit().c_str(), SAE_BUILD_TYPE,
              at::get_num_threads());
  std::printf("config    : d %ld, latents %ld, k %ld, batch %ld, %s, %s, remedy %s\n", d, n, k, batch,
              precision.c_str(), device.c_str(), remedy.c_str());
  std::printf("median of %ld steps after %ld warm-up:\n", steps, warmup);
  std::printf("  step      %9.4f s   %10.0f tokens/s\n", step_med, tok_s);
  std::printf("  gemm      %9.4f s   %10.1f GFLOP/s (encoder GEMM alone)\n", gemm_med, gflops);
  std::printf("  ratio     %9.3f     (step / gemm)\n", ratio);
  std::printf("  phases:");
  for (auto& [name, v] : phases) std::printf(" %s %.4f", name.c_str(), Median(v));
  std::printf("\n");
  return 0;
}
