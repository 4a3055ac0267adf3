#include "core/base/config.h"

#include <algorithm>

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/file_util.h"
#include "core/base/format_double.h"

namespace sae {
namespace {

const std::vector<std::string> kDataKinds = {"shards", "lm", "synthetic"};
const std::vector<std::string> kShapes = {"linear", "cosine", "exponential"};
const std::vector<std::string> kDeadRemedies = {"none", "ghost_grads", "auxk"};
const std::vector<std::string> kNormalizations = {"none", "layer_norm", "unit_mean_norm"};
const std::vector<std::string> kInitBDec = {"mean", "geometric_median", "zero"};
const std::vector<std::string> kAuxKScale = {"fit", "none"};
const std::vector<std::string> kInitEncoderScale = {"auto", "match_norm", "none"};
const std::vector<std::string> kLrDecays = {"none", "linear", "cosine"};
const std::vector<std::string> kPrecisions = {"fp32", "bf16"};
const std::vector<std::string> kDevices = {"auto", "cpu", "cuda"};
const std::vector<std::string> kBackends = {"auto", "local", "gloo", "mpi", "nccl"};

bool OneOf(const std::string& value, const std::vector<std::string>& choices) {
  for (const auto& c : choices) {
    if (value == c) return true;
  }
  return false;
}

std::string Location(const YAML::Mark& mark) {
  if (mark.is_null()) return "";
  return absl::StrCat(" (line ", mark.line + 1, ", column ", mark.column + 1, ")");
}

// Parses a human-friendly integer: 4096, -1, 50_000_000, 5e7, 1.5M, 10k, 1G,
// 2B (K = 1e3, M = 1e6, G = B = 1e9, T = 1e12, case-insensitive). The value
// must be integral; it is computed exactly, not through a double. On failure
// returns false and sets *why.
bool ParseHumanInt(const std::string& text, bool* negative, uint64_t* magnitude, std::string* why) {
  std::string s(absl::StripAsciiWhitespace(text));
  size_t i = 0;
  *negative = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
    *negative = s[i] == '-';
    ++i;
  }
  // Mantissa digits (underscores allowed between digits) and an optional
  // fraction; collected into one digit string with a decimal exponent.
  std::string digits;
  int64_t exponent = 0;
  bool any_digit = false;
  auto read_digits = [&](bool fraction) {
    char prev = 0;
    while (i < s.size() && (absl::ascii_isdigit(s[i]) || s[i] == '_')) {
      if (s[i] == '_') {
        if (!absl::ascii_isdigit(prev)) return false;
      } else {
        digits.push_back(s[i]);
        any_digit = true;
        if (fraction) --exponent;
      }
      prev = s[i];
      ++i;
    }
    return prev != '_';
  };
  if (!read_digits(false)) {
    *why = "misplaced '_'";
    return false;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (!read_digits(true)) {
      *why = "misplaced '_'";
      return false;
    }
  }
  if (!any_digit) {
    *why = "not a number";
    return false;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    bool neg_exp = false;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
      neg_exp = s[i] == '-';
      ++i;
    }
    size_t start = i;
    int64_t e = 0;
    while (i < s.size() && absl::ascii_isdigit(s[i])) {
      if (e < 100000) e = e * 10 + (s[i] - '0');
      ++i;
    }
    if (i == start) {
      *why = "malformed exponent";
      return false;
    }
    exponent += neg_exp ? -e : e;
  }
  if (i < s.size()) {
    switch (absl::ascii_tolower(s[i])) {
      case 'k':
        exponent += 3;
        break;
      case 'm':
        exponent += 6;
        break;
      case 'g':
      case 'b':
        exponent += 9;
        break;
      case 't':
        exponent += 12;
        break;
      default:
        *why = "not a number";
        return false;
    }
    ++i;
  }
  if (i != s.size()) {
    *why = "not a number";
    return false;
  }
  // value = digits * 10^exponent, exactly.
  size_t first = digits.find_first_not_of('0');
  if (first == std::string::npos) {
    *magnitude = 0;
    *negative = false;
    return true;
  }
  digits = digits.substr(first);
  while (exponent < 0 && digits.back() == '0') {
    digits.pop_back();
    ++exponent;
  }
  if (exponent < 0) {
    *why = "not an integer";
    return false;
  }
  if (static_cast<int64_t>(digits.size()) + exponent > 20) {
    *why = "out of range";
    return false;
  }
  digits.append(static_cast<size_t>(exponent), '0');
  uint64_t v = 0;
  for (char c : digits) {
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) {
      *why = "out of range";
      return false;
    }
    v = v * 10 + d;
  }
  *magnitude = v;
  return true;
}

// Reads one job file's YAML tree into a JobConfig. Every error is an
// InvalidArgument "<origin>: <field>: <problem>".
class Reader {
 public:
  using Handler = std::function<absl::Status(const YAML::Node&, const std::string&)>;
  struct Field {
    std::string key;
    Handler handle;
  };

  explicit Reader(std::string origin) : origin_(std::move(origin)) {}

  absl::Status Error(const std::string& field, const std::string& problem,
                     const YAML::Node& node) const {
    return absl::InvalidArgumentError(
        absl::StrCat(origin_, ": ", field, ": ", problem, Location(node.Mark())));
  }

  static std::string Describe(const YAML::Node& node) {
    switch (node.Type()) {
      case YAML::NodeType::Null:
        return "null";
      case YAML::NodeType::Map:
        return "a mapping";
      case YAML::NodeType::Sequence:
        return "a list";
      case YAML::NodeType::Scalar:
        return absl::StrCat("'", node.Scalar(), "'");
      default:
        return "nothing";
    }
  }

  // Walks a mapping, rejecting duplicate and unknown keys. A null node (the
  // key given with no value) counts as an empty mapping.
  absl::Status Map(const YAML::Node& node, const std::string& field,
                   const std::vector<Field>& fields) const {
    if (node.IsNull()) return absl::OkStatus();
    if (!node.IsMap()) {
      return Error(field, absl::StrCat("expected a mapping, got ", Describe(node)), node);
    }
    std::set<std::string> seen;
    for (const auto& kv : node) {
      const YAML::Node& key = kv.first;
      if (!key.IsScalar()) {
        return Error(field, absl::StrCat("keys must be plain names, got ", Describe(key)), key);
      }
      const std::string name = key.Scalar();
      const std::string path = field.empty() ? name : absl::StrCat(field, ".", name);
      if (!seen.insert(name).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(origin_, ": duplicate key '", path, "'", Location(key.Mark())));
      }
      const Field* match = nullptr;
      for (const auto& f : fields) {
        if (f.key == name) match = &f;
      }
      if (match == nullptr) {
        std::vector<std::string> valid;
        for (const auto& f : fields) valid.push_back(f.key);
        return absl::InvalidArgumentError(
            absl::StrCat(origin_, ": unknown key '", path, "'", Location(key.Mark()),
                         "; valid keys", field.empty() ? "" : absl::StrCat(" under '", field, "'"),
                         ": ", absl::StrJoin(valid, ", ")));
      }
      SAE_RETURN_IF_ERROR(match->handle(kv.second, path));
    }
    return absl::OkStatus();
  }

  absl::Status Int(const YAML::Node& node, const std::string& field, int64_t* out) const {
    bool negative = false;
    uint64_t magnitude = 0;
    SAE_RETURN_IF_ERROR(Integer(node, field, &negative, &magnitude));
    const uint64_t max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    if (magnitude > max + (negative ? 1 : 0)) {
      return Error(field, absl::StrCat(Describe(node), " is out of range"), node);
    }
    *out = negative ? static_cast<int64_t>(0 - magnitude) : static_cast<int64_t>(magnitude);
    return absl::OkStatus();
  }

  absl::Status UInt(const YAML::Node& node, const std::string& field, uint64_t* out) const {
    bool negative = false;
    uint64_t magnitude = 0;
    SAE_RETURN_IF_ERROR(Integer(node, field, &negative, &magnitude));
    if (negative) return Error(field, absl::StrCat(Describe(node), " must be >= 0"), node);
    *out = magnitude;
    return absl::OkStatus();
  }

  absl::Status Double(const YAML::Node& node, const std::string& field, double* out) const {
    if (!node.IsScalar()) {
      return Error(field, absl::StrCat("expected a number, got ", Describe(node)), node);
    }
    double v = 0;
    if (!absl::SimpleAtod(node.Scalar(), &v) || !std::isfinite(v)) {
      return Error(field, absl::StrCat("expected a finite number, got ", Describe(node)), node);
    }
    *out = v;
    return absl::OkStatus();
  }

  // A string; a null value (the key with nothing after it) reads as "".
  absl::Status String(const YAML::Node& node, const std::string& field, std::string* out) const {
    if (node.IsNull()) {
      out->clear();
      return absl::OkStatus();
    }
    if (!node.IsScalar()) {
      return Error(field, absl::StrCat("expected a string, got ", Describe(node)), node);
    }
    *out = node.Scalar();
    return absl::OkStatus();
  }

  Field IntField(const std::string& key, int64_t* out, bool* given = nullptr) const {
    return {key, [this, out, given](const YAML::Node& n, const std::string& f) {
              if (given != nullptr) *given = true;
              return Int(n, f, out);
            }};
  }
  Field UIntField(const std::string& key, uint64_t* out) const {
    return {key,
            [this, out](const YAML::Node& n, const std::string& f) { return UInt(n, f, out); }};
  }
  Field DoubleField(const std::string& key, double* out) const {
    return {key,
            [this, out](const YAML::Node& n, const std::string& f) { return Double(n, f, out); }};
  }
  Field StringField(const std::string& key, std::string* out) const {
    return {key,
            [this, out](const YAML::Node& n, const std::string& f) { return String(n, f, out); }};
  }

  absl::Status Read(const YAML::Node& root, JobConfig* cfg) {
    if (root.IsNull()) {
      return absl::InvalidArgumentError(absl::StrCat(origin_, ": the job file is empty"));
    }
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat(
          origin_,
          ": the job file must be a mapping of name, data, sae, train, world, output; got ",
          Describe(root), Location(root.Mark())));
    }
    bool have_sae = false, have_train = false;
    const std::vector<Field> top = {
        StringField("name", &cfg->name),
        {"data", [&](const YAML::Node& n, const std::string& f) { return ReadData(n, f, cfg); }},
        {"sae",
         [&](const YAML::Node& n, const std::string& f) {
           have_sae = true;
           return ReadSae(n, f, cfg);
         }},
        {"train",
         [&](const YAML::Node& n, const std::string& f) {
           have_train = true;
           return ReadTrain(n, f, &cfg->train);
         }},
        {"world",
         [&](const YAML::Node& n, const std::string& f) {
           return Map(n, f,
                      {IntField("workers", &cfg->world.workers),
                       StringField("backend", &cfg->world.backend),
                       DoubleField("timeout_seconds", &cfg->world.timeout_seconds)});
         }},
        StringField("output", &cfg->output),
    };
    SAE_RETURN_IF_ERROR(Map(root, "", top));
    if (!have_sae) SAE_RETURN_IF_ERROR(ReadSae(YAML::Node(), "sae", cfg));
    if (!have_train) SAE_RETURN_IF_ERROR(ReadTrain(YAML::Node(), "train", &cfg->train));
    if (cfg->output.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(origin_, ": output: required (a directory)"));
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Integer(const YAML::Node& node, const std::string& field, bool* negative,
                       uint64_t* magnitude) const {
    if (!node.IsScalar()) {
      return Error(field, absl::StrCat("expected an integer, got ", Describe(node)), node);
    }
    std::string why;
    if (!ParseHumanInt(node.Scalar(), negative, magnitude, &why)) {
      return Error(field,
                   absl::StrCat("expected an integer (like 4096, 50_000_000, 5e7, 50M), got ",
                                Describe(node), ": ", why),
                   node);
    }
    return absl::OkStatus();
  }

  absl::Status ReadData(const YAML::Node& node, const std::string& field, JobConfig* cfg) const {
    DataConfig& d = cfg->data;
    if (node.IsMap() && node["kind"]) {
      const YAML::Node kind = node["kind"];
      SAE_RETURN_IF_ERROR(String(kind, field + ".kind", &d.kind));
      if (!OneOf(d.kind, kDataKinds)) {
        return Error(field + ".kind",
                     absl::StrCat("'", d.kind, "' is not one of ", absl::StrJoin(kDataKinds, ", ")),
                     kind);
      }
    }
    std::vector<Field> fields = {{"kind", [](const YAML::Node&, const std::string&) {
                                    return absl::OkStatus();  // read above
                                  }}};
    if (d.kind == "shards") {
      fields.push_back(StringField("path", &d.path));
      fields.push_back(IntField("shuffle_buffer_rows", &d.shuffle_buffer_rows));
    } else if (d.kind == "synthetic") {
      fields.push_back(IntField("d_in", &d.d_in));
      fields.push_back(IntField("latents", &d.latents));
      fields.push_back(IntField("k", &d.k));
      fields.push_back(UIntField("seed", &d.seed));
      fields.push_back(DoubleField("noise", &d.noise));
      fields.push_back(DoubleField("frequency_decay", &d.frequency_decay));
    } else {  // lm
      fields.push_back(StringField("model", &d.model));
      fields.push_back(IntField("layer", &d.layer));
      fields.push_back(StringField("corpus", &d.corpus));
      fields.push_back(IntField("context", &d.context));
      fields.push_back(UIntField("seed", &d.seed));  // corpus: generate
    }
    return Map(node, field, fields);
  }

  absl::Status ReadSae(const YAML::Node& node, const std::string& field, JobConfig* cfg) const {
    SaeConfig& s = cfg->sae;
    bool have_latents = false, have_ef = false, have_ks = false, have_start = false,
         have_end = false;
    YAML::Node ks_node;
    const std::vector<Field> fields = {
        IntField("latents", &s.latents, &have_latents),
        IntField("expansion_factor", &s.expansion_factor, &have_ef),
        IntField("k", &s.k),
        {"k_schedule",
         [&](const YAML::Node& n, const std::string& f) {
           have_ks = true;
           ks_node = n;
           return Map(n, f,
                      {IntField("start", &s.k_schedule.start, &have_start),
                       IntField("end", &s.k_schedule.end, &have_end),
                       DoubleField("fraction", &s.k_schedule.fraction),
                       StringField("shape", &s.k_schedule.shape)});
         }},
        IntField("dead_window_tokens", &s.dead_window_tokens),
        StringField("dead_remedy", &s.dead_remedy),
        DoubleField("aux_coefficient", &s.aux_coefficient),
        StringField("normalize", &s.normalize),
        StringField("init_b_dec", &s.init_b_dec),
        StringField("auxk_scale", &s.auxk_scale),
        StringField("init_encoder_scale", &s.init_encoder_scale),
    };
    SAE_RETURN_IF_ERROR(Map(node, field, fields));
    if (have_latents && have_ef) {
      return Error(field, "give one of latents and expansion_factor, not both", node);
    }
    if (!have_latents && !have_ef) {
      return absl::InvalidArgumentError(absl::StrCat(origin_, ": ", field,
                                                     ".latents: required (or ", field,
                                                     ".expansion_factor)", Location(node.Mark())));
    }
    if (have_ef) {
      if (s.expansion_factor <= 0) {
        return Error(field + ".expansion_factor", "must be > 0", node["expansion_factor"]);
      }
      s.latents = 0;  // resolved below for synthetic data, by the trainer otherwise
      if (cfg->data.kind == "synthetic" && cfg->data.d_in > 0) {
        if (s.expansion_factor > std::numeric_limits<int64_t>::max() / cfg->data.d_in) {
          return Error(field + ".expansion_factor", "expansion_factor * data.d_in overflows",
                       node["expansion_factor"]);
        }
        s.latents = s.expansion_factor * cfg->data.d_in;
      }
    }
    if (have_ks) {
      s.k_schedule.enabled = true;
      if (!have_start) s.k_schedule.start = 0;  // the input dimension d (resolved with the data)
      if (!have_end) s.k_schedule.end = s.k;
    }
    return absl::OkStatus();
  }

  absl::Status ReadTrain(const YAML::Node& node, const std::string& field, TrainConfig* t) const {
    bool have_tokens = false;
    const std::vector<Field> fields = {
        IntField("tokens", &t->tokens, &have_tokens),
        IntField("batch_tokens", &t->batch_tokens),
        DoubleField("lr", &t->lr),
        DoubleField("warmup_fraction", &t->warmup_fraction),
        StringField("lr_decay", &t->lr_decay),
        DoubleField("decay_start_fraction", &t->decay_start_fraction),
        DoubleField("grad_clip", &t->grad_clip),
        UIntField("seed", &t->seed),
        StringField("precision", &t->precision),
        IntField("checkpoint_every_tokens", &t->checkpoint_every_tokens),
        IntField("log_every_steps", &t->log_every_steps),
        StringField("device", &t->device),
        IntField("threads", &t->threads),
    };
    SAE_RETURN_IF_ERROR(Map(node, field, fields));
    if (!have_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin_, ": ", field, ".tokens: required (the number of tokens to train on)",
                       Location(node.Mark())));
    }
    return absl::OkStatus();
  }

  std::string origin_;
};

// Collects the first problem found by ValidateJobConfig.
class Checker {
 public:
  explicit Checker(const std::string& origin) : origin_(origin) {}

  void Fail(const std::string& field, const std::string& problem) {
    if (status_.ok()) {
      status_ = absl::InvalidArgumentError(absl::StrCat(origin_, ": ", field, ": ", problem));
    }
  }
  void Check(bool ok, const std::string& field, const std::string& problem) {
    if (!ok) Fail(field, problem);
  }
  // For problems between two fields whose message names both.
  void CheckRelation(bool ok, const std::string& message) {
    if (!ok && status_.ok()) {
      status_ = absl::InvalidArgumentError(absl::StrCat(origin_, ": ", message));
    }
  }
  void Choice(const std::string& value, const std::vector<std::string>& choices,
              const std::string& field) {
    if (!OneOf(value, choices)) {
      Fail(field, absl::StrCat("'", value, "' is not one of ", absl::StrJoin(choices, ", ")));
    }
  }
  void Positive(int64_t v, const std::string& field) {
    Check(v > 0, field, absl::StrCat("must be > 0 (got ", v, ")"));
  }
  void NonNegative(double v, const std::string& field) {
    Check(v >= 0, field, absl::StrCat("must be >= 0 (got ", FormatDouble(v), ")"));
  }
  void Fraction(double v, const std::string& field, bool zero_ok) {
    bool ok = (zero_ok ? v >= 0 : v > 0) && v <= 1;
    Check(
        ok, field,
        absl::StrCat("must be in ", zero_ok ? "[0, 1]" : "(0, 1]", " (got ", FormatDouble(v), ")"));
  }
  absl::Status status() const { return status_; }

 private:
  std::string origin_;
  absl::Status status_;
};

}  // namespace

absl::Status ValidateJobConfig(const JobConfig& cfg, const std::string& origin) {
  Checker c(origin);
  const DataConfig& d = cfg.data;
  const SaeConfig& s = cfg.sae;
  const TrainConfig& t = cfg.train;
  const WorldConfig& w = cfg.world;

  // Free-text fields: bounded, and no control characters (a name is shown in
  // listings and logs, a path is passed to the file system).
  auto text = [&](const std::string& v, const char* field, size_t max) {
    c.Check(v.size() <= max, field, absl::StrCat(v.size(), " characters, more than ", max));
    c.Check(std::none_of(v.begin(), v.end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f; }),
            field, "contains a control character (NUL, newline, tab, ...)");
  };
  text(cfg.name, "name", kMaxNameLength);
  text(d.path, "data.path", kMaxPathLength);
  text(d.model, "data.model", kMaxPathLength);
  text(d.corpus, "data.corpus", kMaxPathLength);
  text(cfg.output, "output", kMaxPathLength);

  c.Choice(d.kind, kDataKinds, "data.kind");
  if (d.kind == "shards") {
    c.Check(!d.path.empty(), "data.path", "required for data.kind shards");
    c.Positive(d.shuffle_buffer_rows, "data.shuffle_buffer_rows");
  } else if (d.kind == "synthetic") {
    c.Positive(d.d_in, "data.d_in");
    c.Check(d.d_in <= kMaxDIn, "data.d_in", absl::StrCat(d.d_in, " exceeds the largest supported width ", kMaxDIn));
    c.Positive(d.latents, "data.latents");
    c.Check(d.latents <= kMaxLatents, "data.latents", absl::StrCat(d.latents, " exceeds ", kMaxLatents));
    c.Positive(d.k, "data.k");
    c.Check(d.k <= d.latents || d.latents <= 0, "data.k",
            absl::StrCat(d.k, " exceeds data.latents (", d.latents, ")"));
    c.NonNegative(d.noise, "data.noise");
    c.NonNegative(d.frequency_decay, "data.frequency_decay");
  } else if (d.kind == "lm") {
    c.Check(!d.model.empty(), "data.model", "required for data.kind lm");
    c.Check(d.layer >= 0, "data.layer", absl::StrCat("must be >= 0 (got ", d.layer, ")"));
    c.Check(!d.corpus.empty(), "data.corpus", "required for data.kind lm");
    c.Positive(d.context, "data.context");
  }

  // latents: given, or expansion_factor * d_in where d_in is known here.
  c.Check(s.latents >= 0, "sae.latents", absl::StrCat("must be > 0 (got ", s.latents, ")"));
  c.Check(s.expansion_factor >= 0, "sae.expansion_factor",
          absl::StrCat("must be > 0 (got ", s.expansion_factor, ")"));
  c.Check(s.latents > 0 || s.expansion_factor > 0, "sae.latents",
          "required (or sae.expansion_factor)");
  int64_t latents = s.latents;
  if (latents == 0 && s.expansion_factor > 0 && d.kind == "synthetic" && d.d_in > 0 &&
      s.expansion_factor <= std::numeric_limits<int64_t>::max() / d.d_in) {
    latents = s.expansion_factor * d.d_in;
  }
  if (s.latents > 0 && s.expansion_factor > 0 && d.kind == "synthetic" && d.d_in > 0) {
    c.Check(s.latents / d.d_in == s.expansion_factor && s.latents % d.d_in == 0, "sae.latents",
            absl::StrCat(s.latents, " is not sae.expansion_factor (", s.expansion_factor,
                         ") * data.d_in (", d.d_in, ")"));
  }
  c.Positive(s.k, "sae.k");
  c.Check(latents <= kMaxLatents, "sae.latents", absl::StrCat(latents, " exceeds ", kMaxLatents));
  if (latents > 0 && d.kind == "synthetic" && d.d_in > 0 && latents <= kMaxLatents && d.d_in <= kMaxDIn) {
    const double gib = EstimateTrainingBytes(latents, d.d_in) / double(int64_t{1} << 30);
    c.Check(gib <= kMaxTrainingGiB, "sae.latents",
            absl::StrCat(latents, " latents x d_in ", d.d_in, " need about ", static_cast<int64_t>(gib),
                         " GiB (parameters, gradients, Adam state), more than ", kMaxTrainingGiB));
  }
  if (latents > 0) {
    c.Check(s.k <= latents, "sae.k", absl::StrCat(s.k, " exceeds sae.latents (", latents, ")"));
  }
  if (s.k_schedule.enabled) {
    const KScheduleConfig& ks = s.k_schedule;
    c.CheckRelation(ks.end == s.k,
                    absl::StrCat("sae.k_schedule.end (", ks.end, ") must equal sae.k (", s.k, ")"));
    c.CheckRelation(ks.start == 0 || ks.start >= ks.end, absl::StrCat("sae.k_schedule.start (", ks.start,
                                                                      ") must be >= end (", ks.end, ")"));
    if (latents > 0) {
      c.Check(ks.start <= latents, "sae.k_schedule.start",
              absl::StrCat(ks.start, " exceeds sae.latents (", latents, ")"));
    }
    c.Fraction(ks.fraction, "sae.k_schedule.fraction", /*zero_ok=*/false);
    c.Choice(ks.shape, kShapes, "sae.k_schedule.shape");
  }
  c.Positive(s.dead_window_tokens, "sae.dead_window_tokens");
  c.Choice(s.dead_remedy, kDeadRemedies, "sae.dead_remedy");
  c.NonNegative(s.aux_coefficient, "sae.aux_coefficient");
  c.Choice(s.normalize, kNormalizations, "sae.normalize");
  c.Choice(s.init_b_dec, kInitBDec, "sae.init_b_dec");
  c.Choice(s.auxk_scale, kAuxKScale, "sae.auxk_scale");
  c.Choice(s.init_encoder_scale, kInitEncoderScale, "sae.init_encoder_scale");

  c.Check(t.tokens > 0, "train.tokens", "must be > 0");
  c.Positive(t.batch_tokens, "train.batch_tokens");
  c.Check(w.workers >= 1, "world.workers", absl::StrCat("must be >= 1 (got ", w.workers, ")"));
  c.Check(w.timeout_seconds > 0, "world.timeout_seconds", "must be > 0");
  if (t.batch_tokens > 0 && w.workers >= 1) {
    c.CheckRelation(t.batch_tokens >= w.workers,
                    absl::StrCat("train.batch_tokens (", t.batch_tokens,
                                 ") must be >= world.workers (", w.workers, ")"));
    c.CheckRelation(t.batch_tokens % w.workers == 0,
                    absl::StrCat("train.batch_tokens (", t.batch_tokens,
                                 ") must be divisible by world.workers (", w.workers, ")"));
  }
  c.NonNegative(t.lr, "train.lr");
  c.Fraction(t.warmup_fraction, "train.warmup_fraction", /*zero_ok=*/true);
  c.Choice(t.lr_decay, kLrDecays, "train.lr_decay");
  c.Fraction(t.decay_start_fraction, "train.decay_start_fraction", /*zero_ok=*/true);
  c.NonNegative(t.grad_clip, "train.grad_clip");
  c.Choice(t.precision, kPrecisions, "train.precision");
  c.Check(t.checkpoint_every_tokens >= 0, "train.checkpoint_every_tokens",
          absl::StrCat("must be >= 0 (got ", t.checkpoint_every_tokens, ")"));
  c.Check(t.log_every_steps >= 0, "train.log_every_steps",
          absl::StrCat("must be >= 0 (0: about 100 records per run; got ", t.log_every_steps, ")"));
  c.Choice(t.device, kDevices, "train.device");
  c.Check(t.threads >= 0, "train.threads", absl::StrCat("must be >= 0 (got ", t.threads, ")"));
  c.Check(t.threads <= kMaxThreads, "train.threads", absl::StrCat(t.threads, " exceeds ", kMaxThreads));

  c.Choice(w.backend, kBackends, "world.backend");
  c.Check(!cfg.output.empty(), "output", "required (a directory)");
  return c.status();
}

absl::StatusOr<JobConfig> ParseJobConfig(const std::string& yaml, const std::string& origin) {
  JobConfig cfg;
  try {
    YAML::Node root = YAML::Load(yaml);
    Reader reader(origin);
    SAE_RETURN_IF_ERROR(reader.Read(root, &cfg));
  } catch (const YAML::Exception& e) {
    std::string where =
        e.mark.is_null() ? "" : absl::StrCat(":", e.mark.line + 1, ":", e.mark.column + 1);
    return absl::InvalidArgumentError(
        absl::StrCat(origin, where, ": invalid YAML: ", e.msg.empty() ? e.what() : e.msg));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": cannot read the job: ", e.what()));
  }
  if (cfg.name.empty()) {
    cfg.name = std::filesystem::path(origin).stem().string();
    if (cfg.name.empty()) cfg.name = "job";
  }
  SAE_RETURN_IF_ERROR(ValidateJobConfig(cfg, origin));
  return cfg;
}

absl::StatusOr<JobConfig> LoadJobConfig(const std::string& path) {
  // ReadFileToString's errors (NotFound for a missing file) name the path.
  SAE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  SAE_ASSIGN_OR_RETURN(JobConfig cfg, ParseJobConfig(text, path));
  cfg.source_path = path;
  return cfg;
}

std::string JobConfigToYaml(const JobConfig& cfg) {
  YAML::Emitter out;
  auto str = [&out](const char* key, const std::string& v) {
    out << YAML::Key << key << YAML::Value << v;
  };
  auto num = [&out](const char* key, int64_t v) {
    out << YAML::Key << key << YAML::Value << absl::StrCat(v);
  };
  auto unum = [&out](const char* key, uint64_t v) {
    out << YAML::Key << key << YAML::Value << absl::StrCat(v);
  };
  auto real = [&out](const char* key, double v) {
    out << YAML::Key << key << YAML::Value << FormatDouble(v);
  };

  out << YAML::BeginMap;
  str("name", cfg.name);

  const DataConfig& d = cfg.data;
  out << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  str("kind", d.kind);
  if (d.kind == "shards") {
    str("path", d.path);
    num("shuffle_buffer_rows", d.shuffle_buffer_rows);
  } else if (d.kind == "synthetic") {
    num("d_in", d.d_in);
    num("latents", d.latents);
    num("k", d.k);
    unum("seed", d.seed);
    real("noise", d.noise);
    real("frequency_decay", d.frequency_decay);
  } else {
    str("model", d.model);
    num("layer", d.layer);
    str("corpus", d.corpus);
    num("context", d.context);
    unum("seed", d.seed);
  }
  out << YAML::EndMap;

  const SaeConfig& s = cfg.sae;
  out << YAML::Key << "sae" << YAML::Value << YAML::BeginMap;
  // expansion_factor wins: latents is derived from it when the data is read.
  if (s.expansion_factor > 0) {
    num("expansion_factor", s.expansion_factor);
  } else {
    num("latents", s.latents);
  }
  num("k", s.k);
  if (s.k_schedule.enabled) {
    out << YAML::Key << "k_schedule" << YAML::Value << YAML::BeginMap;
    num("start", s.k_schedule.start);
    num("end", s.k_schedule.end);
    real("fraction", s.k_schedule.fraction);
    str("shape", s.k_schedule.shape);
    out << YAML::EndMap;
  }
  num("dead_window_tokens", s.dead_window_tokens);
  str("dead_remedy", s.dead_remedy);
  real("aux_coefficient", s.aux_coefficient);
  str("normalize", s.normalize);
  str("init_b_dec", s.init_b_dec);
  str("auxk_scale", s.auxk_scale);
  str("init_encoder_scale", s.init_encoder_scale);
  out << YAML::EndMap;

  const TrainConfig& t = cfg.train;
  out << YAML::Key << "train" << YAML::Value << YAML::BeginMap;
  num("tokens", t.tokens);
  num("batch_tokens", t.batch_tokens);
  real("lr", t.lr);
  real("warmup_fraction", t.warmup_fraction);
  str("lr_decay", t.lr_decay);
  real("decay_start_fraction", t.decay_start_fraction);
  real("grad_clip", t.grad_clip);
  unum("seed", t.seed);
  str("precision", t.precision);
  num("checkpoint_every_tokens", t.checkpoint_every_tokens);
  num("log_every_steps", t.log_every_steps);
  str("device", t.device);
  num("threads", t.threads);
  out << YAML::EndMap;

  out << YAML::Key << "world" << YAML::Value << YAML::BeginMap;
  num("workers", cfg.world.workers);
  str("backend", cfg.world.backend);
  real("timeout_seconds", cfg.world.timeout_seconds);
  out << YAML::EndMap;

  str("output", cfg.output);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace sae
