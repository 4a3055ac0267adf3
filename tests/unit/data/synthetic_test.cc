#include "core/data/synthetic.h"

#include <cmath>

#include "core/data/activation_stream.h"
#include "gtest/gtest.h"
#include "tests/unit/data/test_util.h"

namespace sae {
namespace {

using testing_util::ScratchDir;

PlantedDictionary MakeOrDie(SyntheticOptions o) {
  auto p = PlantedDictionary::Create(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return std::move(p).value();
}

// Least-squares coefficients c minimising |x - D^T c| (D: atoms x d, full row
// rank), by the normal equations and Gaussian elimination in double.
std::vector<double> Project(const std::vector<float>& dict, int64_t atoms, int64_t d, const float* x) {
  std::vector<double> g(atoms * (atoms + 1));  // augmented [G | Dx]
  for (int64_t a = 0; a < atoms; ++a) {
    for (int64_t b = 0; b < atoms; ++b) {
      double s = 0;
      for (int64_t j = 0; j < d; ++j) s += static_cast<double>(dict[a * d + j]) * dict[b * d + j];
      g[a * (atoms + 1) + b] = s;
    }
    double s = 0;
    for (int64_t j = 0; j < d; ++j) s += static_cast<double>(dict[a * d + j]) * x[j];
    g[a * (atoms + 1) + atoms] = s;
  }
  const int64_t w = atoms + 1;
  for (int64_t col = 0; col < atoms; ++col) {
    int64_t piv = col;
    for (int64_t r = col + 1; r < atoms; ++r) {
      if (std::fabs(g[r * w + col]) > std::fabs(g[piv * w + col])) piv = r;
    }
    for (int64_t c = 0; c < w; ++c) std::swap(g[col * w + c], g[piv * w + c]);
    for (int64_t r = 0; r < atoms; ++r) {
      if (r == col) continue;
      const double f = g[r * w + col] / g[col * w + col];
      for (int64_t c = col; c < w; ++c) g[r * w + c] -= f * g[col * w + c];
    }
  }
  std::vector<double> c(atoms);
  for (int64_t a = 0; a < atoms; ++a) c[a] = g[a * w + atoms] / g[a * w + a];
  return c;
}

// Checks that row x is sum of exactly k atoms with coefficients in [0.5, 1.5]
// and returns which atoms.
std::vector<int64_t> AtomsOf(const PlantedDictionary& p, const float* x) {
  const auto& o = p.options();
  std::vector<double> c = Project(p.dictionary(), o.atoms, o.d_in, x);
  std::vector<int64_t> used;
  for (int64_t a = 0; a < o.atoms; ++a) {
    if (std::fabs(c[a]) < 1e-3) continue;
    EXPECT_GE(c[a], 0.5 - 1e-3) << "atom " << a;
    EXPECT_LE(c[a], 1.5 + 1e-3) << "atom " << a;
    used.push_back(a);
  }
  EXPECT_EQ(static_cast<int64_t>(used.size()), o.k);
  // The reconstruction is exact up to float rounding.
  double err = 0, norm = 0;
  for (int64_t j = 0; j < o.d_in; ++j) {
    double r = x[j];
    for (int64_t a = 0; a < o.atoms; ++a) r -= c[a] * p.dictionary()[a * o.d_in + j];
    err += r * r;
    norm += static_cast<double>(x[j]) * x[j];
  }
  EXPECT_LT(std::sqrt(err), 1e-4 * std::sqrt(norm) + 1e-6);
  return used;
}

// How many of the first n rows use each atom (AtomsOf checks every row; it
// stops at the first row that fails).
std::vector<int64_t> AtomCounts(const PlantedDictionary& p, int64_t n) {
  const SyntheticOptions& o = p.options();
  std::vector<float> rows(n * o.d_in);
  p.Rows(0, n, rows.data());
  std::vector<int64_t> counts(o.atoms);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t a : AtomsOf(p, rows.data() + r * o.d_in)) ++counts[a];
    if (::testing::Test::HasFailure()) break;
  }
  return counts;
}

TEST(PlantedDictionaryTest, ValidatesOptionsNamingTheField) {
  struct Case {
    const char* field;
    SyntheticOptions o;
  };
  auto with = [](auto edit) {
    SyntheticOptions o;
    edit(o);
    return o;
  };
  std::vector<Case> cases = {
      {"data.d_in", with([](SyntheticOptions& o) { o.d_in = 0; })},
      {"data.atoms", with([](SyntheticOptions& o) { o.atoms = -1; })},
      {"data.k", with([](SyntheticOptions& o) { o.k = 0; })},
      {"data.k", with([](SyntheticOptions& o) { o.k = o.atoms + 1; })},
      {"data.noise", with([](SyntheticOptions& o) { o.noise = -0.1; })},
      {"data.noise", with([](SyntheticOptions& o) { o.noise = std::nan(""); })},
      {"data.frequency_decay", with([](SyntheticOptions& o) { o.frequency_decay = -1; })},
  };
  for (const Case& c : cases) {
    auto p = PlantedDictionary::Create(c.o);
    ASSERT_FALSE(p.ok()) << c.field;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(p.status().message().rfind(std::string(c.field) + ":", 0), 0u) << p.status();
  }
}

TEST(PlantedDictionaryTest, AtomsAreUnitNormAndRowsReproducible) {
  SyntheticOptions o;
  o.d_in = 32;
  o.atoms = 100;
  o.k = 5;
  o.seed = 42;
  PlantedDictionary a = MakeOrDie(o), b = MakeOrDie(o);
  ASSERT_EQ(a.dictionary().size(), 3200u);
  EXPECT_EQ(a.dictionary(), b.dictionary());
  for (int64_t i = 0; i < o.atoms; ++i) {
    double n = 0;
    for (int64_t j = 0; j < o.d_in; ++j) n += a.dictionary()[i * o.d_in + j] * a.dictionary()[i * o.d_in + j];
    EXPECT_NEAR(n, 1.0, 1e-5);
  }
  std::vector<float> all(200 * 32), part(10 * 32), other(200 * 32);
  a.Rows(0, 200, all.data());
  b.Rows(100, 10, part.data());  // any range, any instance
  EXPECT_EQ(part, std::vector<float>(all.begin() + 100 * 32, all.begin() + 110 * 32));
  EXPECT_NE(std::vector<float>(all.begin(), all.begin() + 32), std::vector<float>(all.begin() + 32, all.begin() + 64));
  o.seed = 43;
  PlantedDictionary c = MakeOrDie(o);
  EXPECT_NE(c.dictionary(), a.dictionary());
  c.Rows(0, 200, other.data());
  EXPECT_NE(other, all);
}

TEST(PlantedDictionaryTest, NoiselessRowIsNonNegativeCombinationOfExactlyKAtoms) {
  SyntheticOptions o;
  o.d_in = 64;
  o.atoms = 16;
  o.k = 3;
  o.noise = 0;
  o.seed = 5;
  const std::vector<int64_t> counts = AtomCounts(MakeOrDie(o), 6000);
  if (HasFailure()) return;
  // Uniform selection: each atom in about n * k / atoms = 1125 rows.
  for (int64_t a = 0; a < o.atoms; ++a) {
    EXPECT_GT(counts[a], 950) << a;
    EXPECT_LT(counts[a], 1300) << a;
  }
}

TEST(PlantedDictionaryTest, FrequencyDecayFavoursLowAtoms) {
  SyntheticOptions o;
  o.d_in = 64;
  o.atoms = 16;
  o.k = 2;
  o.noise = 0;
  o.frequency_decay = 1.5;
  const std::vector<int64_t> counts = AtomCounts(MakeOrDie(o), 3000);
  if (HasFailure()) return;
  EXPECT_GT(counts[0], 5 * counts[15]);
  EXPECT_GT(counts[0], counts[3]);
  EXPECT_GT(counts[3], counts[12]);
}

TEST(PlantedDictionaryTest, HeavyDecayWithLargeKStillPicksKDistinctAtoms) {
  SyntheticOptions o;
  o.d_in = 64;
  o.atoms = 32;
  o.k = 30;
  o.noise = 0;
  o.frequency_decay = 4;
  PlantedDictionary p = MakeOrDie(o);
  std::vector<float> rows(20 * o.d_in);
  p.Rows(0, 20, rows.data());
  for (int r = 0; r < 20; ++r) AtomsOf(p, rows.data() + r * o.d_in);
  o.k = o.atoms;
  o.frequency_decay = 0;
  PlantedDictionary all = MakeOrDie(o);
  all.Rows(0, 5, rows.data());
  for (int r = 0; r < 5; ++r) EXPECT_EQ(AtomsOf(all, rows.data() + r * o.d_in).size(), 32u);
}

TEST(PlantedDictionaryTest, NoiseHasTheRequestedScale) {
  SyntheticOptions o;
  o.d_in = 64;
  o.atoms = 16;
  o.k = 2;
  o.noise = 0.1;
  PlantedDictionary noisy = MakeOrDie(o);
  std::vector<float> rows(2000 * o.d_in);
  noisy.Rows(0, 2000, rows.data());
  // The part of each row outside the span of the 16 atoms is pure noise:
  // 64 - 16 of its 64 dimensions, so E|residual|^2 = 48 * noise^2.
  double sum = 0;
  for (int r = 0; r < 2000; ++r) {
    const float* x = rows.data() + r * o.d_in;
    std::vector<double> c = Project(noisy.dictionary(), o.atoms, o.d_in, x);
    for (int64_t j = 0; j < o.d_in; ++j) {
      double res = x[j];
      for (int64_t a = 0; a < o.atoms; ++a) res -= c[a] * noisy.dictionary()[a * o.d_in + j];
      sum += res * res;
    }
  }
  EXPECT_NEAR(sum / 2000, 48 * 0.01, 0.03);
}

TEST(PlantedDictionaryTest, WriteShardsMatchesRows) {
  ScratchDir dir;
  SyntheticOptions o;
  o.d_in = 8;
  o.atoms = 20;
  o.k = 3;
  o.seed = 9;
  PlantedDictionary p = MakeOrDie(o);
  auto m = p.WriteShards(dir.path(), 250, 100, DType::kF32);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->rows, 250);
  EXPECT_EQ(m->d_in, 8);
  EXPECT_EQ(m->shards.size(), 3u);
  auto dict = SafetensorsFile::Open(dir.path() + "/dictionary.safetensors");
  ASSERT_TRUE(dict.ok()) << dict.status();
  EXPECT_EQ(dict->Info("dictionary")->shape, (std::vector<int64_t>{20, 8}));
  EXPECT_EQ(*dict->ReadFloat("dictionary"), p.dictionary());
  EXPECT_EQ(dict->metadata().at("k"), "3");

  StreamOptions so;
  so.shuffle_window_rows = 1;
  auto s = ActivationStream::Open(dir.path(), so);
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<float> got, want(250 * 8);
  ASSERT_TRUE((*s)->Next(250, &got).ok());
  p.Rows(0, 250, want.data());
  EXPECT_EQ(got, want);
  EXPECT_FALSE(p.WriteShards(dir.path(), 10, 5, DType::kF32).ok());  // already finished
}

}  // namespace
}  // namespace sae
