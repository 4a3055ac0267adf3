#include "core/interp/eval.h"

#include "core/interp/sae_run.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace sae {

Reconstructor SaeReconstructor(const LoadedSae& sae) {
  return [&sae](const at::Tensor& x_in) -> absl::StatusOr<Reconstruction> {
    SAE_ASSIGN_OR_RETURN(SaeCodes c, EncodeRows(sae, x_in));
    return Reconstruction{c.x_hat, c.indices, c.acts};
  };
}

absl::StatusOr<SaeEvalResult> EvaluateReconstruction(const Transformer& model, const Tokenizer* tok,
                                                     const SaeEvalOptions& o, const Reconstructor& fn,
                                                     int64_t latents) {
  const HarvestOptions& h = o.windows;
  if (h.layer < 0 || h.layer >= model.config().n_layers)
    return absl::InvalidArgumentError(absl::StrCat("eval: layer ", h.layer, " outside [0, ", model.config().n_layers, ")"));
  SAE_ASSIGN_OR_RETURN(std::unique_ptr<WindowSource> src, WindowSource::Create(model, tok, h));
  int64_t n_windows = o.num_windows;
  if (src->distinct_windows() > 0) n_windows = std::min(n_windows, src->distinct_windows());
  const int64_t d = model.config().dim;
  SaeEvalResult r;
  r.latents = latents;
  double sse = 0, sum_sq = 0, active = 0, nll_clean = 0, nll_sae = 0, nll_zero = 0, kl_sae = 0, kl_zero = 0;
  int64_t preds = 0;
  at::Tensor sum_x = at::zeros({d}, at::kDouble);
  at::Tensor fires = latents > 0 ? at::zeros({latents}, at::kLong) : at::Tensor();
  ScopedThreads threads(PreferredThreads(model.config()));
  try {
    at::NoGradGuard no_grad;
    for (int64_t w0 = 0; w0 < n_windows; w0 += h.batch) {
      const int64_t B = std::min(h.batch, n_windows - w0);
      SAE_ASSIGN_OR_RETURN(at::Tensor toks, src->Windows(w0, B));
      const int64_t T = toks.size(1);
      // Clean run, capturing the activation at the hook.
      at::Tensor x;
      ForwardOptions clean_o;
      clean_o.hooks.push_back({h.layer, h.hook, [&x](at::Tensor& a) { x = a.clone(); }});
      SAE_ASSIGN_OR_RETURN(at::Tensor clean, model.Forward(toks, nullptr, clean_o));
      at::Tensor rows = x.narrow(1, 1, T - 1).reshape({B * (T - 1), d});
      SAE_ASSIGN_OR_RETURN(Reconstruction rec, fn(rows));
      if (!rec.x_hat.defined() || rec.x_hat.sizes() != rows.sizes())
        return absl::InternalError("eval: the reconstruction has the wrong shape");
      const at::Tensor rd = rows.to(at::kDouble), xd = rec.x_hat.to(at::kDouble);
      sse += (rd - xd).pow(2).sum().item<double>();
      sum_sq += rd.pow(2).sum().item<double>();
      sum_x += rd.sum(0).cpu();
      if (latents > 0 && rec.acts.defined()) {
        at::Tensor on = rec.acts.gt(0);
        active += on.sum().item<double>();
        at::Tensor idx = rec.indices.masked_select(on).to(at::kCPU, at::kLong);
        fires.index_add_(0, idx, at::ones_like(idx));
      }
      // Spliced and zero-ablated runs (positions 1.. replaced).
      auto splice = [&](const at::Tensor& repl) {
        ForwardOptions fo;
        fo.hooks.push_back({h.layer, h.hook, [&](at::Tensor& a) {
                              at::Tensor out = a.clone();
                              out.narrow(1, 1, T - 1).copy_(repl.reshape({B, T - 1, d}));
                              a = out;
                            }});
        return model.Forward(toks, nullptr, fo);
      };
      SAE_ASSIGN_OR_RETURN(at::Tensor patched, splice(rec.x_hat.to(x.device(), x.scalar_type())));
      SAE_ASSIGN_OR_RETURN(at::Tensor zeroed, splice(at::zeros_like(rows)));
      at::Tensor targets = toks.narrow(1, 1, T - 1).to(clean.device()).unsqueeze(-1);
      auto logp = [&](const at::Tensor& logits) { return at::log_softmax(logits.narrow(1, 0, T - 1).to(at::kDouble), -1); };
      const at::Tensor lc = logp(clean), ls = logp(patched), lz = logp(zeroed);
      nll_clean -= lc.gather(-1, targets).sum().item<double>();
      nll_sae -= ls.gather(-1, targets).sum().item<double>();
      nll_zero -= lz.gather(-1, targets).sum().item<double>();
      const at::Tensor pc = lc.exp();
      kl_sae += (pc * (lc - ls)).sum().item<double>();
      kl_zero += (pc * (lc - lz)).sum().item<double>();
      preds += B * (T - 1);
      r.tokens += B * (T - 1);
      if (o.progress) o.progress(r.tokens, n_windows * (T - 1));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("eval: ", e.what_without_backtrace()));
  }
  if (r.tokens == 0) return absl::InvalidArgumentError("eval: no tokens to evaluate");
  const double N = static_cast<double>(r.tokens);
  const double mean_sq = (sum_x / N).pow(2).sum().item<double>();
  const double total_var = sum_sq - N * mean_sq;
  r.fvu = total_var > 0 ? sse / total_var : 0;
  r.mse = sse / (N * d);
  r.l0 = active / N;
  if (latents > 0) {
    r.dead_ratio = fires.eq(0).sum().item<double>() / latents;
    r.dense_1pct_ratio = fires.gt(0.01 * N).sum().item<double>() / latents;
    r.dense_10pct_ratio = fires.gt(0.10 * N).sum().item<double>() / latents;
  }
  r.ce_clean = nll_clean / preds;
  r.ce_sae = nll_sae / preds;
  r.ce_zero = nll_zero / preds;
  r.ce_loss_recovered = r.ce_zero != r.ce_clean ? (r.ce_zero - r.ce_sae) / (r.ce_zero - r.ce_clean) : 0;
  r.kl_sae = kl_sae / preds;
  r.kl_zero = kl_zero / preds;
  r.kl_score = r.kl_zero > 0 ? (r.kl_zero - r.kl_sae) / r.kl_zero : 0;
  return r;
}

absl::StatusOr<SaeEvalResult> EvaluateSae(const Transformer& model, const Tokenizer* tok, const SaeEvalOptions& opts,
                                          const LoadedSae& sae) {
  if (sae.params.d_in() != model.config().dim)
    return absl::InvalidArgumentError(absl::StrCat("eval: the SAE's d_in ", sae.params.d_in(),
                                                   " differs from the model's width ", model.config().dim));
  return EvaluateReconstruction(model, tok, opts, SaeReconstructor(sae), sae.params.latents());
}

}  // namespace sae
