// AuxK (ALGORITHMS.md §4) against an independent float64 computation written
// with plain loops (no ATen, no autograd), and a direct test of what the aux
// gradient does to the dead latents: which encoder rows it reaches and in
// which direction it moves their pre-activations.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "core/sae/sae_step.h"
#include "tests/unit/sae/random_sae.h"

namespace sae {
namespace {

// Row-major float64 copies of the parameters.
struct Plain {
  int64_t n, d;
  std::vector<double> We, be, Wd, bd;
};

Plain ToPlain(const SaeParams& p) {
  auto v = [](const at::Tensor& t) {
    at::Tensor c = t.to(at::kDouble).contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  return {p.latents(), p.d_in(), v(p.W_enc), v(p.b_enc), v(p.W_dec), v(p.b_dec)};
}

// Indices of the `k` largest of v[cand], largest first (ties: lower index).
std::vector<int64_t> TopK(const std::vector<double>& v, std::vector<int64_t> cand, int64_t k) {
  std::stable_sort(cand.begin(), cand.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  cand.resize(static_cast<size_t>(k));
  return cand;
}

// auxk = scale · Σ‖α ê − e‖² / Σ‖x − x̄‖², e = x − x̂, ê = Σ_{top-k_aux of z on D} relu(z_j) W_dec[j],
// k_aux = min(d/2, |D|), scale = min(|D| / (d/2), 1); α = 1 as published, or
// with `fit` α = clamp(⟨ê, e⟩ / ‖ê‖², 0, 1) per row (1 when ê = 0); times `coef`.
double AuxKReference(const Plain& p, const std::vector<double>& x, int64_t B, int64_t k,
                     const std::vector<int64_t>& dead, double coef, bool fit) {
  const int64_t n = p.n, d = p.d;
  std::vector<double> mean(d, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < d; ++i) mean[i] += x[b * d + i] / B;
  double var = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < d; ++i) var += (x[b * d + i] - mean[i]) * (x[b * d + i] - mean[i]);
  const int64_t half = d / 2, nd = static_cast<int64_t>(dead.size());
  const int64_t ka = std::min(half, nd);
  const double scale = std::min(1.0, static_cast<double>(nd) / half);
  std::vector<int64_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  double sum = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> z(n);
    for (int64_t j = 0; j < n; ++j) {
      double s = p.be[j];
      for (int64_t i = 0; i < d; ++i) s += p.We[j * d + i] * (x[b * d + i] - p.bd[i]);
      z[j] = s;
    }
    std::vector<double> xhat(p.bd.begin(), p.bd.end()), ehat(d, 0.0);
    for (int64_t j : TopK(z, all, k))
      for (int64_t i = 0; i < d; ++i) xhat[i] += std::max(0.0, z[j]) * p.Wd[j * d + i];
    for (int64_t j : TopK(z, dead, ka))
      for (int64_t i = 0; i < d; ++i) ehat[i] += std::max(0.0, z[j]) * p.Wd[j * d + i];
    double alpha = 1, num = 0, den = 0;
    for (int64_t i = 0; i < d; ++i) {
      num += ehat[i] * (x[b * d + i] - xhat[i]);
      den += ehat[i] * ehat[i];
    }
    if (fit && den > 0) alpha = std::min(1.0, std::max(0.0, num / den));
    for (int64_t i = 0; i < d; ++i) {
      const double diff = alpha * ehat[i] - (x[b * d + i] - xhat[i]);
      sum += diff * diff;
    }
  }
  return coef * scale * sum / var;
}

TEST(AuxK, LossEqualsIndependentFloat64Computation) {
  struct C {
    int64_t B, d, n, k, dead;
    bool aten;
  };
  for (const C& c : {C{40, 16, 96, 4, 30, false}, C{40, 16, 96, 4, 5, false},  // |D| < d/2: scale < 1
                     C{64, 32, 300, 8, 200, false}, C{64, 32, 300, 8, 200, true}}) {
    for (bool fit : {true, false})
      for (at::ScalarType st : {at::kDouble, at::kFloat}) {
        SaeParams p = testing::RandomSae(c.n, c.d, 7 + c.dead, st, 0.3);
        at::Tensor x = (at::randn({c.B, c.d}, at::kDouble) * 2 + 0.5).to(st);
        std::mt19937_64 rng(c.dead);
        std::vector<int64_t> all(c.n);
        std::iota(all.begin(), all.end(), 0);
        std::shuffle(all.begin(), all.end(), rng);
        std::vector<int64_t> dead(all.begin(), all.begin() + c.dead);
        std::sort(dead.begin(), dead.end());
        StepConfig cfg;
        cfg.k = c.k;
        cfg.remedy = Remedy::kAuxK;
        cfg.aux_coefficient = 1.0 / 32;
        cfg.dead = &dead;
        cfg.aten = c.aten;
        cfg.auxk_fit = fit;
        SaeGrads g = SaeGrads::ZerosLike(p);
        StepResult r;
        ASSERT_TRUE(ComputeGradients(p, x, cfg, &g, &r).ok());
        at::Tensor xd = x.to(at::kDouble).contiguous();
        const double ref =
            AuxKReference(ToPlain(p), std::vector<double>(xd.data_ptr<double>(), xd.data_ptr<double>() + xd.numel()),
                          c.B, c.k, dead, 1.0 / 32, fit);
        ASSERT_GT(ref, 0);
        const double tol = st == at::kDouble ? 1e-10 : 2e-5;
        EXPECT_NEAR(r.aux_loss, ref, tol * ref)
            << "B " << c.B << " n " << c.n << " dead " << c.dead << (st == at::kDouble ? " float64" : " float32")
            << (c.aten ? " (ATen step)" : "") << (fit ? " fit" : " as published");
        EXPECT_NEAR(r.loss, r.fvu + ref, tol * (r.fvu + ref));
      }
  }
}

// Live latents 0, 1 reconstruct the e1, e2 parts of every row exactly; the
// e3 part (0.5 to 1.5) is the residual e. Dead latents (W_enc rows zero, so
// z_j = b_enc[j]): latent 2 decodes e3 (aligned with the residual, z 0.05);
// latents 3-6 decode (e3 + 2 e4)/√5 with z 1, so ê overshoots e along e3
// (ê·e3 = 1.79 > e·e3); latent 7 decodes −e3 (anti-aligned, z 0.05);
// latent 8 has z < 0. Direct checks of reach and sign:
// - only the dead latents with z > 0 get an aux gradient (latent 8: none,
//   live latents: none);
// - as published (α = 1), a descent step LOWERS the aligned latent 2 on every
//   row: the overshoot of the other dead latents along its direction
//   outweighs the residual (the defect docs/dead-latents.md measures);
//   (and raises the anti-aligned latent 7, to cancel the overshoot);
// - with the fitted scale (α = ⟨ê, e⟩/‖ê‖² ≈ 0.11·e3), it RAISES latent 2 on
//   every row and lowers the anti-aligned latent 7.
TEST(AuxK, GradientRaisesDeadLatentsAlignedWithTheResidual) {
  for (bool aten : {false, true})
    for (bool fit : {true, false}) {
      SCOPED_TRACE(std::string(aten ? "ATen step" : "CPU kernels") + (fit ? ", fit" : ", as published"));
      const int64_t d = 16, n = 9, B = 16;
      auto opt = at::TensorOptions().dtype(at::kDouble);
      SaeParams p;
      p.W_dec = at::zeros({n, d}, opt);
      p.W_dec[0][0] = 1;
      p.W_dec[1][1] = 1;
      p.W_dec[2][2] = 1;
      for (int j = 3; j <= 6; ++j) {
        p.W_dec[j][2] = 1 / std::sqrt(5.0);
        p.W_dec[j][3] = 2 / std::sqrt(5.0);
      }
      p.W_dec[7][2] = -1;
      p.W_dec[8][4] = 1;
      p.W_enc = at::zeros({n, d}, opt);
      p.W_enc[0][0] = 1;  // z_0 = x_0, z_1 = x_1: the live latents decode e1, e2 exactly
      p.W_enc[1][1] = 1;
      p.b_enc = at::tensor({0.0, 0.0, 0.05, 1.0, 1.0, 1.0, 1.0, 0.05, -0.5}, opt);
      p.b_dec = at::zeros({d}, opt);
      at::manual_seed(3);
      at::Tensor x = at::zeros({B, d}, opt);
      x.select(1, 0).copy_(2 + at::rand({B}, opt));  // larger than every dead z: latents 0, 1 win the top-2
      x.select(1, 1).copy_(2 + at::rand({B}, opt));
      x.select(1, 2).copy_(0.5 + at::rand({B}, opt));  // the residual, along +e3
      const std::vector<int64_t> dead = {2, 3, 4, 5, 6, 7, 8};
      StepConfig cfg;
      cfg.k = 2;
      cfg.dead = &dead;
      cfg.aten = aten;
      SaeGrads g0 = SaeGrads::ZerosLike(p), g1 = SaeGrads::ZerosLike(p);
      StepResult r0, r1;
      cfg.remedy = Remedy::kNone;
      ASSERT_TRUE(ComputeGradients(p, x, cfg, &g0, &r0).ok());
      cfg.remedy = Remedy::kAuxK;
      cfg.aux_coefficient = 1.0 / 32;
      cfg.auxk_fit = fit;
      ASSERT_TRUE(ComputeGradients(p, x, cfg, &g1, &r1).ok());
      EXPECT_GT(r1.aux_loss, 0);
      // Without a remedy the dead latents get nothing.
      for (int64_t j : dead) EXPECT_EQ(g0.W_enc[j].abs().sum().item<double>(), 0) << j;
      at::Tensor gWe = g1.W_enc - g0.W_enc, gbe = g1.b_enc - g0.b_enc;
      // Reach: the aux gradient touches exactly the dead latents with z > 0.
      for (int64_t j = 2; j <= 7; ++j) EXPECT_GT(gWe[j].abs().sum().item<double>(), 0) << "latent " << j;
      EXPECT_EQ(gWe[8].abs().sum().item<double>(), 0) << "relu(z) = 0: AuxK has no gradient for it";
      EXPECT_EQ(gWe[0].abs().sum().item<double>(), 0);
      EXPECT_EQ(gWe[1].abs().sum().item<double>(), 0);
      // Sign: the change of each z_j(b) along the descent direction.
      at::Tensor dz = -(at::mm(x - p.b_dec, gWe.t()) + gbe);  // B×n, per unit step
      if (fit) {
        EXPECT_GT(dz.select(1, 2).min().item<double>(), 0) << "the aligned dead latent must rise";
        EXPECT_LT(dz.select(1, 7).max().item<double>(), 0) << "the anti-aligned dead latent must fall";
      } else {
        // As published, ê's overshoot along e3 dominates: the aligned latent
        // falls and the anti-aligned one rises (to cancel the overshoot).
        EXPECT_LT(dz.select(1, 2).max().item<double>(), 0);
        EXPECT_GT(dz.select(1, 7).min().item<double>(), 0);
      }
    }
}

}  // namespace
}  // namespace sae
