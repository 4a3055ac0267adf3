#include "core/sae/sae_step.h"

#include "core/base/bf16.h"
#include "core/base/clock.h"
#include "core/sae/encoder_gemm.h"
#include "core/sae/int8_screen.h"
#include "core/sae/sae_step_internal.h"
#include "core/sae/small_encoder.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <type_traits>
#include <utility>

namespace sae {

double DefaultAuxCoefficient(Remedy r) {
  switch (r) {
    case Remedy::kNone: return 0.0;
    case Remedy::kAuxK: return 1.0 / 32;
    case Remedy::kGhostGrads: return 1.0 / 32;
  }
  return 0.0;
}

SaeParams SaeParams::Clone() const { return SaeParams{W_enc.clone(), b_enc.clone(), W_dec.clone(), b_dec.clone()}; }

SaeGrads SaeGrads::ZerosLike(const SaeParams& p) {
  const int64_t sizes[] = {p.W_enc.numel(), p.b_enc.numel(), p.W_dec.numel(), p.b_dec.numel()};
  SaeGrads g;
  g.flat = at::zeros({sizes[0] + sizes[1] + sizes[2] + sizes[3]}, p.W_enc.options());
  int64_t off = 0;
  const at::Tensor* like[] = {&p.W_enc, &p.b_enc, &p.W_dec, &p.b_dec};
  at::Tensor* out[] = {&g.W_enc, &g.b_enc, &g.W_dec, &g.b_dec};
  for (int i = 0; i < 4; ++i) {
    *out[i] = g.flat.narrow(0, off, sizes[i]).view(like[i]->sizes());
    off += sizes[i];
  }
  return g;
}

AdamState AdamState::ZerosLike(const SaeParams& p) {
  AdamState s;
  s.m_W_enc = at::zeros_like(p.W_enc);
  s.v_W_enc = at::zeros_like(p.W_enc);
  s.m_b_enc = at::zeros_like(p.b_enc);
  s.v_b_enc = at::zeros_like(p.b_enc);
  s.m_W_dec = at::zeros_like(p.W_dec);
  s.v_W_dec = at::zeros_like(p.W_dec);
  s.m_b_dec = at::zeros_like(p.b_dec);
  s.v_b_dec = at::zeros_like(p.b_dec);
  return s;
}

namespace {

using internal::Axpy;
using internal::Dot;
using internal::RemedyPlan;
using internal::Reuse;
using internal::StepSums;

// Σ‖x − x̄‖² over the rows of x (B×d), x̄ the column mean, accumulated in
// double in two passes (stable for activations with a large mean). With xc
// and bd set, the second pass also writes xc = x − bd (the step's encoder
// input: one pass over the batch fewer than centring separately).
template <typename T>
double TotalVariance(const T* x, int64_t B, int64_t d, const T* bd = nullptr, T* xc = nullptr) {
  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < d; ++i) mean[i] += x[b * d + i];
  for (double& m : mean) m /= static_cast<double>(B);
  return at::parallel_reduce(
      0, B, internal::GrainFor(d), 0.0,
      [&](int64_t lo, int64_t hi, double acc) {
        // Four accumulators: one dependent chain of B·d double adds was
        // latency-bound (≈ 4 ms of one core at 4096 × 768).
        const double* mu = mean.data();
        for (int64_t b = lo; b < hi; ++b) {
          const T* xr = x + b * d;
          if (xc != nullptr)
            for (int64_t i = 0; i < d; ++i) xc[b * d + i] = xr[i] - bd[i];
          double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          int64_t i = 0;
          for (; i + 4 <= d; i += 4) {
            const double e0 = xr[i] - mu[i], e1 = xr[i + 1] - mu[i + 1];
            const double e2 = xr[i + 2] - mu[i + 2], e3 = xr[i + 3] - mu[i + 3];
            s0 += e0 * e0;
            s1 += e1 * e1;
            s2 += e2 * e2;
            s3 += e3 * e3;
          }
          for (; i < d; ++i) {
            const double e = xr[i] - mu[i];
            s0 += e * e;
          }
          acc += (s0 + s1) + (s2 + s3);
        }
        return acc;
      },
      std::plus<double>());
}

// x − b_dec (B×d) into a new tensor, on the calling thread unless large.
template <typename T>
at::Tensor CenterRows(const at::Tensor& x, const at::Tensor& b_dec, at::Tensor* slot) {
  const int64_t B = x.size(0), d = x.size(1);
  at::Tensor xc = Reuse(slot, {B, d}, x.scalar_type());
  const T* X = x.data_ptr<T>();
  const T* bd = b_dec.data_ptr<T>();
  T* XC = xc.data_ptr<T>();
  at::parallel_for(0, B, internal::GrainFor(d), [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b)
      for (int64_t i = 0; i < d; ++i) XC[b * d + i] = X[b * d + i] - bd[i];
  });
  return xc;
}

// out = Σ_r A[r] − Σ_l w[l] W[l] over the rows of A (R×d) and of W (n×d),
// accumulated in double (b_dec's gradient, step 6). Both sums run in fixed
// blocks of rows, each a contiguous stream (W is read once, row by row: the
// per-column split read every row in two strided halves, 4 ms at d 768 and
// 16384 latents); the blocks' partial sums are then added in block order,
// so the result does not depend on the thread count.
template <typename T>
void BDecGradient(const T* A, int64_t R, const T* W, const T* w, int64_t n, int64_t d, T* out) {
  constexpr int64_t kRows = 256;
  const int64_t ra = (R + kRows - 1) / kRows, rw = (n + kRows - 1) / kRows, nb = ra + rw;
  // The calling thread's buffer (a fresh one each step was mmap'd and
  // faulted in: 4.7 MB at d 4096), reached through P: inside the loop
  // `part` would name each worker's own.
  thread_local std::vector<double> part;
  part.resize(static_cast<size_t>(nb * d));
  double* const P = part.data();
  at::parallel_for(0, nb, internal::GrainFor(kRows * d), [&](int64_t lo, int64_t hi) {
    for (int64_t blk = lo; blk < hi; ++blk) {
      double* acc = P + blk * d;
      std::fill(acc, acc + d, 0.0);
      if (blk < ra) {
        for (int64_t r = blk * kRows; r < std::min(R, (blk + 1) * kRows); ++r) {
          const T* a = A + r * d;
          for (int64_t i = 0; i < d; ++i) acc[i] += a[i];
        }
      } else {
        const int64_t l0 = (blk - ra) * kRows;
        for (int64_t l = l0; l < std::min(n, l0 + kRows); ++l) {
          const double wl = w[l];
          if (wl == 0) continue;
          const T* row = W + l * d;
          for (int64_t i = 0; i < d; ++i) acc[i] -= wl * row[i];
        }
      }
    }
  });
  for (int64_t i = 0; i < d; ++i) {
    double s = 0;
    for (int64_t blk = 0; blk < nb; ++blk) s += P[blk * d + i];
    out[i] = static_cast<T>(s);
  }
}

// Records the wall time of each phase of a step into StepResult::phase_seconds
// and the calling thread's CPU time into phase_cpu_seconds.
class PhaseClock {
 public:
  explicit PhaseClock(StepResult* res) : res_(res), t_(SteadyNow()), c_(ThreadCpuNow()) {
    res_->phase_seconds.clear();
    res_->phase_cpu_seconds.clear();
  }
  void End(const char* name) {
    const double t = SteadyNow(), c = ThreadCpuNow();
    res_->phase_seconds.emplace_back(name, t - t_);
    res_->phase_cpu_seconds.emplace_back(name, c - c_);
    t_ = t;
    c_ = c;
  }
  // Moves `wall` and `cpu` of the last phase into a new phase `name` before it.
  void SplitLast(const char* name, double wall, double cpu) {
    res_->phase_seconds.back().second -= wall;
    res_->phase_seconds.insert(res_->phase_seconds.end() - 1, {name, wall});
    res_->phase_cpu_seconds.back().second -= cpu;
    res_->phase_cpu_seconds.insert(res_->phase_cpu_seconds.end() - 1, {name, cpu});
  }
  void Restart() {  // after a callee recorded its own phases
    t_ = SteadyNow();
    c_ = ThreadCpuNow();
  }

 private:
  StepResult* res_;
  double t_, c_;
};

// Each row's top-k (descending) and, for the remedies, AuxK's top-k_aux among
// the dead latents and Ghost Grads' pre-activations of the dead set (B×|D|).
struct Selection {
  at::Tensor idx, val;          // B×k
  at::Tensor aux_idx, aux_val;  // B×k_aux
  at::Tensor zD;                // B×|D| (Ghost Grads only)
  double gemm_seconds = 0;      // of the encoder GEMM alone
  double gemm_cpu_seconds = 0;  // the same in CPU-seconds of the calling thread
  bool fused = false;           // GEMM and selection in one pass (gemm_seconds: the weights' preparation only)
};

// Step 1. The encoder GEMM z = (x − b_dec) W_encᵀ + b_enc in row blocks, each
// block reduced to its top-k at once, so the B×n pre-activations never exist.
// With cfg.W_enc_lowp, the GEMM uses the bf16-rounded encoder and inputs.
// float32 (unless cfg.aten_gemm) multiplies through oneDNN (EncoderGemm):
// when the encoder is small enough to stay in cache, each thread multiplies
// its own blocks of a few rows into a buffer that stays in its L2 and
// selects from there (FusedSmallEncoder); otherwise in large blocks, as
// at::addmm does for float64.
template <typename T>
absl::Status EncodeAndSelect(const SaeParams& p, const at::Tensor& xc, const StepConfig& cfg, const RemedyPlan& rp,
                             Selection* out) {
  const int64_t B = xc.size(0), n = p.latents(), d = p.d_in(), k = cfg.k, k_aux = rp.k_aux, nd = rp.nd;
  const at::ScalarType st = p.W_enc.scalar_type();
  const std::vector<int64_t>& dead = *rp.dead;
  at::Tensor enc_w = p.W_enc, enc_in = xc;
  if (cfg.W_enc_lowp.defined()) {
    enc_w = cfg.W_enc_lowp;
    enc_in = xc.clone();
    RoundToBF16InPlace(enc_in);
  }
  Selection& s = *out;
  s.idx = at::empty({B, k}, at::kLong);
  s.val = at::empty({B, k}, st);
  s.aux_idx = at::empty({B, k_aux}, at::kLong);
  s.aux_val = at::empty({B, k_aux}, st);
  if (rp.ghost) s.zD = at::empty({B, nd}, st);
  int64_t* IDX = s.idx.data_ptr<int64_t>();
  T* VAL = s.val.data_ptr<T>();
  int64_t* AIDX = s.aux_idx.data_ptr<int64_t>();
  T* AVAL = s.aux_val.data_ptr<T>();
  T* ZD = rp.ghost ? s.zD.data_ptr<T>() : nullptr;
  // The selections of rows r0 .. r0 + rows − 1 from their pre-activations Z
  // (rows×n), on the calling thread.
  auto select_rows = [&](const T* Z, int64_t r0, int64_t rows, std::vector<T>* scratch,
                         std::vector<int64_t>* scratch_idx) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r0 + r;
      const T* zr = Z + r * n;
      internal::SelectTopK(zr, n, k, IDX + b * k, VAL + b * k);
      if (k_aux > 0)
        internal::SelectTopKAmong(zr, dead.data(), nd, k_aux, scratch, scratch_idx, AIDX + b * k_aux, AVAL + b * k_aux);
      if (ZD != nullptr)
        for (int64_t t = 0; t < nd; ++t) ZD[b * nd + t] = zr[dead[t]];
    }
  };
  StepWorkspace* ws = cfg.workspace;
  const bool onednn = std::is_same_v<T, float> && !cfg.aten_gemm;
  if constexpr (std::is_same_v<T, float>) {
    if (onednn && cfg.small_encoder && internal::UseSmallEncoder(n, d, k)) {
      // The top-k inside the GEMM's epilogue (core/sae/small_encoder.h). The
      // remedies' dead latents get a second packed encoder of their rows
      // alone: its pre-activations are bitwise those of the full kernel
      // (each value is the same ordered multiply-adds, then b_enc), so AuxK's
      // top-k_aux and Ghost Grads' zD are exactly what the dense path sees.
      double tg = SteadyNow(), cg = ThreadCpuNow();
      auto slot = [&](std::shared_ptr<internal::SmallEncoder>* ws_slot, std::shared_ptr<internal::SmallEncoder>* own) {
        std::shared_ptr<internal::SmallEncoder>* h = ws != nullptr ? ws_slot : own;
        if (!*h) *h = std::make_shared<internal::SmallEncoder>();
        return h->get();
      };
      std::shared_ptr<internal::SmallEncoder> own_main, own_dead;
      internal::SmallEncoder* enc = slot(ws ? &ws->small : nullptr, &own_main);
      const at::Tensor w = enc_w.contiguous();
      const float* Wp = w.data_ptr<float>();
      const float* bp = p.b_enc.data_ptr<float>();
      enc->SetWeights(Wp, bp, n, d);
      internal::SmallEncoder* enc_dead = nullptr;
      if (nd > 0 && (k_aux > 0 || ZD != nullptr)) {
        enc_dead = slot(ws ? &ws->small_dead : nullptr, &own_dead);
        std::vector<float> wd(static_cast<size_t>(nd * d)), bd(static_cast<size_t>(nd));
        for (int64_t t = 0; t < nd; ++t) {
          std::memcpy(wd.data() + t * d, Wp + dead[t] * d, sizeof(float) * d);
          bd[t] = bp[dead[t]];
        }
        enc_dead->SetWeights(wd.data(), bd.data(), nd, d);
      }
      s.gemm_seconds += SteadyNow() - tg;
      s.gemm_cpu_seconds += ThreadCpuNow() - cg;
      const float* X = enc_in.data_ptr<float>();
      const int64_t kItemRows = enc->ItemRows(B, at::get_num_threads());  // rows per work item, handed out dynamically
      const int64_t nitems = (B + kItemRows - 1) / kItemRows;
      std::atomic<int64_t> next{0};
      const int64_t work = B * n * d, threads = at::get_num_threads();
      at::parallel_for(0, threads, work >= 4 * internal::kMinParallelWork ? 1 : threads, [&](int64_t, int64_t) {
        std::vector<float> zd;
        std::vector<int64_t> tidx(static_cast<size_t>(k_aux));
        for (int64_t it = next++; it < nitems; it = next++) {
          const int64_t r0 = it * kItemRows, rows = std::min(kItemRows, B - r0);
          enc->SelectTopK(X + r0 * d, rows, k, IDX + r0 * k, VAL + r0 * k);
          if (enc_dead == nullptr) continue;
          float* zr = ZD;
          if (zr != nullptr) {
            zr += r0 * nd;
          } else {
            zd.resize(static_cast<size_t>(rows * nd));
            zr = zd.data();
          }
          enc_dead->Dense(X + r0 * d, rows, zr);
          for (int64_t r = 0; r < rows && k_aux > 0; ++r) {
            const int64_t b = r0 + r;
            internal::SelectTopK(zr + r * nd, nd, k_aux, tidx.data(), AVAL + b * k_aux);
            for (int64_t t = 0; t < k_aux; ++t) AIDX[b * k_aux + t] = dead[tidx[t]];
          }
        }
      });
      s.fused = true;
      return absl::OkStatus();
    }
    if (onednn) {
      std::shared_ptr<internal::EncoderGemm> gemm_holder;
      if (ws != nullptr && !ws->gemm) ws->gemm = std::make_shared<internal::EncoderGemm>();
      internal::EncoderGemm* gemm =
          ws != nullptr ? ws->gemm.get() : (gemm_holder = std::make_shared<internal::EncoderGemm>()).get();
      const at::Tensor w = enc_w.contiguous();
      const float* X = enc_in.data_ptr<float>();
      const internal::EncoderPlan plan = internal::PlanEncoder(B, n, d, cfg.block_rows);
      const int64_t R = plan.rows, tail = B % R;
      const int64_t counts[2] = {R, tail};
      double tg = SteadyNow(), cg = ThreadCpuNow();
      SAE_RETURN_IF_ERROR(
          gemm->SetWeights(w.data_ptr<float>(), p.b_enc.data_ptr<float>(), n, d, counts, tail > 0 ? 2 : 1));
      const int64_t nblocks = (B + R - 1) / R;
      if (plan.per_thread) {
        // One parallel region for the whole encoder: blocks are handed out
        // dynamically, so a thread the OS preempts delays only its block.
        // (The GEMM itself is inside the fused loop below.)
        s.gemm_seconds += SteadyNow() - tg;
        s.gemm_cpu_seconds += ThreadCpuNow() - cg;
        std::atomic<int64_t> next{0};
        std::atomic<bool> failed{false};
        absl::Status first_error;
        std::mutex mu;
        const int64_t work = B * n * d, threads = at::get_num_threads();
        at::parallel_for(0, threads, work >= 4 * internal::kMinParallelWork ? 1 : threads, [&](int64_t, int64_t) {
          const int slot = at::get_thread_num();
          thread_local std::vector<float> zt;
          if (zt.size() < static_cast<size_t>(R * n)) zt.resize(static_cast<size_t>(R * n));
          std::vector<T> scratch;
          std::vector<int64_t> scratch_idx;
          for (int64_t blk = next++; blk < nblocks && !failed; blk = next++) {
            const int64_t r0 = blk * R, rows = std::min(R, B - r0);
            absl::Status st_run = gemm->Run(X + r0 * d, rows, zt.data(), slot);
            if (!st_run.ok()) {
              std::lock_guard<std::mutex> lock(mu);
              if (first_error.ok()) first_error = st_run;
              failed = true;
              break;
            }
            select_rows(zt.data(), r0, rows, &scratch, &scratch_idx);
          }
        });
        SAE_RETURN_IF_ERROR(first_error);
        s.fused = true;
        return absl::OkStatus();
      }
      at::Tensor zbuf = Reuse(ws ? &ws->zbuf : nullptr, {R, n}, st);
      float* Z = zbuf.data_ptr<float>();
      s.gemm_seconds += SteadyNow() - tg;
      s.gemm_cpu_seconds += ThreadCpuNow() - cg;
      for (int64_t r0 = 0; r0 < B; r0 += R) {
        const int64_t rows = std::min(R, B - r0);
        tg = SteadyNow();
        cg = ThreadCpuNow();
        SAE_RETURN_IF_ERROR(gemm->Run(X + r0 * d, rows, Z, 0));
        s.gemm_seconds += SteadyNow() - tg;
        s.gemm_cpu_seconds += ThreadCpuNow() - cg;
        at::parallel_for(0, rows, internal::GrainFor(n), [&](int64_t lo, int64_t hi) {
          std::vector<T> scratch;
          std::vector<int64_t> scratch_idx;
          select_rows(Z + lo * n, r0 + lo, hi - lo, &scratch, &scratch_idx);
        });
      }
      return absl::OkStatus();
    }
  }
  const int64_t R = cfg.block_rows > 0 ? std::min(cfg.block_rows, B) : internal::AutoBlockRows(B, n, sizeof(T));
  at::Tensor zbuf = Reuse(ws ? &ws->zbuf : nullptr, {R, n}, st);
  at::Tensor enc_wt = enc_w.t();
  for (int64_t r0 = 0; r0 < B; r0 += R) {
    const int64_t rows = std::min(R, B - r0);
    at::Tensor zb = zbuf.narrow(0, 0, rows);
    const double tg = SteadyNow(), cg = ThreadCpuNow();
    at::addmm_out(zb, p.b_enc, enc_in.narrow(0, r0, rows), enc_wt);
    s.gemm_seconds += SteadyNow() - tg;
    s.gemm_cpu_seconds += ThreadCpuNow() - cg;
    const T* Z = zb.data_ptr<T>();
    at::parallel_for(0, rows, internal::GrainFor(n), [&](int64_t lo, int64_t hi) {
      std::vector<T> scratch;
      std::vector<int64_t> scratch_idx;
      select_rows(Z + lo * n, r0 + lo, hi - lo, &scratch, &scratch_idx);
    });
  }
  return absl::OkStatus();
}

// Step 1 with train.encoder: int8_screened (core/sae/int8_screen.h): the
// same Selection from the certified int8 screen; the screen records its
// phases (screen_quantize, screen_gemm, screen_select, screen_rescore,
// screen_dead) itself.
template <typename T>
absl::Status ScreenedSelect(const SaeParams& p, const at::Tensor& xc, const StepConfig& cfg, const RemedyPlan& rp,
                            Selection* s, StepResult* res) {
  if constexpr (!std::is_same_v<T, float>) {
    return absl::InvalidArgumentError("train.encoder: int8_screened is for float32 parameters");
  } else {
    const int64_t B = xc.size(0), k = cfg.k;
    s->idx = at::empty({B, k}, at::kLong);
    s->val = at::empty({B, k}, at::kFloat);
    s->aux_idx = at::empty({B, rp.k_aux}, at::kLong);
    s->aux_val = at::empty({B, rp.k_aux}, at::kFloat);
    if (rp.ghost) s->zD = at::empty({B, rp.nd}, at::kFloat);
    // With bf16 (cfg.W_enc_lowp) the screen certifies the top-k of the
    // bf16-rounded encoder and inputs, what the dense bf16 step selects.
    SaeParams q = p;
    at::Tensor in = xc;
    if (cfg.W_enc_lowp.defined()) {
      q.W_enc = cfg.W_enc_lowp;
      in = xc.clone();
      RoundToBF16InPlace(in);
    }
    return ScreenedEncode(cfg.screen, q, in, k, *rp.dead, rp.k_aux, s->idx.data_ptr<int64_t>(),
                          s->val.data_ptr<float>(), s->aux_idx.data_ptr<int64_t>(), s->aux_val.data_ptr<float>(),
                          rp.ghost ? s->zD.data_ptr<float>() : nullptr, &res->phase_seconds);
  }
}

// The fired entries (a > 0) of every row, grouped by latent with rows
// ascending within a latent: items[offs[l] .. offs[l+1]) are latent l's.
template <typename T>
struct FiredByLatent {
  struct Item {
    int32_t row;
    int32_t src;  // 0 main (with Multi-TopK: within the target k), 1 AuxK, 2 Multi-TopK's tail
    T a;          // the activation relu(z)
  };
  std::vector<int64_t> offs;
  std::vector<Item> items;
  int64_t active = 0;  // main entries with a > 0
};

// Step 2. A counting sort of the selected entries by latent. Both sparse
// passes below walk latents in order, so each decoder row is read once,
// sequentially, instead of once per (token, slot): random row gathers run at
// a third of streaming bandwidth here. Also marks the fired latents: those
// within the first fire_k of a row's (descending) top-k with a > 0. Entries
// past the first kt of a row are Multi-TopK's tail (src 2).
// Into *out, whose vectors keep their capacity from the previous step (the
// step's own allocations and first touches of them cost page faults every
// step at small d).
template <typename T>
void SortByLatent(const Selection& s, int64_t n, int64_t fire_k, int64_t kt, std::vector<uint8_t>* fired,
                  FiredByLatent<T>* out) {
  const int64_t B = s.idx.size(0), k = s.idx.size(1), k_aux = s.aux_idx.size(1);
  const int64_t* IDX = s.idx.data_ptr<int64_t>();
  const T* VAL = s.val.data_ptr<T>();
  const int64_t* AIDX = s.aux_idx.data_ptr<int64_t>();
  const T* AVAL = s.aux_val.data_ptr<T>();
  FiredByLatent<T>& f = *out;
  // Rows in `parts` contiguous ranges, each counted and scattered by one
  // thread: part p's entries of a latent follow those of parts < p, so every
  // latent's list is in ascending rows whatever the number of parts (the
  // sums over it are the same bits on any thread count). About 16
  // multiply-adds' worth of work an entry.
  const int64_t parts = std::max<int64_t>(
      1, std::min<int64_t>({at::get_num_threads(), B, B * (k + k_aux) * 16 / internal::kMinParallelWork}));
  // The calling thread's buffers (the workers see them through these
  // references: a thread_local named inside the lambda would be the
  // worker's own).
  thread_local std::vector<std::vector<int64_t>> counts_tl;  // per part: n + 1
  thread_local std::vector<std::vector<uint8_t>> fired_tl;   // parts 1.. (part 0 marks *fired)
  thread_local std::vector<int64_t> active_tl;
  std::vector<std::vector<int64_t>>& counts = counts_tl;
  std::vector<std::vector<uint8_t>>& fired_of = fired_tl;
  std::vector<int64_t>& active_of = active_tl;
  counts.resize(static_cast<size_t>(parts));
  fired_of.resize(static_cast<size_t>(parts));
  active_of.assign(static_cast<size_t>(parts), 0);
  // (Rows, then slots: the slot without a division per entry.)
  at::parallel_for(0, parts, 1, [&](int64_t plo, int64_t phi) {
    for (int64_t part = plo; part < phi; ++part) {
      std::vector<int64_t>& c = counts[part];
      std::vector<uint8_t>& fr = part == 0 ? *fired : fired_of[part];
      c.assign(static_cast<size_t>(n) + 1, 0);
      fr.assign(static_cast<size_t>(n), 0);
      int64_t active = 0;
      for (int64_t b = B * part / parts; b < B * (part + 1) / parts; ++b) {
        for (int64_t j = 0; j < k; ++j) {
          const int64_t t = b * k + j;
          if (VAL[t] > 0) {
            ++c[IDX[t] + 1];
            ++active;
            if (j < fire_k) fr[IDX[t]] = 1;
          }
        }
        for (int64_t j = 0; j < k_aux; ++j)
          if (AVAL[b * k_aux + j] > 0) ++c[AIDX[b * k_aux + j] + 1];
      }
      active_of[part] = active;
    }
  });
  // offs from the parts' counts; counts[p][l] becomes part p's first slot
  // in latent l's list.
  f.offs.resize(static_cast<size_t>(n) + 1);  // every entry written below
  f.active = 0;
  for (int64_t part = 0; part < parts; ++part) f.active += active_of[part];
  for (int64_t part = 1; part < parts; ++part)
    for (int64_t l = 0; l < n; ++l) (*fired)[l] |= fired_of[part][l];
  int64_t at = 0;
  for (int64_t l = 0; l < n; ++l) {
    f.offs[l] = at;
    for (int64_t part = 0; part < parts; ++part) {
      const int64_t c = counts[part][l + 1];
      counts[part][l] = at;
      at += c;
    }
  }
  f.offs[n] = at;
  f.items.resize(static_cast<size_t>(at));
  at::parallel_for(0, parts, 1, [&](int64_t plo, int64_t phi) {
    for (int64_t part = plo; part < phi; ++part) {
      int64_t* fill = counts[part].data();
      for (int64_t b = B * part / parts; b < B * (part + 1) / parts; ++b) {
        for (int64_t j = 0; j < k; ++j) {
          const int64_t t = b * k + j;
          if (VAL[t] > 0) f.items[fill[IDX[t]]++] = {static_cast<int32_t>(b), j < kt ? 0 : 2, VAL[t]};
        }
        for (int64_t j = 0; j < k_aux; ++j) {
          const int64_t t = b * k_aux + j;
          if (AVAL[t] > 0) f.items[fill[AIDX[t]]++] = {static_cast<int32_t>(b), 1, AVAL[t]};
        }
      }
    }
  });
}

// How many entries ahead the sparse passes (Decode, LatentRowGradients)
// prefetch the random rows an entry reads or writes: about 2 KiB of rows
// ahead (8 entries at d 64, two at d 256), or 0 (no software prefetch) for
// rows of 2 KiB and more. One entry ahead (as first written) hides an L2 hit
// but not an L3 one: at d 64 an entry's work is ~10 ns against ~50 ns of L3
// latency, and the B×d rows (1 MB each at d 64, batch 4096) do not all stay
// in L2 (docs/performance.md "Fixed costs of the small-d step"). A row of 32
// lines or more is a stream the hardware prefetcher follows by itself; 128
// prefetch instructions per 8 KiB row only filled the line-fill buffers (the
// latent pass at d 2048 spent a third of its time on them; without them it
// and the decode took 139 -> 82 ms and 32 -> 29 ms, docs/performance.md
// "Software prefetch only for short rows").
inline int64_t PrefetchAhead(int64_t row_bytes) {
  if (row_bytes >= 2048) return 0;
  return std::clamp<int64_t>(2048 / std::max<int64_t>(row_bytes, 1), 1, 16);
}

// Decode splits columns, not rows, between threads from this row length on.
constexpr int64_t kColumnSplitRowBytes = 4096;

// Step 3. Decode x̂ = b_dec + Σ a W_dec[i], AuxK's ê = Σ a W_dec[i] (no
// b_dec; EH null without AuxK) and Multi-TopK's tail (TH, no b_dec; null
// without): each thread owns a range of rows (of columns, for long rows) and
// streams the decoder once.
template <typename T>
void Decode(const SaeParams& p, const FiredByLatent<T>& f, int64_t B, T* XH, T* EH, T* TH) {
  const int64_t d = p.d_in(), n = p.latents();
  const T* Wdec = p.W_dec.data_ptr<T>();
  const T* bdec = p.b_dec.data_ptr<T>();
  // Each part walks every latent's list: n + its share of the B·k·d work.
  const int64_t work = static_cast<int64_t>(f.items.size()) * d + n;
  const int64_t parts =
      std::max<int64_t>(1, std::min<int64_t>({at::get_num_threads(), B, work / internal::kMinParallelWork}));
  T* const dst_of[3] = {XH, EH, TH};
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(T));
  const int64_t ahead = PrefetchAhead(row_bytes), n_items = static_cast<int64_t>(f.items.size());
  // Long rows: each part takes a range of columns of every row (whole
  // 64-byte lines), so each decoder row is read once in all, half by each of
  // two threads; split by rows, every thread read nearly every row (about
  // B·k/n entries a latent, 2 at d 4096 / 32768 / k 64 / batch 1024, where
  // this took the decode from 50-55 to 43-47 ms; docs/performance.md
  // "d 48 by rows, decode by columns"). Per element the same adds in the
  // same order.
  if (row_bytes >= kColumnSplitRowBytes && parts > 1) {
    constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
    at::parallel_for(0, parts, 1, [&](int64_t plo, int64_t phi) {
      for (int64_t part = plo; part < phi; ++part) {
        const int64_t c0 = d * part / parts / kLine * kLine;
        const int64_t c1 = part + 1 == parts ? d : d * (part + 1) / parts / kLine * kLine;
        const int64_t w = c1 - c0;
        if (w <= 0) continue;
        for (int64_t b = 0; b < B; ++b) std::memcpy(XH + b * d + c0, bdec + c0, sizeof(T) * w);
        for (int64_t l = 0; l < n; ++l) {
          const T* wr = Wdec + l * d + c0;
          for (int64_t t = f.offs[l]; t < f.offs[l + 1]; ++t) {
            const auto& it = f.items[t];
            Axpy(w, it.a, wr, dst_of[it.src] + int64_t{it.row} * d + c0);
          }
        }
      }
    });
    return;
  }
  at::parallel_for(0, parts, 1, [&](int64_t plo, int64_t phi) {
    for (int64_t part = plo; part < phi; ++part) {
      const int64_t rlo = B * part / parts, rhi = B * (part + 1) / parts;
      for (int64_t b = rlo; b < rhi; ++b) std::memcpy(XH + b * d, bdec, sizeof(T) * d);
      for (int64_t l = 0; l < n; ++l) {
        const T* w = Wdec + l * d;
        const int64_t end = f.offs[l + 1];
        for (int64_t t = f.offs[l]; t < end; ++t) {
          const auto& it = f.items[t];
          if (it.row < rlo) continue;
          if (it.row >= rhi) break;
          // The destination rows are random: fetch the one `ahead` entries
          // on (of this part) while this one is updated.
          if (ahead > 0 && t + ahead < n_items) {
            const auto& nx = f.items[t + ahead];
            if (nx.row >= rlo && nx.row < rhi) {
              const char* dn = reinterpret_cast<const char*>(dst_of[nx.src] + int64_t{nx.row} * d);
              for (int64_t off = 0; off < row_bytes; off += 64) __builtin_prefetch(dn + off, 1);
            }
          }
          Axpy(d, it.a, w, dst_of[it.src] + int64_t{it.row} * d);
        }
      }
    }
  });
}

// Sums over the batch from step 4.
// AuxK's row term: the target is e = x − x̂ (stop-gradient); with auxk_fit ê
// is compared after scaling by α = clamp(⟨ê, e⟩ / ‖ê‖², 0, 1) (stop-gradient).
// Writes ∂/∂ê scaled by c_aux into ga and returns ‖α ê − e‖².
template <typename T>
double AuxKRow(const T* eh, const T* xr, const T* xh, int64_t d, bool fit, T c_aux, T* ga) {
  T alpha = 1;
  if (fit) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < d; ++i) {
      num += static_cast<double>(eh[i]) * (static_cast<double>(xr[i]) - xh[i]);
      den += static_cast<double>(eh[i]) * eh[i];
    }
    if (den > 0) alpha = static_cast<T>(std::clamp(num / den, 0.0, 1.0));
  }
  double s = 0;
  for (int64_t i = 0; i < d; ++i) {
    const T diff = alpha * eh[i] - (xr[i] - xh[i]);
    s += static_cast<double>(diff) * diff;
    ga[i] = c_aux * alpha * diff;
  }
  return s;
}

// Multi-TopK's buffers (step 4): the tail's sum TH (x̂ at k = x̂_t + TH), the
// tail entries' gradient GT and b_dec's direct gradient GB, all B×d.
template <typename T>
struct MultiTopKRows {
  const T* TH = nullptr;
  T* GT = nullptr;
  T* GB = nullptr;
  double c_cur = 0;  // 2 · current_k_weight / Σ‖x − x̄‖²
  bool fit = true;   // StepConfig::current_k_fit
};

// One row of step 4 without Multi-TopK: g = c_main (x̂ − x) and, in double,
// ‖x̂ − x‖², ‖x̂ − b_dec‖², ‖x − b_dec‖² (added into *sse, *rn, *xn).
template <typename T>
inline void ResidualRow(const T* xh, const T* xr, const T* xcr, const T* bdec, int64_t d, T c_main, T* __restrict g,
                        double* sse, double* rn, double* xn) {
  for (int64_t i = 0; i < d; ++i) {
    const T e = xh[i] - xr[i];
    *sse += static_cast<double>(e) * e;
    g[i] = c_main * e;
    const double r = static_cast<double>(xh[i]) - bdec[i];
    *rn += r * r;
    *xn += static_cast<double>(xcr[i]) * xcr[i];
  }
}
#if defined(__AVX512F__) && defined(__AVX512VL__)
// float: eight columns a vector, the three sums in double lanes (one
// dependent chain of d double adds per sum was latency-bound at small d:
// a third of the non-encoder step at d 48). The same g bit for bit; the
// sums in another order.
template <>
inline void ResidualRow<float>(const float* xh, const float* xr, const float* xcr, const float* bdec, int64_t d,
                               float c_main, float* __restrict g, double* sse, double* rn, double* xn) {
  __m512d s0 = _mm512_setzero_pd(), s1 = s0, r0 = s0, r1 = s0, x0 = s0, x1 = s0;
  const __m256 vc = _mm256_set1_ps(c_main);
  for (int64_t i = 0; i < d; i += 16) {
    for (int h = 0; h < 2; ++h) {
      const int64_t j = i + 8 * h;
      if (j >= d) break;
      const __mmask8 mk = j + 8 <= d ? static_cast<__mmask8>(0xFF) : static_cast<__mmask8>((1u << (d - j)) - 1u);
      const __m256 vh = _mm256_maskz_loadu_ps(mk, xh + j), vx = _mm256_maskz_loadu_ps(mk, xr + j);
      const __m256 vcx = _mm256_maskz_loadu_ps(mk, xcr + j), vb = _mm256_maskz_loadu_ps(mk, bdec + j);
      const __m256 e = _mm256_sub_ps(vh, vx);
      _mm256_mask_storeu_ps(g + j, mk, _mm256_mul_ps(vc, e));
      const __m512d ed = _mm512_cvtps_pd(e);
      const __m512d rd = _mm512_sub_pd(_mm512_cvtps_pd(vh), _mm512_cvtps_pd(vb));
      const __m512d xd = _mm512_cvtps_pd(vcx);
      if (h == 0) {
        s0 = _mm512_fmadd_pd(ed, ed, s0);
        r0 = _mm512_fmadd_pd(rd, rd, r0);
        x0 = _mm512_fmadd_pd(xd, xd, x0);
      } else {
        s1 = _mm512_fmadd_pd(ed, ed, s1);
        r1 = _mm512_fmadd_pd(rd, rd, r1);
        x1 = _mm512_fmadd_pd(xd, xd, x1);
      }
    }
  }
  *sse += _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
  *rn += _mm512_reduce_add_pd(_mm512_add_pd(r0, r1));
  *xn += _mm512_reduce_add_pd(_mm512_add_pd(x0, x1));
}
#endif

// Step 4. Residuals and the gradients w.r.t. x̂ (fvu, into GX) and ê (AuxK,
// into GA when EH is set), per row. With Multi-TopK (mt.TH set) XH is the
// reconstruction at the target k, x̂_k = XH + TH the one at k: the loss
// ‖x̂_t − x‖² + w‖b_dec + β(x̂_k − b_dec) − x‖² (over Σ‖x − x̄‖²) gives the
// entries within the target k GX = g_t + β g_k, the tail GT = β g_k, and
// b_dec directly GB = g_t + g_k.
template <typename T>
StepSums ResidualGradients(const T* X, const T* XC, const T* XH, const T* EH, const T* bdec, int64_t B, int64_t d,
                           double c_main_d, double c_aux_d, bool auxk_fit, const MultiTopKRows<T>& mt, T* GX, T* GA) {
  const bool multi = mt.TH != nullptr;
  std::vector<double> sse_row(static_cast<size_t>(B)), aux_row(static_cast<size_t>(B), 0.0);
  std::vector<double> rnorm_row(static_cast<size_t>(B)), xnorm_row(static_cast<size_t>(B));
  std::vector<double> sse_t_row(multi ? static_cast<size_t>(B) : 0), sse_c_row(multi ? static_cast<size_t>(B) : 0);
  const T c_main = static_cast<T>(c_main_d), c_aux = static_cast<T>(c_aux_d), c_cur = static_cast<T>(mt.c_cur);
  at::parallel_for(0, B, internal::GrainFor(4 * d), [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const T* xh = XH + b * d;
      const T* xr = X + b * d;
      const T* xcr = XC + b * d;
      T* g = GX + b * d;
      double sse = 0, rn = 0, xn = 0;
      if (multi) {
        const T* th = mt.TH + b * d;
        T* gt = mt.GT + b * d;
        T* gb = mt.GB + b * d;
        // x̂_k − b_dec = xh − b_dec + th; β fitted against x − b_dec.
        double num = 0, den = 0, sse_t = 0, sse_c = 0;
        for (int64_t i = 0; i < d; ++i) {
          const double r = static_cast<double>(xh[i]) - bdec[i] + th[i];
          num += r * xcr[i];
          den += r * r;
        }
        T beta = 1;
        if (mt.fit && den > 0) beta = static_cast<T>(std::clamp(num / den, 0.0, 1.0));
        for (int64_t i = 0; i < d; ++i) {
          const T et = xh[i] - xr[i];
          const T rk = xh[i] - bdec[i] + th[i];  // x̂_k − b_dec
          const T e = rk - xcr[i];               // x̂_k − x
          const T ec = beta * rk - xcr[i];       // the fitted current-k residual
          sse_t += static_cast<double>(et) * et;
          sse += static_cast<double>(e) * e;
          sse_c += static_cast<double>(ec) * ec;
          const T gk = c_cur * ec;
          gt[i] = beta * gk;
          g[i] = c_main * et + gt[i];
          gb[i] = c_main * et + gk;
          rn += static_cast<double>(rk) * rk;
          xn += static_cast<double>(xcr[i]) * xcr[i];
        }
        sse_t_row[b] = sse_t;
        sse_c_row[b] = sse_c;
      } else {
        ResidualRow(xh, xr, xcr, bdec, d, c_main, g, &sse, &rn, &xn);
      }
      sse_row[b] = sse;
      rnorm_row[b] = std::sqrt(rn);
      xnorm_row[b] = std::sqrt(xn);
      // AuxK's target: the residual of XH (with Multi-TopK, of the target k).
      if (EH != nullptr) aux_row[b] = AuxKRow(EH + b * d, xr, xh, d, auxk_fit, c_aux, GA + b * d);
    }
  });
  StepSums s;
  for (int64_t b = 0; b < B; ++b) {
    s.sse += sse_row[b];
    s.recon_norm += rnorm_row[b];
    s.input_norm += xnorm_row[b];
    s.aux += aux_row[b];
    if (multi) {
      s.sse_target += sse_t_row[b];
      s.sse_cur += sse_c_row[b];
    }
  }
  return s;
}

// Kernels of the sparse backward and of Adam. float with AVX-512: explicit
// lanes with several accumulators (GCC's own vectorisation of these
// reductions is one dependent FMA chain, or gathers: GlobalGradNorm's loop ran
// at 3 GB/s, latency-bound; docs/performance.md "non-GEMM share"). Others:
// plain loops. Each fixes its summation order, so every caller of one kernel
// gets the same bits.

// Σ x·y with four accumulators.
template <typename T>
inline T Dot4(int64_t n, const T* __restrict x, const T* __restrict y) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += x[i] * y[i];
    s1 += x[i + 1] * y[i + 1];
    s2 += x[i + 2] * y[i + 2];
    s3 += x[i + 3] * y[i + 3];
  }
  for (; i < n; ++i) s0 += x[i] * y[i];
  return (s0 + s1) + (s2 + s3);
}
// Σ f² in double.
template <typename T>
inline double SumSquares(int64_t n, const T* __restrict f) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(f[i]) * f[i];
    s1 += static_cast<double>(f[i + 1]) * f[i + 1];
    s2 += static_cast<double>(f[i + 2]) * f[i + 2];
    s3 += static_cast<double>(f[i + 3]) * f[i + 3];
  }
  for (; i < n; ++i) s0 += static_cast<double>(f[i]) * f[i];
  return (s0 + s1) + (s2 + s3);
}
// Adds Σ_q a[q]·g[q] into gd and Σ_q c[q]·x[q] into ge (rows of d), or
// writes them there when `first`: per element, the sums run in q order.
template <typename T>
inline void AccumulateGroup(int64_t d, int64_t m, const T* const* g, const T* const* x, const T* a, const T* c,
                            bool first, T* __restrict ge, T* __restrict gd) {
  if (first) {
    std::memset(ge, 0, sizeof(T) * d);
    std::memset(gd, 0, sizeof(T) * d);
  }
  for (int64_t q = 0; q < m; ++q) {
    Axpy(d, a[q], g[q], gd);
    Axpy(d, c[q], x[q], ge);
  }
}
#if defined(__AVX512F__)
template <>
inline float Dot4<float>(int64_t n, const float* __restrict x, const float* __restrict y) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(y + i + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(y + i + 48), s3);
  }
  for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), s0);
  float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}
// Columns [c0, c0 + r) with 16(U − 1) < r ≤ 16U of AccumulateGroup<float>:
// U vectors of each sum in registers, the last one masked (masked-off lanes
// are neither read nor written).
template <int U>
inline void AccumulateCols(int64_t c0, int64_t r, int64_t m, const float* const* g, const float* const* x,
                           const float* a, const float* c, bool first, float* __restrict ge, float* __restrict gd) {
  const __mmask16 last = static_cast<__mmask16>((1u << (r - 16 * (U - 1))) - 1u);
  __mmask16 mk[U];
  __m512 D[U], E[U];
  for (int u = 0; u < U; ++u) {
    mk[u] = u == U - 1 ? last : static_cast<__mmask16>(0xFFFF);
    D[u] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mk[u], gd + c0 + 16 * u);
    E[u] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mk[u], ge + c0 + 16 * u);
  }
  for (int64_t q = 0; q < m; ++q) {
    const float* gq = g[q] + c0;
    const float* xq = x[q] + c0;
    const __m512 va = _mm512_set1_ps(a[q]), vc = _mm512_set1_ps(c[q]);
    for (int u = 0; u < U; ++u) {
      D[u] = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(mk[u], gq + 16 * u), D[u]);
      E[u] = _mm512_fmadd_ps(vc, _mm512_maskz_loadu_ps(mk[u], xq + 16 * u), E[u]);
    }
  }
  for (int u = 0; u < U; ++u) {
    _mm512_mask_storeu_ps(gd + c0 + 16 * u, mk[u], D[u]);
    _mm512_mask_storeu_ps(ge + c0 + 16 * u, mk[u], E[u]);
  }
}
// Columns [c0, c0 + 128) of the group's sums, added into D (Σ a·g) and E
// (Σ c·x), eight vectors each, in q order.
inline void AccumulateBlock(int64_t c0, int64_t m, const float* const* g, const float* const* x, const float* a,
                            const float* c, __m512* D, __m512* E) {
  for (int64_t q = 0; q < m; ++q) {
    const float* gq = g[q] + c0;
    const float* xq = x[q] + c0;
    const __m512 va = _mm512_set1_ps(a[q]), vc = _mm512_set1_ps(c[q]);
    for (int u = 0; u < 8; ++u) {
      D[u] = _mm512_fmadd_ps(va, _mm512_loadu_ps(gq + 16 * u), D[u]);
      E[u] = _mm512_fmadd_ps(vc, _mm512_loadu_ps(xq + 16 * u), E[u]);
    }
  }
}
// Column blocks of 128 held in 16 registers across the group's rows, so
// the accumulators are not loaded and stored once per row (the row-at-a-time
// axpy's L1 traffic bounded the latent gradients; docs/performance.md).
template <>
inline void AccumulateGroup<float>(int64_t d, int64_t m, const float* const* g, const float* const* x, const float* a,
                                   const float* c, bool first, float* __restrict ge, float* __restrict gd) {
  constexpr int64_t kCols = 128;
  int64_t c0 = 0;
  for (; c0 + kCols <= d; c0 += kCols) {
    __m512 D[8], E[8];
    for (int u = 0; u < 8; ++u) {
      D[u] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(gd + c0 + 16 * u);
      E[u] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(ge + c0 + 16 * u);
    }
    AccumulateBlock(c0, m, g, x, a, c, D, E);
    for (int u = 0; u < 8; ++u) {
      _mm512_storeu_ps(gd + c0 + 16 * u, D[u]);
      _mm512_storeu_ps(ge + c0 + 16 * u, E[u]);
    }
  }
  // The columns past the last block (all of them below d 128): the same
  // register scheme with U ≤ 8 vectors, the last one masked; per element the
  // same fused multiply-adds in the same q order as a scalar std::fma loop.
  switch ((d - c0 + 15) / 16) {
    case 0: break;
    case 1: AccumulateCols<1>(c0, d - c0, m, g, x, a, c, first, ge, gd); break;
    case 2: AccumulateCols<2>(c0, d - c0, m, g, x, a, c, first, ge, gd); break;
    case 3: AccumulateCols<3>(c0, d - c0, m, g, x, a, c, first, ge, gd); break;
    case 4: AccumulateCols<4>(c0, d - c0, m, g, x, a, c, first, ge, gd); break;
    case 5: AccumulateCols<5>(c0, d - c0, m, g, x, a, c, first, ge, gd); break;
    case 6: AccumulateCols<6>(c0, d - c0, m, g, x, a, c, first, ge, gd); break;
    case 7: AccumulateCols<7>(c0, d - c0, m, g, x, a, c, first, ge, gd); break;
    default: AccumulateCols<8>(c0, d - c0, m, g, x, a, c, first, ge, gd); break;
  }
}
// A latent whose entries form one group, d a multiple of 128: AccumulateGroup
// (first), then the projection gd −= gdw·w (w null: none), each row's Σ g² in
// double (into *sq when set) and the rows streamed to ge_out and gd_out
// straight from the registers (no thread-local row, no second pass over it).
inline void AccumulateStoreGroup(int64_t d, int64_t m, const float* const* g, const float* const* x, const float* a,
                                 const float* c, const float* w, float gdw, double* sq, float* __restrict ge_out,
                                 float* __restrict gd_out) {
  constexpr int64_t kCols = 128;
  const bool aligned =
      (reinterpret_cast<uintptr_t>(ge_out) % 64 == 0) && (reinterpret_cast<uintptr_t>(gd_out) % 64 == 0);
  const __m512 vgdw = _mm512_set1_ps(gdw);
  __m512d s0 = _mm512_setzero_pd(), s1 = s0;
  for (int64_t c0 = 0; c0 < d; c0 += kCols) {
    __m512 D[8], E[8];
    for (int u = 0; u < 8; ++u) {
      D[u] = _mm512_setzero_ps();
      E[u] = _mm512_setzero_ps();
    }
    AccumulateBlock(c0, m, g, x, a, c, D, E);
    for (int u = 0; u < 8; ++u) {
      if (w != nullptr) D[u] = _mm512_fnmadd_ps(vgdw, _mm512_loadu_ps(w + c0 + 16 * u), D[u]);
      if (sq != nullptr) {
        const __m512d d0 = _mm512_cvtps_pd(_mm512_castps512_ps256(D[u]));
        const __m512d d1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(D[u], 1));
        const __m512d e0 = _mm512_cvtps_pd(_mm512_castps512_ps256(E[u]));
        const __m512d e1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(E[u], 1));
        s0 = _mm512_fmadd_pd(d0, d0, _mm512_fmadd_pd(e0, e0, s0));
        s1 = _mm512_fmadd_pd(d1, d1, _mm512_fmadd_pd(e1, e1, s1));
      }
      if (aligned) {
        _mm512_stream_ps(gd_out + c0 + 16 * u, D[u]);
        _mm512_stream_ps(ge_out + c0 + 16 * u, E[u]);
      } else {
        _mm512_storeu_ps(gd_out + c0 + 16 * u, D[u]);
        _mm512_storeu_ps(ge_out + c0 + 16 * u, E[u]);
      }
    }
  }
  if (sq != nullptr) *sq = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
}
#endif

// Where the latent pass may store gradient rows itself (all null: nowhere):
// rows l of ge and gd (n×d), and Σ g² of both into sq[l] (null: not summed).
template <typename T>
struct DirectRows {
  T* ge = nullptr;
  T* gd = nullptr;
  double* sq = nullptr;
};

// A latent's rows stored straight from the registers (AccumulateStoreGroup)
// when `single` (its entries are one group), the rows go somewhere, T is
// float, d a multiple of 128 and the build has AVX-512; false otherwise
// (nothing done). Without it the rows went through the thread-local
// buffer, a second pass for the projection, one for Σ g² and a copy with
// streaming stores: 121-123 against 89-94 ms at d 4096 / 32768 / batch
// 1024, 75-78 against 57-60 at d 2048 / 65536 (docs/performance.md).
template <typename T>
inline bool StoreGroupDirect(int64_t d, int64_t m, const T* const* g, const T* const* x, const T* a, const T* c,
                             const T* w, T gdw, bool single, const DirectRows<T>& direct, int64_t l) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (!single || direct.ge == nullptr || d % 128 != 0) return false;
    AccumulateStoreGroup(d, m, g, x, a, c, w, gdw, direct.sq != nullptr ? direct.sq + l : nullptr, direct.ge + l * d,
                         direct.gd + l * d);
    return true;
  }
#endif
  return false;
}
#if defined(__AVX512F__)
template <>
inline double SumSquares<float>(int64_t n, const float* __restrict f) {
  __m512d s0 = _mm512_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512d x0 = _mm512_cvtps_pd(_mm256_loadu_ps(f + i)), x1 = _mm512_cvtps_pd(_mm256_loadu_ps(f + i + 8));
    const __m512d x2 = _mm512_cvtps_pd(_mm256_loadu_ps(f + i + 16)), x3 = _mm512_cvtps_pd(_mm256_loadu_ps(f + i + 24));
    s0 = _mm512_fmadd_pd(x0, x0, s0);
    s1 = _mm512_fmadd_pd(x1, x1, s1);
    s2 = _mm512_fmadd_pd(x2, x2, s2);
    s3 = _mm512_fmadd_pd(x3, x3, s3);
  }
  double s = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(s0, s1), _mm512_add_pd(s2, s3)));
  for (; i < n; ++i) s += static_cast<double>(f[i]) * f[i];
  return s;
}
#endif

// Adam's constants for one step (torch.optim.Adam's formula; bias
// corrections bc1, bc2 of this step).
template <typename T>
struct AdamConsts {
  T b1, b2, omb1, omb2, step, inv_sqrt_bc2, eps, cs;
  AdamConsts(const AdamConfig& cfg, double bc1, double bc2)
      : b1(static_cast<T>(cfg.beta1)),
        b2(static_cast<T>(cfg.beta2)),
        omb1(static_cast<T>(1 - cfg.beta1)),
        omb2(static_cast<T>(1 - cfg.beta2)),
        step(static_cast<T>(cfg.lr / bc1)),
        inv_sqrt_bc2(static_cast<T>(1.0 / std::sqrt(bc2))),
        eps(static_cast<T>(cfg.eps)),
        cs(static_cast<T>(cfg.clip_scale)) {}
};

// One row of Adam over `cols` elements with the clip-scaled gradient gr, then
// (renorm) the row scaled to unit norm and (lr set) its bf16 copy refreshed.
// gr null: a zero gradient, not read (the values that reading zeros gives).
template <typename T>
inline void AdamRow(T* __restrict pr, const T* __restrict gr, T* __restrict mr, T* __restrict vr, int64_t cols,
                    const AdamConsts<T> k, bool renorm, float* __restrict lr) {
  const auto update = [&](auto grad) {
#pragma omp simd
    for (int64_t i = 0; i < cols; ++i) {
      const T gi = grad(i);
      const T mi = k.b1 * mr[i] + k.omb1 * gi;
      const T vi = k.b2 * vr[i] + k.omb2 * gi * gi;
      mr[i] = mi;
      vr[i] = vi;
      pr[i] = pr[i] - k.step * mi / (std::sqrt(vi) * k.inv_sqrt_bc2 + k.eps);
    }
  };
  if (gr != nullptr) {
    update([&](int64_t i) { return gr[i] * k.cs; });
  } else {
    update([](int64_t) { return T(0); });
  }
  if (renorm) {
    const T nrm = std::sqrt(Dot4(cols, static_cast<const T*>(pr), static_cast<const T*>(pr)));
    if (nrm > 0) {
      const T inv = T(1) / nrm;
      for (int64_t i = 0; i < cols; ++i) pr[i] *= inv;
    }
  }
  if (lr != nullptr)
    for (int64_t i = 0; i < cols; ++i) lr[i] = RoundToBF16(static_cast<float>(pr[i]));
}

// Rows where `written` (when given) is 0 have a zero gradient that is not
// read: AdamRow with gr null computes what it would from zeros.
template <typename T>
void AdamRows(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, int64_t rows, int64_t cols,
              const AdamConfig& cfg, double bc1, double bc2, bool renorm, float* lowp, const uint8_t* written) {
  const AdamConsts<T> k(cfg, bc1, bc2);
  at::parallel_for(0, rows, internal::GrainFor(8 * cols), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r)
      AdamRow(p + r * cols, written == nullptr || written[r] ? g + r * cols : nullptr, m + r * cols, v + r * cols, cols,
              k, renorm, lowp != nullptr ? lowp + r * cols : nullptr);
  });
}

// Step 5 for latents [lo, hi), on the calling thread: for each, its
// gradient rows into ge (∂W_enc[l]) and gd (∂W_dec[l], projected off the
// unit row when `project`), both d long, then row(l, ge, gd, ∂b_enc[l]);
// or, where StoreGroupDirect can (`direct` set), the rows straight into
// direct's rows l and row(l, nullptr, nullptr, ∂b_enc[l]).
// ∂a = g·W_dec[l] (zero unless a > 0), ∂W_dec[l] = Σ a g, ∂W_enc[l] =
// Σ ∂a (x − b_dec), ∂b_enc[l] = Σ ∂a, over the latent's entries (rows
// ascending: deterministic, no atomics).
template <typename T, typename RowFn>
void LatentRowGradients(const T* Wdec, int64_t d, const FiredByLatent<T>& f, const T* XC, const T* const grad_of[3],
                        bool project, int64_t lo, int64_t hi, T* ge, T* gd, const DirectRows<T>& direct, RowFn&& row) {
  // Entries in groups of up to kGroup (at d 768 an entry's two rows are
  // 6 KiB, a group's 192 KiB stay in L2 for the second pass): first every
  // entry's ∂a = g·W_dec[l], then the rows' sums.
  constexpr int64_t kGroup = 32;
  T ga[kGroup], av[kGroup];
  const T* grow[kGroup];
  const T* xrow[kGroup];
  const int64_t n_items = static_cast<int64_t>(f.items.size());
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(T));
  const int64_t ahead = PrefetchAhead(row_bytes);
  for (int64_t l = lo; l < hi; ++l) {
    const T* w = Wdec + l * d;
    // Short rows: the decoder row of the next latent with entries, into L2
    // (rows of latents without entries are not read at all). Fetching every
    // next row non-temporally, as before, also fetched the unread rows (at
    // d 2048, where rows are now left to the hardware, that way took 125 ms
    // against 92 for this one; docs/performance.md).
    if (ahead > 0 && f.offs[l] != f.offs[l + 1]) {
      int64_t nl = l + 1;
      while (nl < hi && f.offs[nl] == f.offs[nl + 1]) ++nl;
      if (nl < hi) {
        const char* wn = reinterpret_cast<const char*>(Wdec + nl * d);
        for (int64_t off = 0; off < row_bytes; off += 64) __builtin_prefetch(wn + off, 0, 1);
      }
    }
    T gb = 0, gdw = 0;  // ∂b_enc[l] and ∂W_dec[l]·W_dec[l] = Σ a ∂a
    bool stored = false;
    const int64_t end = f.offs[l + 1];
    if (f.offs[l] == end) {
      std::memset(ge, 0, sizeof(T) * d);
      std::memset(gd, 0, sizeof(T) * d);
    }
    for (int64_t g0 = f.offs[l]; g0 < end; g0 += kGroup) {
      const int64_t m = std::min(kGroup, end - g0);
      for (int64_t q = 0; q < m; ++q) {
        const auto& it = f.items[g0 + q];
        grow[q] = grad_of[it.src] + int64_t{it.row} * d;
        xrow[q] = XC + int64_t{it.row} * d;
        // The rows of the entries ahead are random: start fetching them now.
        if (ahead > 0) {
          const auto& next = f.items[g0 + q + ahead < n_items ? g0 + q + ahead : g0 + q];
          const char* gn = reinterpret_cast<const char*>(grad_of[next.src] + int64_t{next.row} * d);
          const char* xn = reinterpret_cast<const char*>(XC + int64_t{next.row} * d);
          for (int64_t off = 0; off < row_bytes; off += 64) {
            __builtin_prefetch(gn + off);
            __builtin_prefetch(xn + off);
          }
        }
        av[q] = it.a;
        ga[q] = Dot4(d, grow[q], w);
        gb += ga[q];
        gdw += av[q] * ga[q];
      }
      if (StoreGroupDirect(d, m, grow, xrow, av, ga, project && gdw != 0 ? w : nullptr, gdw,
                           g0 == f.offs[l] && end - g0 <= kGroup, direct, l)) {
        stored = true;
        break;
      }
      AccumulateGroup(d, m, grow, xrow, av, ga, g0 == f.offs[l], ge, gd);
    }
    if (stored) {
      row(l, nullptr, nullptr, gb);
      continue;
    }
    // Off the unit row: gd −= (gd·w) w, with gd·w = Σ a (g·w) from the entries.
    if (project && gdw != 0) Axpy(d, -gdw, w, gd);
    row(l, ge, gd, gb);
  }
}

// Step 5 into the dense gradients. Rows accumulate in thread-local buffers
// and are written once with streaming stores, so the 2·n·d gradient bytes do
// not evict the residual rows that the next latents read. `sparse`
// (StepConfig::sparse_grads): latents without entries are not written
// (grads->rows_written) and each latent's Σ grad² goes to row_sq (summed in
// latent order by the caller: the same norm at any thread count).
template <typename T>
void LatentGradients(const SaeParams& p, const FiredByLatent<T>& f, const T* XC, const T* GX, const T* GA, const T* GT,
                     bool project, bool sparse, std::vector<double>* row_sq, SaeGrads* grads) {
  const int64_t d = p.d_in(), n = p.latents();
  const T* Wdec = p.W_dec.data_ptr<T>();
  T* gWenc = grads->W_enc.data_ptr<T>();
  T* gWdec = grads->W_dec.data_ptr<T>();
  T* gbenc = grads->b_enc.data_ptr<T>();
  const int64_t n_items = static_cast<int64_t>(f.items.size());
  const T* const grad_of[3] = {GX, GA, GT};  // by Item::src
  const int64_t per_latent = 3 * d * (n_items / std::max<int64_t>(n, 1)) + 2 * d;
  if (sparse) {
    grads->rows_written.assign(static_cast<size_t>(n), 0);
    row_sq->assign(static_cast<size_t>(n), 0.0);
  }
  uint8_t* written = sparse ? grads->rows_written.data() : nullptr;
  double* sq = sparse ? row_sq->data() : nullptr;
  const DirectRows<T> direct{gWenc, gWdec, sq};
  at::parallel_for(0, n, internal::GrainFor(per_latent), [&](int64_t lo, int64_t hi) {
    std::vector<T> ge_buf(static_cast<size_t>(d)), gd_buf(static_cast<size_t>(d));
    LatentRowGradients(Wdec, d, f, XC, grad_of, project, lo, hi, ge_buf.data(), gd_buf.data(), direct,
                       [&](int64_t l, const T* ge, const T* gd, T gb) {
                         gbenc[l] = gb;
                         if (ge == nullptr) {  // stored by the pass, sq[l] holds Σ g² of both rows
                           if (sparse) {
                             written[l] = 1;
                             sq[l] += static_cast<double>(gb) * gb;
                           }
                           return;
                         }
                         if (sparse) {
                           if (f.offs[l] == f.offs[l + 1]) return;  // zero rows, left unwritten
                           written[l] = 1;
                           sq[l] = SumSquares(d, ge) + SumSquares(d, gd) + static_cast<double>(gb) * gb;
                         }
                         internal::StoreRow(d, ge, gWenc + l * d);
                         internal::StoreRow(d, gd, gWdec + l * d);
                       });
  });
#if defined(__AVX2__)
  _mm_sfence();
#endif
}

// Removes from each listed decoder row's gradient its component along the
// (unit) row.
template <typename T>
void ProjectDecoderRows(const SaeParams& p, const std::vector<int64_t>& rows, SaeGrads* grads) {
  const int64_t d = p.d_in();
  const T* Wdec = p.W_dec.data_ptr<T>();
  T* gWdec = grads->W_dec.data_ptr<T>();
  at::parallel_for(0, static_cast<int64_t>(rows.size()), internal::GrainFor(2 * d), [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      T* gd = gWdec + rows[t] * d;
      const T* w = Wdec + rows[t] * d;
      const T dot = Dot(d, gd, w);
      if (dot != 0) Axpy(d, -dot, w, gd);
    }
  });
}

// The CPU step (ALGORITHMS.md §1, §2, §4): steps 1-5 above, then b_dec's
// gradient (6), Ghost Grads over the dead set (7) and the metrics (8).
template <typename T>
absl::Status ComputeGradientsT(const SaeParams& p, const at::Tensor& x_in, const StepConfig& cfg, SaeGrads* grads,
                               StepResult* res) {
  const int64_t B = x_in.size(0), d = p.d_in();
  const at::ScalarType st = p.W_enc.scalar_type();
  const RemedyPlan rp = internal::PlanRemedy(cfg, d);
  at::Tensor x = x_in.contiguous();
  const T* X = x.data_ptr<T>();
  PhaseClock clock(res);
  // Σ‖x − x̄‖² (fvu's denominator) in double.
  double total_var = cfg.total_var;
  at::Tensor* xc_slot = cfg.workspace ? &cfg.workspace->xc : nullptr;
  at::Tensor xc;  // x − b_dec, B×d
  if (total_var <= 0) {
    xc = Reuse(xc_slot, {B, d}, st);
    total_var = TotalVariance(X, B, d, p.b_dec.data_ptr<T>(), xc.data_ptr<T>());
  } else {
    xc = CenterRows<T>(x, p.b_dec, xc_slot);
  }
  const double denom = total_var > 0 ? total_var : 1.0;
  const T* XC = xc.data_ptr<T>();
  clock.End("prepare");

  Selection sel;
  if (cfg.screen != nullptr) {
    SAE_RETURN_IF_ERROR(ScreenedSelect<T>(p, xc, cfg, rp, &sel, res));
    clock.Restart();
  } else {
    SAE_RETURN_IF_ERROR(EncodeAndSelect<T>(p, xc, cfg, rp, &sel));
    if (sel.fused) {
      // GEMM and top-k interleave per block: one phase (plus the weights' reorder).
      clock.End("encode_fused");
      clock.SplitLast("encode_prepare", sel.gemm_seconds, sel.gemm_cpu_seconds);
    } else {
      clock.End("encode_topk");
      clock.SplitLast("encode_gemm", sel.gemm_seconds, sel.gemm_cpu_seconds);
    }
  }

  // Multi-TopK: the first kt entries of each row form the target-k reconstruction.
  const internal::MultiTopKPlan mp = internal::PlanMultiTopK(cfg);
  const int64_t kt = mp.kt;
  const bool multi = mp.multi;
  const double w_cur = mp.w_cur;
  // (One per thread: a step does not call another step.)
  thread_local FiredByLatent<T> f_buf;
  SortByLatent<T>(sel, p.latents(), internal::FireK(cfg), kt, &res->fired, &f_buf);
  const FiredByLatent<T>& f = f_buf;
  clock.End("sort");

  StepWorkspace* ws = cfg.workspace;
  at::Tensor xhat = Reuse(ws ? &ws->xhat : nullptr, {B, d}, st);
  at::Tensor gx = Reuse(ws ? &ws->gx : nullptr, {B, d}, st);
  at::Tensor ehat = rp.auxk ? at::zeros({B, d}, st) : at::Tensor();
  at::Tensor gaux = rp.auxk ? at::empty({B, d}, st) : at::Tensor();
  T* EH = rp.auxk ? ehat.data_ptr<T>() : nullptr;
  T* GA = rp.auxk ? gaux.data_ptr<T>() : nullptr;
  at::Tensor tail = multi ? at::zeros({B, d}, st) : at::Tensor();
  at::Tensor gtail = multi ? at::empty({B, d}, st) : at::Tensor();
  at::Tensor gbdec = multi ? at::empty({B, d}, st) : at::Tensor();
  MultiTopKRows<T> mt;
  if (multi) {
    mt.TH = tail.data_ptr<T>();
    mt.GT = gtail.data_ptr<T>();
    mt.GB = gbdec.data_ptr<T>();
    mt.c_cur = 2.0 * w_cur / denom;
    mt.fit = cfg.current_k_fit;
  }
  Decode<T>(p, f, B, xhat.data_ptr<T>(), EH, multi ? tail.data_ptr<T>() : nullptr);
  clock.End("decode");

  const StepSums sums =
      ResidualGradients<T>(X, XC, xhat.data_ptr<T>(), EH, p.b_dec.data_ptr<T>(), B, d, 2.0 / denom,
                           2.0 * cfg.aux_coefficient * rp.aux_scale / denom, cfg.auxk_fit, mt, gx.data_ptr<T>(), GA);
  clock.End("residual");
  // (Ghost Grads add to the dead rows after this pass: dense gradients then.)
  const bool sparse = cfg.sparse_grads && !rp.ghost;
  thread_local std::vector<double> row_sq;
  LatentGradients<T>(p, f, XC, gx.data_ptr<T>(), GA, mt.GT, cfg.project_decoder_grad, sparse, &row_sq, grads);
  clock.End("scatter");

  // 6. b_dec: Σ_rows ∂/∂x̂ from the decode, minus Σ_l (∂/∂b_enc[l]) W_enc[l]
  //    from the encoder input x − b_dec.
  //    (Multi-TopK: its direct gradient GB, which the fit makes differ from gx.)
  BDecGradient<T>(multi ? gbdec.data_ptr<T>() : gx.data_ptr<T>(), B, p.W_enc.data_ptr<T>(), grads->b_enc.data_ptr<T>(),
                  p.latents(), d, grads->b_dec.data_ptr<T>());
  if (sparse) {
    double s = SumSquares(d, static_cast<const T*>(grads->b_dec.data_ptr<T>()));
    for (const double r : row_sq) s += r;
    grads->sum_sq = s;
  }
  // 7. Ghost Grads: dense over the dead set only (ALGORITHMS.md §4). It adds
  //    to dead decoder rows already projected in step 5, so those are
  //    projected again (P is linear and idempotent: P(Pg + h) = Pg + Ph).
  double ghost_loss = 0;
  if (rp.ghost) {
    at::Tensor dead_t = at::from_blob(const_cast<int64_t*>(rp.dead->data()), {rp.nd}, at::kLong).clone();
    ghost_loss = internal::AddGhostGrads(p, x, xc, xhat, sel.zD, dead_t, cfg.aux_coefficient / denom, grads);
  }
  clock.End("b_dec_ghost");
  if (cfg.project_decoder_grad && rp.ghost) ProjectDecoderRows<T>(p, *rp.dead, grads);
  clock.End("project");

  // 8. Metrics.
  internal::FillStepMetrics(sums, f.active, total_var, ghost_loss, cfg, rp, B, d, res);
  return absl::OkStatus();
}

}  // namespace

namespace internal {

void FillStepMetrics(const StepSums& s, int64_t active, double total_var, double ghost_loss, const StepConfig& cfg,
                     const RemedyPlan& rp, int64_t B, int64_t d, StepResult* res) {
  const double denom = total_var > 0 ? total_var : 1.0;
  const MultiTopKPlan mp = PlanMultiTopK(cfg);
  res->sse = s.sse;
  res->recon_norm = s.recon_norm;
  res->input_norm = s.input_norm;
  res->active = active;
  res->total_var = total_var;
  res->mse = s.sse / static_cast<double>(B * d);
  res->fvu = s.sse / denom;
  res->fvu_target = mp.multi ? s.sse_target / denom : res->fvu;
  res->l0 = static_cast<double>(active) / static_cast<double>(B);
  res->aux_loss = rp.auxk ? cfg.aux_coefficient * rp.aux_scale * s.aux / denom : rp.ghost ? ghost_loss : 0;
  res->loss = (mp.multi ? res->fvu_target + mp.w_cur * s.sse_cur / denom : res->fvu) + res->aux_loss;
}

RemedyPlan PlanRemedy(const StepConfig& cfg, int64_t d) {
  static const std::vector<int64_t> kNoDead;
  RemedyPlan rp;
  rp.dead = cfg.dead ? cfg.dead : &kNoDead;
  rp.nd = static_cast<int64_t>(rp.dead->size());
  rp.auxk = cfg.remedy == Remedy::kAuxK && rp.nd > 0 && cfg.aux_coefficient != 0;
  rp.ghost = cfg.remedy == Remedy::kGhostGrads && rp.nd > 0 && cfg.aux_coefficient != 0;
  const int64_t half_d = std::max<int64_t>(1, d / 2);
  rp.k_aux = rp.auxk ? std::min(half_d, rp.nd) : 0;
  rp.aux_scale = rp.auxk ? std::min(1.0, static_cast<double>(rp.nd) / half_d) : 0.0;
  return rp;
}

absl::Status CheckShapes(const SaeParams& p, const at::Tensor& x, int64_t k) {
  if (!p.W_enc.defined() || p.W_enc.dim() != 2)
    return absl::FailedPreconditionError("SAE parameters are not initialised");
  if (x.dim() != 2 || x.size(1) != p.d_in())
    return absl::InvalidArgumentError(
        absl::StrCat("batch has ", x.dim() == 2 ? x.size(1) : -1, " columns, the SAE expects d_in ", p.d_in()));
  if (x.scalar_type() != p.W_enc.scalar_type()) return absl::InvalidArgumentError("batch dtype differs from the SAE's");
  if (k < 1 || k > p.latents())
    return absl::InvalidArgumentError(absl::StrCat("k (", k, ") must be in [1, latents (", p.latents(), ")]"));
  if (x.device() != p.W_enc.device())
    return absl::InvalidArgumentError("batch and SAE parameters are on different devices");
  return absl::OkStatus();
}

double AddGhostGrads(const SaeParams& p, const at::Tensor& x, const at::Tensor& xc, const at::Tensor& xhat,
                     const at::Tensor& zD, const at::Tensor& dead_t, double c, SaeGrads* grads) {
  at::Tensor WdD = p.W_dec.index_select(0, dead_t);  // |D|×d
  at::Tensor WeD = p.W_enc.index_select(0, dead_t);
  at::Tensor r = x - xhat;  // stop-gradient residual
  // exp(z − c) with c the row maximum cannot overflow. With ε scaled by
  // exp(−c) the scaled g and every gradient equal those of exp(z) exactly.
  at::Tensor zmax = std::get<0>(zD.max(1, true));
  at::Tensor E = (zD - zmax).exp();
  at::Tensor graw = at::mm(E, WdD);
  at::Tensor rn = r.norm(2, 1, true), gn = graw.norm(2, 1, true);
  const double eps = 1e-8;
  at::Tensor s = rn / (2 * gn + eps * (-zmax).exp());
  at::Tensor diff = graw * s - r;
  at::Tensor m = diff * diff;
  at::Tensor w = (r * r) / (m + eps);
  const double loss = (w * m).sum(at::kDouble).item<double>() * c;
  at::Tensor dgraw = (w * diff) * (2 * c) * s;  // ∂/∂g, through the stop-gradient scale
  at::Tensor dzD = at::mm(dgraw, WdD.t()) * E;
  grads->W_dec.index_add_(0, dead_t, at::mm(E.t(), dgraw));
  grads->W_enc.index_add_(0, dead_t, at::mm(dzD.t(), xc));
  at::Tensor colsum = dzD.sum(0);
  grads->b_enc.index_add_(0, dead_t, colsum);
  grads->b_dec.sub_(at::mv(WeD.t(), colsum));
  return loss;
}

}  // namespace internal

absl::Status ComputeGradients(const SaeParams& params, const at::Tensor& x, const StepConfig& cfg, SaeGrads* grads,
                              StepResult* result) {
  SAE_RETURN_IF_ERROR(internal::CheckShapes(params, x, cfg.k));
  grads->rows_written.clear();
  grads->sum_sq = -1;
  if ((cfg.aten || !params.W_enc.device().is_cpu()) && cfg.screen != nullptr)
    return absl::UnimplementedError(
        absl::StrCat("train.encoder: int8_screened is implemented for the CPU step only, not for ",
                     params.W_enc.device().is_cpu() ? std::string("the ATen step") : params.W_enc.device().str()));
  if (cfg.aten || !params.W_enc.device().is_cpu()) return internal::ComputeGradientsATen(params, x, cfg, grads, result);
  try {
    at::NoGradGuard no_grad;
    if (params.W_enc.scalar_type() == at::kDouble) return ComputeGradientsT<double>(params, x, cfg, grads, result);
    if (params.W_enc.scalar_type() == at::kFloat) return ComputeGradientsT<float>(params, x, cfg, grads, result);
    return absl::InvalidArgumentError("SAE parameters must be float32 or float64");
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("sae step: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<EncodeResult> Encode(const SaeParams& p, const at::Tensor& x_in, int64_t k) {
  SAE_RETURN_IF_ERROR(internal::CheckShapes(p, x_in, k));
  try {
    at::NoGradGuard no_grad;
    at::Tensor x = x_in.contiguous();
    const int64_t B = x.size(0), n = p.latents();
    EncodeResult out;
    out.indices = at::empty({B, k}, at::kLong);
    out.acts = at::empty({B, k}, x.scalar_type());
    const int64_t R = internal::AutoBlockRows(B, n, x.element_size());
    at::Tensor xc = x - p.b_dec;
    at::Tensor zbuf = at::empty({R, n}, x.scalar_type());
    for (int64_t r0 = 0; r0 < B; r0 += R) {
      const int64_t rows = std::min(R, B - r0);
      at::Tensor zb = zbuf.narrow(0, 0, rows);
      at::addmm_out(zb, p.b_enc, xc.narrow(0, r0, rows), p.W_enc.t());
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sae_encode", [&] {
        const scalar_t* Z = zb.data_ptr<scalar_t>();
        int64_t* I = out.indices.data_ptr<int64_t>();
        scalar_t* V = out.acts.data_ptr<scalar_t>();
        at::parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
          for (int64_t r = lo; r < hi; ++r) internal::SelectTopK(Z + r * n, n, k, I + (r0 + r) * k, V + (r0 + r) * k);
        });
      });
    }
    out.acts.clamp_min_(0);
    // Sparse decode (B·k·d work, no B×k×d temporary).
    out.x_hat = std::get<0>(at::embedding_bag(p.W_dec, out.indices.reshape({-1}), at::arange(0, B * k, k, at::kLong),
                                              false, 0, false, out.acts.reshape({-1})));
    out.x_hat.add_(p.b_dec);
    return out;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("sae encode: ", e.what_without_backtrace()));
  }
}

namespace {
template <typename T>
double SumOfSquares(const T* f, int64_t n) {
  return at::parallel_reduce(
      0, n, internal::GrainFor(1), 0.0,
      [&](int64_t lo, int64_t hi, double acc) { return acc + SumSquares(hi - lo, f + lo); }, std::plus<double>());
}
}  // namespace

double GlobalGradNorm(const SaeGrads& g) {
  if (g.sum_sq >= 0) return std::sqrt(g.sum_sq);
  if (g.flat.defined() && g.flat.device().is_cpu() && g.flat.is_contiguous() &&
      g.flat.numel() == g.W_enc.numel() + g.b_enc.numel() + g.W_dec.numel() + g.b_dec.numel()) {
    // One pass over the flat buffer, in double (several at::norm calls cost
    // a parallel region each: most of the optimizer's time at small d).
    if (g.flat.scalar_type() == at::kFloat) return std::sqrt(SumOfSquares(g.flat.data_ptr<float>(), g.flat.numel()));
    if (g.flat.scalar_type() == at::kDouble) return std::sqrt(SumOfSquares(g.flat.data_ptr<double>(), g.flat.numel()));
  }
  double s = 0;
  for (const at::Tensor* t : {&g.W_enc, &g.b_enc, &g.W_dec, &g.b_dec}) {
    const double n = t->norm().item<double>();
    s += n * n;
  }
  return std::sqrt(s);
}

double ClipScale(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  return std::min(1.0, max_norm / (norm + 1e-6));
}

namespace {

template <typename T>
void AdamUpdateT(SaeParams* p, const SaeGrads& g, const AdamConfig& cfg, AdamState* s, at::Tensor* lowp) {
  s->step += 1;
  const double bc1 = 1 - std::pow(cfg.beta1, static_cast<double>(s->step));
  const double bc2 = 1 - std::pow(cfg.beta2, static_cast<double>(s->step));
  const int64_t n = p->latents(), d = p->d_in();
  float* lp = (lowp != nullptr && lowp->defined()) ? lowp->data_ptr<float>() : nullptr;
  const uint8_t* written = g.rows_written.empty() ? nullptr : g.rows_written.data();
  AdamRows<T>(p->W_enc.data_ptr<T>(), g.W_enc.data_ptr<T>(), s->m_W_enc.data_ptr<T>(), s->v_W_enc.data_ptr<T>(), n, d,
              cfg, bc1, bc2, false, lp, written);
  AdamRows<T>(p->W_dec.data_ptr<T>(), g.W_dec.data_ptr<T>(), s->m_W_dec.data_ptr<T>(), s->v_W_dec.data_ptr<T>(), n, d,
              cfg, bc1, bc2, cfg.renormalize_decoder, nullptr, written);
  AdamRows<T>(p->b_enc.data_ptr<T>(), g.b_enc.data_ptr<T>(), s->m_b_enc.data_ptr<T>(), s->v_b_enc.data_ptr<T>(), 1, n,
              cfg, bc1, bc2, false, nullptr, nullptr);
  AdamRows<T>(p->b_dec.data_ptr<T>(), g.b_dec.data_ptr<T>(), s->m_b_dec.data_ptr<T>(), s->v_b_dec.data_ptr<T>(), 1, d,
              cfg, bc1, bc2, false, nullptr, nullptr);
}

}  // namespace

void AdamUpdate(SaeParams* params, const SaeGrads& grads, const AdamConfig& cfg, AdamState* state,
                at::Tensor* W_enc_lowp) {
  at::NoGradGuard no_grad;
  if (!params->W_enc.device().is_cpu()) {
    internal::AdamUpdateATen(params, grads, cfg, state, W_enc_lowp);
  } else if (params->W_enc.scalar_type() == at::kDouble) {
    AdamUpdateT<double>(params, grads, cfg, state, nullptr);
  } else {
    AdamUpdateT<float>(params, grads, cfg, state, W_enc_lowp);
  }
}

void RoundToBF16InPlace(at::Tensor t) {
  float* f = t.data_ptr<float>();
  const int64_t n = t.numel();
  at::parallel_for(0, n, internal::GrainFor(1), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) f[i] = RoundToBF16(f[i]);
  });
}

}  // namespace sae
