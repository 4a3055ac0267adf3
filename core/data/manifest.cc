#include "core/data/manifest.h"
#include "core/data/manifest_check.h"

#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/base/file_util.h"

namespace sae {
namespace {

using json = nlohmann::json;

// Lowercases `s` in place; false unless it is 64 hex digits.
bool NormalizeHex64(std::string* s) {
  if (s->size() != 64) return false;
  for (char& c : *s) {
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// A relative path with no empty, "." or ".." component.
bool StaysInside(const std::string& file) {
  if (file.empty() || file.front() == '/') return false;
  for (absl::string_view part : absl::StrSplit(file, '/')) {
    if (part.empty() || part == "." || part == "..") return false;
  }
  return true;
}

absl::StatusOr<int64_t> GetInt(const json& obj, const char* key, const std::string& where, bool required,
                               int64_t fallback) {
  auto it = obj.find(key);
  if (it == obj.end()) {
    if (!required) return fallback;
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing field \"", key, "\""));
  }
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": field \"", key, "\" is not an integer"));
  }
  return it->get<int64_t>();
}

absl::StatusOr<std::string> GetString(const json& obj, const char* key, const std::string& where, bool required) {
  auto it = obj.find(key);
  if (it == obj.end()) {
    if (!required) return std::string();
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing field \"", key, "\""));
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": field \"", key, "\" is not a string"));
  }
  return it->get<std::string>();
}

}  // namespace

const char* ManifestDTypeName(DType d) {
  switch (d) {
    case DType::kF32: return "float32";
    case DType::kBF16: return "bfloat16";
    case DType::kF16: return "float16";
    default: return "unsupported";
  }
}

absl::StatusOr<DType> ManifestDTypeFromString(const std::string& s) {
  if (s == "float32") return DType::kF32;
  if (s == "bfloat16") return DType::kBF16;
  if (s == "float16") return DType::kF16;
  return absl::InvalidArgumentError(absl::StrCat("dtype \"", s, "\" is not one of float32, bfloat16, float16"));
}

absl::StatusOr<Manifest> LoadManifest(const std::string& dir) {
  const std::string path = JoinPath(dir, "manifest.json");
  SAE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": not a valid JSON object"));
  }
  Manifest m;
  SAE_ASSIGN_OR_RETURN(m.format, GetString(j, "format", path, true));
  if (m.format != "saeforge.activations.v1") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": field \"format\" is \"", m.format, "\", expected \"saeforge.activations.v1\""));
  }
  SAE_ASSIGN_OR_RETURN(m.d_in, GetInt(j, "d_in", path, true, 0));
  if (m.d_in <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": field \"d_in\" must be positive, got ", m.d_in));
  }
  SAE_ASSIGN_OR_RETURN(std::string dtype, GetString(j, "dtype", path, true));
  auto d = ManifestDTypeFromString(dtype);
  if (!d.ok()) return Annotate(d.status(), absl::StrCat(path, ": field \"dtype\""));
  m.dtype = *d;
  SAE_ASSIGN_OR_RETURN(m.rows, GetInt(j, "rows", path, true, 0));
  if (m.rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": field \"rows\" is negative"));
  }
  auto shards = j.find("shards");
  if (shards == j.end() || !shards->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": field \"shards\" is missing or not an array"));
  }
  int64_t sum = 0;
  for (size_t i = 0; i < shards->size(); ++i) {
    const json& s = (*shards)[i];
    const std::string where = absl::StrCat(path, ": shards[", i, "]");
    if (!s.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " is not an object"));
    ShardEntry e;
    SAE_ASSIGN_OR_RETURN(e.file, GetString(s, "file", where, true));
    if (!StaysInside(e.file)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": field \"file\" \"", e.file, "\" must be a relative path inside the directory"));
    }
    SAE_ASSIGN_OR_RETURN(e.rows, GetInt(s, "rows", where, true, 0));
    if (e.rows < 0) return absl::InvalidArgumentError(absl::StrCat(where, ": field \"rows\" is negative"));
    SAE_ASSIGN_OR_RETURN(e.sha256, GetString(s, "sha256", where, true));
    if (!NormalizeHex64(&e.sha256)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": field \"sha256\" is not 64 hex digits"));
    }
    if (e.rows > std::numeric_limits<int64_t>::max() - sum)
      return absl::InvalidArgumentError(absl::StrCat(where, ": field \"rows\": the shards' rows add up past 2^63"));
    sum += e.rows;
    m.shards.push_back(std::move(e));
  }
  if (sum != m.rows) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": field \"rows\" is ", m.rows, " but the shards hold ", sum));
  }
  auto src = j.find("source");
  if (src != j.end() && !src->is_null()) {
    const std::string where = absl::StrCat(path, ": source");
    if (!src->is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " is not an object"));
    SAE_ASSIGN_OR_RETURN(m.source.model, GetString(*src, "model", where, false));
    SAE_ASSIGN_OR_RETURN(m.source.hook, GetString(*src, "hook", where, false));
    SAE_ASSIGN_OR_RETURN(m.source.corpus, GetString(*src, "corpus", where, false));
    SAE_ASSIGN_OR_RETURN(m.source.layer, GetInt(*src, "layer", where, false, -1));
    SAE_ASSIGN_OR_RETURN(m.source.tokens, GetInt(*src, "tokens", where, false, 0));
  }
  return m;
}

absl::Status SaveManifest(const std::string& dir, const Manifest& m) {
  const std::string path = JoinPath(dir, "manifest.json");
  if (m.dtype != DType::kF32 && m.dtype != DType::kBF16 && m.dtype != DType::kF16) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": dtype ", DTypeName(m.dtype), " is not float32, bfloat16 or float16"));
  }
  int64_t sum = 0;
  for (const ShardEntry& e : m.shards) sum += e.rows;
  if (sum != m.rows) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": rows is ", m.rows, " but the shards hold ", sum));
  }
  nlohmann::ordered_json j;
  j["format"] = m.format;
  j["d_in"] = m.d_in;
  j["dtype"] = ManifestDTypeName(m.dtype);
  j["rows"] = m.rows;
  j["shards"] = nlohmann::ordered_json::array();
  for (const ShardEntry& e : m.shards) {
    nlohmann::ordered_json s;
    s["file"] = e.file;
    s["rows"] = e.rows;
    s["sha256"] = e.sha256;
    j["shards"].push_back(std::move(s));
  }
  nlohmann::ordered_json src;
  src["model"] = m.source.model;
  src["layer"] = m.source.layer;
  src["hook"] = m.source.hook;
  src["corpus"] = m.source.corpus;
  src["tokens"] = m.source.tokens;
  j["source"] = std::move(src);
  return AtomicWriteFile(path, j.dump(2) + "\n");
}

absl::StatusOr<SafetensorsFile> OpenShard(const std::string& dir, const Manifest& m, size_t index) {
  if (index >= m.shards.size()) {
    return absl::OutOfRangeError(
        absl::StrCat("shard index ", index, " out of range (", m.shards.size(), " shards in ", dir, ")"));
  }
  const ShardEntry& entry = m.shards[index];
  const std::string path = JoinPath(dir, entry.file);
  const std::string prefix = absl::StrCat("shard ", path);
  if (!PathExists(path)) return absl::NotFoundError(absl::StrCat(prefix, ": file not found"));
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) {
    // SafetensorsFile errors already start with the path.
    return absl::Status(file.status().code(), absl::StrCat("shard ", file.status().message()));
  }
  auto it = file->tensors().find("activations");
  if (it == file->tensors().end()) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, ": no tensor \"activations\""));
  }
  const TensorInfo& info = it->second;
  if (info.dtype != m.dtype) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, ": activations dtype ", DTypeName(info.dtype),
                                                   " does not match manifest dtype ", ManifestDTypeName(m.dtype)));
  }
  if (info.shape.size() != 2 || info.shape[0] != entry.rows || info.shape[1] != m.d_in) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, ": activations shape [", absl::StrJoin(info.shape, ", "),
                                                   "] does not match manifest [", entry.rows, ", ", m.d_in, "]"));
  }
  auto tok = file->tensors().find("tokens");
  if (tok != file->tensors().end()) {
    const TensorInfo& t = tok->second;
    if (t.dtype != DType::kI32 || t.shape.size() != 1 || t.shape[0] != entry.rows) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, ": tokens must be I32 [", entry.rows, "], got ",
                                                     DTypeName(t.dtype), " [", absl::StrJoin(t.shape, ", "), "]"));
    }
  }
  return file;
}

absl::Status CheckJobAgainstManifest(const JobConfig& cfg, const std::string& origin) {
  if (cfg.data.kind != DataKind::kShards || cfg.data.path.empty()) return absl::OkStatus();
  const std::string file = JoinPath(cfg.data.path, "manifest.json");
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) return absl::OkStatus();
  auto m = LoadManifest(cfg.data.path);
  if (!m.ok()) return Annotate(m.status(), absl::StrCat(origin, ": data.path"));
  const int64_t d = m->d_in;
  const std::string from = absl::StrCat("d_in ", d, " of ", file);
  if (d > kMaxDIn)
    return absl::InvalidArgumentError(absl::StrCat(origin, ": data.path: ", file, ": field \"d_in\": ", d,
                                                   " exceeds the largest supported width ", kMaxDIn));
  const SaeConfig& s = cfg.sae;
  int64_t latents = s.latents;
  if (latents == 0 && s.expansion_factor > 0) {
    if (s.expansion_factor > kMaxLatents / d)
      return absl::InvalidArgumentError(absl::StrCat(origin, ": sae.expansion_factor: ", s.expansion_factor, " x ",
                                                     from, " exceeds ", kMaxLatents, " latents"));
    latents = s.expansion_factor * d;
  }
  if (latents <= 0) return absl::OkStatus();  // ValidateJobConfig names the missing field
  if (s.latents > 0 && s.expansion_factor > 0 && (s.latents % d != 0 || s.latents / d != s.expansion_factor))
    return absl::InvalidArgumentError(absl::StrCat(origin, ": sae.latents: ", s.latents,
                                                   " is not sae.expansion_factor (", s.expansion_factor, ") x ", from));
  const absl::Status shape = CheckSaeShape(d, latents, s.k, s.k_schedule.enabled ? s.k_schedule.start : 0);
  if (!shape.ok()) return absl::Status(shape.code(), absl::StrCat(origin, ": ", shape.message(), " (", from, ")"));
  return absl::OkStatus();
}

}  // namespace sae
