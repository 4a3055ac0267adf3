// steering_study: the study's steering table, measured (docs/interpretability.md).
// For each concept (a word, the latent `sae concepts` found for it), each mode
// (add, clamp) and each scale, generate with seeds 1..N from one prompt and
// report the share of generations whose generated part mentions the word
// (unsteered vs steered, same seeds) and a fluency figure: the unsteered
// model's mean per-token loss on the steered generation.
// Usage: steering_study --model M --sae RUN --concept dog:403 --concept rain:244 ...
//   Scales: add s·max_j·unit(W_dec[j]) and clamp a_j = s·max_j, s in --scales.
#include <CLI/CLI.hpp>

#include <cctype>
#include <cstdio>
#include <regex>
#include <string>
#include <vector>

#include "core/interp/features.h"
#include "core/interp/steering.h"
#include "core/lm/loaders.h"
#include "core/base/blas_kernel.h"

int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  CLI::App app{"steering_study: concept mentions and fluency under add/clamp steering"};
  std::string model_path, sae_dir, prompt = "Once upon a time";
  std::vector<std::string> concepts;
  std::vector<double> scales = {2, 5, 10};
  int64_t seeds = 50, steps = 128;
  app.add_option("--model", model_path)->required();
  app.add_option("--sae", sae_dir)->required();
  app.add_option("--concept", concepts, "WORD:LATENT (the word is matched as a regex, case-insensitive)")->required();
  app.add_option("--scales", scales, "multiples of the latent's dashboard max");
  app.add_option("--seeds", seeds);
  app.add_option("--steps", steps);
  app.add_option("--prompt", prompt);
  CLI11_PARSE(app, argc, argv);
  auto model = sae::LoadModel(model_path);
  if (!model.ok()) return std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str()), 1;
  auto tok = sae::LoadTokenizerFor(model_path, model->config().vocab_size);
  auto run = sae::OpenSaeRun(sae_dir);
  auto feats = sae::LoadFeatures(sae_dir);
  if (!tok.ok() || !run.ok() || !feats.ok()) return std::fprintf(stderr, "cannot load tokenizer/SAE/dashboards\n"), 1;
  sae::ScopedThreads threads(sae::PreferredThreads(model->config()));
  const std::vector<float> maxes = feats->MaxActivations();
  auto gen_opts = [&](int64_t seed) {
    sae::GenerateOptions g;
    g.prompt = prompt;
    g.steps = steps;
    g.seed = static_cast<uint64_t>(seed);
    return g;
  };
  struct Sample {
    std::string text;
    double loss;
  };
  auto run_all = [&](const sae::Steerer* st) {
    std::vector<Sample> out;
    for (int64_t s = 1; s <= seeds; ++s) {
      auto r = sae::GenerateSteered(*model, **tok, *run, gen_opts(s), st);
      if (!r.ok()) {
        std::fprintf(stderr, "%s\n", std::string(r.status().message()).c_str());
        std::exit(1);
      }
      std::vector<int32_t> gen(r->tokens.begin() + r->prompt_tokens, r->tokens.end());
      auto loss = sae::MeanTokenLoss(*model, r->tokens, r->prompt_tokens);
      out.push_back({(**tok).Decode(gen), loss.ok() ? *loss : NAN});
    }
    return out;
  };
  auto share = [](const std::vector<Sample>& v, const std::regex& re) {
    int64_t n = 0;
    for (const auto& s : v) n += std::regex_search(s.text, re);
    return static_cast<double>(n) / v.size();
  };
  auto mean_loss = [](const std::vector<Sample>& v) {
    double s = 0;
    for (const auto& x : v) s += x.loss;
    return s / v.size();
  };
  const std::vector<Sample> plain = run_all(nullptr);
  std::printf("prompt \"%s\", %ld positions, seeds 1..%ld, temperature 1, top-p 0.9; SAE %s (layer %ld, %ld latents)\n",
              prompt.c_str(), steps, seeds, sae_dir.c_str(), run->layer, run->latents());
  std::printf("unsteered fluency (mean per-token loss of the model on its own generations): %.3f\n\n",
              mean_loss(plain));
  std::printf("| concept | latent | max_j | mode | scale | mentions unsteered | mentions steered | fluency (loss) |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const std::string& c : concepts) {
    const size_t colon = c.rfind(':');
    const std::string word = c.substr(0, colon);
    const int64_t latent = std::stoll(c.substr(colon + 1));
    const std::regex re("\\b" + word + "\\b", std::regex::icase);
    const double base = share(plain, re);
    for (sae::SteerMode mode : {sae::SteerMode::kAdd, sae::SteerMode::kClamp}) {
      for (double s : scales) {
        sae::SteerOptions so;
        so.mode = mode;
        so.terms = {{latent, mode == sae::SteerMode::kAdd ? s * maxes[latent] : s}};
        auto st = sae::Steerer::Create(*run, so, maxes);
        if (!st.ok()) return std::fprintf(stderr, "%s\n", std::string(st.status().message()).c_str()), 1;
        const std::vector<Sample> v = run_all(&*st);
        std::printf("| %s | %ld | %.2f | %s | %g×max | %.0f%% | %.0f%% | %.3f |\n", word.c_str(), latent, maxes[latent],
                    sae::SteerModeName(mode), s, 100 * base, 100 * share(v, re), mean_loss(v));
        std::fflush(stdout);
        if (s == scales.back() && mode == sae::SteerMode::kClamp)
          std::fprintf(stderr, "example (%s, clamp %g×, seed 1): %s\n", word.c_str(), s, v[0].text.c_str());
      }
    }
  }
  return 0;
}
