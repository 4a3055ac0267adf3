// The small-d fused encoder (core/sae/small_encoder.h): its pre-activations
// against a float64 dot product, its top-k against a full sort of those
// pre-activations, on ragged shapes, ties, all-negative rows, k = n and rows
// crowded around the threshold.
#include "core/sae/small_encoder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/sae/encoder_gemm.h"
#include "core/sae/sae_step_internal.h"

namespace sae::internal {
namespace {

struct Problem {
  int64_t B, d, n;
  std::vector<float> W, b, x;
};

Problem RandomProblem(int64_t B, int64_t d, int64_t n, uint32_t seed, float bias_mean = 0.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> N;
  Problem p{B, d, n, std::vector<float>(n * d), std::vector<float>(n), std::vector<float>(B * d)};
  for (float& v : p.W) v = N(g) / std::sqrt(static_cast<float>(d));
  for (float& v : p.b) v = bias_mean + 0.1f * N(g);
  for (float& v : p.x) v = N(g);
  return p;
}

// float64 pre-activations and the float32 rounding bound of each: a sum of
// d + 1 terms accumulated in float32 differs from the exact one by at most
// γ_{d+1} Σ|terms| (Higham, Accuracy and Stability §3.1), γ_m = m u / (1 − m u).
void Reference(const Problem& p, std::vector<double>* z, std::vector<double>* bound) {
  z->assign(p.B * p.n, 0.0);
  bound->assign(p.B * p.n, 0.0);
  const double u = std::numeric_limits<float>::epsilon() / 2, m = static_cast<double>(p.d + 1);
  const double gamma = m * u / (1 - m * u);
  for (int64_t r = 0; r < p.B; ++r)
    for (int64_t j = 0; j < p.n; ++j) {
      double s = p.b[j], a = std::fabs(static_cast<double>(p.b[j]));
      for (int64_t t = 0; t < p.d; ++t) {
        const double term = static_cast<double>(p.x[r * p.d + t]) * p.W[j * p.d + t];
        s += term;
        a += std::fabs(term);
      }
      (*z)[r * p.n + j] = s;
      (*bound)[r * p.n + j] = gamma * a;
    }
}

// The top-k by a full stable sort (descending; ties: lower index first).
void SortTopK(const float* z, int64_t n, int64_t k, int64_t* idx, float* val) {
  std::vector<int64_t> o(n);
  std::iota(o.begin(), o.end(), 0);
  std::stable_sort(o.begin(), o.end(), [&](int64_t a, int64_t c) { return z[a] > z[c]; });
  for (int64_t t = 0; t < k; ++t) {
    idx[t] = o[t];
    val[t] = z[o[t]];
  }
}

// Dense against float64; SelectTopK against the sorted Dense output (exact:
// indices equal, values bitwise), and its values against float64 within
// the rounding bound.
void CheckProblem(const Problem& p, int64_t k) {
  SCOPED_TRACE(testing::Message() << "B " << p.B << " d " << p.d << " n " << p.n << " k " << k);
  SmallEncoder enc;
  enc.SetWeights(p.W.data(), p.b.data(), p.n, p.d);
  std::vector<float> z(p.B * p.n);
  enc.Dense(p.x.data(), p.B, z.data());
  std::vector<double> ref, bound;
  Reference(p, &ref, &bound);
  int bad = 0;
  for (int64_t i = 0; i < p.B * p.n && bad < 5; ++i)
    if (!(std::fabs(z[i] - ref[i]) <= bound[i])) {
      ADD_FAILURE() << "z[" << i / p.n << "][" << i % p.n << "] = " << z[i] << ", float64 " << ref[i] << " (bound "
                    << bound[i] << ")";
      ++bad;
    }
  std::vector<int64_t> idx(p.B * k), want_idx(k);
  std::vector<float> val(p.B * k), want_val(k);
  enc.SelectTopK(p.x.data(), p.B, k, idx.data(), val.data());
  for (int64_t r = 0; r < p.B && bad < 5; ++r) {
    SortTopK(z.data() + r * p.n, p.n, k, want_idx.data(), want_val.data());
    for (int64_t t = 0; t < k; ++t) {
      if (idx[r * k + t] != want_idx[t] || val[r * k + t] != want_val[t]) {
        ADD_FAILURE() << "row " << r << " rank " << t << ": latent " << idx[r * k + t] << " = " << val[r * k + t]
                      << ", full sort: latent " << want_idx[t] << " = " << want_val[t];
        ++bad;
        break;
      }
      const int64_t j = idx[r * k + t];
      EXPECT_LE(std::fabs(val[r * k + t] - ref[r * p.n + j]), bound[r * p.n + j]);
    }
  }
}

TEST(SmallEncoder, KernelIsTheBuildsOwn) {
#if defined(__AVX512F__)
  EXPECT_STREQ(SmallEncoder::Kernel(), "avx512");
#else
  EXPECT_STREQ(SmallEncoder::Kernel(), "scalar");
#endif
}

// Ragged shapes: d not a multiple of 16, n not a multiple of the 64-latent
// panel, B not a multiple of the 6-row tile nor of the row block, k from 1
// to n (k <= 16 takes the first panel's lane-maximum threshold and the
// 16-lane vector top-k, 17-32 the 32-lane one, larger k the sorted list).
TEST(SmallEncoder, RandomShapesMatchFloat64AndAFullSort) {
  std::mt19937 g(7);
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t B = 1 + static_cast<int64_t>(g() % 110), d = 1 + static_cast<int64_t>(g() % 90),
                  n = 1 + static_cast<int64_t>(g() % 400);
    const int64_t k =
        trial % 2 == 0 ? 1 + static_cast<int64_t>(g() % std::min<int64_t>(n, 16)) : 1 + static_cast<int64_t>(g() % n);
    CheckProblem(RandomProblem(B, d, n, 100 + trial), k);
  }
  // The sweep's small shapes, a few rows each.
  CheckProblem(RandomProblem(13, 48, 768, 1), 4);
  CheckProblem(RandomProblem(7, 64, 4096, 2), 8);
  CheckProblem(RandomProblem(5, 128, 8192, 3), 16);
  CheckProblem(RandomProblem(5, 256, 1000, 4), 32);
  CheckProblem(RandomProblem(11, 256, 4100, 6), 32);   // d 256's k over many panels
  CheckProblem(RandomProblem(7, 768, 1100, 8), 32);    // GPT-2's width: blocks of 128 rows
  CheckProblem(RandomProblem(140, 1024, 300, 9), 20);  // past one 96-row block at d 1024
}

// The step runs this kernel up to d 1024 (AVX-512 builds), oneDNN's GEMM
// beyond (docs/performance.md "d 768 and 1024 fused").
TEST(SmallEncoder, RunsUpToD1024) {
#if defined(__AVX512F__)
  EXPECT_TRUE(UseSmallEncoder(16384, 768, 32));
  EXPECT_TRUE(UseSmallEncoder(16384, 1024, 32));
#else
  EXPECT_FALSE(UseSmallEncoder(16384, 768, 32));
#endif
  EXPECT_FALSE(UseSmallEncoder(16384, 1025, 32));
  EXPECT_FALSE(UseSmallEncoder(65536, 2048, 64));
  EXPECT_FALSE(UseSmallEncoder(100, 64, 101));
}

TEST(SmallEncoder, KEqualsNAndTinyRows) {
  for (int64_t n : {1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 130})
    for (int64_t d : {1, 3, 16, 33}) CheckProblem(RandomProblem(8, d, n, static_cast<uint32_t>(n * 100 + d)), n);
}

// Every value below zero (bias −50): the top-k is still the k largest.
TEST(SmallEncoder, AllNegativeRows) {
  for (int64_t k : {1, 5, 16, 17, 32, 40}) CheckProblem(RandomProblem(31, 20, 300, 11, -50.0f), k);
}

// Exact ties: latents in groups of identical weights and biases give
// bitwise equal pre-activations; the lower latent must come first, also
// across panels and at the k-th place. And rows of one value throughout.
TEST(SmallEncoder, TiesGoToTheLowerLatent) {
  for (int64_t group : {2, 3, 64, 100}) {
    Problem p = RandomProblem(20, 24, 700, static_cast<uint32_t>(group));
    for (int64_t j = 0; j < p.n; ++j) {
      const int64_t src = j / group * group;
      for (int64_t t = 0; t < p.d; ++t) p.W[j * p.d + t] = p.W[src * p.d + t];
      p.b[j] = p.b[src];
    }
    for (int64_t k : {1, 2, 7, 16, 17, 31, 32, 33, 50}) CheckProblem(p, k);
  }
  Problem flat = RandomProblem(9, 10, 300, 5);
  std::fill(flat.W.begin(), flat.W.end(), 0.0f);
  std::fill(flat.b.begin(), flat.b.end(), 0.25f);
  for (int64_t k : {1, 16, 20, 32, 64, 300}) {
    CheckProblem(flat, k);
    SmallEncoder enc;
    enc.SetWeights(flat.W.data(), flat.b.data(), flat.n, flat.d);
    std::vector<int64_t> idx(flat.B * k);
    std::vector<float> val(flat.B * k);
    enc.SelectTopK(flat.x.data(), flat.B, k, idx.data(), val.data());
    for (int64_t t = 0; t < k; ++t) EXPECT_EQ(idx[t], t);  // ties: ascending latents
  }
}

// Rows crowded around their threshold: latents whose weights differ by a
// few ulps, so that hundreds of values lie within rounding of the k-th;
// the selection must still be exactly the top-k of what the kernel computes.
TEST(SmallEncoder, ManyValuesNearTheThreshold) {
  std::mt19937 g(3);
  std::uniform_real_distribution<float> U(-1, 1);
  Problem p = RandomProblem(40, 37, 900, 9);
  for (int64_t j = 0; j < p.n; ++j) {
    for (int64_t t = 0; t < p.d; ++t) p.W[j * p.d + t] = p.W[t] * (1 + 4e-7f * U(g));
    p.b[j] = p.b[0] + 1e-7f * U(g);
  }
  for (int64_t k : {1, 4, 16, 17, 25, 32, 200}) CheckProblem(p, k);
}

// SelectTopK and the step's SelectTopK (the two-pass block-threshold
// selection over a row in memory) agree on Dense's output.
TEST(SmallEncoder, AgreesWithTheStepsSelection) {
  const Problem p = RandomProblem(50, 64, 2000, 21);
  SmallEncoder enc;
  enc.SetWeights(p.W.data(), p.b.data(), p.n, p.d);
  std::vector<float> z(p.B * p.n);
  enc.Dense(p.x.data(), p.B, z.data());
  for (int64_t k : {3, 8, 16, 24, 32}) {
    std::vector<int64_t> a(p.B * k), b(p.B * k);
    std::vector<float> av(p.B * k), bv(p.B * k);
    enc.SelectTopK(p.x.data(), p.B, k, a.data(), av.data());
    for (int64_t r = 0; r < p.B; ++r) SelectTopK(z.data() + r * p.n, p.n, k, b.data() + r * k, bv.data() + r * k);
    EXPECT_EQ(a, b) << "k " << k;
    EXPECT_EQ(av, bv) << "k " << k;
  }
}

// Work items: 96 rows for an encoder in L2; for a larger one at most a
// block, a multiple of the tile, and no more items than an equal share per
// thread needs (so that every thread gets the same number, to one tile).
TEST(SmallEncoder, ItemRowsShareTheBatchEvenly) {
  SmallEncoder small, large;
  const Problem ps = RandomProblem(1, 64, 4096, 1), pl = RandomProblem(1, 256, 4096, 2);
  small.SetWeights(ps.W.data(), ps.b.data(), ps.n, ps.d);
  large.SetWeights(pl.W.data(), pl.b.data(), pl.n, pl.d);
  EXPECT_EQ(small.ItemRows(4096, 2), 96);
  ASSERT_EQ(large.BlockRows(), 384);
  EXPECT_EQ(large.ItemRows(4096, 2), 342);  // 12 items, 6 a thread (384-row items: 11)
  for (int64_t B : {1, 7, 100, 383, 384, 385, 1000, 4096, 5000})
    for (int64_t threads : {1, 2, 3, 16}) {
      SCOPED_TRACE(testing::Message() << "B " << B << " threads " << threads);
      const int64_t item = large.ItemRows(B, threads), items = (B + item - 1) / item;
      const int64_t share = (B + threads - 1) / threads, per_thread = (share + 383) / 384;
      EXPECT_LE(item, 384);
      EXPECT_EQ(item % SmallEncoder::kTileRows, 0);
      EXPECT_LE(items, threads * per_thread);
      EXPECT_GE(item * per_thread, share);
    }
}

// The kernel's order (ascending multiply-adds from zero, then the bias) is
// the one oneDNN's AVX-512 f32 brgemm uses for K <= 256: where oneDNN runs
// that kernel the pre-activations are bitwise equal, so the fused step
// selects exactly what the oneDNN step selects; elsewhere both are within
// rounding of the float64 values (CheckProblem).
TEST(SmallEncoder, BitwiseOneDnnWhereItRunsBrgemmAvx512) {
  for (int64_t d : {16, 33, 48, 64, 100, 128, 256})
    for (int64_t rows : {96, 37}) {
      const Problem p = RandomProblem(rows, d, 700, static_cast<uint32_t>(d + rows));
      SmallEncoder enc;
      enc.SetWeights(p.W.data(), p.b.data(), p.n, p.d);
      std::vector<float> z(p.B * p.n), z1(p.B * p.n);
      enc.Dense(p.x.data(), p.B, z.data());
      EncoderGemm g;
      ASSERT_TRUE(g.SetWeights(p.W.data(), p.b.data(), p.n, p.d, &rows, 1).ok());
      ASSERT_TRUE(g.Run(p.x.data(), rows, z1.data(), 0).ok());
      if (g.Describe() != "brg:avx512_core" || std::string(SmallEncoder::Kernel()) != "avx512") continue;
      int64_t differ = 0;
      for (size_t i = 0; i < z.size(); ++i) differ += z[i] != z1[i];
      EXPECT_EQ(differ, 0) << "d " << d << " rows " << rows;
    }
}

}  // namespace
}  // namespace sae::internal
