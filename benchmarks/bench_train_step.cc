// bench_train_step: the time of one full optimizer step of a TopK SAE (encode,
// top-k, sparse backward, Adam, decoder renormalisation) against its physical
// floor, the encoder GEMM alone in the same precision. Prints the machine and
// build first, then medians over repeated steps after warm-up.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
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

#include "cli/flags.h"
#include "core/sae/sae_step.h"
#include "core/sae/trainer.h"

#include "benchmarks/bench_util.h"
#include "core/base/blas_kernel.h"

namespace {

using sae::bench::Commit;
using sae::bench::CpuModel;
using sae::bench::Median;
using sae::bench::SteadyNow;

}  // namespace

namespace {

struct RunResult {
  std::string encoder;
  double step = 0, fallback_rate = 0, candidates = 0;
  std::map<std::string, double> phases;
};

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  size_t p = 0;
  while (p <= s.size()) {
    const size_t e = s.find(',', p);
    out.push_back(s.substr(p, e == std::string::npos ? std::string::npos : e - p));
    if (e == std::string::npos) break;
    p = e + 1;
  }
  return out;
}

// The command line.
struct Flags {
  int64_t d = 768, n = 16384, k = 32, batch = 4096, steps = 7, warmup = 2;
  int threads = 0;
  std::string precision = "fp32", device = "cpu", remedy = "none", encoders;
  int64_t dead_window = 1000000000000LL;
  bool as_json = false, aten = false;
};

void AddFlags(sae::flags::Command& app, Flags& f) {
  app.AddOption("--d", f.d, "input dimension");
  app.AddOption("--latents", f.n, "number of latents");
  app.AddOption("--k", f.k, "active latents per token");
  app.AddOption("--batch", f.batch, "tokens per step");
  app.AddOption("--precision", f.precision, "fp32|bf16 (one encoder; see --encoder)").OneOf({"fp32", "bf16"});
  app.AddOption("--encoder", f.encoders,
                "comma-separated encoders measured in this one run, each against the same GEMM floor: "
                "fp32, bf16, int8_screened (default: --precision)");
  app.AddOption("--device", f.device, "cpu|cuda").OneOf({"cpu", "cuda"});
  app.AddOption("--steps", f.steps, "measured steps (median; at least 5)");
  app.AddOption("--warmup", f.warmup, "steps before measuring");
  app.AddOption("--threads", f.threads, "LibTorch threads (0 = every core)");
  app.AddOption("--remedy", f.remedy, "none|auxk|ghost_grads").OneOf({"none", "auxk", "ghost_grads"});
  app.AddOption("--dead-window", f.dead_window,
                "dead_window_tokens (default: none ever dead; 1 = every latent that did not fire in the last step)");
  app.AddFlag("--json", f.as_json, "one JSON object");
  app.AddFlag("--aten", f.aten,
              "on CPU, time the device-generic ATen step (what CUDA runs) instead of the CPU kernels");
}

sae::TrainerOptions TrainerOptionsFor(const Flags& f, const std::string& enc) {
  sae::TrainerOptions o;
  o.d_in = f.d;
  o.latents = f.n;
  o.k = f.k;
  o.schedule = sae::KSchedule::Constant(f.k);
  o.total_tokens = f.batch * (f.steps + f.warmup) * 1000;
  o.batch_tokens = f.batch;
  o.warmup_fraction = 0;
  o.bf16 = enc == "bf16";
  o.int8_screened = enc == "int8_screened";
  o.remedy = sae::ParseOption<sae::Remedy>(f.remedy).value();
  o.dead_window_tokens = f.dead_window;
  o.device = sae::ParseOption<sae::Device>(f.device).value();
  o.aten_kernels = f.aten;
  return o;
}

// Median step time, screen statistics and phases of one encoder over the
// same batch x. *W_first keeps the first encoder's initial weights (the
// floor's GEMM operand).
absl::StatusOr<RunResult> MeasureEncoder(const Flags& f, const std::string& enc, const at::Tensor& x,
                                         at::Tensor* W_first) {
  auto trainer = sae::SaeTrainer::Create(TrainerOptionsFor(f, enc));
  if (!trainer.ok()) return absl::Status(trainer.status().code(), enc + ": " + std::string(trainer.status().message()));
  if (!W_first->defined()) *W_first = (*trainer)->params().W_enc.cpu().clone();
  RunResult rr;
  rr.encoder = enc;
  std::vector<double> step_s, fb, cand;
  std::map<std::string, std::vector<double>> phases;
  for (int64_t i = 0; i < f.warmup + f.steps; ++i) {
    auto m = (*trainer)->Step(x.data_ptr<float>(), f.batch);
    if (!m.ok()) return m.status();
    if (i >= f.warmup) {
      step_s.push_back(m->seconds);
      for (auto& [name, sec] : m->phase_seconds) phases[name].push_back(sec);
      fb.push_back(static_cast<double>(m->screen_fallback_rows) / f.batch);
      cand.push_back(static_cast<double>(m->screen_candidates));
    }
  }
  rr.step = Median(step_s);
  rr.fallback_rate = Median(fb);
  rr.candidates = Median(cand);
  for (auto& [name, v] : phases) rr.phases[name] = Median(v);
  return rr;
}

// The floor: the encoder GEMM (with bias) alone, same shapes as the step,
// in fp32 (sgemm), and with bf16-rounded operands when bf16 is measured
// (bf16 on CPU multiplies bf16-rounded operands in fp32; see
// docs/performance.md for LibTorch's own bf16 GEMM). On CUDA the floor is
// the same fp32 addmm on the device, synchronised by reading one element.
double GemmFloor(const Flags& f, const at::Tensor& W_first, const at::Tensor& x, bool bf16) {
  const at::Device dev = f.device == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  at::Tensor W = W_first.clone();
  at::Tensor b = at::zeros({f.n});
  at::Tensor xin = x.clone();
  if (bf16) {
    sae::RoundToBF16InPlace(W);
    sae::RoundToBF16InPlace(xin);
  }
  W = W.to(dev);
  b = b.to(dev);
  xin = xin.to(dev);
  at::Tensor z = at::empty({f.batch, f.n}, W.options());
  std::vector<double> gemm_s;
  for (int64_t i = 0; i < f.warmup + f.steps; ++i) {
    const double t0 = SteadyNow();
    at::addmm_out(z, b, xin, W.t());
    if (!dev.is_cpu()) z.select(0, 0).select(0, 0).item<float>();
    if (i >= f.warmup) gemm_s.push_back(SteadyNow() - t0);
  }
  return Median(gemm_s);
}

// The GEMM floors: fp32, and bf16-rounded where a bf16 encoder runs.
struct Floors {
  double fp32 = 0, bf16 = 0;
  bool any_bf16 = false;
  double Of(const RunResult& r) const { return r.encoder == "bf16" ? bf16 : fp32; }
};

void PrintJson(const Flags& f, const std::vector<RunResult>& runs, const Floors& floors) {
  const int64_t batch = f.batch, d = f.d, n = f.n;
  nlohmann::json all = nlohmann::json::array();
  for (const RunResult& r : runs) {
    const double g = floors.Of(r);
    nlohmann::json j = {{"tokens_per_second", batch / r.step},
                        {"step_seconds", r.step},
                        {"gemm_seconds", g},
                        {"ratio", r.step / g},
                        {"gemm_gflops", 2.0 * batch * d * n / g / 1e9},
                        {"d", d},
                        {"latents", n},
                        {"k", f.k},
                        {"batch", batch},
                        {"precision", r.encoder == "bf16" ? "bf16" : "fp32"},
                        {"encoder", r.encoder},
                        {"device", f.device},
                        {"threads", at::get_num_threads()},
                        {"commit", Commit()},
                        {"build_type", SAE_BUILD_TYPE},
                        {"blas", sae::CurrentBlasKernel().Describe()},
                        {"blas_core", sae::CurrentBlasKernel().core}};
    if (r.encoder == "int8_screened") {
      j["fallback_rate"] = r.fallback_rate;
      j["candidates"] = r.candidates;
    }
    j["phases"] = r.phases;
    all.push_back(j);
  }
  std::printf("%s\n", (all.size() == 1 ? all[0] : all).dump().c_str());
}

void PrintReport(const Flags& f, const std::vector<RunResult>& runs, const Floors& floors) {
  utsname u;
  uname(&u);
  double load[3] = {0, 0, 0};
  if (std::FILE* fp = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(fp, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = -1;
    std::fclose(fp);
  }
  std::printf("machine   : %s, %u cores, %s %s, load average %.2f %.2f %.2f\n", CpuModel().c_str(),
              std::thread::hardware_concurrency(), u.sysname, u.release, load[0], load[1], load[2]);
  std::printf("build     : commit %s, %s, LibTorch threads %d\n", Commit().c_str(), SAE_BUILD_TYPE,
              at::get_num_threads());
  std::printf("blas      : %s\n", sae::CurrentBlasKernel().Describe().c_str());
  std::printf("config    : d %ld, latents %ld, k %ld, batch %ld, %s, remedy %s\n", f.d, f.n, f.k, f.batch,
              f.device.c_str(), f.remedy.c_str());
  std::printf("median of %ld steps after %ld warm-up:\n", f.steps, f.warmup);
  const double gflops = 2.0 * f.batch * f.d * f.n / floors.fp32 / 1e9;
  std::printf("  gemm      %9.4f s   %10.1f GFLOP/s (fp32 encoder GEMM alone: the floor)\n", floors.fp32, gflops);
  if (floors.any_bf16) std::printf("  gemm bf16 %9.4f s   (bf16-rounded operands, fp32 GEMM)\n", floors.bf16);
  for (const RunResult& r : runs) {
    std::printf("  %-13s step %8.4f s %10.0f tokens/s   ratio %.3f (step / gemm)", r.encoder.c_str(), r.step,
                f.batch / r.step, r.step / floors.Of(r));
    if (r.encoder == "int8_screened")
      std::printf("   fallback rows %.2f %%, C %.0f", 100 * r.fallback_rate, r.candidates);
    std::printf("\n    phases:");
    for (auto& [name, v] : r.phases) std::printf(" %s %.4f", name.c_str(), v);
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  sae::flags::Command app{"bench_train_step: SAE training step vs the encoder GEMM"};
  Flags f;
  AddFlags(app, f);
  if (auto rc = app.Parse(argc, argv)) return *rc;
  f.steps = std::max<int64_t>(f.steps, 5);
  at::set_num_threads(f.threads > 0 ? f.threads : static_cast<int>(std::thread::hardware_concurrency()));
  const std::vector<std::string> list = SplitList(f.encoders.empty() ? f.precision : f.encoders);
  for (const std::string& e : list)
    if (e != "fp32" && e != "bf16" && e != "int8_screened") {
      std::fprintf(stderr, "error: --encoder: '%s' is not one of fp32, bf16, int8_screened\n", e.c_str());
      return 1;
    }

  at::manual_seed(0);
  at::Tensor x = at::randn({f.batch, f.d}, at::kFloat);
  std::vector<RunResult> runs;
  at::Tensor W_first;
  for (const std::string& enc : list) {
    auto rr = MeasureEncoder(f, enc, x, &W_first);
    if (!rr.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(rr.status().message()).c_str());
      return 1;
    }
    runs.push_back(*rr);
  }
  Floors floors;
  floors.fp32 = GemmFloor(f, W_first, x, /*bf16=*/false);
  floors.any_bf16 = std::find(list.begin(), list.end(), "bf16") != list.end();
  floors.bf16 = floors.any_bf16 ? GemmFloor(f, W_first, x, /*bf16=*/true) : floors.fp32;
  if (f.as_json) {
    PrintJson(f, runs, floors);
  } else {
    PrintReport(f, runs, floors);
  }
  return 0;
}
