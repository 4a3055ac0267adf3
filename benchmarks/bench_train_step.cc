// bench_train_step: the time of one full optimizer step of a TopK SAE (encode,
// top-k, sparse backward, Adam, decoder renormalisation) against its physical
// floor, the encoder GEMM alone in the same precision. Prints the machine and
// build first, then medians over repeated steps after warm-up.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/utsname.h>
#include <torch/csrc/autograd/autograd.h>
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

#include "absl/strings/str_cat.h"
#include "cli/flags.h"
#include "core/sae/encoder_gemm.h"
#include "core/sae/sae_step.h"
#include "core/sae/trainer.h"

#include "benchmarks/bench_util.h"
#include "core/base/blas_kernel.h"
#include "core/base/status.h"

namespace {

using sae::bench::Commit;
using sae::bench::CpuModel;
using sae::bench::Median;
using sae::bench::SteadyNow;

}  // namespace

namespace {

// CPU time of the whole process (every thread). With --threads 1 on a loaded
// machine it is the step's own cost, without the time slices other
// processes took; with more threads it includes OpenMP's spin-waits.
using sae::ProcessCpuNow;

struct RunResult {
  std::string encoder;
  double step = 0, fallback_rate = 0, candidates = 0;
  double step_cpu = 0;                       // CPU-seconds of the process per step (median)
  std::map<std::string, double> phases;      // wall seconds (median)
  std::map<std::string, double> phases_cpu;  // CPU-seconds of the calling thread (median)
  std::vector<double> round_ratios;          // --rounds: step / floor of each round (paired)
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
  int64_t d = 768, n = 16384, k = 32, batch = 4096, steps = 7, warmup = 2, rounds = 1;
  int threads = 0;
  std::string precision = "fp32", device = "cpu", remedy = "none", encoders;
  int64_t dead_window = 1000000000000LL;
  double grad_clip = 1.0;
  bool as_json = false, aten = false, sweep = false, torch_step = false;
};

void AddFlags(sae::flags::Command& app, Flags& f) {
  app.AddOption("--d", f.d, "input dimension");
  app.AddOption("--latents", f.n, "number of latents");
  app.AddOption("--k", f.k, "active latents per token");
  app.AddOption("--batch", f.batch, "tokens per step");
  app.AddOption("--precision", f.precision, "fp32|bf16 (one encoder; see --encoder)").OneOf({"fp32", "bf16"});
  app.AddOption("--encoder", f.encoders,
                "comma-separated encoders measured in this one run, each against the same GEMM floor: "
                "fp32, fp32_onednn (fp32 with oneDNN's GEMM and a separate top-k even where the fused small-d "
                "encoder runs), fp32_blas (fp32 with the encoder GEMM through at::addmm/OpenBLAS, the old path), "
                "bf16, int8_screened (default: --precision)");
  app.AddFlag("--sweep", f.sweep,
              "measure a fixed list of shapes from d 48 to 4096 and print one table (--d, --latents, --k, "
              "--batch are ignored; docs/performance.md \"Small models\")");
  app.AddOption("--device", f.device, "cpu|cuda").OneOf({"cpu", "cuda"});
  app.AddOption("--steps", f.steps, "measured steps (median; at least 5)");
  app.AddOption("--warmup", f.warmup, "steps before measuring");
  app.AddOption("--rounds", f.rounds,
                "measure the shape this many times (each round: every encoder, then the floor) and also report "
                "each encoder's median over rounds of step / that round's floor (paired: less exposed to the "
                "machine drifting between the step's and the floor's minutes); the other numbers are the "
                "first round's");
  app.AddOption("--threads", f.threads, "LibTorch threads (0 = every core)");
  app.AddOption("--remedy", f.remedy, "none|auxk|ghost_grads").OneOf({"none", "auxk", "ghost_grads"});
  app.AddOption("--dead-window", f.dead_window,
                "dead_window_tokens (default: none ever dead; 1 = every latent that did not fire in the last step)");
  app.AddOption("--grad-clip", f.grad_clip, "train.grad_clip (0: no clipping)");
  app.AddFlag("--torch-step", f.torch_step,
              "also time a whole PyTorch training step as sparsify runs it (at::addmm, at::topk, "
              "embedding_bag decode, LibTorch autograd, Adam in ATen ops): slow at large shapes");
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
  o.blas_encoder_gemm = enc == "fp32_blas";
  o.small_encoder = enc != "fp32_onednn";
  o.int8_screened = enc == "int8_screened";
  o.remedy = sae::ParseOption<sae::Remedy>(f.remedy).value();
  o.dead_window_tokens = f.dead_window;
  o.grad_clip = f.grad_clip;
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
  std::vector<double> step_s, step_cpu, fb, cand;
  std::map<std::string, std::vector<double>> phases, phases_cpu;
  for (int64_t i = 0; i < f.warmup + f.steps; ++i) {
    const double c0 = ProcessCpuNow();
    auto m = (*trainer)->Step(x.data_ptr<float>(), f.batch);
    const double c1 = ProcessCpuNow();
    if (!m.ok()) return m.status();
    if (i >= f.warmup) {
      step_s.push_back(m->seconds);
      step_cpu.push_back(c1 - c0);
      for (auto& [name, sec] : m->phase_seconds) phases[name].push_back(sec);
      for (auto& [name, sec] : m->phase_cpu_seconds) phases_cpu[name].push_back(sec);
      fb.push_back(static_cast<double>(m->screen_fallback_rows) / f.batch);
      cand.push_back(static_cast<double>(m->screen_candidates));
    }
  }
  rr.step = Median(step_s);
  rr.step_cpu = Median(step_cpu);
  rr.fallback_rate = Median(fb);
  rr.candidates = Median(cand);
  for (auto& [name, v] : phases) rr.phases[name] = Median(v);
  for (auto& [name, v] : phases_cpu) rr.phases_cpu[name] = Median(v);
  return rr;
}

// The floor: the encoder GEMM (with bias) alone, same shapes as the step
// (the whole batch at once, B×n written to memory), in fp32, and with
// bf16-rounded operands when bf16 is measured (bf16 on CPU multiplies
// bf16-rounded operands in fp32; see docs/performance.md for LibTorch's own
// bf16 GEMM). Two GEMMs: LibTorch's at::addmm (OpenBLAS) and oneDNN's
// matmul (weights reordered once, outside the timing); the floor is the
// faster, so that a step cannot look close to its floor by using a better
// GEMM than the floor's. On CUDA only at::addmm, synchronised by reading
// one element.
struct GemmTimes {
  double aten = 0, onednn = 0;
  double aten_cpu = 0, onednn_cpu = 0;  // CPU-seconds of the process (median)
  double Best() const { return onednn > 0 ? std::min(aten, onednn) : aten; }
  double BestCpu() const { return onednn_cpu > 0 ? std::min(aten_cpu, onednn_cpu) : aten_cpu; }
};

// After a run that called OpenBLAS (the at::addmm floor, the torch peers,
// fp32_blas): OpenBLAS's pthread workers spin (sched_yield) for about 2^28
// cycles after each call, ~0.1 s here, and whatever is measured next shares
// the cores with them (a perf record of a d 48 run: ~10 % of its samples in
// sched_yield; docs/performance.md, session 16). Waiting them out keeps one
// measurement off the next.
void LetBlasThreadsSleep() { std::this_thread::sleep_for(std::chrono::milliseconds(300)); }

GemmTimes GemmFloor(const Flags& f, const at::Tensor& W_first, const at::Tensor& x, bool bf16) {
  const at::Device dev = f.device == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  at::Tensor W = W_first.clone();
  at::Tensor b = at::zeros({f.n});
  at::Tensor xin = x.clone();
  if (bf16) {
    sae::RoundToBF16InPlace(W);
    sae::RoundToBF16InPlace(xin);
  }
  GemmTimes out;
  at::Tensor z = at::empty({f.batch, f.n}, W.options());
  if (dev.is_cpu()) {
    sae::internal::EncoderGemm gemm;
    const int64_t rows[1] = {f.batch};
    if (gemm.SetWeights(W.data_ptr<float>(), b.data_ptr<float>(), f.n, f.d, rows, 1).ok()) {
      std::vector<double> s, c;
      for (int64_t i = 0; i < f.warmup + f.steps; ++i) {
        const double t0 = SteadyNow(), c0 = ProcessCpuNow();
        if (!gemm.Run(xin.data_ptr<float>(), f.batch, z.data_ptr<float>(), 0).ok()) break;
        if (i >= f.warmup) {
          s.push_back(SteadyNow() - t0);
          c.push_back(ProcessCpuNow() - c0);
        }
      }
      if (!s.empty()) {
        out.onednn = Median(s);
        out.onednn_cpu = Median(c);
      }
    }
  }
  W = W.to(dev);
  b = b.to(dev);
  xin = xin.to(dev);
  z = z.to(dev);
  std::vector<double> gemm_s, gemm_c;
  for (int64_t i = 0; i < f.warmup + f.steps; ++i) {
    const double t0 = SteadyNow(), c0 = ProcessCpuNow();
    at::addmm_out(z, b, xin, W.t());
    if (!dev.is_cpu()) z.select(0, 0).select(0, 0).item<float>();
    if (i >= f.warmup) {
      gemm_s.push_back(SteadyNow() - t0);
      gemm_c.push_back(ProcessCpuNow() - c0);
    }
  }
  out.aten = Median(gemm_s);
  out.aten_cpu = Median(gemm_c);
  if (dev.is_cpu()) LetBlasThreadsSleep();
  return out;
}

// Median wall seconds of f.steps runs of run() after f.warmup runs, each
// synchronised by reading one element of the tensor it returns (on CUDA the
// wait for its kernels; on CPU nothing to wait for).
template <typename Run>
double MedianSeconds(const Flags& f, Run&& run) {
  std::vector<double> s;
  for (int64_t i = 0; i < f.warmup + f.steps; ++i) {
    const double t0 = SteadyNow();
    run().select(0, 0).select(0, 0).template item<float>();
    if (i >= f.warmup) s.push_back(SteadyNow() - t0);
  }
  return Median(s);
}

// A peer, what a PyTorch SAE (sparsify) runs for its forward: LibTorch's
// dense at::addmm over the whole batch, then at::topk (no backward, no
// optimizer: a lower bound on such a step).
double TorchForward(const Flags& f, const at::Tensor& W_first, const at::Tensor& x) {
  const at::Device dev = f.device == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  const at::Tensor W = W_first.to(dev), xd = x.to(dev), b = at::zeros({f.n}, W.options());
  return MedianSeconds(f, [&] { return std::get<0>(at::topk(at::addmm(b, xd, W.t()), f.k, 1)); });
}

// A second peer, a whole training step the way a PyTorch SAE (sparsify's
// eager CPU path) runs it: relu of at::addmm, at::topk, the decode as
// embedding_bag with the activations as weights, the squared error over the
// total variance, LibTorch's autograd for every gradient (the top-k's
// backward scatters into a dense B×n gradient: two more GEMMs), gradient
// clipping and Adam as torch.optim.Adam's foreach update, in ATen ops.
// sparsify also projects the decoder's gradient and renormalises its rows
// each step (more passes), so this is a lower bound on its step. Only
// LibTorch runs here, none of saeforge's kernels.
double TorchStep(const Flags& f, const at::Tensor& W_first, const at::Tensor& x) {
  const at::Device dev = f.device == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  const at::Tensor xd = x.to(dev);
  std::vector<at::Tensor> params = {W_first.to(dev).clone(), at::zeros({f.n}, xd.options()), W_first.to(dev).clone(),
                                    at::zeros({f.d}, xd.options())};
  for (at::Tensor& t : params) t.set_requires_grad(true);
  std::vector<at::Tensor> m, v;
  for (const at::Tensor& t : params) {
    m.push_back(at::zeros_like(t));  // factories do not take requires_grad from t
    v.push_back(at::zeros_like(t));
  }
  const at::Tensor offsets = at::arange(0, f.batch * f.k, f.k, at::TensorOptions(dev).dtype(at::kLong));
  const double total_var = (xd - xd.mean(0)).pow(2).sum().item<double>();
  const double lr = 2e-4, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  int64_t t = 0;
  return MedianSeconds(f, [&] {
    const at::Tensor &W_enc = params[0], &b_enc = params[1], &W_dec = params[2], &b_dec = params[3];
    const at::Tensor z = at::relu(at::addmm(b_enc, xd - b_dec, W_enc.t()));
    auto [acts, idx] = at::topk(z, f.k, 1);
    const at::Tensor xhat =
        std::get<0>(at::embedding_bag(W_dec, idx.reshape({-1}), offsets, false, 0, false, acts.reshape({-1}))) + b_dec;
    const at::Tensor loss = (xhat - xd).pow(2).sum() / total_var;
    std::vector<at::Tensor> g = torch::autograd::grad({loss}, params);
    at::NoGradGuard no_grad;
    double sq = 0;
    for (const at::Tensor& gi : g) sq += gi.pow(2).sum().item<double>();
    const double clip = f.grad_clip > 0 ? std::min(1.0, f.grad_clip / (std::sqrt(sq) + 1e-6)) : 1.0;
    ++t;
    const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    for (size_t i = 0; i < params.size(); ++i) {
      if (clip < 1) g[i].mul_(clip);
      m[i].mul_(b1).add_(g[i], 1 - b1);
      v[i].mul_(b2).addcmul_(g[i], g[i], 1 - b2);
      params[i].addcdiv_(m[i], v[i].sqrt().div_(std::sqrt(bc2)).add_(eps), -lr / bc1);
    }
    return params[0];
  });
}

// On CUDA, the references issue 14 item 4 asks for beside the fp32 floor:
// LibTorch's own bf16 GEMM over the batch (bf16 operands and output, tensor
// cores), and at::topk alone over the fp32 pre-activations. Each
// repetition is synchronised by reading one element of its result.
struct DeviceRefs {
  double bf16_gemm = 0;  // 0: not measured (CPU)
  double topk = 0;
};
DeviceRefs MeasureDeviceRefs(const Flags& f, const at::Tensor& W_first, const at::Tensor& x) {
  DeviceRefs r;
  if (f.device != "cuda") return r;
  const at::Device dev(at::kCUDA);
  {
    const at::Tensor W = W_first.to(dev, at::kBFloat16), xb = x.to(dev, at::kBFloat16);
    const at::Tensor b = at::zeros({f.n}, W.options());
    at::Tensor z = at::empty({f.batch, f.n}, W.options());
    r.bf16_gemm = MedianSeconds(f, [&] { return at::addmm_out(z, b, xb, W.t()); });
  }
  const at::Tensor W = W_first.to(dev), xd = x.to(dev);
  const at::Tensor z = at::addmm(at::zeros({f.n}, W.options()), xd, W.t());
  r.topk = MedianSeconds(f, [&] { return std::get<0>(at::topk(z, f.k, 1)); });
  return r;
}

// The GEMM floors: fp32, and bf16-rounded where a bf16 encoder runs.
struct Floors {
  GemmTimes fp32_times, bf16_times;
  double fp32 = 0, bf16 = 0;
  double fp32_cpu = 0, bf16_cpu = 0;  // the floors in CPU-seconds
  bool any_bf16 = false;
  double torch_forward = 0;  // the peer (0: not measured)
  double torch_step = 0;     // the whole-step peer (--torch-step; 0: not measured)
  DeviceRefs device;         // CUDA only
  double Of(const RunResult& r) const { return r.encoder == "bf16" ? bf16 : fp32; }
  double CpuOf(const RunResult& r) const { return r.encoder == "bf16" ? bf16_cpu : fp32_cpu; }
};

double LoadAverage() {
  double load = -1;
  if (std::FILE* fp = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(fp, "%lf", &load) != 1) load = -1;
    std::fclose(fp);
  }
  return load;
}

nlohmann::json JsonRuns(const Flags& f, const std::vector<RunResult>& runs, const Floors& floors);

// "median a (lo–hi)" of a run's paired ratios (--rounds > 1), else "".
std::string PairedSummary(const RunResult& r) {
  if (r.round_ratios.size() < 2) return "";
  const auto [lo, hi] = std::minmax_element(r.round_ratios.begin(), r.round_ratios.end());
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.3f (%.3f-%.3f)", Median(r.round_ratios), *lo, *hi);
  return buf;
}

void PrintJson(const Flags& f, const std::vector<RunResult>& runs, const Floors& floors) {
  const nlohmann::json all = JsonRuns(f, runs, floors);
  std::printf("%s\n", (all.size() == 1 ? all[0] : all).dump().c_str());
}

nlohmann::json JsonRuns(const Flags& f, const std::vector<RunResult>& runs, const Floors& floors) {
  const int64_t batch = f.batch, d = f.d, n = f.n;
  nlohmann::json all = nlohmann::json::array();
  for (const RunResult& r : runs) {
    const double g = floors.Of(r);
    nlohmann::json j = {
        {"tokens_per_second", batch / r.step},
        {"step_seconds", r.step},
        {"gemm_seconds", g},
        {"gemm_aten_seconds", r.encoder == "bf16" ? floors.bf16_times.aten : floors.fp32_times.aten},
        {"gemm_onednn_seconds", r.encoder == "bf16" ? floors.bf16_times.onednn : floors.fp32_times.onednn},
        {"torch_forward_seconds", floors.torch_forward},
        {"torch_step_seconds", floors.torch_step},
        {"ratio", r.step / g},
        {"step_cpu_seconds", r.step_cpu},
        {"gemm_cpu_seconds", floors.CpuOf(r)},
        {"cpu_ratio", r.step_cpu / floors.CpuOf(r)},
        {"gemm_gflops", 2.0 * batch * d * n / g / 1e9},
        {"d", d},
        {"latents", n},
        {"k", f.k},
        {"batch", batch},
        {"precision", r.encoder == "bf16" ? "bf16" : "fp32"},
        {"load_average", LoadAverage()},
        {"encoder", r.encoder},
        {"device", f.device},
        {"threads", at::get_num_threads()},
        {"commit", Commit()},
        {"build_type", SAE_BUILD_TYPE},
        {"blas", sae::CurrentBlasKernel().Describe()},
        {"blas_core", sae::CurrentBlasKernel().core}};
    if (r.round_ratios.size() > 1) {
      j["paired_ratios"] = r.round_ratios;
      j["paired_ratio"] = Median(r.round_ratios);
    }
    if (floors.device.bf16_gemm > 0) {
      j["gemm_bf16_native_seconds"] = floors.device.bf16_gemm;
      j["ratio_to_bf16_gemm"] = r.step / floors.device.bf16_gemm;
      j["topk_seconds"] = floors.device.topk;
    }
    if (r.encoder == "int8_screened") {
      j["fallback_rate"] = r.fallback_rate;
      j["candidates"] = r.candidates;
    }
    j["phases"] = r.phases;
    j["phases_cpu"] = r.phases_cpu;
    all.push_back(j);
  }
  return all;
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
  std::printf("config    : d %ld, latents %ld, k %ld, batch %ld, %s, remedy %s, grad_clip %g\n", f.d, f.n, f.k, f.batch,
              f.device.c_str(), f.remedy.c_str(), f.grad_clip);
  std::printf("median of %ld steps after %ld warm-up:\n", f.steps, f.warmup);
  const double gflops = 2.0 * f.batch * f.d * f.n / floors.fp32 / 1e9;
  std::printf(
      "  gemm      %9.4f s   %10.1f GFLOP/s (fp32 encoder GEMM alone: the floor; at::addmm %.4f s, oneDNN %.4f s)\n",
      floors.fp32, gflops, floors.fp32_times.aten, floors.fp32_times.onednn);
  if (floors.torch_forward > 0)
    std::printf("  torch fwd %9.4f s %10.0f tokens/s (peer: at::addmm + at::topk over the batch, forward only)\n",
                floors.torch_forward, f.batch / floors.torch_forward);
  if (floors.torch_step > 0)
    std::printf("  torch step%9.4f s %10.0f tokens/s (peer: the whole step in LibTorch, autograd + Adam)\n",
                floors.torch_step, f.batch / floors.torch_step);
  if (floors.any_bf16) std::printf("  gemm bf16 %9.4f s   (bf16-rounded operands, fp32 GEMM)\n", floors.bf16);
  if (floors.device.bf16_gemm > 0) {
    std::printf("  bf16 GEMM %9.4f s %10.0f tokens/s (LibTorch's bf16 GEMM alone, tensor cores)\n",
                floors.device.bf16_gemm, f.batch / floors.device.bf16_gemm);
    std::printf("  topk      %9.4f s   (at::topk alone over the fp32 pre-activations: %.2f× the bf16 GEMM)\n",
                floors.device.topk, floors.device.topk / floors.device.bf16_gemm);
  }
  for (const RunResult& r : runs) {
    std::printf("  %-13s step %8.4f s %10.0f tokens/s   ratio %.3f (step / gemm; in CPU-seconds %.4f / %.4f = %.3f)",
                r.encoder.c_str(), r.step, f.batch / r.step, r.step / floors.Of(r), r.step_cpu, floors.CpuOf(r),
                r.step_cpu / floors.CpuOf(r));
    if (r.encoder == "int8_screened")
      std::printf("   fallback rows %.2f %%, C %.0f", 100 * r.fallback_rate, r.candidates);
    if (floors.device.bf16_gemm > 0) std::printf("   %.2f× the bf16 GEMM", r.step / floors.device.bf16_gemm);
    if (r.round_ratios.size() > 1)
      std::printf("\n    paired ratio over %zu rounds (step / that round's floor): median %s", r.round_ratios.size(),
                  PairedSummary(r).c_str());
    // Milliseconds, wall / CPU of the calling thread (medians; a phase
    // without a CPU reading, such as the screen's own, shows only wall).
    std::printf("\n    phases (ms, wall/cpu):");
    for (auto& [name, v] : r.phases) {
      auto c = r.phases_cpu.find(name);
      if (c != r.phases_cpu.end()) {
        std::printf(" %s %.3f/%.3f", name.c_str(), 1e3 * v, 1e3 * c->second);
      } else {
        std::printf(" %s %.3f", name.c_str(), 1e3 * v);
      }
    }
    std::printf("\n");
  }
}

}  // namespace

// One round of one shape: every encoder of `list`, then the floors and
// (peers) the torch peer and the device references.
absl::Status MeasureRound(const Flags& f, const std::vector<std::string>& list, bool peers,
                          std::vector<RunResult>* runs, Floors* floors) {
  at::manual_seed(0);
  at::Tensor x = at::randn({f.batch, f.d}, at::kFloat);
  at::Tensor W_first;
  runs->clear();
  for (const std::string& enc : list) {
    auto rr = MeasureEncoder(f, enc, x, &W_first);
    if (!rr.ok()) return rr.status();
    runs->push_back(*rr);
    if (enc == "fp32_blas" && f.device == "cpu") LetBlasThreadsSleep();
  }
  floors->fp32_times = GemmFloor(f, W_first, x, /*bf16=*/false);
  floors->fp32 = floors->fp32_times.Best();
  floors->fp32_cpu = floors->fp32_times.BestCpu();
  floors->any_bf16 = std::find(list.begin(), list.end(), "bf16") != list.end();
  floors->bf16_times = floors->any_bf16 ? GemmFloor(f, W_first, x, /*bf16=*/true) : floors->fp32_times;
  floors->bf16 = floors->bf16_times.Best();
  floors->bf16_cpu = floors->bf16_times.BestCpu();
  if (peers) {
    floors->torch_forward = TorchForward(f, W_first, x);
    if (f.torch_step) floors->torch_step = TorchStep(f, W_first, x);
    floors->device = MeasureDeviceRefs(f, W_first, x);
    if (f.device == "cpu") LetBlasThreadsSleep();
  }
  return absl::OkStatus();
}

// One shape: f.rounds rounds; the first round's numbers, with every
// round's step / floor kept in round_ratios.
absl::Status MeasureShape(const Flags& f, const std::vector<std::string>& list, std::vector<RunResult>* runs,
                          Floors* floors) {
  for (int64_t round = 0; round < f.rounds; ++round) {
    std::vector<RunResult> rr;
    Floors fl;
    SAE_RETURN_IF_ERROR(MeasureRound(f, list, /*peers=*/round == 0, &rr, &fl));
    if (round == 0) {
      *runs = rr;
      *floors = fl;
    }
    for (size_t e = 0; e < rr.size(); ++e) (*runs)[e].round_ratios.push_back(rr[e].step / fl.Of(rr[e]));
  }
  return absl::OkStatus();
}

// --sweep: small to large SAEs. The two largest (268M parameters; with
// their gradients and Adam moments 4.3 GB, whatever the batch) run twice:
// at batch 1024, where the Adam update's stream over every parameter is a
// fixed cost the batch does not amortise (docs/performance.md "The
// batch-1024 shapes against their memory floor"), and at batch 4096, the
// batch of the other shapes (3 measured steps: about 3 s each here).
// 4096 × 131072 would take 17 GB, more than a shared 24 GB machine can give.
struct SweepShape {
  int64_t d, n, k, batch, steps, warmup;
};
const SweepShape kSweep[] = {
    {48, 768, 4, 2048, 15, 3},     {64, 4096, 8, 4096, 15, 3},    {128, 8192, 16, 4096, 9, 2},
    {256, 16384, 32, 4096, 7, 2},  {768, 16384, 32, 4096, 7, 2},  {768, 24576, 32, 4096, 5, 2},
    {2048, 65536, 64, 1024, 5, 1}, {4096, 32768, 64, 1024, 5, 1}, {2048, 65536, 64, 4096, 3, 1},
    {4096, 32768, 64, 4096, 3, 1},
};

int RunSweep(Flags f, const std::vector<std::string>& list) {
  utsname u;
  uname(&u);
  std::printf("machine   : %s, %u cores, %s %s\n", CpuModel().c_str(), std::thread::hardware_concurrency(), u.sysname,
              u.release);
  std::printf("build     : commit %s, %s, LibTorch threads %d\n", Commit().c_str(), SAE_BUILD_TYPE,
              at::get_num_threads());
  std::printf("blas      : %s\n", sae::CurrentBlasKernel().Describe().c_str());
  std::printf(
      "floor     : the faster of at::addmm and oneDNN's matmul over the whole batch; torch fwd: at::addmm + "
      "at::topk (a PyTorch SAE's forward alone); torch step (--torch-step; 0: not run): the whole step in "
      "LibTorch, autograd + Adam\n\n");
  std::printf(
      "(cpu ratio: the same ratio in CPU-seconds of the process, the robust one with --threads 1 on a loaded "
      "machine)\n");
  std::printf("%-22s %-13s %9s %9s %9s %9s %6s %6s %10s %10s %10s %6s%s\n", "d/latents/k/batch", "encoder", "step s",
              "floor s", "addmm s", "oneDNN s", "ratio", "cpu", "tokens/s", "torch fwd", "torch step", "load",
              f.rounds > 1 ? "  paired ratio (range)" : "");
  nlohmann::json all = nlohmann::json::array();
  for (const SweepShape& sh : kSweep) {
    f.d = sh.d;
    f.n = sh.n;
    f.k = sh.k;
    f.batch = sh.batch;
    f.steps = sh.steps;
    f.warmup = sh.warmup;
    std::vector<RunResult> runs;
    Floors floors;
    const absl::Status st = MeasureShape(f, list, &runs, &floors);
    if (!st.ok()) {
      std::fprintf(stderr, "error: d %ld latents %ld: %s\n", f.d, f.n, std::string(st.message()).c_str());
      return 1;
    }
    const std::string shape = absl::StrCat(f.d, "/", f.n, "/", f.k, "/", f.batch);
    for (const RunResult& r : runs) {
      const GemmTimes& g = r.encoder == "bf16" ? floors.bf16_times : floors.fp32_times;
      std::printf("%-22s %-13s %9.4f %9.4f %9.4f %9.4f %6.2f %6.2f %10.0f %10.0f %10.0f %6.2f  %s\n", shape.c_str(),
                  r.encoder.c_str(), r.step, floors.Of(r), g.aten, g.onednn, r.step / floors.Of(r),
                  r.step_cpu / floors.CpuOf(r), f.batch / r.step,
                  floors.torch_forward > 0 ? f.batch / floors.torch_forward : 0.0,
                  floors.torch_step > 0 ? f.batch / floors.torch_step : 0.0, LoadAverage(), PairedSummary(r).c_str());
    }
    std::fflush(stdout);
    for (auto& j : JsonRuns(f, runs, floors)) all.push_back(j);
  }
  if (f.as_json) std::printf("%s\n", all.dump().c_str());
  return 0;
}

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
    if (e != "fp32" && e != "fp32_onednn" && e != "fp32_blas" && e != "bf16" && e != "int8_screened") {
      std::fprintf(stderr, "error: --encoder: '%s' is not one of fp32, fp32_onednn, fp32_blas, bf16, int8_screened\n",
                   e.c_str());
      return 1;
    }
  if (f.rounds < 1) {
    std::fprintf(stderr, "error: --rounds: %ld is not a number of rounds (at least 1)\n", f.rounds);
    return 1;
  }
  if (f.sweep) return RunSweep(f, list);

  std::vector<RunResult> runs;
  Floors floors;
  const absl::Status st = MeasureShape(f, list, &runs, &floors);
  if (!st.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  if (f.as_json) {
    PrintJson(f, runs, floors);
  } else {
    PrintReport(f, runs, floors);
  }
  return 0;
}
