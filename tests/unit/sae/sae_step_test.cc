// The sparse step against LibTorch autograd on a dense float64 reference.
#include "core/sae/sae_step.h"
#include "core/sae/sae_step_internal.h"
#include "core/sae/small_encoder.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>
#include <vector>

namespace sae {
namespace {

SaeParams RandomParams(int64_t n, int64_t d, uint64_t seed) {
  at::manual_seed(seed);
  auto opt = at::TensorOptions().dtype(at::kDouble);
  SaeParams p;
  p.W_enc = at::randn({n, d}, opt) / std::sqrt(static_cast<double>(d));
  p.b_enc = at::randn({n}, opt) * 0.1;
  p.W_dec = at::randn({n, d}, opt);
  p.W_dec /= p.W_dec.norm(2, 1, true);
  p.b_dec = at::randn({d}, opt) * 0.1;
  return p;
}

struct Reference {
  at::Tensor gW_enc, gb_enc, gW_dec, gb_dec;
  double loss, fvu, fvu_target, aux;
};

// Dense autograd reference of ALGORITHMS.md §1, §2, §4.
Reference DenseReference(const SaeParams& p0, const at::Tensor& x, int64_t k, Remedy remedy, double coef,
                         const std::vector<int64_t>& dead, bool project, bool auxk_fit, int64_t target_k = 0,
                         double current_k_weight = 0, bool current_k_fit = true) {
  SaeParams p = p0.Clone();
  for (at::Tensor* t : {&p.W_enc, &p.b_enc, &p.W_dec, &p.b_dec}) t->set_requires_grad(true);
  const int64_t B = x.size(0), n = p.W_enc.size(0), d = x.size(1);
  at::Tensor z = at::matmul(x - p.b_dec, p.W_enc.t()) + p.b_enc;
  at::Tensor idx = std::get<1>(at::topk(z.detach(), k, 1));
  at::Tensor a = at::relu(z.gather(1, idx));
  at::Tensor A = at::zeros({B, n}, x.options()).scatter(1, idx, a);
  at::Tensor xhat = at::matmul(A, p.W_dec) + p.b_dec;
  at::Tensor denom = (x - x.mean(0, true)).pow(2).sum();
  at::Tensor fvu = (x - xhat).pow(2).sum() / denom;
  // Multi-TopK: the reconstruction from the row's target_k largest entries
  // (topk returns them in descending order) is the one trained for.
  at::Tensor fvu_target = fvu, xhat_target = xhat;
  const bool multi = target_k > 0 && target_k < k;
  if (multi) {
    at::Tensor it = idx.narrow(1, 0, target_k);
    at::Tensor At = at::zeros({B, n}, x.options()).scatter(1, it, at::relu(z.gather(1, it)));
    xhat_target = at::matmul(At, p.W_dec) + p.b_dec;
    fvu_target = (x - xhat_target).pow(2).sum() / denom;
  }
  at::Tensor aux = at::zeros({}, x.options());
  const int64_t nd = static_cast<int64_t>(dead.size());
  if (nd > 0 && remedy != Remedy::kNone) {
    at::Tensor D = at::tensor(std::vector<int64_t>(dead.begin(), dead.end()), at::kLong);
    at::Tensor zD = z.index_select(1, D);
    at::Tensor WdD = p.W_dec.index_select(0, D);
    at::Tensor r = (x - xhat_target).detach();
    if (remedy == Remedy::kAuxK) {
      const int64_t half = d / 2;
      const int64_t ka = std::min(half, nd);
      const double scale = std::min(1.0, static_cast<double>(nd) / half);
      at::Tensor ia = std::get<1>(at::topk(zD.detach(), ka, 1));
      at::Tensor aa = at::relu(zD.gather(1, ia));
      at::Tensor Aa = at::zeros({B, nd}, x.options()).scatter(1, ia, aa);
      at::Tensor eh = at::matmul(Aa, WdD);
      if (auxk_fit) {
        // α = clamp(⟨ê, e⟩ / ‖ê‖², 0, 1) per row, a constant for the gradient.
        at::Tensor ed = eh.detach();
        at::Tensor den = ed.pow(2).sum(1, true);
        at::Tensor alpha =
            at::where(den > 0, ((ed * r).sum(1, true) / den.clamp_min(1e-300)).clamp(0, 1), at::ones_like(den));
        eh = alpha * eh;
      }
      aux = coef * scale * (eh - r).pow(2).sum() / denom;
    } else {
      at::Tensor g = at::matmul(at::exp(zD), WdD);
      at::Tensor s = (r.norm(2, 1, true) / (2 * g.norm(2, 1, true) + 1e-8)).detach();
      g = g * s;
      at::Tensor m = (g - r).pow(2);
      at::Tensor w = (r.pow(2) / (m + 1e-8)).detach();
      aux = coef * (w * m).sum() / denom;
    }
  }
  at::Tensor cur = fvu;
  if (multi && current_k_fit) {
    // β = clamp(⟨x̂ − b_dec, x − b_dec⟩ / ‖x̂ − b_dec‖², 0, 1) per row, a constant for the gradient.
    at::Tensor rk = xhat - p.b_dec, xc = x - p.b_dec;
    at::Tensor rd = rk.detach(), xd = xc.detach();
    at::Tensor den = rd.pow(2).sum(1, true);
    at::Tensor beta =
        at::where(den > 0, ((rd * xd).sum(1, true) / den.clamp_min(1e-300)).clamp(0, 1), at::ones_like(den));
    cur = (beta * rk - xc).pow(2).sum() / denom;
  }
  at::Tensor loss = (multi ? fvu_target + current_k_weight * cur : fvu) + aux;
  loss.backward();
  Reference ref;
  ref.gW_enc = p.W_enc.grad();
  ref.gb_enc = p.b_enc.grad();
  ref.gW_dec = p.W_dec.grad();
  ref.gb_dec = p.b_dec.grad();
  if (project) {
    at::Tensor w = p0.W_dec;
    ref.gW_dec = ref.gW_dec - (ref.gW_dec * w).sum(1, true) * w;
  }
  ref.loss = loss.item<double>();
  ref.fvu = fvu.item<double>();
  ref.fvu_target = fvu_target.item<double>();
  ref.aux = aux.item<double>();
  return ref;
}

double RelErr(const at::Tensor& a, const at::Tensor& b) {
  const double nb = b.norm().item<double>();
  return (a - b).norm().item<double>() / (nb > 0 ? nb : 1.0);
}

struct Case {
  int64_t B, d, n, k;
  Remedy remedy;
  int64_t dead;
  bool project;
  bool auxk_fit = true;  // AuxK cases: sae.auxk_scale fit (true) or none
  int64_t target_k = 0;  // Multi-TopK's target k (0: off)
  bool current_k_fit = true;
};

class StepVsAutograd : public ::testing::TestWithParam<Case> {};

TEST_P(StepVsAutograd, GradientsMatchDenseFloat64Reference) {
  const Case c = GetParam();
  SaeParams p = RandomParams(c.n, c.d, 1234 + c.n + c.k);
  at::Tensor x = at::randn({c.B, c.d}, at::kDouble) + 0.3;
  std::vector<int64_t> dead;
  std::mt19937 rng(7);
  for (int64_t i = 0; i < c.n; ++i)
    if (static_cast<int64_t>(dead.size()) < c.dead && rng() % 2 == 0) dead.push_back(i);
  const double coef = c.remedy == Remedy::kNone ? 0.0 : 0.37;
  const double w_cur = 0.3;
  Reference ref =
      DenseReference(p, x, c.k, c.remedy, coef, dead, c.project, c.auxk_fit, c.target_k, w_cur, c.current_k_fit);

  StepConfig cfg;
  cfg.k = c.k;
  cfg.remedy = c.remedy;
  cfg.aux_coefficient = coef;
  cfg.dead = &dead;
  cfg.project_decoder_grad = c.project;
  cfg.auxk_fit = c.auxk_fit;
  cfg.block_rows = 5;  // several blocks, a ragged last one
  cfg.target_k = c.target_k;
  cfg.current_k_weight = w_cur;
  cfg.current_k_fit = c.current_k_fit;
  std::vector<uint8_t> fired[2];
  double l0[2] = {0, 0};
  // The CPU kernels and the device-generic ATen step (what CUDA runs).
  for (bool aten : {false, true}) {
    SCOPED_TRACE(aten ? "ATen step" : "CPU kernels");
    cfg.aten = aten;
    SaeGrads g = SaeGrads::ZerosLike(p);
    g.flat.fill_(3.0);  // stale values must be overwritten
    StepResult res;
    ASSERT_TRUE(ComputeGradients(p, x, cfg, &g, &res).ok());
    EXPECT_LT(RelErr(g.W_enc, ref.gW_enc), 1e-6);
    EXPECT_LT(RelErr(g.b_enc, ref.gb_enc), 1e-6);
    EXPECT_LT(RelErr(g.W_dec, ref.gW_dec), 1e-6);
    EXPECT_LT(RelErr(g.b_dec, ref.gb_dec), 1e-6);
    EXPECT_NEAR(res.fvu, ref.fvu, 1e-9 * std::max(1.0, ref.fvu));
    EXPECT_NEAR(res.fvu_target, ref.fvu_target, 1e-9 * std::max(1.0, ref.fvu_target));
    EXPECT_NEAR(res.aux_loss, ref.aux, 1e-9 * std::max(1.0, std::abs(ref.aux)));
    EXPECT_NEAR(res.loss, ref.loss, 1e-9 * std::max(1.0, ref.loss));
    fired[aten] = res.fired;
    l0[aten] = res.l0;
  }
  EXPECT_EQ(fired[0], fired[1]);
  EXPECT_EQ(l0[0], l0[1]);
  if (c.remedy != Remedy::kNone && c.dead > 0) EXPECT_GT(ref.aux, 0);
  if (c.target_k > 0) EXPECT_GT(std::abs(ref.fvu_target - ref.fvu), 0.01 * ref.fvu);  // the two terms differ
  // The reference gradients are not trivially zero.
  EXPECT_GT(ref.gW_enc.norm().item<double>(), 0);
  EXPECT_GT(ref.gW_dec.norm().item<double>(), 0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, StepVsAutograd,
                         ::testing::Values(Case{16, 8, 32, 4, Remedy::kNone, 0, false},
                                           Case{33, 24, 96, 7, Remedy::kNone, 0, true},
                                           Case{64, 40, 200, 16, Remedy::kNone, 0, true},
                                           Case{33, 24, 96, 7, Remedy::kAuxK, 30, true},
                                           Case{20, 10, 64, 3, Remedy::kAuxK, 2, false},  // |D| < d/2
                                           Case{64, 40, 200, 16, Remedy::kAuxK, 90, true},
                                           Case{33, 24, 96, 7, Remedy::kAuxK, 30, true, false},  // as published
                                           Case{64, 40, 200, 16, Remedy::kAuxK, 90, false, false},
                                           Case{33, 24, 96, 7, Remedy::kGhostGrads, 30, true},
                                           Case{64, 40, 200, 16, Remedy::kGhostGrads, 90, false},
                                           Case{17, 12, 50, 5, Remedy::kGhostGrads, 1, true},
                                           Case{12, 8, 2000, 4, Remedy::kAuxK, 700, true},  // block-threshold top-k
                                           Case{12, 8, 2000, 4, Remedy::kGhostGrads, 300, true},
                                           // Multi-TopK: loss at target_k + 0.3 x loss at k (all remedies).
                                           Case{33, 24, 96, 12, Remedy::kNone, 0, true, true, 3},
                                           Case{33, 24, 96, 12, Remedy::kNone, 0, true, true, 3, false},  // β = 1
                                           Case{64, 40, 200, 32, Remedy::kNone, 0, false, true, 8},
                                           Case{33, 24, 96, 12, Remedy::kAuxK, 30, true, true, 4},
                                           Case{33, 24, 96, 12, Remedy::kGhostGrads, 30, true, true, 4}));

// The float32 step's gradients do not depend on the thread count: every
// loop that splits between threads (the encoder's rows, the latent rows,
// b_dec's fixed blocks of rows, the sort by latent's row ranges) adds in
// the same order either way (the decode's column ranges too). The shapes
// are large enough that the loops do split (kMinParallelWork; stories260K's
// d 64 / 4096 latents / k 8 for the sort, which splits from 16384 entries).
TEST(SaeStep, GradientsAreBitwiseTheSameOnOneAndTwoThreads) {
  const int threads_before = at::get_num_threads();
  for (const auto& [B, d, n, k] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{600, 256, 8448, 16},
                                   std::tuple<int64_t, int64_t, int64_t, int64_t>{300, 768, 2000, 32},
                                   std::tuple<int64_t, int64_t, int64_t, int64_t>{2048, 64, 4096, 8},
                                   // rows of 4 KiB and more: the decode splits columns (not 64-float aligned)
                                   std::tuple<int64_t, int64_t, int64_t, int64_t>{200, 1100, 900, 6}}) {
    SCOPED_TRACE(testing::Message() << "d " << d << " n " << n);
    const SaeParams p64 = RandomParams(n, d, 5 + n);
    const SaeParams p{p64.W_enc.to(at::kFloat), p64.b_enc.to(at::kFloat), p64.W_dec.to(at::kFloat),
                      p64.b_dec.to(at::kFloat)};
    const at::Tensor x = at::randn({B, d}, at::kFloat) + 0.2;
    ASSERT_GE(B * n * d, 4 * internal::kMinParallelWork);
    SaeGrads g[2] = {SaeGrads::ZerosLike(p), SaeGrads::ZerosLike(p)};
    for (int t = 0; t < 2; ++t) {
      at::set_num_threads(t + 1);
      StepConfig cfg;
      cfg.k = k;
      StepWorkspace ws;
      cfg.workspace = &ws;
      StepResult r;
      ASSERT_TRUE(ComputeGradients(p, x, cfg, &g[t], &r).ok());
    }
    EXPECT_TRUE(at::equal(g[0].flat, g[1].flat));
    EXPECT_TRUE(at::equal(g[0].b_dec, g[1].b_dec));
  }
  at::set_num_threads(threads_before);
}

// float32: the step with the small-d fused encoder (core/sae/small_encoder.h,
// where UseSmallEncoder says so), and with oneDNN's GEMM (per-thread fused
// blocks when the encoder fits in cache, large blocks otherwise), selects
// the latents the at::addmm (OpenBLAS) reference path selects and gives its
// gradients and metrics to float rounding, with each remedy; and both agree
// with the dense float64 autograd reference.
TEST(SaeStep, OneDnnEncoderMatchesBlasPathInFloat32) {
  struct F32Case {
    int64_t B, d, n, k, block_rows;
    bool per_thread;  // what PlanEncoder must choose
  };
  for (const F32Case c : {F32Case{300, 48, 768, 4, 0, true},      // the small-d path, a ragged last block
                          F32Case{96, 64, 4096, 8, 0, true},      // stories260K's width
                          F32Case{130, 24, 500, 5, 37, true},     // explicit blocks
                          F32Case{70, 256, 8448, 16, 0, false},   // encoder > 8 MiB: large blocks
                          F32Case{50, 300, 1000, 7, 0, true},     // the small kernel past d 256
                          F32Case{40, 1100, 900, 6, 0, true}}) {  // d past the small kernel's
    SCOPED_TRACE(testing::Message() << "B " << c.B << " d " << c.d << " n " << c.n);
    ASSERT_EQ(internal::PlanEncoder(c.B, c.n, c.d, c.block_rows).per_thread, c.per_thread);
    const bool small = internal::UseSmallEncoder(c.n, c.d, c.k);
    const SaeParams p64 = RandomParams(c.n, c.d, 99 + c.n);
    const SaeParams p{p64.W_enc.to(at::kFloat), p64.b_enc.to(at::kFloat), p64.W_dec.to(at::kFloat),
                      p64.b_dec.to(at::kFloat)};
    at::Tensor x = at::randn({c.B, c.d}, at::kFloat) + 0.3;
    std::vector<int64_t> dead;
    for (int64_t j = 0; j < c.n; j += 5) dead.push_back(j);
    for (Remedy remedy : {Remedy::kNone, Remedy::kAuxK, Remedy::kGhostGrads}) {
      SCOPED_TRACE(OptionName(remedy));
      StepConfig cfg;
      cfg.k = c.k;
      cfg.remedy = remedy;
      cfg.aux_coefficient = remedy == Remedy::kNone ? 0.0 : 0.37;
      cfg.dead = &dead;
      cfg.block_rows = c.block_rows;
      StepWorkspace ws;
      cfg.workspace = &ws;
      // 0: the default (the small kernel where it runs), 1: oneDNN, 2: at::addmm,
      // 3: at::addmm on inputs scaled by 1 + 1.2e-7 (what rounding alone changes).
      SaeGrads g[4] = {SaeGrads::ZerosLike(p), SaeGrads::ZerosLike(p), SaeGrads::ZerosLike(p), SaeGrads::ZerosLike(p)};
      StepResult r[4];
      for (int path = 0; path < 4; ++path) {
        cfg.small_encoder = path == 0;
        cfg.aten_gemm = path >= 2;
        g[path].flat.fill_(3.0f);  // stale values must be overwritten
        ASSERT_TRUE(ComputeGradients(p, path == 3 ? x * (1 + 1.2e-7) : x, cfg, &g[path], &r[path]).ok());
      }
      for (int path = 0; path < 2; ++path) {
        SCOPED_TRACE(path == 0 ? "default encoder" : "oneDNN encoder");
        bool fused = false;
        for (auto& [name, sec] : r[path].phase_seconds) fused = fused || std::string(name) == "encode_fused";
        EXPECT_EQ(fused, path == 0 ? small || c.per_thread : c.per_thread);
        EXPECT_EQ(r[path].fired, r[2].fired);
        EXPECT_EQ(r[path].active, r[2].active);
        EXPECT_NEAR(r[path].loss, r[2].loss, 1e-5 * r[2].loss);
        EXPECT_NEAR(r[path].aux_loss, r[2].aux_loss, 1e-4 * std::fabs(r[2].aux_loss) + 1e-12);
        for (auto [u, v, w] : {std::tuple{&g[path].W_enc, &g[2].W_enc, &g[3].W_enc},
                               {&g[path].b_enc, &g[2].b_enc, &g[3].b_enc},
                               {&g[path].W_dec, &g[2].W_dec, &g[3].W_dec},
                               {&g[path].b_dec, &g[2].b_dec, &g[3].b_dec}}) {
          // Ghost Grads is ill-conditioned (int8_screen_test.cc says why): its
          // bound is set by the reference against itself on rescaled inputs.
          if (remedy == Remedy::kGhostGrads)
            EXPECT_LT(RelErr(*u, *v), 1e-5 + 10 * RelErr(*v, *w));
          else
            EXPECT_LT(RelErr(*u, *v), 1e-5);
        }
        if (remedy == Remedy::kGhostGrads) continue;
        // Against the dense float64 reference.
        const SaeParams pd{p.W_enc.to(at::kDouble), p.b_enc.to(at::kDouble), p.W_dec.to(at::kDouble),
                           p.b_dec.to(at::kDouble)};
        Reference ref = DenseReference(pd, x.to(at::kDouble), c.k, remedy, cfg.aux_coefficient, dead, true, true);
        EXPECT_LT(RelErr(g[path].W_enc.to(at::kDouble), ref.gW_enc), 1e-4);
        EXPECT_LT(RelErr(g[path].W_dec.to(at::kDouble), ref.gW_dec), 1e-4);
        EXPECT_LT(RelErr(g[path].b_dec.to(at::kDouble), ref.gb_dec), 1e-4);
        EXPECT_NEAR(r[path].fvu, ref.fvu, 1e-5 * ref.fvu);
      }
    }
  }
}

TEST(SaeStep, MetricsFollowTheirDefinitions) {
  SaeParams p = RandomParams(64, 16, 3);
  at::Tensor x = at::randn({40, 16}, at::kDouble) * 2 + 5;  // far from zero mean
  StepConfig cfg;
  cfg.k = 6;
  SaeGrads g = SaeGrads::ZerosLike(p);
  StepResult res;
  ASSERT_TRUE(ComputeGradients(p, x, cfg, &g, &res).ok());
  auto enc = Encode(p, x, 6);
  ASSERT_TRUE(enc.ok());
  const double sse = (x - enc->x_hat).pow(2).sum().item<double>();
  const double var = (x - x.mean(0, true)).pow(2).sum().item<double>();
  EXPECT_NEAR(res.mse, sse / (40 * 16), 1e-9);
  EXPECT_NEAR(res.fvu, sse / var, 1e-9);  // about the mean, not zero
  EXPECT_NEAR(res.l0, (enc->acts > 0).sum().item<double>() / 40, 1e-12);
  EXPECT_LE(res.l0, 6);
}

TEST(SaeStep, RejectsBadShapes) {
  SaeParams p = RandomParams(32, 8, 3);
  SaeGrads g = SaeGrads::ZerosLike(p);
  StepResult res;
  StepConfig cfg;
  cfg.k = 4;
  EXPECT_FALSE(ComputeGradients(p, at::randn({4, 9}, at::kDouble), cfg, &g, &res).ok());
  cfg.k = 33;
  EXPECT_FALSE(ComputeGradients(p, at::randn({4, 8}, at::kDouble), cfg, &g, &res).ok());
}

// StepConfig::sparse_grads (what the one-process trainer runs): the rows of
// latents no entry touched are left unwritten (stale NaNs here) and marked
// so, every written value is bitwise the dense step's, sum_sq is the dense
// gradients' Σ g², and Adam over the sparse gradients (never reading the
// unwritten rows) gives bitwise the dense update. Ghost Grads add to
// untouched rows: the step refuses the shortcut there (dense, sum_sq < 0).
TEST(SaeStep, SparseGradientsAreTheDenseOnesWithoutTheZeroRows) {
  struct Shape {
    int64_t B, d, n, k;
  };
  // (d 256: float32 rows a multiple of 128 wide, which the latent pass stores
  // straight from registers with their Σ g², StoreGroupDirect.)
  for (const auto& [B, d, n, k] : {Shape{50, 24, 2000, 4}, Shape{300, 64, 4096, 8}, Shape{120, 256, 3000, 8}}) {
    for (const at::ScalarType st : {at::kDouble, at::kFloat}) {
      for (const Remedy remedy : {Remedy::kNone, Remedy::kAuxK, Remedy::kGhostGrads}) {
        for (const int64_t target_k : {int64_t{0}, k / 2}) {
          SCOPED_TRACE(testing::Message() << "n " << n << " " << at::toString(st) << " remedy "
                                          << static_cast<int>(remedy) << " target_k " << target_k);
          const SaeParams p64 = RandomParams(n, d, 11 + n);
          const SaeParams p{p64.W_enc.to(st), p64.b_enc.to(st), p64.W_dec.to(st), p64.b_dec.to(st)};
          const at::Tensor x = (at::randn({B, d}, at::kDouble) + 0.2).to(st);
          std::vector<int64_t> dead;
          for (int64_t i = 0; i < n; i += 3) dead.push_back(i);
          StepConfig cfg;
          cfg.k = k;
          cfg.target_k = target_k;
          cfg.remedy = remedy;
          cfg.aux_coefficient = remedy == Remedy::kNone ? 0.0 : 0.5;
          cfg.dead = &dead;
          SaeGrads dense = SaeGrads::ZerosLike(p), sparse = SaeGrads::ZerosLike(p);
          StepResult r0, r1;
          ASSERT_TRUE(ComputeGradients(p, x, cfg, &dense, &r0).ok());
          EXPECT_TRUE(dense.rows_written.empty());
          EXPECT_LT(dense.sum_sq, 0);
          sparse.flat.fill_(std::nan(""));  // what an earlier step left
          cfg.sparse_grads = true;
          ASSERT_TRUE(ComputeGradients(p, x, cfg, &sparse, &r1).ok());
          EXPECT_EQ(r0.fired, r1.fired);
          EXPECT_EQ(r0.loss, r1.loss);
          if (remedy == Remedy::kGhostGrads) {
            EXPECT_TRUE(sparse.rows_written.empty());
            EXPECT_LT(sparse.sum_sq, 0);
            EXPECT_TRUE(at::equal(sparse.flat, dense.flat));
            continue;
          }
          ASSERT_EQ(static_cast<int64_t>(sparse.rows_written.size()), n);
          std::vector<int64_t> kept, skipped;
          for (int64_t l = 0; l < n; ++l) (sparse.rows_written[l] ? kept : skipped).push_back(l);
          ASSERT_GT(skipped.size(), 0u);
          ASSERT_GT(kept.size(), 0u);
          const at::Tensor ki = at::tensor(kept), si = at::tensor(skipped);
          EXPECT_EQ(dense.W_enc.index_select(0, si).abs().max().item<double>(), 0);
          EXPECT_EQ(dense.W_dec.index_select(0, si).abs().max().item<double>(), 0);
          EXPECT_TRUE(at::equal(sparse.W_enc.index_select(0, ki), dense.W_enc.index_select(0, ki)));
          EXPECT_TRUE(at::equal(sparse.W_dec.index_select(0, ki), dense.W_dec.index_select(0, ki)));
          EXPECT_TRUE(at::equal(sparse.b_enc, dense.b_enc));
          EXPECT_TRUE(at::equal(sparse.b_dec, dense.b_dec));
          const double norm = GlobalGradNorm(dense);
          ASSERT_GT(norm, 0);
          EXPECT_NEAR(sparse.sum_sq, norm * norm, 1e-12 * norm * norm);
          EXPECT_NEAR(GlobalGradNorm(sparse), norm, 1e-12 * norm);
          // Adam, two steps (the second from nonzero moments in the skipped rows).
          SaeParams pa = p.Clone(), pb = p.Clone();
          AdamState sa = AdamState::ZerosLike(p), sb = AdamState::ZerosLike(p);
          AdamConfig ac;
          ac.lr = 1e-2;
          ac.clip_scale = 0.7;
          for (int step = 0; step < 2; ++step) {
            if (step == 1) {
              ASSERT_TRUE(ComputeGradients(pa, x, cfg, &sparse, &r1).ok());
              cfg.sparse_grads = false;
              ASSERT_TRUE(ComputeGradients(pb, x, cfg, &dense, &r0).ok());
              cfg.sparse_grads = true;
            }
            AdamUpdate(&pb, dense, ac, &sb, nullptr);
            AdamUpdate(&pa, sparse, ac, &sa, nullptr);
          }
          for (const auto& [a, b] : {std::pair{&pa.W_enc, &pb.W_enc}, std::pair{&pa.W_dec, &pb.W_dec},
                                     std::pair{&pa.b_enc, &pb.b_enc}, std::pair{&pa.b_dec, &pb.b_dec},
                                     std::pair{&sa.m_W_enc, &sb.m_W_enc}, std::pair{&sa.v_W_dec, &sb.v_W_dec}})
            EXPECT_TRUE(at::equal(*a, *b));
          EXPECT_GT((pa.W_enc - p.W_enc).index_select(0, si).abs().max().item<double>(), 0);  // skipped rows moved
        }
      }
    }
  }
}

TEST(Adam, MatchesTorchFormulaAndRenormalisesDecoder) {
  SaeParams p = RandomParams(10, 6, 9);
  SaeParams q = p.Clone();
  SaeParams r = p.Clone();  // through the ATen update (what CUDA tensors use)
  AdamState s = AdamState::ZerosLike(p);
  AdamState sr = AdamState::ZerosLike(r);
  AdamConfig cfg;
  cfg.lr = 1e-2;
  cfg.clip_scale = 0.5;
  std::vector<at::Tensor> m(4), v(4);
  for (int step = 1; step <= 3; ++step) {
    SaeGrads g{at::randn({10, 6}, at::kDouble), at::randn({10}, at::kDouble), at::randn({10, 6}, at::kDouble),
               at::randn({6}, at::kDouble)};
    AdamUpdate(&p, g, cfg, &s, nullptr);
    internal::AdamUpdateATen(&r, g, cfg, &sr, nullptr);
    at::Tensor* qs[] = {&q.W_enc, &q.b_enc, &q.W_dec, &q.b_dec};
    const at::Tensor gs[] = {g.W_enc, g.b_enc, g.W_dec, g.b_dec};
    for (int i = 0; i < 4; ++i) {
      at::Tensor gi = gs[i] * 0.5;
      if (step == 1) {
        m[i] = at::zeros_like(gi);
        v[i] = at::zeros_like(gi);
      }
      m[i] = 0.9 * m[i] + 0.1 * gi;
      v[i] = 0.999 * v[i] + 0.001 * gi * gi;
      const double bc1 = 1 - std::pow(0.9, step), bc2 = 1 - std::pow(0.999, step);
      *qs[i] = *qs[i] - (cfg.lr / bc1) * m[i] / (v[i].sqrt() / std::sqrt(bc2) + cfg.eps);
    }
    q.W_dec = q.W_dec / q.W_dec.norm(2, 1, true);
  }
  EXPECT_LT(RelErr(p.W_enc, q.W_enc), 1e-12);
  EXPECT_LT(RelErr(p.W_dec, q.W_dec), 1e-12);
  EXPECT_LT(RelErr(p.b_enc, q.b_enc), 1e-12);
  EXPECT_LT(RelErr(p.b_dec, q.b_dec), 1e-12);
  EXPECT_LT((p.W_dec.norm(2, 1) - 1).abs().max().item<double>(), 1e-12);
  EXPECT_LT(RelErr(r.W_enc, q.W_enc), 1e-12);
  EXPECT_LT(RelErr(r.W_dec, q.W_dec), 1e-12);
  EXPECT_LT(RelErr(r.b_enc, q.b_enc), 1e-12);
  EXPECT_LT(RelErr(r.b_dec, q.b_dec), 1e-12);
  EXPECT_EQ(sr.step, 3);
}

TEST(Bf16, RoundsToNearestEven) {
  at::Tensor t = at::tensor({1.0f, 1.00390625f, 1.01171875f, -3.14159f});
  RoundToBF16InPlace(t);
  EXPECT_EQ(t[0].item<float>(), 1.0f);
  EXPECT_EQ(t[1].item<float>(), 1.0f);       // tie → even
  EXPECT_EQ(t[2].item<float>(), 1.015625f);  // tie → even (up)
  EXPECT_EQ(t[3].item<float>(), -3.140625f);
}

}  // namespace
}  // namespace sae

namespace sae {
namespace {

// The float32 selection (vectorised scan) picks what at::topk picks.
TEST(SaeStep, Float32TopKMatchesLibTorch) {
  for (int64_t n : {40, 1000, 4133}) {
    for (int64_t k : {1, 7, 32}) {
      at::manual_seed(n * 31 + k);
      SaeParams p{at::randn({n, 24}), at::randn({n}), at::randn({n, 24}), at::randn({24})};
      at::Tensor x = at::randn({50, 24});
      auto enc = Encode(p, x, k);
      ASSERT_TRUE(enc.ok());
      at::Tensor z = at::addmm(p.b_enc, x - p.b_dec, p.W_enc.t());
      auto ref = at::topk(z, k, 1, true, true);
      EXPECT_TRUE(at::equal(enc->indices, std::get<1>(ref))) << "n " << n << " k " << k;
      EXPECT_TRUE(at::allclose(enc->acts, std::get<0>(ref).clamp_min(0), 1e-5, 1e-5));
    }
  }
}

}  // namespace
}  // namespace sae
