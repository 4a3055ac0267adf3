// bench_harvest: activation-harvest throughput (tokens/s) for a model such as
// stories260K: batched windows through the runtime (what `sae harvest` does)
// against a single-stream run of the model, one token per forward with a KV
// cache (what llama2.c's run does). Prints machine, build and configuration
// first, then the median of repeated runs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/bench_util.h"
#include "core/lm/harvest.h"
#include "core/lm/loaders.h"

namespace {

using sae::bench::Commit;
using sae::bench::CpuModel;
using sae::bench::Median;
using sae::bench::SteadyNow;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_harvest: batched harvest vs single-stream tokens/s"};
  std::string model_path;
  int64_t layer = 2, context = 256, batch = 64, windows = 128, single_tokens = 512, reps = 3;
  int threads = 0;
  std::string dtype;
  app.add_option("--model", model_path, "checkpoint (e.g. ../shared/data/stories260K)")->required();
  app.add_option("--dtype", dtype, "float32|bfloat16|float16: weights and compute (default: weights as stored, float32 compute)");
  app.add_option("--layer", layer, "harvest layer");
  app.add_option("--context", context, "tokens per window");
  app.add_option("--batch", batch, "windows per forward pass");
  app.add_option("--windows", windows, "windows per batched run");
  app.add_option("--single-tokens", single_tokens, "tokens per single-stream run");
  app.add_option("--reps", reps, "repetitions (median reported)");
  app.add_option("--threads", threads, "intra-op threads (0: LibTorch default)");
  CLI11_PARSE(app, argc, argv);
  auto model = sae::LoadModel(model_path, sae::LoadOptions{dtype});
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const sae::ModelConfig& c = model->config();
  // Both modes use the runtime's thread rule (1 for small models) unless --threads.
  sae::ScopedThreads scoped(threads > 0 ? threads : sae::PreferredThreads(c));
  utsname u{};
  uname(&u);
  std::printf("machine: %s, %u hardware threads, %s %s; LibTorch threads %d\n", CpuModel().c_str(),
              std::thread::hardware_concurrency(), u.sysname, u.release, at::get_num_threads());
  std::printf("build: %s, commit %s\n", SAE_BUILD_TYPE, Commit().c_str());
  std::printf("model: %s (%s; dim %ld, %ld layers, %ld heads / %ld kv, vocab %ld; weights %s, compute %s)\n",
              c.source.c_str(), c.format.c_str(), c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
              c10::toString(model->weights().blocks[0].wq.scalar_type()), c10::toString(c.compute_dtype));
  std::printf("config: layer %ld, context %ld, batch %ld windows, %ld windows per run, %ld reps\n\n", layer, context,
              batch, windows, reps);

  // Single stream: one token per forward pass through the whole model, KV cached.
  std::vector<double> single;
  for (int64_t r = 0; r < reps; ++r) {
    sae::KvCache cache = model->NewCache(1, single_tokens);
    const double t0 = SteadyNow();
    int64_t tok = c.bos_id;
    for (int64_t p = 0; p < single_tokens; ++p) {
      auto l = model->Forward(at::full({1, 1}, tok, at::kLong), &cache);
      if (!l.ok()) return 1;
      tok = l->reshape({-1}).argmax().item<int64_t>();
    }
    single.push_back(single_tokens / (SteadyNow() - t0));
  }
  // Batched harvest of a text-like token stream (windows of sampled-free ids:
  // the corpus path; throughput does not depend on the ids).
  auto run_batched = [&](bool stop_at_layer) {
    std::vector<double> v;
    for (int64_t r = 0; r < reps; ++r) {
      at::Tensor toks = at::randint(3, c.vocab_size, {batch, context}, at::kLong);
      toks.select(1, 0).fill_(c.bos_id);
      const double t0 = SteadyNow();
      int64_t rows = 0;
      for (int64_t w = 0; w < windows; w += batch) {
        at::Tensor acts;
        sae::ForwardOptions fo;
        if (stop_at_layer) fo.stop_after_layer = layer;
        fo.hooks.push_back({layer, sae::HookPoint::kResidPost, [&acts](at::Tensor& x) { acts = x; }});
        if (!model->Forward(toks, nullptr, fo).ok()) return std::vector<double>{};
        at::Tensor rowsT = acts.narrow(1, 1, context - 1).reshape({-1, c.dim}).contiguous();
        rows += rowsT.size(0);
      }
      v.push_back(rows / (SteadyNow() - t0));
    }
    return v;
  };
  const std::vector<double> full = run_batched(false), stop = run_batched(true);
  if (full.empty() || stop.empty()) return 1;
  const double s = Median(single), f = Median(full), h = Median(stop);
  std::printf("%-44s %12s %10s\n", "mode", "tokens/s", "vs single");
  std::printf("%-44s %12.0f %10.1fx\n", "single stream (1 token/forward, KV cache)", s, 1.0);
  std::printf("%-44s %12.0f %10.1fx\n", "batched, whole model", f, f / s);
  std::printf("%-44s %12.0f %10.1fx\n", "batched, stop after the harvest layer", h, h / s);
  return 0;
}
