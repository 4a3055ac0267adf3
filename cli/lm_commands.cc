#include "cli/lm_commands.h"

#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/flags.h"
#include "cli/interp_commands.h"
#include "cli/model_flags.h"
#include "cli/progress.h"
#include "core/base/exit_code.h"
#include "core/interp/eval.h"
#include "core/lm/generate.h"
#include "core/lm/harvest.h"
#include "core/lm/loaders.h"
#include "core/lm/tokenizer.h"

namespace sae {
namespace {

struct GenerateArgs {
  std::string model, tokenizer, dtype;
  GenerateOptions opts;
  int64_t seed = 0;
  SteerArgs steer;
};

int RunGenerate(const GenerateArgs& a) {
  if (a.steer.active()) {
    GenerateOptions o = a.opts;
    o.seed = a.seed > 0 ? static_cast<uint64_t>(a.seed) : static_cast<uint64_t>(time(nullptr));
    return RunSteeredGenerate(a.model, a.tokenizer, o, a.steer);
  }
  auto model = LoadModel(a.model, LoadOptions{a.dtype});
  if (!model.ok()) return Fail(model.status());
  auto tok = LoadTokenizerFor(a.model, model->config().vocab_size, a.tokenizer);
  if (!tok.ok()) return Fail(tok.status());
  ScopedThreads threads(PreferredThreads(model->config()));
  GenerateOptions o = a.opts;
  o.seed = a.seed > 0 ? static_cast<uint64_t>(a.seed) : static_cast<uint64_t>(time(nullptr));
  if (o.temperature < 0) return Fail(absl::InvalidArgumentError("--temperature must be >= 0"));
  auto res = Generate(*model, **tok, o, [](const std::string& piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  if (!res.ok()) return Fail(res.status());
  std::printf("\n");
  if (res->tokens.size() > 1 && res->seconds > 0)
    std::fprintf(stderr, "achieved tok/s: %f\n", static_cast<double>(res->tokens.size() - 1) / res->seconds);
  return 0;
}

absl::StatusOr<HookPoint> ParseHook(const std::string& s) {
  if (s == "resid_post" || s == "resid") return HookPoint::kResidPost;
  if (s == "mlp_out" || s == "mlp") return HookPoint::kMlpOut;
  return absl::InvalidArgumentError(absl::StrCat("--hook: '", s, "' is not resid_post or mlp_out"));
}

struct HarvestArgs {
  std::string model, tokenizer, dtype, out, hook = "resid_post";
  HarvestOptions opts;
  int64_t tokens = 100000;
  int64_t rows_per_shard = 65536;
  int rank = 0, world = 1;
  double timeout = 600;
  bool json = false, quiet = false;
};

int RunHarvest(HarvestArgs a) {
  auto hook = ParseHook(a.hook);
  if (!hook.ok()) return Fail(hook.status());
  a.opts.hook = *hook;
  if (a.tokens <= 0) return Fail(absl::InvalidArgumentError("--tokens must be > 0"));
  auto model = LoadModel(a.model, LoadOptions{a.dtype});
  if (!model.ok()) return Fail(model.status());
  std::unique_ptr<Tokenizer> tok;
  if (a.opts.corpus != "generate") {
    auto t = LoadTokenizerFor(a.model, model->config().vocab_size, a.tokenizer);
    if (!t.ok()) return Fail(t.status());
    tok = std::move(*t);
  }
  auto h = Harvester::Create(*model, tok.get(), a.opts);
  if (!h.ok()) return Fail(h.status());
  const auto t0 = std::chrono::steady_clock::now();
  TokenProgress bar(a.world > 1 ? absl::StrCat("harvest rank ", a.rank) : "harvest", a.json || a.quiet);
  auto progress = [&bar](int64_t done, int64_t total) { bar.Update(done, total); };
  auto m = a.world > 1 ? HarvestRankToShards(h->get(), a.tokens, a.out, a.model, a.rank, a.world, a.timeout, progress)
                       : HarvestToShards(h->get(), a.tokens, a.out, a.model, a.rows_per_shard, progress);
  bar.Finish();
  if (!m.ok()) return Fail(m.status());
  if (a.rank != 0) {
    std::printf("rank %d of %d: shards written to %s\n", a.rank, a.world, a.out.c_str());
    return 0;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (a.json) {
    nlohmann::json j = {{"out", a.out},
                        {"rows", m->rows},
                        {"d_in", m->d_in},
                        {"shards", m->shards.size()},
                        {"layer", a.opts.layer},
                        {"hook", a.hook},
                        {"corpus", a.opts.corpus},
                        {"seconds", secs},
                        {"tokens_per_second", m->rows / std::max(secs, 1e-9)}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("harvested %ld tokens x %ld (layer %ld %s) into %s (%zu shards, %.0f tokens/s)\n", m->rows, m->d_in,
                a.opts.layer, a.hook.c_str(), a.out.c_str(), m->shards.size(), m->rows / std::max(secs, 1e-9));
  }
  return 0;
}

struct EvalArgs {
  std::string model, tokenizer, dtype, sae, hook = "resid_post";
  SaeEvalOptions opts;
  bool json = false, quiet = false;
};

int RunEval(EvalArgs a) {
  auto hook = ParseHook(a.hook);
  if (!hook.ok()) return Fail(hook.status());
  a.opts.windows.hook = *hook;
  auto model = LoadModel(a.model, LoadOptions{a.dtype});
  if (!model.ok()) return Fail(model.status());
  auto sae = LoadSae(a.sae);
  if (!sae.ok()) return Fail(sae.status());
  std::unique_ptr<Tokenizer> tok;
  if (a.opts.windows.corpus != "generate") {
    auto t = LoadTokenizerFor(a.model, model->config().vocab_size, a.tokenizer);
    if (!t.ok()) return Fail(t.status());
    tok = std::move(*t);
  }
  TokenProgress bar("eval", a.json || a.quiet);
  a.opts.progress = [&bar](int64_t done, int64_t total) { bar.Update(done, total); };
  auto r = EvaluateSae(*model, tok.get(), a.opts, *sae);
  bar.Finish();
  if (!r.ok()) return Fail(r.status());
  if (a.json) {
    nlohmann::json j = {{"tokens", r->tokens},
                        {"latents", r->latents},
                        {"fvu", r->fvu},
                        {"mse", r->mse},
                        {"l0", r->l0},
                        {"dead_ratio", r->dead_ratio},
                        {"dense_1pct_ratio", r->dense_1pct_ratio},
                        {"dense_10pct_ratio", r->dense_10pct_ratio},
                        {"ce_clean", r->ce_clean},
                        {"ce_sae", r->ce_sae},
                        {"ce_zero", r->ce_zero},
                        {"ce_loss_recovered", r->ce_loss_recovered},
                        {"kl_sae", r->kl_sae},
                        {"kl_zero", r->kl_zero},
                        {"kl_score", r->kl_score},
                        {"layer", a.opts.windows.layer},
                        {"hook", a.hook},
                        {"corpus", a.opts.windows.corpus}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("evaluated %s at layer %ld (%s) on %ld tokens of %s\n", a.sae.c_str(), a.opts.windows.layer,
                a.hook.c_str(), r->tokens, a.opts.windows.corpus.c_str());
    std::printf("  fvu                %.4f\n  L0                 %.2f\n  dead ratio         %.4f\n", r->fvu, r->l0,
                r->dead_ratio);
    std::printf("  dense >1%% / >10%%   %.4f / %.4f\n", r->dense_1pct_ratio, r->dense_10pct_ratio);
    std::printf("  CE clean/sae/zero  %.4f / %.4f / %.4f\n  CE loss recovered  %.4f\n", r->ce_clean, r->ce_sae,
                r->ce_zero, r->ce_loss_recovered);
    std::printf("  KL sae/zero        %.4f / %.4f\n  KL score           %.4f\n", r->kl_sae, r->kl_zero, r->kl_score);
  }
  return 0;
}

}  // namespace

CommandRunner AddLmCommands(flags::Command* app) {
  auto ga = std::make_shared<GenerateArgs>();
  flags::Command* gen = app->AddSubcommand("generate", "generate text with a language model (llama2.c's sampler)");
  AddModelFlags(gen, &ga->model, &ga->tokenizer, "checkpoint file, or a directory with it and its tokenizer");
  AddDTypeFlag(gen, &ga->dtype);
  gen->AddOption("--prompt,-i", ga->opts.prompt, "prompt text");
  gen->AddOption("--steps,-n", ga->opts.steps, "positions to run, prompt included (0 = context length)");
  gen->AddOption("--temperature,-t", ga->opts.temperature, "0 = greedy");
  gen->AddOption("--top-p,-p", ga->opts.top_p, "nucleus sampling threshold (outside (0,1): plain sampling)");
  gen->AddOption("--seed,-s", ga->seed, "RNG seed (<= 0: time)");
  AddSteerFlags(gen, &ga->steer);

  auto ha = std::make_shared<HarvestArgs>();
  flags::Command* harvest = app->AddSubcommand("harvest", "write a model's activations at a layer as shards");
  AddModelFlags(harvest, &ha->model, &ha->tokenizer);
  AddDTypeFlag(harvest, &ha->dtype);
  harvest->AddOption("--layer", ha->opts.layer, "block whose output is read (0-based)").Required();
  harvest->AddOption("--hook", ha->hook, "resid_post (after the block) or mlp_out");
  harvest->AddOption("--corpus", ha->opts.corpus, "text file, or 'generate' (the model samples its own)");
  harvest->AddOption("--tokens", ha->tokens, "activation rows to write (BOS positions excluded)");
  harvest->AddOption("--context", ha->opts.context, "tokens per window (BOS first)");
  harvest->AddOption("--batch", ha->opts.batch, "windows per forward pass");
  harvest->AddOption(
      "--streams", ha->opts.streams,
      "a batch's windows as this many streams, one core each (0: all cores for generate on small models, else 1)");
  harvest->AddOption("--seed", ha->opts.seed, "generate: window w is sampled with seed + w + 1");
  harvest->AddOption("--temperature", ha->opts.temperature, "generate: sampling temperature");
  harvest->AddOption("--top-p", ha->opts.top_p, "generate: nucleus threshold");
  harvest->AddOption("--rows-per-shard", ha->rows_per_shard, "rows per shard file");
  harvest->AddOption("--out", ha->out, "output directory (must not hold a manifest)").Required();
  harvest->AddFlag("--json", ha->json, "one JSON object");
  harvest->AddFlag("--quiet", ha->quiet, "no progress output");
  harvest->AddOption("--rank", ha->rank, "this process's rank when the harvest is spread over processes (or SAE_RANK)")
      .Env("SAE_RANK");
  harvest
      ->AddOption("--world-size", ha->world,
                  "number of harvesting processes (or SAE_WORLD_SIZE); "
                  "each writes shards of one forward batch, rank 0 the manifest")
      .Env("SAE_WORLD_SIZE");
  harvest->AddOption("--timeout", ha->timeout, "rank 0: seconds to wait for the other ranks");

  auto ea = std::make_shared<EvalArgs>();
  ea->opts.windows.seed = 1000003;  // held out from harvests with small seeds
  ea->opts.windows.batch = 8;
  flags::Command* ev =
      app->AddSubcommand("eval", "evaluate an SAE spliced into a model: fvu, L0, dead/dense, CE recovered, KL");
  AddModelFlags(ev, &ea->model, &ea->tokenizer);
  AddDTypeFlag(ev, &ea->dtype);
  ev->AddOption("--sae", ea->sae, "trained SAE directory (sae.safetensors + cfg.json)").Required();
  ev->AddOption("--layer", ea->opts.windows.layer, "block whose output the SAE reads").Required();
  ev->AddOption("--hook", ea->hook, "resid_post or mlp_out");
  ev->AddOption("--corpus", ea->opts.windows.corpus, "held-out text file, or 'generate' (default)");
  ev->AddOption("--context", ea->opts.windows.context, "tokens per window");
  ev->AddOption("--windows", ea->opts.num_windows, "windows evaluated");
  ev->AddOption("--seed", ea->opts.windows.seed, "generate: seed of the evaluation windows");
  ev->AddFlag("--json", ea->json, "one JSON object");
  ev->AddFlag("--quiet", ea->quiet, "no progress output");

  return [=]() -> int {
    if (gen->Parsed()) return RunGenerate(*ga);
    if (harvest->Parsed()) return RunHarvest(*ha);
    if (ev->Parsed()) return RunEval(*ea);
    return kNotParsed;
  };
}

}  // namespace sae
