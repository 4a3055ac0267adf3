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

namespace {

// Running sums over the evaluated tokens.
struct EvalSums {
  double sse = 0, sum_sq = 0, active = 0;           // reconstruction
  double nll_clean = 0, nll_sae = 0, nll_zero = 0;  // next-token loss
  double kl_sae = 0, kl_zero = 0;                   // against the clean run
  int64_t preds = 0;
  at::Tensor sum_x;  // [d], double
  at::Tensor fires;  // [latents], tokens each latent fired on
};

// Squared error, variance terms and firing counts of one batch's rows.
void AddReconstructionStats(const at::Tensor& rows, const Reconstruction& rec, int64_t latents, EvalSums* s) {
  const at::Tensor rd = rows.to(at::kDouble), xd = rec.x_hat.to(at::kDouble);
  s->sse += (rd - xd).pow(2).sum().item<double>();
  s->sum_sq += rd.pow(2).sum().item<double>();
  s->sum_x += rd.sum(0).cpu();
  if (latents > 0 && rec.acts.defined()) {
    at::Tensor on = rec.acts.gt(0);
    s->active += on.sum().item<double>();
    at::Tensor idx = rec.indices.masked_select(on).to(at::kCPU, at::kLong);
    s->fires.index_add_(0, idx, at::ones_like(idx));
  }
}

// The model's logits with the hook's activation at positions 1.. replaced by
// `repl` ([B·(T−1), d]).
absl::StatusOr<at::Tensor> SplicedForward(const Transformer& model, const at::Tensor& toks, const HarvestOptions& h,
                                          const at::Tensor& repl) {
  const int64_t B = toks.size(0), T = toks.size(1), d = model.config().dim;
  ForwardOptions fo;
  fo.hooks.push_back({h.layer, h.hook, [&](at::Tensor& a) {
                        at::Tensor out = a.clone();
                        out.narrow(1, 1, T - 1).copy_(repl.reshape({B, T - 1, d}));
                        a = out;
                      }});
  return model.Forward(toks, nullptr, fo);
}

// Next-token loss of the clean, spliced and zero-ablated runs, and their KL
// divergence from the clean run.
void AddLossStats(const at::Tensor& toks, const at::Tensor& clean, const at::Tensor& patched, const at::Tensor& zeroed,
                  EvalSums* s) {
  const int64_t B = toks.size(0), T = toks.size(1);
  at::Tensor targets = toks.narrow(1, 1, T - 1).to(clean.device()).unsqueeze(-1);
  auto logp = [&](const at::Tensor& logits) { return at::log_softmax(logits.narrow(1, 0, T - 1).to(at::kDouble), -1); };
  const at::Tensor lc = logp(clean), ls = logp(patched), lz = logp(zeroed);
  s->nll_clean -= lc.gather(-1, targets).sum().item<double>();
  s->nll_sae -= ls.gather(-1, targets).sum().item<double>();
  s->nll_zero -= lz.gather(-1, targets).sum().item<double>();
  const at::Tensor pc = lc.exp();
  s->kl_sae += (pc * (lc - ls)).sum().item<double>();
  s->kl_zero += (pc * (lc - lz)).sum().item<double>();
  s->preds += B * (T - 1);
}

// One batch of windows: the clean run capturing the hook's activation, its
// reconstruction, and the spliced and zero-ablated runs.
absl::Status EvaluateBatch(const Transformer& model, const at::Tensor& toks, const HarvestOptions& h,
                           const Reconstructor& fn, int64_t latents, EvalSums* s) {
  const int64_t B = toks.size(0), T = toks.size(1), d = model.config().dim;
  at::Tensor x;
  ForwardOptions clean_o;
  clean_o.hooks.push_back({h.layer, h.hook, [&x](at::Tensor& a) { x = a.clone(); }});
  SAE_ASSIGN_OR_RETURN(at::Tensor clean, model.Forward(toks, nullptr, clean_o));
  at::Tensor rows = x.narrow(1, 1, T - 1).reshape({B * (T - 1), d});
  SAE_ASSIGN_OR_RETURN(Reconstruction rec, fn(rows));
  if (!rec.x_hat.defined() || rec.x_hat.sizes() != rows.sizes())
    return absl::InternalError("eval: the reconstruction has the wrong shape");
  AddReconstructionStats(rows, rec, latents, s);
  SAE_ASSIGN_OR_RETURN(at::Tensor patched, SplicedForward(model, toks, h, rec.x_hat.to(x.device(), x.scalar_type())));
  SAE_ASSIGN_OR_RETURN(at::Tensor zeroed, SplicedForward(model, toks, h, at::zeros_like(rows)));
  AddLossStats(toks, clean, patched, zeroed, s);
  return absl::OkStatus();
}

// The metrics from the sums over r->tokens tokens.
void FinishResult(const EvalSums& s, int64_t latents, int64_t d, SaeEvalResult* r) {
  const double N = static_cast<double>(r->tokens);
  const double mean_sq = (s.sum_x / N).pow(2).sum().item<double>();
  const double total_var = s.sum_sq - N * mean_sq;
  r->fvu = total_var > 0 ? s.sse / total_var : 0;
  r->mse = s.sse / (N * d);
  r->l0 = s.active / N;
  if (latents > 0) {
    r->dead_ratio = s.fires.eq(0).sum().item<double>() / latents;
    r->dense_1pct_ratio = s.fires.gt(0.01 * N).sum().item<double>() / latents;
    r->dense_10pct_ratio = s.fires.gt(0.10 * N).sum().item<double>() / latents;
  }
  r->ce_clean = s.nll_clean / s.preds;
  r->ce_sae = s.nll_sae / s.preds;
  r->ce_zero = s.nll_zero / s.preds;
  r->ce_loss_recovered = r->ce_zero != r->ce_clean ? (r->ce_zero - r->ce_sae) / (r->ce_zero - r->ce_clean) : 0;
  r->kl_sae = s.kl_sae / s.preds;
  r->kl_zero = s.kl_zero / s.preds;
  r->kl_score = r->kl_zero > 0 ? (r->kl_zero - r->kl_sae) / r->kl_zero : 0;
}

}  // namespace

absl::StatusOr<SaeEvalResult> EvaluateReconstruction(const Transformer& model, const Tokenizer* tok,
                                                     const SaeEvalOptions& o, const Reconstructor& fn,
                                                     int64_t latents) {
  const HarvestOptions& h = o.windows;
  if (h.layer < 0 || h.layer >= model.config().n_layers)
    return absl::InvalidArgumentError(
        absl::StrCat("eval: layer ", h.layer, " outside [0, ", model.config().n_layers, ")"));
  SAE_ASSIGN_OR_RETURN(std::unique_ptr<WindowSource> src, WindowSource::Create(model, tok, h));
  int64_t n_windows = o.num_windows;
  if (src->distinct_windows() > 0) n_windows = std::min(n_windows, src->distinct_windows());
  const int64_t d = model.config().dim;
  SaeEvalResult r;
  r.latents = latents;
  EvalSums sums;
  sums.sum_x = at::zeros({d}, at::kDouble);
  sums.fires = latents > 0 ? at::zeros({latents}, at::kLong) : at::Tensor();
  ScopedThreads threads(PreferredThreads(model.config()));
  try {
    at::NoGradGuard no_grad;
    for (int64_t w0 = 0; w0 < n_windows; w0 += h.batch) {
      const int64_t B = std::min(h.batch, n_windows - w0);
      SAE_ASSIGN_OR_RETURN(at::Tensor toks, src->Windows(w0, B));
      const int64_t T = toks.size(1);
      SAE_RETURN_IF_ERROR(EvaluateBatch(model, toks, h, fn, latents, &sums));
      r.tokens += B * (T - 1);
      if (o.progress) o.progress(r.tokens, n_windows * (T - 1));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("eval: ", e.what_without_backtrace()));
  }
  if (r.tokens == 0) return absl::InvalidArgumentError("eval: no tokens to evaluate");
  FinishResult(sums, latents, d, &r);
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
