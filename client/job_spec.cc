#include "client/job_spec.h"

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/base/file_util.h"

namespace sae {

v1::JobSpec JobSpecFromConfig(const JobConfig& c) {
  v1::JobSpec s;
  s.set_yaml(JobConfigToYaml(c));
  return s;
}

absl::StatusOr<JobConfig> JobConfigFromSpec(const v1::JobSpec& s, const std::string& origin) {
  if (s.yaml().empty())
    return absl::InvalidArgumentError(absl::StrCat(origin, ": the job spec carries no job (an empty yaml)"));
  return ParseJobConfig(s.yaml(), origin);
}

namespace {

using ordered_json = nlohmann::ordered_json;

// A config section as the JSON object of the former field-by-field message.
struct SpecJsonWriter {
  ordered_json* out;
  template <class M>
  void operator()(const char* key, const M& v, FieldUse use = FieldUse::kKey) {
    if (use == FieldUse::kNotInFile) return;
    if constexpr (IsConfigSection<M>::value) {
      ordered_json sub = ordered_json::object();
      M::Fields(v, SpecJsonWriter{&sub});
      (*out)[key] = std::move(sub);
    } else if constexpr (std::is_enum_v<M>) {
      (*out)[key] = OptionName(v);
    } else if constexpr (std::is_same_v<M, int64_t> || std::is_same_v<M, uint64_t>) {
      (*out)[key] = absl::StrCat(v);  // protobuf's JSON mapping of 64-bit integers
    } else {
      (*out)[key] = v;
    }
  }
};

void ExpandSpecs(ordered_json& j) {
  if (j.is_array()) {
    for (auto& e : j) ExpandSpecs(e);
    return;
  }
  if (!j.is_object()) return;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "spec" && it->is_object() && it->contains("yaml") && (*it)["yaml"].is_string()) {
      auto cfg = ParseJobConfig((*it)["yaml"].get<std::string>(), "spec");
      if (!cfg.ok()) continue;  // shown as it came
      ordered_json spec = ordered_json::object();
      JobConfig::Fields(*cfg, SpecJsonWriter{&spec});
      *it = std::move(spec);
    } else {
      ExpandSpecs(*it);
    }
  }
}

// A sweep value as text: scalars as written, null as "~", maps and lists in
// YAML flow style (e.g. "{start: 512, shape: linear}").
std::string ValueText(const YAML::Node& v) {
  if (v.IsNull()) return "~";
  if (v.IsScalar()) return v.as<std::string>();
  YAML::Emitter e;
  e << YAML::Flow << v;
  return e.c_str();
}

// The short label of a value in variant names: a scalar itself, "none" for
// null, a map's values joined by '_' in order ({start: 512, shape: linear}
// -> "512_linear").
std::string ValueLabel(const YAML::Node& v) {
  if (v.IsNull()) return "none";
  if (v.IsScalar()) return v.as<std::string>();
  std::vector<std::string> parts;
  if (v.IsMap()) {
    for (auto it = v.begin(); it != v.end(); ++it) parts.push_back(ValueLabel(it->second));
  } else {
    for (const auto& e : v) parts.push_back(ValueLabel(e));
  }
  return absl::StrJoin(parts, "_");
}

bool IsFieldName(const std::string& s) {
  return !s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") == std::string::npos;
}

// An axis field is a dotted path: "train.lr", "sae.k_schedule.shape", or
// relative to sae ("k", "k_schedule.start") as sweeps always were.
std::vector<std::string> AxisPath(const std::string& field) {
  std::vector<std::string> path = absl::StrSplit(field, '.');
  if (path.empty() || (path[0] != "sae" && path[0] != "train")) path.insert(path.begin(), "sae");
  return path;
}

// The name of an axis in variant suffixes and errors: the path without "sae.".
std::string AxisName(const std::vector<std::string>& path) {
  if (path.size() > 1 && path[0] == "sae")
    return absl::StrJoin(std::vector<std::string>(path.begin() + 1, path.end()), ".");
  return absl::StrJoin(path, ".");
}

// Collects every list under `node` (a map at `prefix`) as an axis and
// replaces it by its first value. Maps recurse: a list anywhere below is an
// axis of its dotted path.
absl::Status CollectAxes(YAML::Node node, const std::string& prefix, const std::string& origin,
                         std::vector<v1::SweepAxis>* axes) {
  std::vector<std::pair<std::string, YAML::Node>> firsts;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string key = it->first.as<std::string>();
    const std::string field = prefix.empty() ? key : absl::StrCat(prefix, ".", key);
    YAML::Node value = it->second;
    if (value.IsMap()) {
      SAE_RETURN_IF_ERROR(CollectAxes(value, field, origin, axes));
      continue;
    }
    if (!value.IsSequence()) continue;
    const std::string shown = AxisName(AxisPath(field));
    if (value.size() == 0)
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": ", AxisPath(field)[0], ".", shown, ": an empty list of values"));
    v1::SweepAxis axis;
    axis.set_field(field);
    for (const auto& v : value) {
      if (v.IsSequence())
        return absl::InvalidArgumentError(
            absl::StrCat(origin, ": ", AxisPath(field)[0], ".", shown, ": a sweep lists values, not lists"));
      axis.add_values(ValueText(v));
    }
    axes->push_back(axis);
    firsts.emplace_back(key, YAML::Clone(value[0]));
  }
  for (auto& [key, v] : firsts) {
    if (v.IsNull()) {
      node.remove(key);
    } else {
      node[key] = v;
    }
  }
  return absl::OkStatus();
}

// The axis of `together:` (values that vary together: each value a map of
// dotted fields set at once, e.g. {sae.latents: 32768, train.tokens: 500000}).
constexpr char kTogether[] = "together";

// Sets `path` (["sae", "k_schedule", "start"]) in root to value, creating
// maps on the way; null removes the field (its default applies).
void SetPath(YAML::Node root, const std::vector<std::string>& path, const YAML::Node& value) {
  if (path == std::vector<std::string>{"sae", "latents"}) root["sae"].remove("expansion_factor");
  if (path == std::vector<std::string>{"sae", "expansion_factor"}) root["sae"].remove("latents");
  // (Node::reset rebinds; operator= would assign into the tree.)
  YAML::Node parent = root;
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    if (!parent[path[i]] || !parent[path[i]].IsMap()) {
      if (value.IsNull()) return;
      parent[path[i]] = YAML::Node(YAML::NodeType::Map);
    }
    YAML::Node child = parent[path[i]];
    parent.reset(child);
  }
  if (value.IsNull()) {
    if (parent.IsMap()) parent.remove(path.back());
  } else {
    parent[path.back()] = value;
  }
}

// Checks one `together:` value: a map of field paths to values (no lists).
absl::Status CheckTogether(const YAML::Node& v, const std::string& origin) {
  if (!v.IsMap() || v.size() == 0)
    return absl::InvalidArgumentError(absl::StrCat(
        origin, ": together: each value is a map of fields set together ({sae.latents: 4096, train.tokens: 1000})"));
  for (auto it = v.begin(); it != v.end(); ++it) {
    const std::string key = it->first.as<std::string>();
    const std::vector<std::string> path = AxisPath(key);
    for (const auto& part : path)
      if (!IsFieldName(part))
        return absl::InvalidArgumentError(absl::StrCat(origin, ": together: ", key, ": not a field name"));
    if (it->second.IsSequence())
      return absl::InvalidArgumentError(absl::StrCat(origin, ": together: ", key, ": a value, not a list"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string MessageToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  ordered_json j = ordered_json::parse(out, nullptr, false);
  if (j.is_discarded()) return out;
  ExpandSpecs(j);
  return j.dump();
}

absl::StatusOr<std::pair<JobConfig, std::vector<v1::SweepAxis>>> ParseJobWithSweep(const std::string& yaml,
                                                                                   const std::string& origin) {
  std::vector<v1::SweepAxis> axes;
  std::string text = yaml;
  try {
    YAML::Node root = YAML::Load(yaml);
    bool any = false;
    if (root.IsMap()) {
      // sae fields keep their historical names ("k", "k_schedule.shape");
      // train fields are named from the root ("train.lr").
      for (const char* section : {"sae", "train"}) {
        if (!root[section] || !root[section].IsMap()) continue;
        const size_t before = axes.size();
        SAE_RETURN_IF_ERROR(CollectAxes(root[section], std::string(section) == "sae" ? "" : section, origin, &axes));
        any = any || axes.size() > before;
      }
      if (root[kTogether]) {
        const YAML::Node list = root[kTogether];
        if (!list.IsSequence() || list.size() == 0)
          return absl::InvalidArgumentError(absl::StrCat(origin, ": together: a list of maps"));
        v1::SweepAxis axis;
        axis.set_field(kTogether);
        for (const auto& v : list) {
          SAE_RETURN_IF_ERROR(CheckTogether(v, origin));
          axis.add_values(ValueText(v));
        }
        // The base takes the first value, like every other axis.
        for (auto it = list[0].begin(); it != list[0].end(); ++it)
          SetPath(root, AxisPath(it->first.as<std::string>()), YAML::Clone(it->second));
        root.remove(kTogether);
        axes.push_back(axis);
        any = true;
      }
    }
    if (any) text = YAML::Dump(root);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": invalid YAML: ", e.what()));
  }
  SAE_ASSIGN_OR_RETURN(JobConfig cfg, ParseJobConfig(text, origin));
  return std::make_pair(cfg, axes);
}

absl::StatusOr<std::pair<JobConfig, std::vector<v1::SweepAxis>>> LoadJobFileWithSweep(const std::string& path) {
  SAE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  auto r = ParseJobWithSweep(text, path);
  if (r.ok()) r->first.source_path = path;
  return r;
}

absl::StatusOr<std::vector<SweepVariant>> ExpandSweep(const JobConfig& base, const std::vector<v1::SweepAxis>& axes) {
  std::vector<SweepVariant> out;
  if (axes.empty()) return out;
  size_t combos = 1;
  std::vector<std::vector<std::string>> paths;
  for (const auto& a : axes) {
    std::vector<std::string> path = a.field() == kTogether ? std::vector<std::string>{kTogether} : AxisPath(a.field());
    for (const auto& part : path)
      if (!IsFieldName(part))
        return absl::InvalidArgumentError(absl::StrCat("sweep: ", path[0], ".", AxisName(path), ": not a field name"));
    if (a.values_size() == 0)
      return absl::InvalidArgumentError(absl::StrCat("sweep: ", path[0], ".", AxisName(path), ": no values"));
    combos *= a.values_size();
    if (combos > 256) return absl::InvalidArgumentError("sweep: more than 256 variants");
    paths.push_back(std::move(path));
  }
  const std::string base_yaml = JobConfigToYaml(base);
  try {
    for (size_t c = 0; c < combos; ++c) {
      YAML::Node root = YAML::Load(base_yaml);
      // The schedule's end follows sae.k unless a variant sets it.
      if (root["sae"]["k_schedule"] && root["sae"]["k_schedule"]["end"] &&
          root["sae"]["k_schedule"]["end"].as<int64_t>() == base.sae.k)
        root["sae"]["k_schedule"].remove("end");
      std::vector<std::string> parts;
      size_t rest = c;
      for (size_t ai = 0; ai < axes.size(); ++ai) {
        const auto& a = axes[ai];
        const std::vector<std::string>& path = paths[ai];
        const std::string& v = a.values(static_cast<int>(rest % a.values_size()));
        rest /= a.values_size();
        const std::string name = AxisName(path);
        YAML::Node value;
        try {
          value = YAML::Load(v);
        } catch (const YAML::Exception& e) {
          return absl::InvalidArgumentError(
              absl::StrCat("sweep: ", path[0], ".", name, ": value '", v, "': ", e.what()));
        }
        if (a.field() == kTogether) {
          // Several fields at once (checked again: the axis may come from a client).
          SAE_RETURN_IF_ERROR(CheckTogether(value, "sweep"));
          for (auto it = value.begin(); it != value.end(); ++it)
            SetPath(root, AxisPath(it->first.as<std::string>()), it->second);
        } else {
          SetPath(root, path, value);
        }
        std::string vs = ValueLabel(value);
        for (char& ch : vs)
          if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '_') ch = '_';
        parts.push_back(absl::StrCat(name, "-", vs));
      }
      const std::string suffix = absl::StrJoin(parts, "_");
      root["name"] = absl::StrCat(base.name, "-", suffix);
      root["output"] = absl::StrCat(base.output, "/", suffix);
      SAE_ASSIGN_OR_RETURN(JobConfig cfg, ParseJobConfig(YAML::Dump(root), absl::StrCat("sweep variant ", suffix)));
      out.push_back({suffix, cfg});
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("sweep: ", e.what()));
  }
  return out;
}

}  // namespace sae
