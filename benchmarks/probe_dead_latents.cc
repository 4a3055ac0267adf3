// probe_dead_latents: trains one SAE on an activation shard directory with
// SaeTrainer (exactly what `sae train` runs) and records, per step, the
// quantities that explain where latents die (docs/dead-latents.md):
//   - dead latents (the trainer's tracker) and fvu, k, the remedy's loss;
//   - every --every steps, on the batch about to be trained on:
//     the reconstruction norm against the input norm, mean over rows of
//     ‖x̂ − b_dec‖ / ‖x − b_dec‖ at the current k;
//     for the dead set D: the fraction of (row, latent) pre-activations > 0,
//     AuxK's ‖ê‖ / ‖e‖ (ALGORITHMS.md §4), and the remedy's gradient alone
//     (the step's gradients with the remedy minus without) turned into the
//     change of each dead latent's pre-activation under plain gradient
//     descent, on the rows whose residual its decoder row aligns with
//     (W_dec[j]·e > 0) and on the others;
//     the actual change of the dead latents' pre-activations made by the
//     trainer's step (Adam included) on the same batch.
// One JSON object per line on stdout (or --out). An experiment tool, not a
// benchmark of speed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "cli/flags.h"
#include "core/base/blas_kernel.h"
#include "core/data/activation_stream.h"
#include "core/sae/sae_step.h"
#include "core/sae/trainer.h"

namespace {

using json = nlohmann::json;

int Fail(const std::string& m) {
  std::fprintf(stderr, "probe_dead_latents: %s\n", m.c_str());
  return 1;
}

// Pre-activations z = (x − b_dec) W_encᵀ + b_enc (B×n).
at::Tensor PreActs(const sae::SaeParams& p, const at::Tensor& x) {
  return at::addmm(p.b_enc, x - p.b_dec, p.W_enc.t());
}

}  // namespace

int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  sae::flags::Command app{"probe_dead_latents: where latents die during SAE training"};
  std::string data, out_path, remedy = "none", shape = "constant", init_scale = "";
  int64_t latents = 4096, k = 8, tokens = 2000000, batch = 4096, window = 200000, k_start = 0;
  int64_t every = 10;
  double lr = 0, fraction = 0.25, coef = 0;
  uint64_t seed = 0;
  int threads = 0;
  std::string fire_at_target, carry_scale, auxk_scale, multi_topk;
  double current_k_weight = -1;
  std::string current_k_fit;
  bool aten = false;
  app.AddOption("--data", data, "activation shard directory (manifest.json)").Required();
  app.AddOption("--latents", latents, "number of latents");
  app.AddOption("--k", k, "target k");
  app.AddOption("--tokens", tokens, "training tokens");
  app.AddOption("--batch", batch, "tokens per step");
  app.AddOption("--lr", lr, "learning rate (0 = default)");
  app.AddOption("--remedy", remedy, "none|auxk|ghost_grads");
  app.AddOption("--aux-coefficient", coef, "0 = the remedy's default");
  app.AddOption("--schedule", shape, "constant|linear|cosine|exponential");
  app.AddOption("--k-start", k_start, "schedule start (0 = 64·k)");
  app.AddOption("--fraction", fraction, "schedule fraction");
  app.AddOption("--dead-window", window, "dead_window_tokens");
  app.AddOption("--seed", seed, "SAE and data-order seed");
  app.AddOption("--every", every, "diagnostic interval in steps");
  app.AddOption("--init-encoder-scale", init_scale, "sae.init_encoder_scale (empty = the default)");
  app.AddOption("--fire-at-target", fire_at_target, "0|1: TrainerOptions::fire_at_target_k (empty = the default)");
  app.AddOption("--carry-scale", carry_scale, "0|1: TrainerOptions::carry_scale (empty = the default)");
  app.AddOption("--auxk-scale", auxk_scale, "fit|none: sae.auxk_scale (empty = the default)");
  app.AddOption("--multi-topk", multi_topk, "0|1: TrainerOptions::multi_topk (empty = the default)");
  app.AddOption("--current-k-weight", current_k_weight,
                "Multi-TopK's weight of the current-k term (< 0 = the default)");
  app.AddOption("--current-k-fit", current_k_fit, "0|1: TrainerOptions::current_k_fit (empty = the default)");
  app.AddFlag("--aten", aten, "the device-generic ATen step on CPU");
  app.AddOption("--threads", threads, "LibTorch threads (0 = every core)");
  app.AddOption("--out", out_path, "JSON lines file (default stdout)");
  if (auto rc = app.Parse(argc, argv)) return *rc;
  at::set_num_threads(threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));

  sae::StreamOptions so;
  so.seed = seed;
  auto stream = sae::ActivationStream::Open(data, so);
  if (!stream.ok()) return Fail(std::string(stream.status().message()));
  const int64_t d = (*stream)->d_in();

  sae::TrainerOptions o;
  o.d_in = d;
  o.latents = latents;
  o.k = k;
  o.total_tokens = tokens;
  o.batch_tokens = batch;
  o.lr = lr;
  o.seed = seed;
  o.dead_window_tokens = window;
  o.aux_coefficient = coef;
  auto rem = sae::ParseOption<sae::Remedy>(remedy);
  if (!rem.ok()) return Fail("--remedy: " + std::string(rem.status().message()));
  o.remedy = *rem;
  auto ks =
      shape == "constant" ? absl::StatusOr<sae::KShape>(sae::KShape::kConstant) : sae::ParseOption<sae::KShape>(shape);
  if (!ks.ok()) return Fail("--shape: " + std::string(ks.status().message()));
  if (*ks == sae::KShape::kConstant) {
    o.schedule = sae::KSchedule::Constant(k);
  } else {
    auto s = sae::KSchedule::Create(*ks, k_start > 0 ? k_start : 64 * k, k, fraction, tokens);
    if (!s.ok()) return Fail(std::string(s.status().message()));
    o.schedule = *s;
  }
  if (!init_scale.empty()) {
    auto is = sae::ParseOption<sae::InitEncoderScale>(init_scale);
    if (!is.ok()) return Fail("--init-encoder-scale: " + std::string(is.status().message()));
    o.init_encoder_scale = *is;
  }
  if (!fire_at_target.empty()) o.fire_at_target_k = fire_at_target == "1";
  if (!carry_scale.empty()) o.carry_scale = carry_scale == "1";
  o.aten_kernels = aten;
  if (!multi_topk.empty()) o.multi_topk = multi_topk == "1";
  if (current_k_weight >= 0) o.current_k_weight = current_k_weight;
  if (!current_k_fit.empty()) o.current_k_fit = current_k_fit == "1";
  if (!auxk_scale.empty()) o.auxk_fit = auxk_scale != "none";
  auto tr = sae::SaeTrainer::Create(o);
  if (!tr.ok()) return Fail(std::string(tr.status().message()));
  sae::SaeTrainer& t = **tr;

  std::ofstream file;
  if (!out_path.empty()) file.open(out_path);
  std::ostream& out = out_path.empty() ? std::cout : file;

  std::vector<float> rows;
  at::NoGradGuard no_grad;
  while (t.tokens_seen() < tokens) {
    const int64_t n_rows = std::min(batch, tokens - t.tokens_seen());
    absl::Status s = (*stream)->Next(n_rows, &rows);
    if (!s.ok()) return Fail(std::string(s.message()));
    const bool diag = every > 0 && (t.step() % every == 0);
    json j;
    at::Tensor x = at::from_blob(rows.data(), {n_rows, d}, at::kFloat).clone();
    std::vector<int64_t> dead = t.dead().DeadList();
    at::Tensor zD_before;
    at::Tensor dead_t;
    if (diag && t.initialized()) {
      const sae::SaeParams& p = t.params();
      const int64_t kk = t.CurrentK();
      auto enc = sae::Encode(p, x, kk);
      if (enc.ok()) {
        at::Tensor num = (enc->x_hat - p.b_dec).norm(2, 1);
        at::Tensor den = (x - p.b_dec).norm(2, 1).clamp_min(1e-12);
        j["recon_norm_ratio"] = (num / den).mean().item<double>();
      }
      if (!dead.empty()) {
        dead_t = at::tensor(dead, at::kLong);
        at::Tensor z = PreActs(p, x);
        at::Tensor zD = z.index_select(1, dead_t);
        zD_before = zD.clone();
        j["dead_frac_positive"] = (zD > 0).to(at::kFloat).mean().item<double>();
        j["dead_mean_preact"] = zD.mean().item<double>();
        // AuxK's ê against e = x − x̂.
        const int64_t nd = static_cast<int64_t>(dead.size());
        const int64_t ka = std::min<int64_t>(std::max<int64_t>(1, d / 2), nd);
        auto top = zD.topk(ka, 1);
        at::Tensor aidx = dead_t.index_select(0, std::get<1>(top).reshape({-1})).view({n_rows, ka});
        at::Tensor aval = std::get<0>(top).clamp_min(0);
        at::Tensor ehat =
            std::get<0>(at::embedding_bag(p.W_dec, aidx.reshape({-1}), at::arange(0, n_rows * ka, ka, at::kLong), false,
                                          0, false, aval.reshape({-1})));
        if (enc.ok()) {
          at::Tensor e = x - enc->x_hat;
          j["auxk_ehat_over_e"] =
              std::sqrt(ehat.pow(2).sum().item<double>() / std::max(1e-30, e.pow(2).sum().item<double>()));
          // The remedy's gradient alone.
          if (o.remedy != sae::Remedy::kNone) {
            sae::StepConfig c;
            c.k = kk;
            c.dead = &dead;
            c.remedy = sae::Remedy::kNone;
            sae::SaeGrads g0 = sae::SaeGrads::ZerosLike(p), g1 = sae::SaeGrads::ZerosLike(p);
            sae::StepResult r0, r1;
            (void)sae::ComputeGradients(p, x, c, &g0, &r0);
            c.remedy = o.remedy;
            c.auxk_fit = o.auxk_fit;
            c.aux_coefficient =
                t.options().aux_coefficient != 0 ? t.options().aux_coefficient : sae::DefaultAuxCoefficient(o.remedy);
            (void)sae::ComputeGradients(p, x, c, &g1, &r1);
            at::Tensor gWe = (g1.W_enc - g0.W_enc).index_select(0, dead_t);  // |D|×d
            at::Tensor gbe = (g1.b_enc - g0.b_enc).index_select(0, dead_t);
            // Gradient descent direction's effect on z_j(b): −(gW_j·xc_b + gb_j).
            at::Tensor dz = -(at::mm(x - p.b_dec, gWe.t()) + gbe);                  // B×|D|
            at::Tensor align = at::mm(e, p.W_dec.index_select(0, dead_t).t()) > 0;  // B×|D|
            at::Tensor reached = (gWe.norm(2, 1) > 0);
            j["aux_reached_dead"] = reached.to(at::kFloat).mean().item<double>();
            at::Tensor al = align.to(at::kFloat), na = 1 - al;
            at::Tensor dz_al = (dz * al).sum(0) / al.sum(0).clamp_min(1);
            at::Tensor dz_na = (dz * na).sum(0) / na.sum(0).clamp_min(1);
            at::Tensor rm = reached.to(at::kFloat);
            const double nr = std::max(1.0, rm.sum().item<double>());
            j["aux_dz_aligned_up_frac"] = ((dz_al > 0).to(at::kFloat) * rm).sum().item<double>() / nr;
            j["aux_dz_other_up_frac"] = ((dz_na > 0).to(at::kFloat) * rm).sum().item<double>() / nr;
            j["aux_dz_mean"] = (dz.mean(0) * rm).sum().item<double>() / nr;
            j["aux_dz_up_frac"] = ((dz.mean(0) > 0).to(at::kFloat) * rm).sum().item<double>() / nr;
          }
        }
      }
    }
    auto m = t.Step(rows.data(), n_rows);
    if (!m.ok()) return Fail(std::string(m.status().message()));
    if (zD_before.defined()) {
      at::Tensor zD_after = PreActs(t.params(), x).index_select(1, dead_t);
      at::Tensor dz = (zD_after - zD_before).mean(0);
      j["step_dz_dead_mean"] = dz.mean().item<double>();
      j["step_dz_dead_up_frac"] = (dz > 0).to(at::kFloat).mean().item<double>();
    }
    j["step"] = m->step;
    j["tokens"] = m->tokens;
    j["k"] = m->k;
    j["fvu"] = m->fvu;
    j["fvu_target"] = m->fvu_target;
    j["aux_loss"] = m->aux_loss;
    j["l0"] = m->l0;
    j["dead"] = t.dead().NumDead();
    j["dead_ratio"] = m->dead_ratio;
    j["grad_norm"] = m->grad_norm;
    j["step_recon_norm_ratio"] = m->recon_norm_ratio;
    if (m->step == 1) j["encoder_scale"] = t.encoder_scale();
    out << j.dump() << "\n";
    out.flush();
  }
  return 0;
}
