// steering_study: the study's steering table, measured (docs/interpretability.md).
// For each concept (a word, the latent `sae concepts` found for it), each mode
// (add, clamp) and each scale, generate with seeds 1..N from one prompt and
// report the share of generations whose generated part mentions the word
// (unsteered vs steered, same seeds) and a fluency figure: the unsteered
// model's mean per-token loss on the steered generation.
// Usage: steering_study --model M --sae RUN --concept dog:403 --concept rain:244 ...
//   Scales: add s·max_j·unit(W_dec[j]) and clamp a_j = s·max_j, s in --scales.
#include <cctype>
#include <cstdio>
#include <regex>
#include <string>
#include <vector>

#include "cli/flags.h"
#include "core/base/blas_kernel.h"
#include "core/interp/features.h"
#include "core/interp/steering.h"
#include "core/lm/loaders.h"

namespace {

struct Flags {
  std::string model_path, sae_dir, prompt = "Once upon a time";
  std::vector<std::string> concepts;
  std::vector<double> scales = {2, 5, 10};
  int64_t seeds = 50, steps = 128;
};

// One generation: its generated text and the unsteered model's mean
// per-token loss on it.
struct Sample {
  std::string text;
  double loss;
};

// What every generation of the study shares.
struct Study {
  const Flags& f;
  const sae::Transformer& model;
  const sae::Tokenizer& tok;
  const sae::SaeRun& run;
  std::vector<float> maxes;  // dashboard max of each latent

  // Generations with seeds 1..f.seeds, steered by st (null: unsteered).
  std::vector<Sample> GenerateAll(const sae::Steerer* st) const {
    std::vector<Sample> out;
    for (int64_t s = 1; s <= f.seeds; ++s) {
      sae::GenerateOptions g;
      g.prompt = f.prompt;
      g.steps = f.steps;
      g.seed = static_cast<uint64_t>(s);
      auto r = sae::GenerateSteered(model, tok, run, g, st);
      if (!r.ok()) {
        std::fprintf(stderr, "%s\n", std::string(r.status().message()).c_str());
        std::exit(1);
      }
      std::vector<int32_t> gen(r->tokens.begin() + r->prompt_tokens, r->tokens.end());
      auto loss = sae::MeanTokenLoss(model, r->tokens, r->prompt_tokens);
      out.push_back({tok.Decode(gen), loss.ok() ? *loss : NAN});
    }
    return out;
  }
};

double Share(const std::vector<Sample>& v, const std::regex& re) {
  int64_t n = 0;
  for (const auto& s : v) n += std::regex_search(s.text, re);
  return static_cast<double>(n) / v.size();
}

double MeanLoss(const std::vector<Sample>& v) {
  double s = 0;
  for (const auto& x : v) s += x.loss;
  return s / v.size();
}

// The table rows of one concept ("WORD:LATENT"): each mode and scale against
// the unsteered generations `plain`. Returns 1 where a steerer is refused.
int StudyConcept(const Study& study, const std::string& c, const std::vector<Sample>& plain) {
  const size_t colon = c.rfind(':');
  const std::string word = c.substr(0, colon);
  const int64_t latent = std::stoll(c.substr(colon + 1));
  const std::regex re("\\b" + word + "\\b", std::regex::icase);
  const double base = Share(plain, re);
  const std::vector<double>& scales = study.f.scales;
  const std::vector<float>& maxes = study.maxes;
  for (sae::SteerMode mode : {sae::SteerMode::kAdd, sae::SteerMode::kClamp}) {
    for (double s : scales) {
      sae::SteerOptions so;
      so.mode = mode;
      so.terms = {{latent, mode == sae::SteerMode::kAdd ? s * maxes[latent] : s}};
      auto st = sae::Steerer::Create(study.run, so, maxes);
      if (!st.ok()) return std::fprintf(stderr, "%s\n", std::string(st.status().message()).c_str()), 1;
      const std::vector<Sample> v = study.GenerateAll(&*st);
      std::printf("| %s | %ld | %.2f | %s | %g×max | %.0f%% | %.0f%% | %.3f |\n", word.c_str(), latent, maxes[latent],
                  sae::SteerModeName(mode), s, 100 * base, 100 * Share(v, re), MeanLoss(v));
      std::fflush(stdout);
      if (s == scales.back() && mode == sae::SteerMode::kClamp)
        std::fprintf(stderr, "example (%s, clamp %g×, seed 1): %s\n", word.c_str(), s, v[0].text.c_str());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  sae::flags::Command app{"steering_study: concept mentions and fluency under add/clamp steering"};
  Flags f;
  app.AddOption("--model", f.model_path).Required();
  app.AddOption("--sae", f.sae_dir).Required();
  app.AddOption("--concept", f.concepts, "WORD:LATENT (the word is matched as a regex, case-insensitive)").Required();
  app.AddOption("--scales", f.scales, "multiples of the latent's dashboard max");
  app.AddOption("--seeds", f.seeds);
  app.AddOption("--steps", f.steps);
  app.AddOption("--prompt", f.prompt);
  if (auto rc = app.Parse(argc, argv)) return *rc;
  auto model = sae::LoadModel(f.model_path);
  if (!model.ok()) return std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str()), 1;
  auto tok = sae::LoadTokenizerFor(f.model_path, model->config().vocab_size);
  auto run = sae::OpenSaeRun(f.sae_dir);
  auto feats = sae::LoadFeatures(f.sae_dir);
  if (!tok.ok() || !run.ok() || !feats.ok()) return std::fprintf(stderr, "cannot load tokenizer/SAE/dashboards\n"), 1;
  sae::ScopedThreads threads(sae::PreferredThreads(model->config()));
  const Study study{f, *model, **tok, *run, feats->MaxActivations()};
  const std::vector<Sample> plain = study.GenerateAll(nullptr);
  std::printf("prompt \"%s\", %ld positions, seeds 1..%ld, temperature 1, top-p 0.9; SAE %s (layer %ld, %ld latents)\n",
              f.prompt.c_str(), f.steps, f.seeds, f.sae_dir.c_str(), run->layer, run->latents());
  std::printf("unsteered fluency (mean per-token loss of the model on its own generations): %.3f\n\n", MeanLoss(plain));
  std::printf("| concept | latent | max_j | mode | scale | mentions unsteered | mentions steered | fluency (loss) |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const std::string& c : f.concepts)
    if (StudyConcept(study, c, plain) != 0) return 1;
  return 0;
}
