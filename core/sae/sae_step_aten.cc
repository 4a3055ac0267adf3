// The training step in device-generic ATen operations, for CUDA tensors (and
// on CPU for tests, where it must agree with the hand-written kernels of
// sae_step.cc). Same math as sae_step.cc (ALGORITHMS.md §1, §2, §4, §5).
// Unlike the CPU kernels it materialises the B×n pre-activations and B·k×d
// temporaries for the weight gradients: memory a GPU has; a fused sparse
// kernel would remove them.
#include <c10/util/Exception.h>

#include "core/sae/sae_step.h"
#include "core/sae/sae_step_internal.h"

namespace sae {
namespace {

// Σ_{(b,j)} coef[b,j] · rows[b] added to out[idx[b,j]] (out: n×d).
void ScatterRows(at::Tensor& out, const at::Tensor& idx, const at::Tensor& coef, const at::Tensor& rows) {
  const int64_t B = idx.size(0), k = idx.size(1);
  if (k == 0) return;
  at::Tensor contrib = (coef.unsqueeze(2) * rows.unsqueeze(1)).reshape({B * k, rows.size(1)});
  out.index_add_(0, idx.reshape({-1}), contrib);
}

// x̂-like sums Σ_j acts[b,j] W[idx[b,j]] per row (B×d), without a B×k×d tensor.
at::Tensor Decode(const at::Tensor& W, const at::Tensor& idx, const at::Tensor& acts) {
  const int64_t B = idx.size(0), k = idx.size(1);
  if (k == 0) return at::zeros({B, W.size(1)}, W.options());
  at::Tensor offsets = at::arange(0, B * k, k, idx.options());
  return std::get<0>(
      at::embedding_bag(W, idx.reshape({-1}), offsets, false, 0, false, acts.reshape({-1}).contiguous()));
}

// ∂loss/∂a for each selected entry: g[b] · W[idx[b,j]], zero where a <= 0.
at::Tensor ActGrad(const at::Tensor& W, const at::Tensor& idx, const at::Tensor& g, const at::Tensor& mask) {
  const int64_t B = idx.size(0), k = idx.size(1);
  if (k == 0) return at::zeros({B, 0}, g.options());
  at::Tensor Wsel = W.index_select(0, idx.reshape({-1})).view({B, k, W.size(1)});
  return at::bmm(Wsel, g.unsqueeze(2)).squeeze(2) * mask;
}

void ProjectRows(at::Tensor& gd, const at::Tensor& W) { gd.sub_((gd * W).sum(1, true) * W); }

// The encoder's top-k (and the remedies' selections) as dense ATen tensors.
struct AtenSelection {
  at::Tensor idx, acts, mask;              // B×k: indices, relu(z), 1 where z > 0
  at::Tensor aux_idx, aux_acts, aux_mask;  // B×k_aux (AuxK)
  at::Tensor zD;                           // B×|D| (Ghost Grads)
};

AtenSelection EncodeAndSelect(const SaeParams& p, const at::Tensor& xc, const StepConfig& cfg,
                              const internal::RemedyPlan& rp, const at::Tensor& dead_t) {
  const int64_t B = xc.size(0);
  at::Tensor z;
  if (cfg.W_enc_lowp.defined()) {
    at::Tensor in = xc.to(at::kBFloat16).to(xc.scalar_type());
    z = at::addmm(p.b_enc, in, cfg.W_enc_lowp.t());
  } else {
    z = at::addmm(p.b_enc, xc, p.W_enc.t());
  }
  AtenSelection s;
  auto top = z.topk(cfg.k, 1);
  s.idx = std::get<1>(top);
  s.mask = (std::get<0>(top) > 0).to(xc.scalar_type());
  s.acts = std::get<0>(top).clamp_min(0);
  if (rp.k_aux > 0) {
    auto atop = z.index_select(1, dead_t).topk(rp.k_aux, 1);
    s.aux_idx = dead_t.index_select(0, std::get<1>(atop).reshape({-1})).view({B, rp.k_aux});
    s.aux_mask = (std::get<0>(atop) > 0).to(xc.scalar_type());
    s.aux_acts = std::get<0>(atop).clamp_min(0);
  }
  if (rp.ghost) s.zD = z.index_select(1, dead_t);
  return s;  // z (B×n) is freed here, before the backward
}

// Fired marks (within the first fire_k with a > 0) into `fired`; returns L0's numerator.
int64_t MarkFired(const AtenSelection& s, int64_t n, int64_t fire_k, std::vector<uint8_t>* fired) {
  at::Tensor on = s.mask > 0;
  at::Tensor marks = at::zeros({n}, s.idx.options().dtype(at::kByte));
  marks.index_fill_(0, s.idx.narrow(1, 0, fire_k).masked_select(on.narrow(1, 0, fire_k)), 1);
  fired->resize(static_cast<size_t>(n));
  at::Tensor marks_cpu = marks.cpu();
  std::memcpy(fired->data(), marks_cpu.data_ptr<uint8_t>(), fired->size());
  return on.sum().item<int64_t>();
}

// AuxK's gradient w.r.t. ê (ALGORITHMS.md §4, with the fitted α when
// cfg.auxk_fit); *aux_sum = Σ‖α ê − e‖².
at::Tensor AuxKGradient(const SaeParams& p, const at::Tensor& x, const at::Tensor& xhat, const AtenSelection& s,
                        const StepConfig& cfg, double c, double* aux_sum) {
  at::Tensor ehat = Decode(p.W_dec, s.aux_idx, s.aux_acts);
  at::Tensor e = x - xhat;
  at::Tensor alpha = at::ones({x.size(0), 1}, x.options());
  if (cfg.auxk_fit) {
    at::Tensor num = (ehat.to(at::kDouble) * e.to(at::kDouble)).sum(1, true);
    at::Tensor den = ehat.to(at::kDouble).pow(2).sum(1, true);
    alpha = at::where(den > 0, (num / den.clamp_min(1e-300)).clamp(0, 1), at::ones_like(den)).to(x.scalar_type());
  }
  at::Tensor diff = alpha * ehat - e;
  *aux_sum = diff.pow(2).sum(at::kDouble).item<double>();
  return alpha * diff * c;
}

// W_dec, W_enc and b_enc gradients of the entries (idx, acts) given ∂/∂x̂-like rows g.
void AddEntryGradients(const SaeParams& p, const at::Tensor& xc, const at::Tensor& idx, const at::Tensor& acts,
                       const at::Tensor& mask, const at::Tensor& g, SaeGrads* grads) {
  at::Tensor ga = ActGrad(p.W_dec, idx, g, mask);
  ScatterRows(grads->W_dec, idx, acts, g);
  ScatterRows(grads->W_enc, idx, ga, xc);
  grads->b_enc.index_add_(0, idx.reshape({-1}), ga.reshape({-1}));
}

}  // namespace

namespace internal {

absl::Status ComputeGradientsATen(const SaeParams& p, const at::Tensor& x_in, const StepConfig& cfg, SaeGrads* grads,
                                  StepResult* res) {
  try {
    at::NoGradGuard no_grad;
    const int64_t B = x_in.size(0), d = p.d_in();
    const at::Tensor x = x_in.contiguous();
    const RemedyPlan rp = PlanRemedy(cfg, d);
    at::Tensor dead_t;
    if (rp.nd > 0) dead_t = at::from_blob(const_cast<int64_t*>(rp.dead->data()), {rp.nd}, at::kLong).to(x.device());
    double total_var = cfg.total_var;
    if (total_var <= 0) {
      at::Tensor xd = x.to(at::kDouble);
      total_var = (xd - xd.mean(0)).pow(2).sum().item<double>();
    }
    const double denom = total_var > 0 ? total_var : 1.0;

    at::Tensor xc = x - p.b_dec;
    const AtenSelection s = EncodeAndSelect(p, xc, cfg, rp, dead_t);
    const int64_t active = MarkFired(s, p.latents(), FireK(cfg), &res->fired);

    // Decode and residual gradients. Multi-TopK (kt < k): xhat is the
    // reconstruction from the first kt entries (the target k), xk the one at
    // k; the loss ‖xhat − x‖² + w‖b_dec + β(xk − b_dec) − x‖² gives the first
    // kt entries gx = g_t + β g_k, the others gt = β g_k, b_dec g_t + g_k.
    const int64_t k = cfg.k;
    const MultiTopKPlan mp = PlanMultiTopK(cfg);
    const int64_t kt = mp.kt;
    const bool multi = mp.multi;
    const double w_cur = mp.w_cur;
    auto head = [&](const at::Tensor& t) { return t.narrow(1, 0, kt).contiguous(); };
    auto tail = [&](const at::Tensor& t) { return t.narrow(1, kt, k - kt).contiguous(); };
    at::Tensor xhat = Decode(p.W_dec, head(s.idx), head(s.acts)).add_(p.b_dec);
    at::Tensor xk = multi ? xhat + Decode(p.W_dec, tail(s.idx), tail(s.acts)) : xhat;
    at::Tensor e = xk - x;
    const double sse = e.pow(2).sum(at::kDouble).item<double>();
    at::Tensor gx, gt, gb;
    double sse_t = sse, sse_c = 0;
    if (multi) {
      at::Tensor et = xhat - x;
      sse_t = et.pow(2).sum(at::kDouble).item<double>();
      at::Tensor rk = xk - p.b_dec;
      at::Tensor beta = at::ones({B, 1}, x.options());
      if (cfg.current_k_fit) {
        at::Tensor num = (rk.to(at::kDouble) * xc.to(at::kDouble)).sum(1, true);
        at::Tensor den = rk.to(at::kDouble).pow(2).sum(1, true);
        beta = at::where(den > 0, (num / den.clamp_min(1e-300)).clamp(0, 1), at::ones_like(den)).to(x.scalar_type());
      }
      at::Tensor ec = beta * rk - xc;
      sse_c = ec.pow(2).sum(at::kDouble).item<double>();
      at::Tensor gk = ec * (2.0 * w_cur / denom);
      gt = beta * gk;
      gx = et * (2.0 / denom) + gt;
      gb = et * (2.0 / denom) + gk;
    } else {
      gx = e * (2.0 / denom);
      gb = gx;
    }
    double aux_sum = 0;
    grads->W_enc.zero_();
    grads->W_dec.zero_();
    grads->b_enc.zero_();
    AddEntryGradients(p, xc, head(s.idx), head(s.acts), head(s.mask), gx, grads);
    if (multi) AddEntryGradients(p, xc, tail(s.idx), tail(s.acts), tail(s.mask), gt, grads);
    if (rp.k_aux > 0) {
      at::Tensor gaux = AuxKGradient(p, x, xhat, s, cfg, 2.0 * cfg.aux_coefficient * rp.aux_scale / denom, &aux_sum);
      AddEntryGradients(p, xc, s.aux_idx, s.aux_acts, s.aux_mask, gaux, grads);
    }

    // b_dec: the decode's Σ ∂/∂x̂ minus W_encᵀ ∂b_enc from the input x − b_dec;
    // then Ghost Grads over the dead set adds its own terms.
    grads->b_dec.copy_(gb.sum(0));
    grads->b_dec.sub_(at::mv(p.W_enc.t(), grads->b_enc));
    double ghost_loss = 0;
    if (rp.ghost) ghost_loss = AddGhostGrads(p, x, xc, xhat, s.zD, dead_t, cfg.aux_coefficient / denom, grads);
    if (cfg.project_decoder_grad) ProjectRows(grads->W_dec, p.W_dec);

    res->phase_seconds.clear();
    StepSums sums;
    sums.sse = sse;
    sums.sse_target = sse_t;
    sums.sse_cur = sse_c;
    sums.aux = aux_sum;
    sums.recon_norm = (xk - p.b_dec).norm(2, 1).sum(at::kDouble).item<double>();
    sums.input_norm = xc.norm(2, 1).sum(at::kDouble).item<double>();
    FillStepMetrics(sums, active, total_var, ghost_loss, cfg, rp, B, d, res);
    return absl::OkStatus();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("sae step (ATen): ", e.what_without_backtrace()));
  }
}

void AdamUpdateATen(SaeParams* p, const SaeGrads& g, const AdamConfig& cfg, AdamState* s, at::Tensor* W_enc_lowp) {
  at::NoGradGuard no_grad;
  s->step += 1;
  const double bc1 = 1 - std::pow(cfg.beta1, static_cast<double>(s->step));
  const double bc2 = 1 - std::pow(cfg.beta2, static_cast<double>(s->step));
  auto update = [&](at::Tensor& param, const at::Tensor& grad, at::Tensor& m, at::Tensor& v) {
    at::Tensor gs = grad * cfg.clip_scale;
    m.mul_(cfg.beta1).add_(gs, 1 - cfg.beta1);
    v.mul_(cfg.beta2).addcmul_(gs, gs, 1 - cfg.beta2);
    at::Tensor denom = (v.sqrt() / std::sqrt(bc2)).add_(cfg.eps);
    param.addcdiv_(m, denom, -cfg.lr / bc1);
  };
  update(p->W_enc, g.W_enc, s->m_W_enc, s->v_W_enc);
  update(p->W_dec, g.W_dec, s->m_W_dec, s->v_W_dec);
  update(p->b_enc, g.b_enc, s->m_b_enc, s->v_b_enc);
  update(p->b_dec, g.b_dec, s->m_b_dec, s->v_b_dec);
  if (cfg.renormalize_decoder) {
    at::Tensor nrm = p->W_dec.norm(2, 1, true);
    p->W_dec.div_(at::where(nrm > 0, nrm, at::ones_like(nrm)));
  }
  if (W_enc_lowp != nullptr && W_enc_lowp->defined())
    W_enc_lowp->copy_(p->W_enc.to(at::kBFloat16).to(p->W_enc.scalar_type()));
}

}  // namespace internal
}  // namespace sae
