#include "core/data/synthetic.h"

#include <algorithm>
#include <cmath>

#include "core/data/prng.h"
#include "core/data/shard_writer.h"

namespace sae {
namespace {

using data_internal::HashPair;
using data_internal::Xoshiro256;

constexpr uint64_t kDictTag = 0x44494354ULL;  // "DICT"
constexpr uint64_t kRowTag = 0x524f57ULL;     // "ROW"

absl::Status Invalid(const char* field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("data.", field, ": ", why));
}

}  // namespace

absl::StatusOr<PlantedDictionary> PlantedDictionary::Create(SyntheticOptions opts) {
  if (opts.d_in <= 0) return Invalid("d_in", absl::StrCat("must be positive, got ", opts.d_in));
  if (opts.atoms <= 0) return Invalid("atoms", absl::StrCat("must be positive, got ", opts.atoms));
  if (opts.k <= 0 || opts.k > opts.atoms) {
    return Invalid("k", absl::StrCat("must be in [1, atoms=", opts.atoms, "], got ", opts.k));
  }
  if (!(opts.noise >= 0) || !std::isfinite(opts.noise)) {
    return Invalid("noise", absl::StrCat("must be a finite value >= 0, got ", opts.noise));
  }
  if (!(opts.frequency_decay >= 0) || !std::isfinite(opts.frequency_decay)) {
    return Invalid("frequency_decay", absl::StrCat("must be a finite value >= 0, got ", opts.frequency_decay));
  }
  PlantedDictionary p;
  p.opts_ = opts;
  const int64_t d = opts.d_in;
  p.dict_.resize(static_cast<size_t>(opts.atoms * d));
  Xoshiro256 rng(HashPair(opts.seed, kDictTag));
  for (int64_t a = 0; a < opts.atoms; ++a) {
    float* atom = p.dict_.data() + a * d;
    double norm2 = 0;
    while (norm2 == 0) {  // a zero draw is practically impossible; redraw if it happens
      norm2 = 0;
      for (int64_t j = 0; j < d; ++j) {
        const double g = rng.Gaussian();
        atom[j] = static_cast<float>(g);
        norm2 += g * g;
      }
    }
    const double inv = 1.0 / std::sqrt(norm2);
    for (int64_t j = 0; j < d; ++j) atom[j] = static_cast<float>(atom[j] * inv);
  }
  if (opts.frequency_decay > 0) {
    p.cdf_.resize(static_cast<size_t>(opts.atoms));
    double total = 0;
    for (int64_t a = 0; a < opts.atoms; ++a) {
      total += std::pow(static_cast<double>(a + 1), -opts.frequency_decay);
      p.cdf_[a] = total;
    }
    for (double& c : p.cdf_) c /= total;
    p.cdf_.back() = 1.0;
  }
  return p;
}

void PlantedDictionary::Rows(int64_t first, int64_t n, float* out) const {
  const int64_t d = opts_.d_in, atoms = opts_.atoms, k = opts_.k;
  std::vector<uint8_t> taken(static_cast<size_t>(atoms), 0);  // per call, cleared per row in O(k)
  std::vector<int64_t> chosen(static_cast<size_t>(k));
  const uint64_t row_seed = HashPair(opts_.seed, kRowTag);
  for (int64_t i = 0; i < n; ++i) {
    Xoshiro256 rng(HashPair(row_seed, static_cast<uint64_t>(first + i)));
    if (cdf_.empty()) {
      // Floyd's algorithm: k distinct atoms, uniformly, in O(k) draws.
      int64_t c = 0;
      for (int64_t j = atoms - k; j < atoms; ++j) {
        int64_t t = static_cast<int64_t>(rng.Below(static_cast<uint64_t>(j) + 1));
        if (taken[t]) t = j;
        taken[t] = 1;
        chosen[c++] = t;
      }
    } else {
      // Draw by inverse cdf and reject repeats; past a budget (heavy decay with
      // k near atoms) finish by exact sampling over the atoms still free.
      int64_t c = 0;
      const int64_t budget = 64 * k + 256;
      for (int64_t tries = 0; c < k && tries < budget; ++tries) {
        const double u = rng.Uniform();
        int64_t t = std::upper_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin();
        t = std::min(t, atoms - 1);
        if (taken[t]) continue;
        taken[t] = 1;
        chosen[c++] = t;
      }
      while (c < k) {
        double free_mass = 0;
        for (int64_t a = 0; a < atoms; ++a) {
          if (!taken[a]) free_mass += cdf_[a] - (a ? cdf_[a - 1] : 0.0);
        }
        double u = rng.Uniform() * free_mass;
        int64_t t = -1;
        for (int64_t a = 0; a < atoms; ++a) {
          if (taken[a]) continue;
          t = a;
          u -= cdf_[a] - (a ? cdf_[a - 1] : 0.0);
          if (u < 0) break;
        }
        taken[t] = 1;
        chosen[c++] = t;
      }
    }
    float* row = out + i * d;
    std::fill(row, row + d, 0.0f);
    for (int64_t c = 0; c < k; ++c) {
      const float coef = static_cast<float>(0.5 + rng.Uniform());
      const float* atom = dict_.data() + chosen[c] * d;
      for (int64_t j = 0; j < d; ++j) row[j] += coef * atom[j];
      taken[chosen[c]] = 0;
    }
    if (opts_.noise > 0) {
      for (int64_t j = 0; j < d; ++j) row[j] += static_cast<float>(opts_.noise * rng.Gaussian());
    }
  }
}

absl::StatusOr<Manifest> PlantedDictionary::WriteShards(const std::string& dir, int64_t rows, int64_t rows_per_shard,
                                                        DType dtype) const {
  if (rows < 0) return absl::InvalidArgumentError(absl::StrCat("synthetic shards ", dir, ": negative rows"));
  ShardWriterOptions wo;
  wo.d_in = opts_.d_in;
  wo.dtype = dtype;
  wo.rows_per_shard = rows_per_shard;
  wo.source.model = "synthetic";
  wo.source.hook = "planted_dictionary";
  wo.source.corpus =
      absl::StrCat("planted(d_in=", opts_.d_in, ",atoms=", opts_.atoms, ",k=", opts_.k, ",seed=", opts_.seed,
                   ",noise=", opts_.noise, ",frequency_decay=", opts_.frequency_decay, ")");
  wo.source.tokens = rows;
  SAE_ASSIGN_OR_RETURN(ShardWriter writer, ShardWriter::Create(dir, wo));

  SafetensorsWriter dict;
  dict.SetMetadata("d_in", std::to_string(opts_.d_in));
  dict.SetMetadata("atoms", std::to_string(opts_.atoms));
  dict.SetMetadata("k", std::to_string(opts_.k));
  dict.SetMetadata("seed", std::to_string(opts_.seed));
  dict.SetMetadata("noise", absl::StrCat(opts_.noise));
  dict.SetMetadata("frequency_decay", absl::StrCat(opts_.frequency_decay));
  SAE_RETURN_IF_ERROR(dict.AddFloat("dictionary", DType::kF32, {opts_.atoms, opts_.d_in}, dict_.data()));
  const std::string dict_path =
      (!dir.empty() && dir.back() == '/') ? dir + "dictionary.safetensors" : dir + "/dictionary.safetensors";
  SAE_RETURN_IF_ERROR(dict.Write(dict_path));

  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(rows_per_shard, (int64_t{4} << 20) / opts_.d_in));
  std::vector<float> buf;
  for (int64_t r = 0; r < rows; r += chunk) {
    const int64_t n = std::min(chunk, rows - r);
    buf.resize(static_cast<size_t>(n * opts_.d_in));
    Rows(r, n, buf.data());
    SAE_RETURN_IF_ERROR(writer.Append(buf.data(), n));
  }
  return writer.Finish();
}

}  // namespace sae
