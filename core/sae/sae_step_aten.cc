// The training step in device-generic ATen operations, for CUDA tensors (and
// on CPU for tests, where it must agree with the hand-written kernels of
// sae_step.cc). Same math as sae_step.cc (ALGORITHMS.md §1, §2, §4, §5).
// Unlike the CPU kernels it materialises the B×n pre-activations and B·k×d
// temporaries for the weight gradients: memory a GPU has; a fused sparse
// kernel would remove them.
#include <c10/util/Exception.h>

#include "core/sae/sae_step.h"

namespace sae {
namespace {

// Σ_{(b,j)} coef[b,j] · rows[b] added to out[idx[b,j]] (out: n×d).
void ScatterRows(at::Tensor& out, const at::Tensor& idx, const at::Tensor& coef,
                 const at::Tensor& rows) {
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
  return std::get<0>(at::embedding_bag(W, idx.reshape({-1}), offsets, false, 0, false,
                                       acts.reshape({-1}).contiguous()));
}

// ∂loss/∂a for each selected entry: g[b] · W[idx[b,j]], zero where a <= 0.
at::Tensor ActGrad(const at::Tensor& W, const at::Tensor& idx, const at::Tensor& g,
                   const at::Tensor& mask) {
  const int64_t B = idx.size(0), k = idx.size(1);
  if (k == 0) return at::zeros({B, 0}, g.options());
  at::Tensor Wsel = W.index_select(0, idx.reshape({-1})).view({B, k, W.size(1)});
  return at::bmm(Wsel, g.unsqueeze(2)).squeeze(2) * mask;
}

void ProjectRows(at::Tensor& gd, const at::Tensor& W) {
  gd.sub_((gd * W).sum(1, true) * W);
}

}  // namespace

absl::Status ComputeGradientsATen(const SaeParams& p, const at::Tensor& x_in, const StepConfig& cfg,
                                  SaeGrads* grads, StepResult* res) {
  try {
    at::NoGradGuard no_grad;
    const int64_t B = x_in.size(0), d = p.d_in(), k = cfg.k;
    const at::Tensor x = x_in.contiguous();
    static const std::vector<int64_t> kNoDead;
    const std::vector<int64_t>& dead = cfg.dead ? *cfg.dead : kNoDead;
    const int64_t nd = static_cast<int64_t>(dead.size());
    const bool auxk = cfg.remedy == Remedy::kAuxK && nd > 0 && cfg.aux_coefficient != 0;
    const bool ghost = cfg.remedy == Remedy::kGhostGrads && nd > 0 && cfg.aux_coefficient != 0;
    const int64_t half_d = std::max<int64_t>(1, d / 2);
    const int64_t k_aux = auxk ? std::min(half_d, nd) : 0;
    const double aux_scale = auxk ? std::min(1.0, static_cast<double>(nd) / half_d) : 0.0;
    at::Tensor dead_t;
    if (nd > 0)
      dead_t = at::from_blob(const_cast<int64_t*>(dead.data()), {nd}, at::kLong).to(x.device());

    double total_var = cfg.total_var;
    if (total_var <= 0) {
      at::Tensor xd = x.to(at::kDouble);
      total_var = (xd - xd.mean(0)).pow(2).sum().item<double>();
    }
    const double denom = total_var > 0 ? total_var : 1.0;

    // Encoder: dense pre-activations, then the top-k of each row.
    at::Tensor xc = x - p.b_dec;
    at::Tensor z;
    if (cfg.W_enc_lowp.defined()) {
      at::Tensor in = xc.to(at::kBFloat16).to(xc.scalar_type());
      z = at::addmm(p.b_enc, in, cfg.W_enc_lowp.t());
    } else {
      z = at::addmm(p.b_enc, xc, p.W_enc.t());
    }
    auto top = z.topk(k, 1);
    at::Tensor val = std::get<0>(top), idx = std::get<1>(top);
    at::Tensor mask = (val > 0).to(x.scalar_type());
    at::Tensor acts = val.clamp_min(0);
    at::Tensor aux_idx, aux_acts, aux_mask, zD;
    if (k_aux > 0) {
      auto atop = z.index_select(1, dead_t).topk(k_aux, 1);
      aux_idx = dead_t.index_select(0, std::get<1>(atop).reshape({-1})).view({B, k_aux});
      aux_mask = (std::get<0>(atop) > 0).to(x.scalar_type());
      aux_acts = std::get<0>(atop).clamp_min(0);
    }
    if (ghost) zD = z.index_select(1, dead_t);
    z = at::Tensor();  // free B×n before the backward

    // Fired marks and L0.
    at::Tensor fired = at::zeros({p.latents()}, x.options().dtype(at::kByte));
    at::Tensor on = val > 0;
    const int64_t fire_k = cfg.fire_k > 0 ? std::min(cfg.fire_k, k) : k;
    fired.index_fill_(0, idx.narrow(1, 0, fire_k).masked_select(on.narrow(1, 0, fire_k)), 1);
    const int64_t active = on.sum().item<int64_t>();
    res->fired.resize(static_cast<size_t>(p.latents()));
    at::Tensor fired_cpu = fired.cpu();
    std::memcpy(res->fired.data(), fired_cpu.data_ptr<uint8_t>(), res->fired.size());

    // Decode and residual gradients. Multi-TopK: xhat is the reconstruction
    // from the first kt entries (the target k), xk the one at k; the first kt
    // entries get both terms' gradients (gx), the others the current-k one (gt).
    const int64_t kt = cfg.target_k > 0 && cfg.target_k < k ? cfg.target_k : k;
    const bool multi = kt < k;
    const double w_cur = multi ? cfg.current_k_weight : 0.0;
    at::Tensor xhat = Decode(p.W_dec, idx.narrow(1, 0, kt), acts.narrow(1, 0, kt)).add_(p.b_dec);
    at::Tensor xk = multi ? xhat + Decode(p.W_dec, idx.narrow(1, kt, k - kt), acts.narrow(1, kt, k - kt)) : xhat;
    at::Tensor e = xk - x;
    const double sse = e.pow(2).sum(at::kDouble).item<double>();
    at::Tensor gx, gt;
    double sse_t = sse;
    if (multi) {
      at::Tensor et = xhat - x;
      sse_t = et.pow(2).sum(at::kDouble).item<double>();
      gt = e * (2.0 * w_cur / denom);
      gx = et * (2.0 / denom) + gt;
    } else {
      gx = e * (2.0 / denom);
    }
    at::Tensor gaux;
    double aux_sum = 0;
    if (k_aux > 0) {
      at::Tensor ehat = Decode(p.W_dec, aux_idx, aux_acts);
      at::Tensor e = x - xhat;
      at::Tensor alpha = at::ones({B, 1}, x.options());
      if (cfg.auxk_fit) {
        at::Tensor num = (ehat.to(at::kDouble) * e.to(at::kDouble)).sum(1, true);
        at::Tensor den = ehat.to(at::kDouble).pow(2).sum(1, true);
        alpha = at::where(den > 0, (num / den.clamp_min(1e-300)).clamp(0, 1), at::ones_like(den)).to(x.scalar_type());
      }
      at::Tensor diff = alpha * ehat - e;
      aux_sum = diff.pow(2).sum(at::kDouble).item<double>();
      gaux = alpha * diff * (2.0 * cfg.aux_coefficient * aux_scale / denom);
    }

    // Weight gradients from the selected entries.
    grads->W_enc.zero_();
    grads->W_dec.zero_();
    grads->b_enc.zero_();
    auto add_entries = [&](const at::Tensor& i, const at::Tensor& a, const at::Tensor& m, const at::Tensor& g) {
      at::Tensor ga = ActGrad(p.W_dec, i, g, m);
      ScatterRows(grads->W_dec, i, a, g);
      ScatterRows(grads->W_enc, i, ga, xc);
      grads->b_enc.index_add_(0, i.reshape({-1}), ga.reshape({-1}));
    };
    add_entries(idx.narrow(1, 0, kt).contiguous(), acts.narrow(1, 0, kt).contiguous(),
                mask.narrow(1, 0, kt).contiguous(), gx);
    if (multi)
      add_entries(idx.narrow(1, kt, k - kt).contiguous(), acts.narrow(1, kt, k - kt).contiguous(),
                  mask.narrow(1, kt, k - kt).contiguous(), gt);
    if (k_aux > 0) {
      at::Tensor gaa = ActGrad(p.W_dec, aux_idx, gaux, aux_mask);
      ScatterRows(grads->W_dec, aux_idx, aux_acts, gaux);
      ScatterRows(grads->W_enc, aux_idx, gaa, xc);
      grads->b_enc.index_add_(0, aux_idx.reshape({-1}), gaa.reshape({-1}));
    }

    // b_dec: the decode's Σ ∂/∂x̂ minus W_encᵀ ∂b_enc from the input x − b_dec;
    // then Ghost Grads over the dead set adds its own terms.
    grads->b_dec.copy_(gx.sum(0));
    grads->b_dec.sub_(at::mv(p.W_enc.t(), grads->b_enc));
    double ghost_loss = 0;
    if (ghost) ghost_loss = AddGhostGrads(p, x, xc, xhat, zD, dead_t, cfg.aux_coefficient / denom, grads);
    if (cfg.project_decoder_grad) ProjectRows(grads->W_dec, p.W_dec);

    res->phase_seconds.clear();
    res->sse = sse;
    res->recon_norm = (xk - p.b_dec).norm(2, 1).sum(at::kDouble).item<double>();
    res->input_norm = xc.norm(2, 1).sum(at::kDouble).item<double>();
    res->active = active;
    res->total_var = total_var;
    res->mse = sse / static_cast<double>(B * d);
    res->fvu = sse / denom;
    res->fvu_target = sse_t / denom;
    res->l0 = static_cast<double>(active) / static_cast<double>(B);
    res->aux_loss = auxk ? cfg.aux_coefficient * aux_scale * aux_sum / denom : ghost ? ghost_loss : 0;
    res->loss = (multi ? res->fvu_target + w_cur * res->fvu : res->fvu) + res->aux_loss;
    return absl::OkStatus();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("sae step (ATen): ", e.what_without_backtrace()));
  }
}

void AdamUpdateATen(SaeParams* p, const SaeGrads& g, const AdamConfig& cfg, AdamState* s,
                    at::Tensor* W_enc_lowp) {
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

}  // namespace sae
