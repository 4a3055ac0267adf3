#include "cli/serve_api.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "core/interp/concepts.h"
#include "core/interp/interp_json.h"
#include "core/interp/steering.h"

namespace sae {

using json = nlohmann::json;

ApiReply ApiError(int status, const std::string& field, const std::string& message) {
  return ApiReply{status, json{{"error", message}, {"field", field}}};
}

namespace {

ApiReply FromStatus(const absl::Status& s, const std::string& field) {
  int code = 500;
  if (absl::IsInvalidArgument(s) || absl::IsOutOfRange(s)) code = 400;
  if (absl::IsNotFound(s)) code = 404;
  if (absl::IsFailedPrecondition(s)) code = 409;
  return ApiError(code, field, std::string(s.message()));
}

// Reads an optional field of a type; writes an error reply and returns false when it has the wrong type.
template <typename T>
bool Field(const json& body, const char* name, T* out, ApiReply* err) {
  if (!body.contains(name) || body[name].is_null()) return true;
  const json& v = body[name];
  bool ok;
  if constexpr (std::is_same_v<T, std::string>)
    ok = v.is_string();
  else if constexpr (std::is_same_v<T, bool>)
    ok = v.is_boolean();
  else if constexpr (std::is_integral_v<T>)
    ok = v.is_number_integer();
  else
    ok = v.is_number();
  if (!ok) {
    *err = ApiError(400, name, absl::StrCat("field '", name, "' has the wrong type"));
    return false;
  }
  *out = v.get<T>();
  return true;
}

bool Lines(const json& body, const char* name, int64_t max, std::vector<std::string>* out, ApiReply* err) {
  if (!body.contains(name) || body[name].is_null()) return true;
  const json& v = body[name];
  if (!v.is_array()) {
    *err = ApiError(400, name, absl::StrCat("field '", name, "' must be an array of strings"));
    return false;
  }
  for (const json& s : v) {
    if (!s.is_string()) {
      *err = ApiError(400, name, absl::StrCat("field '", name, "' must be an array of strings"));
      return false;
    }
    if (!s.get<std::string>().empty()) out->push_back(s.get<std::string>());
  }
  if (static_cast<int64_t>(out->size()) > max) {
    *err = ApiError(413, name, absl::StrCat("field '", name, "' has ", out->size(), " texts, more than ", max));
    return false;
  }
  return true;
}

}  // namespace

ServeApi::ServeApi(std::string model_path, std::unique_ptr<Transformer> model, std::unique_ptr<Tokenizer> tok,
                   SaeRun run, std::unique_ptr<FeatureSet> features, ApiLimits limits)
    : model_path_(std::move(model_path)),
      model_(std::move(model)),
      tok_(std::move(tok)),
      run_(std::move(run)),
      features_(std::move(features)),
      limits_(limits) {}

ApiReply ServeApi::Info() const {
  const ModelConfig& c = model_->config();
  return ApiReply{200, json{{"model", model_path_},
                            {"model_format", c.format},
                            {"d_model", c.dim},
                            {"layers", c.n_layers},
                            {"context", c.max_seq_len},
                            {"vocab", c.vocab_size},
                            {"sae", run_.dir},
                            {"latents", run_.latents()},
                            {"k", run_.sae.k},
                            {"layer", run_.layer},
                            {"hook", HookPointName(run_.hook)},
                            {"features", features_ != nullptr},
                            {"feature_tokens", features_ ? features_->tokens : 0},
                            {"limits",
                             {{"max_texts", limits_.max_texts},
                              {"max_steps", limits_.max_steps},
                              {"max_terms", limits_.max_terms},
                              {"max_scale", limits_.max_scale}}}}};
}

ApiReply ServeApi::Feature(const std::string& latent) const {
  if (!features_) return ApiError(409, "latent", "no dashboards: run sae features build for this SAE first");
  int64_t j;
  if (!absl::SimpleAtoi(latent, &j)) return ApiError(400, "latent", "parameter 'latent' must be an integer");
  if (j < 0 || j >= features_->latents)
    return ApiError(404, "latent", absl::StrCat("latent ", j, " outside [0, ", features_->latents, ")"));
  return ApiReply{200, DashboardJson(*features_, j)};
}

ApiReply ServeApi::Search(const std::string& q, const std::string& limit_s) const {
  if (!features_) return ApiError(409, "q", "no dashboards: run sae features build for this SAE first");
  if (q.empty()) return ApiError(400, "q", "parameter 'q' is empty");
  if (q.size() > 200) return ApiError(413, "q", "parameter 'q' is longer than 200 bytes");
  int64_t limit = 50;
  if (!limit_s.empty() && (!absl::SimpleAtoi(limit_s, &limit) || limit < 1))
    return ApiError(400, "limit", "parameter 'limit' must be a positive integer");
  limit = std::min(limit, limits_.max_results);
  json arr = json::array();
  for (const auto& [l, m] : features_->Search(q, limit)) {
    const auto& f = features_->features[l];
    arr.push_back(json{{"latent", l},
                       {"matching_contexts", m},
                       {"max", f.max},
                       {"density", f.density},
                       {"top", f.top.empty() ? json(nullptr) : ContextJson(*features_, f.top[0])}});
  }
  return ApiReply{200, json{{"query", q}, {"results", arr}}};
}

ApiReply ServeApi::Activations(const json& body) const {
  ApiReply err;
  std::string text;
  int64_t latent = -1;
  if (!Field(body, "text", &text, &err) || !Field(body, "latent", &latent, &err)) return err;
  if (text.empty()) return ApiError(400, "text", "field 'text' is missing or empty");
  if (body.contains("latent") && (latent < 0 || latent >= run_.latents()))
    return ApiError(404, "latent", absl::StrCat("latent ", latent, " outside [0, ", run_.latents(), ")"));
  auto tc = EncodeText(*model_, *tok_, run_, text, model_->config().max_seq_len);
  if (!tc.ok()) return FromStatus(tc.status(), "text");
  json out{{"tokens", TextCodesJson(*tc)}};
  if (latent >= 0) {
    out["latent"] = latent;
    out["acts"] = LatentActivations(tc->codes, latent);
    out["max"] = features_ ? features_->features[latent].max : 0.0;
  }
  return ApiReply{200, out};
}

ApiReply ServeApi::Generate(const json& body) const {
  ApiReply err;
  GenerateOptions g;
  int64_t seed = 1;
  std::string mode = "add", on = "all", units = "max";
  if (!Field(body, "prompt", &g.prompt, &err) || !Field(body, "steps", &g.steps, &err) ||
      !Field(body, "seed", &seed, &err) || !Field(body, "temperature", &g.temperature, &err) ||
      !Field(body, "top_p", &g.top_p, &err) || !Field(body, "mode", &mode, &err) || !Field(body, "on", &on, &err) ||
      !Field(body, "units", &units, &err))
    return err;
  if (g.steps < 2 || g.steps > std::min(limits_.max_steps, model_->config().max_seq_len))
    return ApiError(
        400, "steps",
        absl::StrCat("field 'steps' must be in [2, ", std::min(limits_.max_steps, model_->config().max_seq_len), "]"));
  if (seed < 1) return ApiError(400, "seed", "field 'seed' must be >= 1");
  if (!(g.temperature >= 0 && g.temperature <= 10))
    return ApiError(400, "temperature", "field 'temperature' must be in [0, 10]");
  g.seed = static_cast<uint64_t>(seed);
  SteerOptions so;
  auto m = SteerModeFromString(mode);
  if (!m.ok()) return ApiError(400, "mode", std::string(m.status().message()));
  auto o = SteerOnFromString(on);
  if (!o.ok()) return ApiError(400, "on", std::string(o.status().message()));
  if (units != "max" && units != "absolute") return ApiError(400, "units", "field 'units' must be max or absolute");
  so.mode = *m;
  so.on = *o;
  so.absolute = units == "absolute";
  if (body.contains("steer")) {
    const json& s = body["steer"];
    if (!s.is_array()) return ApiError(400, "steer", "field 'steer' must be an array of {latent, scale}");
    if (static_cast<int64_t>(s.size()) > limits_.max_terms)
      return ApiError(413, "steer", absl::StrCat("field 'steer' has more than ", limits_.max_terms, " terms"));
    for (const json& t : s) {
      if (!t.is_object() || !t.contains("latent") || !t["latent"].is_number_integer() || !t.contains("scale") ||
          !t["scale"].is_number())
        return ApiError(400, "steer", "each 'steer' term must be {\"latent\": integer, \"scale\": number}");
      SteerTerm term{t["latent"].get<int64_t>(), t["scale"].get<double>()};
      if (term.latent < 0 || term.latent >= run_.latents())
        return ApiError(404, "steer", absl::StrCat("latent ", term.latent, " outside [0, ", run_.latents(), ")"));
      if (!(std::fabs(term.scale) <= limits_.max_scale))
        return ApiError(400, "steer", absl::StrCat("scale ", term.scale, " outside ±", limits_.max_scale));
      so.terms.push_back(term);
    }
  }
  std::vector<float> maxes;
  if (features_) maxes = features_->MaxActivations();
  auto st = Steerer::Create(run_, so, maxes);
  if (!st.ok()) return FromStatus(st.status(), "units");
  if (static_cast<int64_t>(tok_->Encode(g.prompt, true, false).size()) > g.steps)
    return ApiError(400, "prompt", "the prompt has more tokens than 'steps'");
  auto plain = GenerateSteered(*model_, *tok_, run_, g, nullptr);
  if (!plain.ok()) return FromStatus(plain.status(), "prompt");
  auto steered = GenerateSteered(*model_, *tok_, run_, g, &*st);
  if (!steered.ok()) return FromStatus(steered.status(), "steer");
  auto side = [&](const SteeredText& t) {
    json pieces = json::array();
    for (size_t p = 1; p < t.tokens.size(); ++p) pieces.push_back(tok_->DecodePiece(t.tokens[p - 1], t.tokens[p]));
    return json{{"text", t.text}, {"tokens", t.tokens}, {"pieces", pieces}, {"prompt_tokens", t.prompt_tokens}};
  };
  return ApiReply{200, json{{"seed", seed},
                            {"mode", SteerModeName(so.mode)},
                            {"on", SteerOnName(so.on)},
                            {"units", units},
                            {"unsteered", side(*plain)},
                            {"steered", side(*steered)}}};
}

ApiReply ServeApi::Concepts(const json& body) const {
  ApiReply err;
  std::vector<std::string> texts, contrast;
  ConceptOptions o;
  o.top = 20;
  if (!Lines(body, "texts", limits_.max_texts, &texts, &err) ||
      !Lines(body, "contrast", limits_.max_texts, &contrast, &err) || !Field(body, "top", &o.top, &err) ||
      !Field(body, "threshold", &o.threshold, &err))
    return err;
  if (texts.empty()) return ApiError(400, "texts", "field 'texts' is missing or has no non-empty text");
  if (o.top < 1 || o.top > limits_.max_results)
    return ApiError(400, "top", absl::StrCat("field 'top' must be in [1, ", limits_.max_results, "]"));
  if (!(o.threshold > 0 && o.threshold <= 1)) return ApiError(400, "threshold", "field 'threshold' must be in (0, 1]");
  auto enc = [&](const std::vector<std::string>& v, const char* field, std::vector<std::vector<int32_t>>* out) -> bool {
    for (const auto& s : v) {
      out->push_back(tok_->Encode(s, true, false));
      if (static_cast<int64_t>(out->back().size()) > model_->config().max_seq_len) {
        err = ApiError(413, field, absl::StrCat("a text of '", field, "' is longer than the model's context"));
        return false;
      }
    }
    return true;
  };
  std::vector<std::vector<int32_t>> T, C;
  if (!enc(texts, "texts", &T) || !enc(contrast, "contrast", &C)) return err;
  std::string source = "given";
  if (C.empty()) {
    std::call_once(contrast_once_, [&] {
      ConceptOptions co;
      co.contrast_windows = 32;
      contrast_ = ModelContrastSet(*model_, co);
    });
    if (!contrast_.ok()) return FromStatus(contrast_.status(), "contrast");
    C = *contrast_;
    source = absl::StrCat("model samples (", C.size(), " windows)");
  }
  std::vector<float> maxes;
  if (features_) maxes = features_->MaxActivations();
  auto rep = SearchConcepts(*model_, tok_.get(), run_, T, C, maxes, o);
  if (!rep.ok()) return FromStatus(rep.status(), "texts");
  rep->contrast_source = source;
  return ApiReply{200, ConceptReportJson(*rep, features_.get(), 2)};
}

}  // namespace sae
