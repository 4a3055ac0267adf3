#include "core/interp/sae_run.h"

#include <c10/util/Exception.h>

#include <nlohmann/json.hpp>

namespace sae {

using json = nlohmann::json;

absl::StatusOr<SaeRun> OpenSaeRun(const std::string& dir, int64_t layer_override) {
  SaeRun run;
  run.dir = dir;
  SAE_ASSIGN_OR_RETURN(run.sae, LoadSae(dir));
  const std::string cfg_path = dir + "/cfg.json";
  json cfg = json::parse(run.sae.cfg_json, nullptr, false);
  if (cfg.contains("saeforge") && cfg["saeforge"].contains("provenance")) {
    // The trainer writes the data source under provenance.data; a flat provenance is read too.
    const json& top = cfg["saeforge"]["provenance"];
    const json& p = top.contains("data") && top["data"].is_object() ? top["data"] : top;
    if (p.contains("layer")) {
      if (!p["layer"].is_number_integer())
        return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": saeforge.provenance.data.layer is not an integer"));
      run.layer = p["layer"].get<int64_t>();
    }
    if (p.contains("hook") && p["hook"].is_string()) {
      auto h = HookPointFromString(p["hook"].get<std::string>());
      if (!h.ok()) return Annotate(h.status(), cfg_path + ": saeforge.provenance.hook");
      run.hook = *h;
    }
    if (p.contains("model") && p["model"].is_string()) run.model = p["model"].get<std::string>();
  }
  if (layer_override >= 0) run.layer = layer_override;
  if (run.layer < 0)
    return absl::InvalidArgumentError(
        absl::StrCat(cfg_path, ": no saeforge.provenance.data.layer; say which layer the SAE reads with --layer"));
  return run;
}

absl::Status CheckSaeFitsModel(const SaeRun& run, const Transformer& model) {
  const ModelConfig& c = model.config();
  if (run.sae.params.d_in() != c.dim)
    return absl::InvalidArgumentError(absl::StrCat("SAE ", run.dir, " has d_in ", run.sae.params.d_in(),
                                                   " but the model ", c.source, " has width ", c.dim));
  if (run.layer < 0 || run.layer >= c.n_layers)
    return absl::InvalidArgumentError(
        absl::StrCat("SAE ", run.dir, ": layer ", run.layer, " outside the model's [0, ", c.n_layers, ")"));
  return absl::OkStatus();
}

absl::StatusOr<SaeCodes> EncodeRows(const LoadedSae& sae, const at::Tensor& x_in) {
  try {
    at::Tensor x = x_in.to(sae.params.W_enc.device(), at::kFloat).contiguous();
    SaeCodes c;
    if (sae.normalize == Normalize::kUnitMeanNorm) {
      x = x * sae.input_scale;
    } else if (sae.normalize == Normalize::kLayerNorm) {
      c.mu = x.mean({1}, true);
      c.sd = at::sqrt((x - c.mu).pow(2).mean({1}, true) + 1e-5);
      x = (x - c.mu) / c.sd;
    }
    SAE_ASSIGN_OR_RETURN(EncodeResult e, Encode(sae.params, x.contiguous(), sae.k));
    c.indices = e.indices;
    c.acts = e.acts;
    c.x_hat = e.x_hat;
    if (sae.normalize == Normalize::kUnitMeanNorm) {
      c.x_hat = c.x_hat / sae.input_scale;
    } else if (sae.normalize == Normalize::kLayerNorm) {
      c.x_hat = c.x_hat * c.sd + c.mu;
    }
    c.x_hat = c.x_hat.to(x_in.device(), x_in.scalar_type());
    return c;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("SAE encode: ", e.what_without_backtrace()));
  }
}

at::Tensor DecoderDeltaToInput(const LoadedSae& sae, const SaeCodes& codes, const at::Tensor& delta) {
  if (sae.normalize == Normalize::kUnitMeanNorm) return delta / sae.input_scale;
  if (sae.normalize == Normalize::kLayerNorm) return delta * codes.sd.to(delta.device());
  return delta;
}

absl::StatusOr<at::Tensor> HookActivations(const Transformer& model, const at::Tensor& tokens, int64_t layer,
                                           HookPoint hook) {
  at::Tensor x;
  ForwardOptions fo;
  fo.hooks.push_back({layer, hook, [&x](at::Tensor& a) { x = a.to(at::kCPU, at::kFloat).clone(); }});
  fo.stop_after_layer = layer;
  at::NoGradGuard no_grad;
  SAE_RETURN_IF_ERROR(model.Forward(tokens, nullptr, fo).status());
  if (!x.defined()) return absl::InternalError(absl::StrCat("the hook at layer ", layer, " never ran"));
  return x;
}

absl::StatusOr<TextCodes> EncodeTokens(const Transformer& model, const Tokenizer* tok, const SaeRun& run,
                                       std::vector<int32_t> tokens) {
  if (tokens.size() < 2) return absl::InvalidArgumentError("text: needs at least one token after BOS");
  if (static_cast<int64_t>(tokens.size()) > model.config().max_seq_len)
    return absl::InvalidArgumentError(
        absl::StrCat("text: ", tokens.size(), " tokens, more than the model's context ", model.config().max_seq_len));
  TextCodes out;
  out.tokens = std::move(tokens);
  const int64_t T = static_cast<int64_t>(out.tokens.size());
  std::vector<int64_t> ids(out.tokens.begin(), out.tokens.end());
  at::Tensor t = at::from_blob(ids.data(), {1, T}, at::kLong).clone();
  SAE_ASSIGN_OR_RETURN(at::Tensor x, HookActivations(model, t, run.layer, run.hook));
  SAE_ASSIGN_OR_RETURN(out.codes, EncodeRows(run.sae, x[0].narrow(0, 1, T - 1)));
  out.pieces.push_back("");
  for (int64_t i = 1; i < T; ++i)
    out.pieces.push_back(tok ? tok->DecodePiece(out.tokens[i - 1], out.tokens[i]) : std::to_string(out.tokens[i]));
  return out;
}

absl::StatusOr<TextCodes> EncodeText(const Transformer& model, const Tokenizer& tok, const SaeRun& run,
                                     const std::string& text, int64_t max_tokens) {
  std::vector<int32_t> ids = tok.Encode(text, /*bos=*/true, /*eos=*/false);
  if (max_tokens > 0 && static_cast<int64_t>(ids.size()) > max_tokens)
    return absl::InvalidArgumentError(
        absl::StrCat("text: ", ids.size(), " tokens, more than the limit of ", max_tokens));
  return EncodeTokens(model, &tok, run, std::move(ids));
}

std::vector<float> LatentActivations(const SaeCodes& codes, int64_t latent) {
  at::Tensor idx = codes.indices.to(at::kCPU, at::kLong).contiguous();
  at::Tensor act = codes.acts.to(at::kCPU, at::kFloat).contiguous();
  const int64_t n = idx.size(0), k = idx.size(1);
  std::vector<float> out(static_cast<size_t>(n), 0.0f);
  const int64_t* ip = idx.data_ptr<int64_t>();
  const float* ap = act.data_ptr<float>();
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < k; ++i)
      if (ip[r * k + i] == latent) out[r] = ap[r * k + i];
  return out;
}

}  // namespace sae
