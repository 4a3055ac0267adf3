#include "core/interp/interp_json.h"

namespace sae {

using json = nlohmann::json;

std::string DumpJson(const json& j, int indent) {
  const std::string s = j.dump(indent, ' ', false, json::error_handler_t::replace);
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '<')
      out += "\\u003c";
    else if (c == '>')
      out += "\\u003e";
    else if (c == '&')
      out += "\\u0026";
    else
      out += c;
  }
  return out;
}

json ContextJson(const FeatureSet& fs, const FeatureContext& c) {
  json toks = json::array(), acts = json::array();
  for (size_t s = 0; s < c.tokens.size(); ++s) {
    toks.push_back(c.tokens[s] < 0 ? json(nullptr) : json(fs.Piece(c.tokens[s])));
    acts.push_back(c.acts[s]);
  }
  return json{{"tokens", toks}, {"acts", acts}, {"center", fs.radius}, {"token_index", c.token_index}, {"act", c.act}};
}

json DashboardJson(const FeatureSet& fs, int64_t j) {
  const FeatureDashboard& d = fs.features[j];
  json edges = json::array();
  for (int i = 0; i <= kHistBins; ++i) edges.push_back(HistEdge(i));
  json top = json::array();
  for (const auto& c : d.top) top.push_back(ContextJson(fs, c));
  json ivs = json::array();
  for (const auto& iv : d.intervals) {
    json s = json::array();
    for (const auto& c : iv.samples) s.push_back(ContextJson(fs, c));
    ivs.push_back(json{{"lo", iv.lo}, {"hi", iv.hi}, {"count", iv.count}, {"samples", s}});
  }
  auto logits = [&](const std::vector<std::pair<int32_t, float>>& v) {
    json a = json::array();
    for (const auto& [t, x] : v) a.push_back(json{{"token", t}, {"piece", fs.Piece(t)}, {"value", x}});
    return a;
  };
  json cf = json::array();
  for (const auto& [l, c] : d.cofire) cf.push_back(json{{"latent", l}, {"corr", c}});
  return json{{"latent", j},
              {"count", d.count},
              {"tokens", fs.tokens},
              {"density", d.density},
              {"mean", d.mean},
              {"max", d.max},
              {"hist", d.hist},
              {"hist_edges", edges},
              {"top", top},
              {"intervals", ivs},
              {"logit_top", logits(d.logit_top)},
              {"logit_bottom", logits(d.logit_bottom)},
              {"cofire", cf}};
}

json TextCodesJson(const TextCodes& t) {
  json toks = json::array();
  at::Tensor idx = t.codes.indices.to(at::kCPU).contiguous(), act = t.codes.acts.to(at::kCPU, at::kFloat).contiguous();
  const int64_t k = idx.size(1);
  for (size_t p = 1; p < t.tokens.size(); ++p) {
    std::vector<std::pair<float, int64_t>> v;
    for (int64_t i = 0; i < k; ++i) {
      const float a = act[p - 1][i].item<float>();
      if (a > 0) v.emplace_back(a, idx[p - 1][i].item<int64_t>());
    }
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    json top = json::array();
    for (const auto& [a, l] : v) top.push_back(json::array({l, a}));
    toks.push_back(json{{"token", t.tokens[p]}, {"piece", t.pieces[p]}, {"top", top}});
  }
  return toks;
}

json ConceptReportJson(const ConceptReport& r, const FeatureSet* fs, int64_t contexts_per_hit) {
  json texts = json::array();
  for (const auto& t : r.texts) {
    json pieces = json::array();
    for (size_t p = 1; p < t.pieces.size(); ++p) pieces.push_back(t.pieces[p]);
    texts.push_back(pieces);
  }
  json hits = json::array();
  for (const auto& h : r.hits) {
    json ctx = json::array();
    if (fs != nullptr && h.latent < fs->latents)
      for (int64_t c = 0; c < contexts_per_hit && c < static_cast<int64_t>(fs->features[h.latent].top.size()); ++c)
        ctx.push_back(ContextJson(*fs, fs->features[h.latent].top[c]));
    hits.push_back(json{{"latent", h.latent},
                        {"score", h.score},
                        {"f_texts", h.f_texts},
                        {"f_contrast", h.f_contrast},
                        {"mean_norm", h.mean_norm},
                        {"heat", h.heat},
                        {"top_contexts", ctx}});
  }
  return json{{"texts", texts},
              {"contrast_count", r.contrast_count},
              {"contrast_source", r.contrast_source},
              {"normaliser", r.normaliser},
              {"hits", hits}};
}

}  // namespace sae
