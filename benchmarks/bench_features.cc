// bench_features: tokens/s of the dashboard pass (`sae features build`) against
// the harvest alone, on a model such as stories260K and a trained SAE. Three
// stages over the same windows, each the median of --reps runs:
//   harvest   the forward pass up to the SAE's layer (what `sae harvest` costs)
//   + encode  and the SAE's top-k code of every row
//   + stats   and every latent's statistics (FeatureAccumulator::Add)
// The goal: the statistics add at most 30% to the forward pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/utsname.h>
#include <cstdio>
#include <thread>
#include <vector>

#include "benchmarks/bench_util.h"
#include "cli/flags.h"
#include "core/base/blas_kernel.h"
#include "core/interp/features.h"
#include "core/interp/sae_run.h"
#include "core/lm/loaders.h"

using sae::bench::Commit;
using sae::bench::CpuModel;
using sae::bench::Median;
using sae::bench::SteadyNow;

int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  sae::flags::Command app{"bench_features: dashboard pass vs harvest alone, tokens/s"};
  std::string model_path, sae_dir;
  int64_t context = 128, batch = 16, windows = 256, reps = 3;
  app.AddOption("--model", model_path, "checkpoint (e.g. ../shared/data/stories260K)").Required();
  app.AddOption("--sae", sae_dir, "trained SAE run directory").Required();
  app.AddOption("--context", context, "tokens per window");
  app.AddOption("--batch", batch, "windows per forward pass");
  app.AddOption("--windows", windows, "windows per run");
  app.AddOption("--reps", reps, "repetitions (median reported)");
  if (auto rc = app.Parse(argc, argv)) return *rc;
  auto model = sae::LoadModel(model_path);
  auto run = sae::OpenSaeRun(sae_dir);
  if (!model.ok() || !run.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string((model.ok() ? run.status() : model.status()).message()).c_str());
    return 1;
  }
  const sae::ModelConfig& c = model->config();
  sae::ScopedThreads scoped(sae::PreferredThreads(c));
  utsname u{};
  uname(&u);
  std::printf("machine: %s, %u hardware threads, %s %s; LibTorch threads %d\n", CpuModel().c_str(),
              std::thread::hardware_concurrency(), u.sysname, u.release, at::get_num_threads());
  std::printf("build: %s, commit %s\n", SAE_BUILD_TYPE, Commit().c_str());
  std::printf("model: %s (dim %ld, %ld layers); SAE %s: %ld latents, k %ld, layer %ld\n", c.source.c_str(), c.dim,
              c.n_layers, sae_dir.c_str(), run->latents(), run->sae.k, run->layer);
  std::printf("config: context %ld, batch %ld windows, %ld windows (%ld tokens) per run, %ld reps\n\n", context, batch,
              windows, windows * (context - 1), reps);
  at::manual_seed(1);
  std::vector<at::Tensor> blocks;
  for (int64_t w = 0; w < windows; w += batch) {
    at::Tensor t = at::randint(3, c.vocab_size, {batch, context}, at::kLong);
    t.select(1, 0).fill_(c.bos_id);
    blocks.push_back(t);
  }
  sae::FeatureOptions fo;
  fo.windows.context = context;
  auto stage = [&](int level) {
    std::vector<double> v;
    for (int64_t r = 0; r < reps; ++r) {
      sae::FeatureAccumulator acc(run->latents(), fo);
      const double t0 = SteadyNow();
      int64_t rows = 0;
      for (size_t b = 0; b < blocks.size(); ++b) {
        auto x = sae::HookActivations(*model, blocks[b], run->layer, run->hook);
        if (!x.ok()) return std::vector<double>{};
        at::Tensor rowsT = x->narrow(1, 1, context - 1).reshape({-1, c.dim});
        rows += rowsT.size(0);
        if (level < 1) continue;
        auto codes = sae::EncodeRows(run->sae, rowsT);
        if (!codes.ok()) return std::vector<double>{};
        if (level < 2) continue;
        if (!acc.Add(static_cast<int64_t>(b) * batch, blocks[b], codes->indices, codes->acts).ok())
          return std::vector<double>{};
      }
      v.push_back(rows / (SteadyNow() - t0));
    }
    return v;
  };
  const double h = Median(stage(0)), e = Median(stage(1)), s = Median(stage(2));
  std::printf("%-40s %12s %14s\n", "stage", "tokens/s", "time vs harvest");
  std::printf("%-40s %12.0f %13.2fx\n", "harvest (forward to the SAE's layer)", h, 1.0);
  std::printf("%-40s %12.0f %13.2fx\n", "harvest + SAE encode", e, h / e);
  std::printf("%-40s %12.0f %13.2fx\n", "harvest + encode + all statistics", s, h / s);
  std::printf("\nstatistics alone add %.1f%% to harvest + encode, %.1f%% to the forward pass\n", 100 * (e / s - 1),
              100 * (h / s - h / e));
  return 0;
}
