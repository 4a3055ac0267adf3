#include "core/interp/concepts.h"

#include <algorithm>

#include "absl/strings/str_split.h"
#include "core/lm/generate.h"

namespace sae {

std::vector<std::vector<int32_t>> EncodeLines(const Tokenizer& tok, const std::string& text) {
  std::vector<std::vector<int32_t>> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::string l(line);
    while (!l.empty() && (l.back() == '\r' || l.back() == ' ')) l.pop_back();
    if (l.empty()) continue;
    out.push_back(tok.Encode(l, true, false));
  }
  return out;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> ModelContrastSet(const Transformer& model, const ConceptOptions& o) {
  const int64_t len = std::min(o.contrast_context, model.config().max_seq_len);
  SAE_ASSIGN_OR_RETURN(std::vector<int32_t> flat,
                       SampleBatch(model, o.contrast_windows, len, 1.0f, 0.9f, o.contrast_seed));
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = 0; i < o.contrast_windows; ++i)
    out.emplace_back(flat.begin() + i * len, flat.begin() + (i + 1) * len);
  return out;
}

namespace {

// Per text: the max activation of every latent over its tokens, dense [n].
std::vector<float> TextMax(const SaeCodes& c, int64_t n) {
  std::vector<float> m(static_cast<size_t>(n), 0.0f);
  at::Tensor idx = c.indices.to(at::kCPU).contiguous(), act = c.acts.to(at::kCPU, at::kFloat).contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const float* ap = act.data_ptr<float>();
  for (int64_t i = 0; i < idx.numel(); ++i) m[ip[i]] = std::max(m[ip[i]], ap[i]);
  return m;
}

}  // namespace

absl::StatusOr<ConceptReport> SearchConcepts(const Transformer& model, const Tokenizer* tok, const SaeRun& run,
                                             const std::vector<std::vector<int32_t>>& texts,
                                             const std::vector<std::vector<int32_t>>& contrast,
                                             const std::vector<float>& max_acts, const ConceptOptions& o) {
  SAE_RETURN_IF_ERROR(CheckSaeFitsModel(run, model));
  if (texts.empty()) return absl::InvalidArgumentError("concepts: no texts");
  if (!(o.threshold > 0 && o.threshold <= 1))
    return absl::InvalidArgumentError("concepts: threshold must be in (0, 1]");
  const int64_t n = run.latents();
  if (!max_acts.empty() && static_cast<int64_t>(max_acts.size()) != n)
    return absl::InvalidArgumentError("concepts: the dashboards have a different latent count than the SAE");
  ConceptReport rep;
  rep.normaliser = max_acts.empty() ? "query" : "dashboards";
  rep.contrast_count = static_cast<int64_t>(contrast.size());
  ScopedThreads threads(PreferredThreads(model.config()));
  std::vector<std::vector<float>> tmax, cmax;
  for (size_t i = 0; i < texts.size(); ++i) {
    auto tc = EncodeTokens(model, tok, run, texts[i]);
    if (!tc.ok()) return Annotate(tc.status(), absl::StrCat("concepts: text ", i + 1));
    tmax.push_back(TextMax(tc->codes, n));
    rep.texts.push_back(std::move(*tc));
    if (o.progress) o.progress(static_cast<int64_t>(i + 1), static_cast<int64_t>(texts.size() + contrast.size()));
  }
  for (size_t i = 0; i < contrast.size(); ++i) {
    auto tc = EncodeTokens(model, tok, run, contrast[i]);
    if (!tc.ok()) return Annotate(tc.status(), absl::StrCat("concepts: contrast text ", i + 1));
    cmax.push_back(TextMax(tc->codes, n));
    if (o.progress)
      o.progress(static_cast<int64_t>(texts.size() + i + 1), static_cast<int64_t>(texts.size() + contrast.size()));
  }
  std::vector<double> norm(static_cast<size_t>(n), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    double m = max_acts.empty() ? 0.0 : max_acts[j];
    for (const auto& v : tmax) m = std::max<double>(m, v[j]);
    for (const auto& v : cmax) m = std::max<double>(m, v[j]);
    norm[j] = m;
  }
  std::vector<ConceptHit> hits;
  for (int64_t j = 0; j < n; ++j) {
    if (norm[j] <= 0) continue;
    ConceptHit h;
    h.latent = j;
    int64_t ft = 0, fc = 0;
    double sum = 0;
    for (const auto& v : tmax) {
      const double r = v[j] / norm[j];
      ft += r >= o.threshold;
      sum += r;
    }
    for (const auto& v : cmax) fc += v[j] / norm[j] >= o.threshold;
    if (ft == 0) continue;
    h.f_texts = static_cast<double>(ft) / tmax.size();
    h.f_contrast = cmax.empty() ? 0.0 : static_cast<double>(fc) / cmax.size();
    h.score = h.f_texts - h.f_contrast;
    h.mean_norm = sum / tmax.size();
    hits.push_back(h);
  }
  std::sort(hits.begin(), hits.end(), [](const ConceptHit& a, const ConceptHit& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.mean_norm != b.mean_norm) return a.mean_norm > b.mean_norm;
    return a.latent < b.latent;
  });
  if (static_cast<int64_t>(hits.size()) > o.top) hits.resize(o.top);
  for (ConceptHit& h : hits)
    for (const TextCodes& t : rep.texts) {
      std::vector<float> a = LatentActivations(t.codes, h.latent);
      for (float& v : a) v = static_cast<float>(v / norm[h.latent]);
      h.heat.push_back(std::move(a));
    }
  rep.hits = std::move(hits);
  return rep;
}

}  // namespace sae
