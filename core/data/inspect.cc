#include "core/data/inspect.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/base/file_util.h"
#include "core/data/manifest.h"

namespace sae {
namespace {

struct Stats {
  int64_t rows = 0;         // rows read
  int64_t elements = 0;     // finite elements
  double mean = 0, m2 = 0;  // running mean and sum of squared deviations (Chan et al.)
  double norm_sum = 0;      // sum of L2 norms of all-finite rows
  int64_t norm_rows = 0;
  double min = std::numeric_limits<double>::infinity();
  double max = -std::numeric_limits<double>::infinity();
  int64_t nan = 0, inf = 0;

  void AddRows(const float* data, int64_t n, int64_t d) {
    int64_t count = 0;
    double sum = 0;
    for (int64_t i = 0; i < n * d; ++i) {
      const float v = data[i];
      if (std::isnan(v)) {
        ++nan;
      } else if (std::isinf(v)) {
        ++inf;
      } else {
        ++count;
        sum += v;
        min = std::min<double>(min, v);
        max = std::max<double>(max, v);
      }
    }
    if (count > 0) {
      const double chunk_mean = sum / count;
      double chunk_m2 = 0;
      for (int64_t i = 0; i < n * d; ++i) {
        if (std::isfinite(data[i])) chunk_m2 += (data[i] - chunk_mean) * (data[i] - chunk_mean);
      }
      const double total = static_cast<double>(elements + count);
      const double delta = chunk_mean - mean;
      m2 += chunk_m2 + delta * delta * static_cast<double>(elements) * count / total;
      mean += delta * count / total;
      elements += count;
    }
    for (int64_t r = 0; r < n; ++r) {
      double s = 0;
      bool finite = true;
      for (int64_t j = 0; j < d; ++j) {
        const float v = data[r * d + j];
        finite &= std::isfinite(v);
        s += static_cast<double>(v) * v;
      }
      if (finite) {
        norm_sum += std::sqrt(s);
        ++norm_rows;
      }
    }
    rows += n;
  }
  double Std() const { return elements > 0 ? std::sqrt(m2 / elements) : 0.0; }
  double MeanNorm() const { return norm_rows > 0 ? norm_sum / norm_rows : 0.0; }
};

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

// Checks each shard's sha256 against the manifest; returns the files checked.
absl::StatusOr<std::vector<std::string>> VerifyShards(const Manifest& m, const std::vector<SafetensorsFile>& shards) {
  std::vector<std::string> verified;
  for (size_t i = 0; i < shards.size(); ++i) {
    auto sha = Sha256File(shards[i].path());
    if (!sha.ok()) return Annotate(sha.status(), "shard checksum");
    if (*sha != m.shards[i].sha256) {
      return absl::DataLossError(absl::StrCat("shard ", shards[i].path(), ": sha256 mismatch: manifest has ",
                                              m.shards[i].sha256, ", file has ", *sha));
    }
    verified.push_back(m.shards[i].file);
  }
  return verified;
}

// Statistics over the first max_rows rows, read in chunks of about 4 MB.
absl::StatusOr<Stats> ScanRows(const Manifest& m, std::vector<SafetensorsFile>& shards, int64_t max_rows) {
  Stats st;
  const int64_t d = m.d_in;
  const int64_t chunk = std::clamp<int64_t>((int64_t{1} << 20) / d, 1, 4096);
  std::vector<float> buf;
  int64_t budget = std::max<int64_t>(0, max_rows);
  for (size_t i = 0; i < shards.size() && budget > 0; ++i) {
    const int64_t shard_rows = std::min(m.shards[i].rows, budget);
    for (int64_t r = 0; r < shard_rows; r += chunk) {
      const int64_t n = std::min(chunk, shard_rows - r);
      buf.resize(static_cast<size_t>(n * d));
      absl::Status s = shards[i].ReadRowsAsFloat("activations", r, r + n, buf.data());
      if (!s.ok()) return absl::Status(s.code(), absl::StrCat("shard ", s.message()));
      st.AddRows(buf.data(), n, d);
    }
    budget -= shard_rows;
  }
  return st;
}

std::string ReportJson(const std::string& dir, const Manifest& m, const Stats& st, const InspectOptions& opts,
                       const std::vector<std::string>& verified) {
  nlohmann::ordered_json j;
  j["dir"] = dir;
  j["format"] = m.format;
  j["d_in"] = m.d_in;
  j["dtype"] = ManifestDTypeName(m.dtype);
  j["rows"] = m.rows;
  j["shard_count"] = m.shards.size();
  j["source"] = {{"model", m.source.model},
                 {"layer", m.source.layer},
                 {"hook", m.source.hook},
                 {"corpus", m.source.corpus},
                 {"tokens", m.source.tokens}};
  nlohmann::ordered_json s;
  s["rows"] = st.rows;
  s["elements"] = st.elements;
  s["mean"] = st.mean;
  s["std"] = st.Std();
  s["mean_row_norm"] = st.MeanNorm();
  s["min"] = st.elements > 0 ? nlohmann::ordered_json(st.min) : nlohmann::ordered_json();
  s["max"] = st.elements > 0 ? nlohmann::ordered_json(st.max) : nlohmann::ordered_json();
  s["nan"] = st.nan;
  s["inf"] = st.inf;
  j["stats"] = std::move(s);
  if (opts.verify) {
    nlohmann::ordered_json v = nlohmann::ordered_json::object();
    for (const std::string& f : verified) v[f] = "ok";
    j["verify"] = std::move(v);
  }
  return j.dump();
}

std::string ReportText(const std::string& dir, const Manifest& m, const Stats& st, const InspectOptions& opts,
                       const std::vector<std::string>& verified) {
  std::string out;
  absl::StrAppend(&out, "directory: ", dir, "\n");
  absl::StrAppend(&out, "format:    ", m.format, "\n");
  absl::StrAppend(&out, "d_in:      ", m.d_in, "\n");
  absl::StrAppend(&out, "dtype:     ", ManifestDTypeName(m.dtype), "\n");
  absl::StrAppend(&out, "rows:      ", m.rows, "\n");
  absl::StrAppend(&out, "shards:    ", m.shards.size(), "\n");
  absl::StrAppend(&out, "source:    model=", m.source.model, " layer=", m.source.layer, " hook=", m.source.hook,
                  " corpus=", m.source.corpus, " tokens=", m.source.tokens, "\n");
  absl::StrAppend(&out, "stats over ", st.rows, " rows (", st.elements, " finite elements):\n");
  absl::StrAppend(&out, "  mean ", Num(st.mean), "  std ", Num(st.Std()), "\n");
  absl::StrAppend(&out, "  mean row L2 norm ", Num(st.MeanNorm()), "\n");
  if (st.elements > 0) {
    absl::StrAppend(&out, "  min ", Num(st.min), "  max ", Num(st.max), "\n");
  } else {
    absl::StrAppend(&out, "  min -  max -\n");
  }
  absl::StrAppend(&out, "  nan ", st.nan, "  inf ", st.inf, "\n");
  if (opts.verify) {
    absl::StrAppend(&out, "verify:\n");
    for (const std::string& f : verified) absl::StrAppend(&out, "  ", f, " ok\n");
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> InspectShards(const std::string& dir, const InspectOptions& opts) {
  SAE_ASSIGN_OR_RETURN(Manifest m, LoadManifest(dir));
  std::vector<SafetensorsFile> shards;
  for (size_t i = 0; i < m.shards.size(); ++i) {
    SAE_ASSIGN_OR_RETURN(SafetensorsFile f, OpenShard(dir, m, i));
    shards.push_back(std::move(f));
  }
  std::vector<std::string> verified;
  if (opts.verify) {
    SAE_ASSIGN_OR_RETURN(verified, VerifyShards(m, shards));
  }
  SAE_ASSIGN_OR_RETURN(Stats st, ScanRows(m, shards, opts.max_rows));
  return opts.json ? ReportJson(dir, m, st, opts, verified) : ReportText(dir, m, st, opts, verified);
}

}  // namespace sae
