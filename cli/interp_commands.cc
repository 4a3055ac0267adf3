#include "cli/interp_commands.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/flags.h"
#include "cli/model_flags.h"
#include "cli/progress.h"
#include "cli/serve.h"
#include "core/base/exit_code.h"
#include "core/base/file_util.h"
#include "core/interp/concepts.h"
#include "core/interp/features.h"
#include "core/interp/interp_json.h"
#include "core/interp/sae_run.h"
#include "core/interp/steering.h"
#include "core/lm/loaders.h"

namespace sae {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// Where a run's dashboards are: RUN (beside the SAE) or RUN/features.
std::string FeaturesDir(const std::string& run) {
  if (fs::exists(run + "/features.json")) return run;
  if (fs::exists(run + "/features/features.json")) return run + "/features";
  return run;
}

std::string Printable(const std::string& piece) {
  std::string out;
  for (char c : piece) out += (c == '\n') ? std::string("\\n") : std::string(1, c);
  return out;
}

// A context as text: the token [[at the centre]], activations after each firing token.
std::string ContextText(const FeatureSet& f, const FeatureContext& c) {
  std::string s;
  for (size_t i = 0; i < c.tokens.size(); ++i) {
    if (c.tokens[i] < 0) continue;
    const std::string p = Printable(f.Piece(c.tokens[i]));
    if (static_cast<int64_t>(i) == f.radius)
      s += "[[" + p + "]]";
    else
      s += p;
    if (c.acts[i] > 0 && static_cast<int64_t>(i) != f.radius) s += absl::StrCat("(", absl::SixDigits(c.acts[i]), ")");
  }
  return s;
}

struct Loaded {
  std::unique_ptr<Transformer> model;
  std::unique_ptr<Tokenizer> tok;
};
absl::StatusOr<Loaded> LoadModelAndTokenizer(const std::string& model, const std::string& tokenizer) {
  Loaded l;
  SAE_ASSIGN_OR_RETURN(Transformer m, LoadModel(model));
  l.model = std::make_unique<Transformer>(std::move(m));
  SAE_ASSIGN_OR_RETURN(l.tok, LoadTokenizerFor(model, l.model->config().vocab_size, tokenizer));
  return l;
}

// ---- features build ---------------------------------------------------------

struct BuildArgs {
  std::string model, tokenizer, sae, out, hook;
  int64_t layer = -1;
  FeatureOptions opts;
  double timeout = 600;
  bool json = false, quiet = false;
};

int RunBuild(BuildArgs a) {
  auto run = OpenSaeRun(a.sae, a.layer);
  if (!run.ok()) return Fail(run.status());
  if (!a.hook.empty()) {
    auto h = HookPointFromString(a.hook);
    if (!h.ok()) return Fail(Annotate(h.status(), "--hook"));
    run->hook = *h;
  }
  auto l = LoadModelAndTokenizer(a.model, a.tokenizer);
  if (!l.ok()) return Fail(l.status());
  if (a.out.empty()) a.out = a.sae;
  if (auto s = MakeDirs(a.out); !s.ok()) return Fail(s);
  const auto t0 = std::chrono::steady_clock::now();
  TokenProgress progress(a.opts.world > 1 ? absl::StrCat("features rank ", a.opts.rank) : "features",
                         a.quiet || a.json);
  auto acc = AccumulateFeatures(*l->model, l->tok.get(), *run, a.opts,
                                [&](int64_t done, int64_t total) { progress.Update(done, total); });
  progress.Finish();
  if (!acc.ok()) return Fail(acc.status());
  const double pass_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto partial = [&](int r) { return absl::StrCat(a.out, "/features.rank-", r, ".partial"); };
  if (a.opts.rank != 0) {
    const std::vector<uint8_t> bytes = acc->Serialize();
    auto s = AtomicWriteFile(partial(a.opts.rank), std::string(bytes.begin(), bytes.end()));
    if (!s.ok()) return Fail(s);
    std::printf("rank %d of %d: %ld tokens, partial statistics in %s\n", a.opts.rank, a.opts.world, acc->tokens(),
                partial(a.opts.rank).c_str());
    return 0;
  }
  for (int r = 1; r < a.opts.world; ++r) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(a.timeout);
    while (!fs::exists(partial(r))) {
      if (std::chrono::steady_clock::now() > deadline)
        return Fail(absl::DeadlineExceededError(
            absl::StrCat("features: rank ", r, " wrote no ", partial(r), " within ", a.timeout, " s")));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    auto text = ReadFileToString(partial(r));
    if (!text.ok()) return Fail(text.status());
    auto other = FeatureAccumulator::Deserialize(std::vector<uint8_t>(text->begin(), text->end()), partial(r));
    if (!other.ok()) return Fail(other.status());
    if (auto s = acc->Merge(*other); !s.ok()) return Fail(Annotate(s, partial(r)));
    fs::remove(partial(r));
  }
  auto set = FinalizeFeatures(*acc, *l->model, *l->tok, *run);
  if (!set.ok()) return Fail(set.status());
  json extra = {{"model", a.model}, {"world_size", a.opts.world}};
  if (auto s = WriteFeatures(*set, a.out, extra.dump()); !s.ok()) return Fail(s);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t alive = 0;
  for (const auto& f : set->features) alive += f.count > 0;
  if (a.json) {
    std::printf("%s\n", DumpJson(json{{"out", a.out},
                                      {"latents", set->latents},
                                      {"tokens", set->tokens},
                                      {"alive", alive},
                                      {"seconds", secs},
                                      {"tokens_per_second", acc->tokens() / std::max(pass_secs, 1e-9)}})
                            .c_str());
  } else {
    std::printf(
        "dashboards of %ld latents (%ld fired) over %ld tokens written to %s/features.{safetensors,json} "
        "(%.0f tokens/s)\n",
        set->latents, alive, set->tokens, a.out.c_str(), acc->tokens() / std::max(pass_secs, 1e-9));
    std::printf("look at one:  sae features show %s 0\n", a.sae.c_str());
  }
  return 0;
}

// ---- features show / search ---------------------------------------------------

struct ShowArgs {
  std::string run;
  int64_t latent = 0;
  bool json = false;
};

void PrintDashboard(const FeatureSet& f, int64_t j) {
  const FeatureDashboard& d = f.features[j];
  std::printf("latent %ld\n", j);
  std::printf("  density %.6f (%ld of %ld tokens)   mean %.4g   max %.4g\n", d.density, d.count, f.tokens, d.mean,
              d.max);
  int lo = kHistBins, hi = -1;
  int64_t peak = 0;
  for (int b = 0; b < kHistBins; ++b)
    if (d.hist[b] > 0) lo = std::min(lo, b), hi = std::max(hi, b), peak = std::max(peak, d.hist[b]);
  if (hi >= 0) {
    std::printf("  histogram of firing activations (log-spaced bins):\n");
    for (int b = lo; b <= hi; ++b) {
      const int w = static_cast<int>(40.0 * d.hist[b] / peak + 0.5);
      std::printf("    %9.3g..%-9.3g %8ld %s\n", HistEdge(b), HistEdge(b + 1), d.hist[b], std::string(w, '#').c_str());
    }
  }
  std::printf("  top contexts:\n");
  for (const auto& c : d.top) std::printf("    %8.4g  %s\n", c.act, ContextText(f, c).c_str());
  if (!d.intervals.empty()) {
    std::printf("  activation intervals (quantile groups), sampled contexts:\n");
    for (const auto& iv : d.intervals) {
      std::printf("    [%.4g, %.4g] %ld tokens\n", iv.lo, iv.hi, iv.count);
      for (const auto& c : iv.samples) std::printf("      %8.4g  %s\n", c.act, ContextText(f, c).c_str());
    }
  }
  std::printf("  logit effect, promoted:");
  for (const auto& [t, v] : d.logit_top) std::printf("  '%s' %+.3f", Printable(f.Piece(t)).c_str(), v);
  std::printf("\n  logit effect, suppressed:");
  for (const auto& [t, v] : d.logit_bottom) std::printf("  '%s' %+.3f", Printable(f.Piece(t)).c_str(), v);
  std::printf("\n  co-fires with:");
  for (const auto& [l, c] : d.cofire) std::printf("  %d (r=%.3f)", l, c);
  std::printf("\n");
}

int RunShow(const ShowArgs& a) {
  auto f = LoadFeatures(FeaturesDir(a.run));
  if (!f.ok()) return Fail(f.status());
  if (a.latent < 0 || a.latent >= f->latents)
    return Fail(absl::InvalidArgumentError(absl::StrCat("latent ", a.latent, " outside [0, ", f->latents, ")")));
  if (a.json)
    std::printf("%s\n", DumpJson(DashboardJson(*f, a.latent)).c_str());
  else
    PrintDashboard(*f, a.latent);
  return 0;
}

struct SearchArgs {
  std::string run, text;
  int64_t limit = 20;
  bool json = false;
};

int RunSearch(const SearchArgs& a) {
  auto f = LoadFeatures(FeaturesDir(a.run));
  if (!f.ok()) return Fail(f.status());
  auto hits = f->Search(a.text, a.limit);
  if (a.json) {
    json arr = json::array();
    for (const auto& [l, m] : hits)
      arr.push_back(json{{"latent", l},
                         {"matching_contexts", m},
                         {"max", f->features[l].max},
                         {"density", f->features[l].density},
                         {"top", ContextJson(*f, f->features[l].top[0])}});
    std::printf("%s\n", DumpJson(arr).c_str());
    return 0;
  }
  if (hits.empty()) std::printf("no latent has '%s' in its top contexts\n", a.text.c_str());
  for (const auto& [l, m] : hits)
    std::printf("latent %6ld  %2ld of %zu top contexts  max %.4g  e.g. %s\n", l, m, f->features[l].top.size(),
                f->features[l].max, ContextText(*f, f->features[l].top[0]).c_str());
  return 0;
}

// ---- concepts -------------------------------------------------------------------

struct ConceptArgs {
  std::string model, tokenizer, sae, texts, contrast;
  int64_t layer = -1;
  ConceptOptions opts;
  bool json = false;
};

int RunConcepts(const ConceptArgs& a) {
  auto run = OpenSaeRun(a.sae, a.layer);
  if (!run.ok()) return Fail(run.status());
  auto l = LoadModelAndTokenizer(a.model, a.tokenizer);
  if (!l.ok()) return Fail(l.status());
  auto text = ReadFileToString(a.texts);
  if (!text.ok()) return Fail(text.status());
  auto T = EncodeLines(*l->tok, *text);
  if (T.empty()) return Fail(absl::InvalidArgumentError(absl::StrCat(a.texts, ": no non-empty lines")));
  std::vector<std::vector<int32_t>> C;
  std::string source = "file " + a.contrast;
  if (!a.contrast.empty()) {
    auto c = ReadFileToString(a.contrast);
    if (!c.ok()) return Fail(c.status());
    C = EncodeLines(*l->tok, *c);
  } else {
    auto c = ModelContrastSet(*l->model, a.opts);
    if (!c.ok()) return Fail(c.status());
    C = std::move(*c);
    source = absl::StrCat(C.size(), " windows sampled by the model (seed ", a.opts.contrast_seed, ")");
  }
  std::unique_ptr<FeatureSet> feats;
  std::vector<float> maxes;
  if (auto f = LoadFeatures(FeaturesDir(a.sae)); f.ok()) {
    feats = std::make_unique<FeatureSet>(std::move(*f));
    maxes = feats->MaxActivations();
  }
  TokenProgress progress("concepts", a.json, "texts");
  ConceptOptions opts = a.opts;
  opts.progress = [&progress](int64_t done, int64_t total) { progress.Update(done, total); };
  auto rep = SearchConcepts(*l->model, l->tok.get(), *run, T, C, maxes, opts);
  progress.Finish();
  if (!rep.ok()) return Fail(rep.status());
  rep->contrast_source = source;
  if (a.json) {
    std::printf("%s\n", DumpJson(ConceptReportJson(*rep, feats.get(), 3)).c_str());
    return 0;
  }
  std::printf("%zu texts against %ld contrast texts (%s); activations normalised by %s maxima; fires: >= %.2f of max\n",
              T.size(), rep->contrast_count, source.c_str(),
              rep->normaliser == "dashboards" ? "each latent's dashboard" : "this query's", a.opts.threshold);
  std::printf("%-7s %7s %7s %7s %9s  %s\n", "latent", "score", "f_texts", "f_contr", "mean_norm", "top context");
  for (const auto& h : rep->hits) {
    std::string ctx = feats && !feats->features[h.latent].top.empty()
                          ? ContextText(*feats, feats->features[h.latent].top[0])
                          : std::string("(no dashboards: sae features build)");
    std::printf("%-7ld %+7.3f %7.3f %7.3f %9.3f  %s\n", h.latent, h.score, h.f_texts, h.f_contrast, h.mean_norm,
                ctx.c_str());
  }
  return 0;
}

// ---- generate --steer -----------------------------------------------------------

std::vector<std::string> Wrap(const std::string& text, size_t width) {
  std::vector<std::string> lines;
  std::string line;
  for (char c : text) {
    if (c == '\n') {
      lines.push_back(line);
      line.clear();
      continue;
    }
    line += c;
    if (line.size() >= width) {
      size_t cut = line.rfind(' ');
      if (cut == std::string::npos || cut == 0) cut = line.size();
      lines.push_back(line.substr(0, cut));
      line = cut < line.size() ? line.substr(cut + 1) : "";
    }
  }
  if (!line.empty()) lines.push_back(line);
  return lines;
}

}  // namespace

void AddSteerFlags(flags::Command* gen, SteerArgs* a) {
  gen->AddOption("--sae", a->sae, "SAE run directory whose latents steer (sae.safetensors + cfg.json)");
  gen->AddOption("--layer", a->layer, "block the SAE reads (default: cfg.json's provenance)");
  gen->AddOption("--steer", a->steer, "LATENT:SCALE[,LATENT:SCALE...]; a negative scale ablates");
  gen->AddOption("--steer-mode", a->mode, "add (h += s·W_dec[j]/|W_dec[j]|) or clamp (a_j = s·max_j, error kept)")
      .OneOf({"add", "clamp"});
  gen->AddOption("--steer-on", a->on, "positions edited: all, prompt or generated (BOS never)")
      .OneOf({"all", "prompt", "generated"});
  gen->AddOption("--steer-units", a->units, "clamp: max (s × the latent's dashboard max) or absolute")
      .OneOf({"max", "absolute"});
  gen->AddFlag("--compare", a->compare, "also generate unsteered with the same seed and print both side by side");
  gen->AddOption("--width", a->width, "--compare: column width");
}

int RunSteeredGenerate(const std::string& model, const std::string& tokenizer, const GenerateOptions& o,
                       const SteerArgs& a) {
  if (a.sae.empty()) return Fail(absl::InvalidArgumentError("--steer needs --sae RUN"));
  if (a.steer.empty() && !a.compare) return Fail(absl::InvalidArgumentError("--sae needs --steer LATENT:SCALE"));
  auto run = OpenSaeRun(a.sae, a.layer);
  if (!run.ok()) return Fail(run.status());
  auto l = LoadModelAndTokenizer(model, tokenizer);
  if (!l.ok()) return Fail(l.status());
  if (auto s = CheckSaeFitsModel(*run, *l->model); !s.ok()) return Fail(s);
  SteerOptions so;
  if (!a.steer.empty()) {
    auto t = ParseSteerTerms(a.steer);
    if (!t.ok()) return Fail(t.status());
    so.terms = *t;
  }
  so.mode = *SteerModeFromString(a.mode);
  so.on = *SteerOnFromString(a.on);
  so.absolute = a.units == "absolute";
  std::vector<float> maxes;
  if (so.mode == SteerMode::kClamp && !so.absolute) {
    auto f = LoadFeatures(FeaturesDir(a.sae));
    if (!f.ok())
      return Fail(absl::FailedPreconditionError(absl::StrCat(
          "--steer-mode clamp in units of each latent's max needs its dashboards (sae features build --sae ", a.sae,
          ") or --steer-units absolute: ", f.status().message())));
    maxes = f->MaxActivations();
  }
  auto st = Steerer::Create(*run, so, maxes);
  if (!st.ok()) return Fail(st.status());
  ScopedThreads threads(PreferredThreads(l->model->config()));
  auto steered = GenerateSteered(*l->model, *l->tok, *run, o, &*st);
  if (!steered.ok()) return Fail(steered.status());
  if (!a.compare) {
    std::printf("%s\n", steered->text.c_str());
    return 0;
  }
  auto plain = GenerateSteered(*l->model, *l->tok, *run, o, nullptr);
  if (!plain.ok()) return Fail(plain.status());
  int width = a.width;
  if (width <= 0) {
    struct winsize ws {};
    width = (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20)
                ? (ws.ws_col - 3) / 2
                : 38;
  }
  const std::string label = absl::StrCat("steered (", a.mode, " ", a.steer, ", on ", a.on, ")");
  auto left = Wrap(plain->text, width), right = Wrap(steered->text, width);
  std::printf("seed %lu\n%-*s | %s\n%s-+-%s\n", static_cast<unsigned long>(o.seed), width, "unsteered", label.c_str(),
              std::string(width, '-').c_str(), std::string(width, '-').c_str());
  for (size_t i = 0; i < std::max(left.size(), right.size()); ++i)
    std::printf("%-*s | %s\n", width, i < left.size() ? left[i].c_str() : "", i < right.size() ? right[i].c_str() : "");
  return 0;
}

CommandRunner AddInterpCommands(flags::Command* app) {
  flags::Command* feat = app->AddSubcommand("features", "feature dashboards of an SAE: build, show, search");
  feat->RequireSubcommand(1);
  auto ba = std::make_shared<BuildArgs>();
  ba->opts.windows.seed = 1000003;  // held out from harvests with small seeds
  ba->opts.windows.batch = 16;
  flags::Command* build =
      feat->AddSubcommand("build", "one streaming pass over text computing every latent's dashboard");
  AddModelFlags(build, &ba->model, &ba->tokenizer);
  build->AddOption("--sae", ba->sae, "SAE run directory (sae.safetensors + cfg.json)").Required();
  build->AddOption("--layer", ba->layer, "block the SAE reads (default: cfg.json's provenance)");
  build->AddOption("--hook", ba->hook, "resid_post or mlp_out (default: provenance)");
  build->AddOption("--corpus", ba->opts.windows.corpus, "text file, or 'generate' (the model samples its own)");
  build->AddOption("--tokens", ba->opts.tokens, "tokens to read (rounded up to whole windows)");
  build->AddOption("--context", ba->opts.windows.context, "tokens per window (BOS first)");
  build->AddOption("--batch", ba->opts.windows.batch, "windows per forward pass");
  build->AddOption("--seed", ba->opts.windows.seed, "generate: window w is sampled with seed + w + 1");
  build->AddOption("--radius", ba->opts.radius, "tokens shown either side of a context's token");
  build->AddOption("--top", ba->opts.top_contexts, "top contexts kept per latent");
  build->AddOption("--out", ba->out, "output directory (default: the SAE run directory)");
  build->AddOption("--rank", ba->opts.rank, "this process's rank (or SAE_RANK)").Env("SAE_RANK");
  build
      ->AddOption("--world-size", ba->opts.world,
                  "processes sharing the pass (or SAE_WORLD_SIZE); rank r reads "
                  "blocks r mod W, rank 0 merges")
      .Env("SAE_WORLD_SIZE");
  build->AddOption("--timeout", ba->timeout, "rank 0: seconds to wait for the other ranks");
  build->AddFlag("--json", ba->json, "one JSON object");
  build->AddFlag("--quiet", ba->quiet, "no progress output");

  auto sa = std::make_shared<ShowArgs>();
  flags::Command* show = feat->AddSubcommand("show", "print one latent's dashboard");
  show->AddOption("run", sa->run, "SAE run directory with features.json").Required();
  show->AddOption("latent", sa->latent, "latent index").Required();
  show->AddFlag("--json", sa->json, "the dashboard as JSON (as GET /api/feature)");

  auto qa = std::make_shared<SearchArgs>();
  flags::Command* search = feat->AddSubcommand("search", "latents whose top contexts contain TEXT");
  search->AddOption("run", qa->run, "SAE run directory with features.json").Required();
  search->AddOption("text", qa->text, "text to find (case-insensitive)").Required();
  search->AddOption("--limit", qa->limit, "latents listed");
  search->AddFlag("--json", qa->json, "JSON array");

  auto ca = std::make_shared<ConceptArgs>();
  flags::Command* con = app->AddSubcommand("concepts", "latents that fire on a set of texts and not on a contrast set");
  AddModelFlags(con, &ca->model, &ca->tokenizer);
  con->AddOption("--sae", ca->sae, "SAE run directory").Required();
  con->AddOption("--layer", ca->layer, "block the SAE reads (default: provenance)");
  con->AddOption("--texts", ca->texts, "file: one text per line").Required();
  con->AddOption("--contrast", ca->contrast, "file: one contrast text per line (default: text the model samples)");
  con->AddOption("--top", ca->opts.top, "latents listed");
  con->AddOption("--threshold", ca->opts.threshold, "a text fires a latent when its max a_j/max_j reaches this");
  con->AddOption("--contrast-windows", ca->opts.contrast_windows, "default contrast: windows sampled");
  con->AddFlag("--json", ca->json, "one JSON object (as POST /api/concepts)");

  CommandRunner serve = AddServeCommand(app);

  return [=]() -> int {
    if (build->Parsed()) return RunBuild(*ba);
    if (show->Parsed()) return RunShow(*sa);
    if (search->Parsed()) return RunSearch(*qa);
    if (con->Parsed()) return RunConcepts(*ca);
    return serve();
  };
}

}  // namespace sae
