#include "core/interp/steering.h"

#include <c10/util/Exception.h>

#include <chrono>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace sae {

absl::StatusOr<SteerMode> SteerModeFromString(const std::string& s) {
  if (s == "add") return SteerMode::kAdd;
  if (s == "clamp") return SteerMode::kClamp;
  return absl::InvalidArgumentError(absl::StrCat("steer mode '", s, "' is not add or clamp"));
}
absl::StatusOr<SteerOn> SteerOnFromString(const std::string& s) {
  if (s == "all") return SteerOn::kAll;
  if (s == "prompt") return SteerOn::kPrompt;
  if (s == "generated") return SteerOn::kGenerated;
  return absl::InvalidArgumentError(absl::StrCat("steer positions '", s, "' are not all, prompt or generated"));
}
const char* SteerModeName(SteerMode m) { return m == SteerMode::kAdd ? "add" : "clamp"; }
const char* SteerOnName(SteerOn o) {
  return o == SteerOn::kAll ? "all" : (o == SteerOn::kPrompt ? "prompt" : "generated");
}

absl::StatusOr<std::vector<SteerTerm>> ParseSteerTerms(const std::string& s) {
  std::vector<SteerTerm> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    std::vector<std::string> js = absl::StrSplit(part, ':');
    SteerTerm t;
    if (js.size() != 2 || !absl::SimpleAtoi(js[0], &t.latent) || !absl::SimpleAtod(js[1], &t.scale) ||
        !std::isfinite(t.scale))
      return absl::InvalidArgumentError(absl::StrCat("--steer: '", part, "' is not LATENT:SCALE (e.g. 12:4)"));
    out.push_back(t);
  }
  if (out.empty()) return absl::InvalidArgumentError("--steer: no LATENT:SCALE terms");
  return out;
}

absl::StatusOr<Steerer> Steerer::Create(const SaeRun& run, const SteerOptions& opts,
                                        const std::vector<float>& max_acts) {
  Steerer s;
  s.run_ = &run;
  s.opts_ = opts;
  const int64_t n = run.latents();
  for (const SteerTerm& t : opts.terms) {
    if (t.latent < 0 || t.latent >= n)
      return absl::InvalidArgumentError(absl::StrCat("steer: latent ", t.latent, " outside [0, ", n, ")"));
    if (!std::isfinite(t.scale)) return absl::InvalidArgumentError("steer: the scale is not finite");
  }
  if (opts.mode == SteerMode::kClamp) {
    for (const SteerTerm& t : opts.terms) {
      if (opts.absolute) {
        s.targets_.push_back(t.scale);
        continue;
      }
      if (static_cast<int64_t>(max_acts.size()) != n)
        return absl::FailedPreconditionError(
            "steer: clamp in units of the latent's max needs the dashboards (sae features build), "
            "or --steer-units absolute");
      s.targets_.push_back(t.scale * max_acts[t.latent]);
    }
  } else {
    const at::Tensor dec = run.sae.params.W_dec.to(at::kCPU, at::kFloat);
    at::Tensor add = at::zeros({1, dec.size(1)}, at::kFloat);
    for (const SteerTerm& t : opts.terms) {
      at::Tensor row = dec[t.latent];
      const double norm = row.norm().item<double>();
      if (norm > 0) add += (t.scale / norm) * row.reshape({1, -1});
    }
    s.add_ = add;
  }
  return s;
}

bool Steerer::Steers(int64_t pos, int64_t prompt_len) const {
  if (pos <= 0) return false;
  switch (opts_.on) {
    case SteerOn::kAll: return true;
    case SteerOn::kPrompt: return pos < prompt_len;
    case SteerOn::kGenerated: return pos >= prompt_len;
  }
  return false;
}

absl::StatusOr<at::Tensor> ClampRows(const LoadedSae& sae, const at::Tensor& x, const std::vector<int64_t>& latents,
                                     const at::Tensor& targets) {
  try {
    SAE_ASSIGN_OR_RETURN(SaeCodes c, EncodeRows(sae, x));
    const int64_t N = x.size(0), m = static_cast<int64_t>(latents.size());
    at::Tensor t = targets.to(at::kCPU, at::kFloat).reshape({N, m}).contiguous();
    at::Tensor idx = c.indices.to(at::kCPU).contiguous(), act = c.acts.to(at::kCPU, at::kFloat).contiguous();
    const int64_t k = idx.size(1);
    // Δa [N, m]: target minus the current activation (0 when not in the top-k).
    at::Tensor da = at::zeros({N, m}, at::kFloat);
    const int64_t* ip = idx.data_ptr<int64_t>();
    const float* ap = act.data_ptr<float>();
    const float* tp = t.data_ptr<float>();
    float* dp = da.data_ptr<float>();
    bool any = false;
    for (int64_t r = 0; r < N; ++r)
      for (int64_t q = 0; q < m; ++q) {
        float cur = 0;
        for (int64_t i = 0; i < k; ++i)
          if (ip[r * k + i] == latents[q]) cur = ap[r * k + i];
        dp[r * m + q] = tp[r * m + q] - cur;
        any = any || dp[r * m + q] != 0;
      }
    if (!any) return x;
    std::vector<int64_t> lat = latents;
    at::Tensor li = at::from_blob(lat.data(), {m}, at::kLong).clone().to(sae.params.W_dec.device());
    at::Tensor rows = sae.params.W_dec.index_select(0, li).to(at::kFloat);  // [m, d]
    at::Tensor delta = at::matmul(da.to(rows.device()), rows);              // decoder space [N, d]
    delta = DecoderDeltaToInput(sae, c, delta);
    return (x.to(at::kFloat) + delta.to(x.device())).to(x.scalar_type());
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("steer clamp: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<at::Tensor> Steerer::Apply(const at::Tensor& x) const {
  if (opts_.terms.empty()) return x;
  if (opts_.mode == SteerMode::kAdd) {
    try {
      return (x + add_.to(x.device(), x.scalar_type()));
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("steer add: ", e.what_without_backtrace()));
    }
  }
  std::vector<int64_t> lat;
  for (const SteerTerm& t : opts_.terms) lat.push_back(t.latent);
  const int64_t N = x.size(0), m = static_cast<int64_t>(lat.size());
  at::Tensor tgt = at::empty({N, m}, at::kFloat);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t q = 0; q < m; ++q) tgt[r][q] = static_cast<float>(targets_[q]);
  return ClampRows(run_->sae, x, lat, tgt);
}

absl::StatusOr<SteeredText> GenerateSteered(const Transformer& model, const Tokenizer& tok, const SaeRun& run,
                                            const GenerateOptions& opts_in, const Steerer* steer,
                                            const std::function<void(int64_t, const at::Tensor&)>& observe) {
  SteeredText out;
  out.prompt_tokens = static_cast<int64_t>(tok.Encode(opts_in.prompt, true, false).size());
  GenerateOptions o = opts_in;
  absl::Status err;
  if (steer != nullptr || observe) {
    PositionHook h;
    h.layer = run.layer;
    h.point = run.hook;
    h.fn = [&](int64_t pos, at::Tensor& x) {
      if (!err.ok()) return;
      if (steer != nullptr && steer->Steers(pos, out.prompt_tokens)) {
        const auto shape = x.sizes().vec();
        auto e = steer->Apply(x.reshape({-1, shape.back()}));
        if (!e.ok()) {
          err = e.status();
          return;
        }
        x = e->reshape(shape);
      }
      if (observe) observe(pos, x.reshape({-1, x.size(-1)}));
    };
    o.hooks.push_back(std::move(h));
  }
  at::NoGradGuard ng;
  auto r = Generate(model, tok, o, [&](const std::string& piece) { out.text += piece; });
  if (!err.ok()) return err;
  if (!r.ok()) return r.status();
  out.tokens = r->tokens;
  out.seconds = r->seconds;
  return out;
}

absl::StatusOr<double> MeanTokenLoss(const Transformer& model, const std::vector<int32_t>& tokens, int64_t from) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  if (from < 1) from = 1;
  if (T <= from) return absl::InvalidArgumentError("loss: no tokens after the prompt");
  try {
    at::NoGradGuard ng;
    std::vector<int64_t> ids(tokens.begin(), tokens.end());
    at::Tensor t = at::from_blob(ids.data(), {1, T}, at::kLong).clone();
    SAE_ASSIGN_OR_RETURN(at::Tensor logits, model.Forward(t));
    at::Tensor lp = at::log_softmax(logits[0].to(at::kCPU, at::kDouble), -1);  // [T, V]
    double nll = 0;
    for (int64_t p = from; p < T; ++p) nll -= lp[p - 1][ids[p]].item<double>();
    return nll / static_cast<double>(T - from);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loss: ", e.what_without_backtrace()));
  }
}

}  // namespace sae
