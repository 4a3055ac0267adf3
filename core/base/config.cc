#include "core/base/config.h"

#include <algorithm>

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
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

std::string Location(const YAML::Mark& mark) {
  if (mark.is_null()) return "";
  return absl::StrCat(" (line ", mark.line + 1, ", column ", mark.column + 1, ")");
}

// The pieces of a human-friendly integer as written: sign, the mantissa's
// digits (fraction included) and a decimal exponent, so that the value is
// digits * 10^exponent.
struct HumanNumber {
  bool negative = false;
  std::string digits;
  int64_t exponent = 0;
};

// Reads the text of a human-friendly integer left to right, one part at a
// time (the text must outlive the scanner). Each step returns false and sets
// *why on a malformed part.
class HumanIntScanner {
 public:
  explicit HumanIntScanner(absl::string_view text) : s_(text) {}

  void ReadSign(HumanNumber* n) {
    if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) {
      n->negative = s_[i_] == '-';
      ++i_;
    }
  }

  // Mantissa digits (underscores allowed between digits) and an optional
  // fraction, collected into n->digits with the fraction in n->exponent.
  bool ReadMantissa(HumanNumber* n, std::string* why) {
    bool any_digit = false;
    if (!ReadDigits(/*fraction=*/false, n, &any_digit)) {
      *why = "misplaced '_'";
      return false;
    }
    if (i_ < s_.size() && s_[i_] == '.') {
      ++i_;
      if (!ReadDigits(/*fraction=*/true, n, &any_digit)) {
        *why = "misplaced '_'";
        return false;
      }
    }
    if (!any_digit) {
      *why = "not a number";
      return false;
    }
    return true;
  }

  // An optional exponent: e7, E+3, e-2.
  bool ReadExponent(HumanNumber* n, std::string* why) {
    if (i_ >= s_.size() || (s_[i_] != 'e' && s_[i_] != 'E')) return true;
    ++i_;
    bool neg_exp = false;
    if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) {
      neg_exp = s_[i_] == '-';
      ++i_;
    }
    size_t start = i_;
    int64_t e = 0;
    while (i_ < s_.size() && absl::ascii_isdigit(s_[i_])) {
      if (e < 100000) e = e * 10 + (s_[i_] - '0');
      ++i_;
    }
    if (i_ == start) {
      *why = "malformed exponent";
      return false;
    }
    n->exponent += neg_exp ? -e : e;
    return true;
  }

  // An optional suffix (K, M, G or B, T), which must end the text.
  bool ReadSuffixAndEnd(HumanNumber* n, std::string* why) {
    if (i_ < s_.size()) {
      switch (absl::ascii_tolower(s_[i_])) {
        case 'k': n->exponent += 3; break;
        case 'm': n->exponent += 6; break;
        case 'g':
        case 'b': n->exponent += 9; break;
        case 't': n->exponent += 12; break;
        default: *why = "not a number"; return false;
      }
      ++i_;
    }
    if (i_ != s_.size()) {
      *why = "not a number";
      return false;
    }
    return true;
  }

 private:
  bool ReadDigits(bool fraction, HumanNumber* n, bool* any_digit) {
    char prev = 0;
    while (i_ < s_.size() && (absl::ascii_isdigit(s_[i_]) || s_[i_] == '_')) {
      if (s_[i_] == '_') {
        if (!absl::ascii_isdigit(prev)) return false;
      } else {
        n->digits.push_back(s_[i_]);
        *any_digit = true;
        if (fraction) --n->exponent;
      }
      prev = s_[i_];
      ++i_;
    }
    return prev != '_';
  }

  absl::string_view s_;
  size_t i_ = 0;
};

// digits * 10^exponent as an exact unsigned integer; false (and *why) when
// the value has a fraction or does not fit in 64 bits.
bool ExactMagnitude(std::string digits, int64_t exponent, uint64_t* magnitude, std::string* why) {
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

// Parses a human-friendly integer: 4096, -1, 50_000_000, 5e7, 1.5M, 10k, 1G,
// 2B (K = 1e3, M = 1e6, G = B = 1e9, T = 1e12, case-insensitive). The value
// must be integral; it is computed exactly, not through a double. On failure
// returns false and sets *why.
bool ParseHumanInt(const std::string& text, bool* negative, uint64_t* magnitude, std::string* why) {
  HumanIntScanner scan(absl::StripAsciiWhitespace(text));
  HumanNumber n;
  scan.ReadSign(&n);
  *negative = n.negative;
  if (!scan.ReadMantissa(&n, why) || !scan.ReadExponent(&n, why) || !scan.ReadSuffixAndEnd(&n, why)) {
    return false;
  }
  size_t first = n.digits.find_first_not_of('0');
  if (first == std::string::npos) {
    *magnitude = 0;
    *negative = false;
    return true;
  }
  return ExactMagnitude(n.digits.substr(first), n.exponent, magnitude, why);
}

std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "null";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return absl::StrCat("'", node.Scalar(), "'");
    default: return "nothing";
  }
}

// Reads one job file's YAML tree into a JobConfig by walking the structs'
// Fields lists. Every error is an InvalidArgument
// "<origin>: <field>: <problem> (line L, column C)"; the first one wins.
class Reader {
 public:
  explicit Reader(std::string origin) : origin_(std::move(origin)) {}

  absl::Status Read(const YAML::Node& root, JobConfig* cfg) {
    if (root.IsNull()) {
      return absl::InvalidArgumentError(absl::StrCat(origin_, ": the job file is empty"));
    }
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin_, ": the job file must be a mapping of name, data, sae, train, world, output; got ",
                       Describe(root), Location(root.Mark())));
    }
    SAE_RETURN_IF_ERROR(Section(root, "", *cfg));
    // What the file leaves out: rules on the presence of keys (values are
    // checked by ValidateJobConfig).
    if (!Given("train.tokens")) {
      return absl::InvalidArgumentError(absl::StrCat(
          origin_, ": train.tokens: required (the number of tokens to train on)", Location(At("train").Mark())));
    }
    SaeConfig& s = cfg->sae;
    if (Given("sae.latents") && Given("sae.expansion_factor")) {
      return Error("sae", "give one of latents and expansion_factor, not both", At("sae"));
    }
    if (Given("sae.expansion_factor")) {
      // Resolved here for synthetic data (its width is in the file), by the
      // trainer from the data otherwise.
      s.latents = 0;
      const int64_t d_in = cfg->data.d_in;
      if (cfg->data.kind == DataKind::kSynthetic && d_in > 0 && s.expansion_factor > 0 &&
          s.expansion_factor <= std::numeric_limits<int64_t>::max() / d_in) {
        s.latents = s.expansion_factor * d_in;
      }
    }
    // k_schedule without end: the schedule ends at sae.k.
    if (s.k_schedule.enabled && !Given("sae.k_schedule.end")) s.k_schedule.end = s.k;
    return absl::OkStatus();
  }

 private:
  absl::Status Error(const std::string& field, const std::string& problem, const YAML::Node& node) const {
    return absl::InvalidArgumentError(absl::StrCat(origin_, ": ", field, ": ", problem, Location(node.Mark())));
  }
  bool Given(const std::string& field) const { return given_.count(field) > 0; }
  YAML::Node At(const std::string& field) const {
    auto it = nodes_.find(field);
    return it == nodes_.end() ? YAML::Node() : it->second;
  }

  // The visitor of one mapping: reads each listed key that the mapping has.
  template <class T>
  struct SectionVisitor {
    Reader* r;
    const YAML::Node& node;
    const std::string& field;
    std::set<std::string>* accepted;  // keys valid here
    absl::Status* status;

    template <class M>
    void operator()(const char* key, M& member, FieldUse use = FieldUse::kKey) {
      if (use == FieldUse::kPresence) {
        if constexpr (std::is_same_v<M, bool>) member = true;  // visited: the section is given
        return;
      }
      if (use != FieldUse::kKey && use != FieldUse::kReadOnly) return;
      accepted->insert(key);
      if (!status->ok()) return;
      const YAML::Node value = node[key];
      if (!value) return;
      const std::string path = field.empty() ? key : absl::StrCat(field, ".", key);
      r->given_.insert(path);
      r->nodes_[path] = value;
      *status = r->Value(value, path, member);
    }
  };

  // Reads the mapping `node` (null = empty) at dotted path `field` into `s`,
  // refusing duplicate and unknown keys.
  template <class T>
  absl::Status Section(const YAML::Node& node, const std::string& field, T& s) {
    if (!node.IsNull() && !node.IsMap()) {
      return Error(field, absl::StrCat("expected a mapping, got ", Describe(node)), node);
    }
    std::set<std::string> seen;
    if (node.IsMap()) {
      for (const auto& kv : node) {
        const YAML::Node& key = kv.first;
        if (!key.IsScalar()) {
          return Error(field, absl::StrCat("keys must be plain names, got ", Describe(key)), key);
        }
        const std::string path = field.empty() ? key.Scalar() : absl::StrCat(field, ".", key.Scalar());
        if (!seen.insert(key.Scalar()).second) {
          return absl::InvalidArgumentError(
              absl::StrCat(origin_, ": duplicate key '", path, "'", Location(key.Mark())));
        }
      }
    }
    std::set<std::string> accepted;
    absl::Status status;
    T::Fields(s, SectionVisitor<T>{this, node, field, &accepted, &status});
    SAE_RETURN_IF_ERROR(status);
    if (!node.IsMap()) return absl::OkStatus();
    for (const auto& kv : node) {
      const std::string name = kv.first.Scalar();
      if (accepted.count(name)) continue;
      std::vector<std::string> valid;
      T::Fields(s, [&valid](const char* key, auto&, FieldUse use = FieldUse::kKey) {
        if (use == FieldUse::kKey || use == FieldUse::kReadOnly) valid.push_back(key);
      });
      const std::string path = field.empty() ? name : absl::StrCat(field, ".", name);
      return absl::InvalidArgumentError(
          absl::StrCat(origin_, ": unknown key '", path, "'", Location(kv.first.Mark()), "; valid keys",
                       field.empty() ? "" : absl::StrCat(" under '", field, "'"), ": ", absl::StrJoin(valid, ", ")));
    }
    return absl::OkStatus();
  }

  template <class M>
  absl::Status Value(const YAML::Node& node, const std::string& field, M& out) {
    if constexpr (IsConfigSection<M>::value) {
      return Section(node, field, out);
    } else if constexpr (std::is_enum_v<M>) {
      std::string name;
      SAE_RETURN_IF_ERROR(Value(node, field, name));
      auto v = ParseOption<M>(name);
      if (!v.ok()) return Error(field, std::string(v.status().message()), node);
      out = *v;
      return absl::OkStatus();
    } else if constexpr (std::is_same_v<M, std::string>) {
      // A null value (the key with nothing after it) reads as "".
      if (node.IsNull()) {
        out.clear();
        return absl::OkStatus();
      }
      if (!node.IsScalar()) return Error(field, absl::StrCat("expected a string, got ", Describe(node)), node);
      out = node.Scalar();
      return absl::OkStatus();
    } else if constexpr (std::is_same_v<M, bool>) {
      if (!node.IsScalar() || (node.Scalar() != "true" && node.Scalar() != "false"))
        return Error(field, absl::StrCat("expected true or false, got ", Describe(node)), node);
      out = node.Scalar() == "true";
      return absl::OkStatus();
    } else if constexpr (std::is_same_v<M, double>) {
      if (!node.IsScalar()) return Error(field, absl::StrCat("expected a number, got ", Describe(node)), node);
      double v = 0;
      if (!absl::SimpleAtod(node.Scalar(), &v) || !std::isfinite(v)) {
        return Error(field, absl::StrCat("expected a finite number, got ", Describe(node)), node);
      }
      out = v;
      return absl::OkStatus();
    } else {
      static_assert(std::is_same_v<M, int64_t> || std::is_same_v<M, uint64_t>,
                    "a job field of a type the reader does not know: add it here and to the writer");
      if (!node.IsScalar()) return Error(field, absl::StrCat("expected an integer, got ", Describe(node)), node);
      bool negative = false;
      uint64_t magnitude = 0;
      std::string why;
      if (!ParseHumanInt(node.Scalar(), &negative, &magnitude, &why)) {
        return Error(
            field,
            absl::StrCat("expected an integer (like 4096, 50_000_000, 5e7, 50M), got ", Describe(node), ": ", why),
            node);
      }
      if constexpr (std::is_same_v<M, uint64_t>) {
        if (negative) return Error(field, absl::StrCat(Describe(node), " must be >= 0"), node);
        out = magnitude;
      } else {
        const uint64_t max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
        if (magnitude > max + (negative ? 1 : 0)) {
          return Error(field, absl::StrCat(Describe(node), " is out of range"), node);
        }
        out = negative ? static_cast<int64_t>(0 - magnitude) : static_cast<int64_t>(magnitude);
      }
      return absl::OkStatus();
    }
  }

  std::string origin_;
  std::set<std::string> given_;              // dotted paths of the keys the file gives
  std::map<std::string, YAML::Node> nodes_;  // and their nodes (for error locations)
};

// Writes the keys of a section (FieldUse::kKey) in Fields order.
struct Writer {
  YAML::Emitter& out;

  template <class T>
  static bool Present(const T& s) {
    bool present = true;
    T::Fields(s, [&present](const char*, const auto& m, FieldUse use = FieldUse::kKey) {
      if constexpr (std::is_same_v<std::decay_t<decltype(m)>, bool>) {
        if (use == FieldUse::kPresence) present = m;
      }
    });
    return present;
  }

  template <class M>
  void operator()(const char* key, const M& v, FieldUse use = FieldUse::kKey) {
    if (use != FieldUse::kKey) return;
    if constexpr (IsConfigSection<M>::value) {
      if (!Present(v)) return;
      out << YAML::Key << key << YAML::Value << YAML::BeginMap;
      M::Fields(v, *this);
      out << YAML::EndMap;
    } else {
      out << YAML::Key << key << YAML::Value << Text(v);
    }
  }

  template <class M>
  static std::string Text(const M& v) {
    if constexpr (std::is_enum_v<M>) {
      return OptionName(v);
    } else if constexpr (std::is_same_v<M, std::string>) {
      return v;
    } else if constexpr (std::is_same_v<M, double>) {
      return FormatDouble(v);
    } else if constexpr (std::is_same_v<M, bool>) {
      return v ? "true" : "false";
    } else {
      static_assert(std::is_same_v<M, int64_t> || std::is_same_v<M, uint64_t>,
                    "a job field of a type the writer does not know");
      return absl::StrCat(v);
    }
  }
};

// Flattens a section into JobFields.
struct Lister {
  std::vector<JobField>* out;
  std::string prefix;

  template <class M>
  void operator()(const char* key, const M& v, FieldUse use = FieldUse::kKey) {
    const std::string name = prefix.empty() ? key : absl::StrCat(prefix, ".", key);
    if constexpr (IsConfigSection<M>::value) {
      M::Fields(v, Lister{out, name});
    } else {
      out->push_back({name, Writer::Text(v), use});
    }
  }
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
  // A status whose message names its field already.
  void Merge(const absl::Status& s) {
    if (!s.ok() && status_.ok()) status_ = Annotate(s, origin_);
  }
  void Positive(int64_t v, const std::string& field) { Check(v > 0, field, absl::StrCat("must be > 0 (got ", v, ")")); }
  void NonNegative(double v, const std::string& field) {
    Check(v >= 0, field, absl::StrCat("must be >= 0 (got ", FormatDouble(v), ")"));
  }
  void Fraction(double v, const std::string& field, bool zero_ok) {
    bool ok = (zero_ok ? v >= 0 : v > 0) && v <= 1;
    Check(ok, field, absl::StrCat("must be in ", zero_ok ? "[0, 1]" : "(0, 1]", " (got ", FormatDouble(v), ")"));
  }
  absl::Status status() const { return status_; }

 private:
  std::string origin_;
  absl::Status status_;
};

// Free-text fields: bounded, and no control characters (a name is shown in
// listings and logs, a path is passed to the file system).
void CheckTextFields(const JobConfig& cfg, Checker& c) {
  auto text = [&](const std::string& v, const char* field, size_t max) {
    c.Check(v.size() <= max, field, absl::StrCat(v.size(), " characters, more than ", max));
    c.Check(
        std::none_of(v.begin(), v.end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f; }),
        field, "contains a control character (NUL, newline, tab, ...)");
  };
  text(cfg.name, "name", kMaxNameLength);
  text(cfg.data.path, "data.path", kMaxPathLength);
  text(cfg.data.model, "data.model", kMaxPathLength);
  text(cfg.data.corpus, "data.corpus", kMaxPathLength);
  text(cfg.output, "output", kMaxPathLength);
}

// The fields each data.kind requires.
void CheckData(const DataConfig& d, Checker& c) {
  if (d.kind == DataKind::kShards) {
    c.Check(!d.path.empty(), "data.path", "required for data.kind shards");
    c.Positive(d.shuffle_buffer_rows, "data.shuffle_buffer_rows");
  } else if (d.kind == DataKind::kSynthetic) {
    c.Positive(d.d_in, "data.d_in");
    c.Check(d.d_in <= kMaxDIn, "data.d_in", absl::StrCat(d.d_in, " exceeds the largest supported width ", kMaxDIn));
    c.Positive(d.latents, "data.latents");
    c.Check(d.latents <= kMaxLatents, "data.latents", absl::StrCat(d.latents, " exceeds ", kMaxLatents));
    c.Positive(d.k, "data.k");
    c.Check(d.k <= d.latents || d.latents <= 0, "data.k", absl::StrCat(d.k, " exceeds data.latents (", d.latents, ")"));
    c.NonNegative(d.noise, "data.noise");
    c.NonNegative(d.frequency_decay, "data.frequency_decay");
  } else if (d.kind == DataKind::kLm) {
    c.Check(!d.model.empty(), "data.model", "required for data.kind lm");
    c.Check(d.layer >= 0, "data.layer", absl::StrCat("must be >= 0 (got ", d.layer, ")"));
    c.Check(!d.corpus.empty(), "data.corpus", "required for data.kind lm");
    c.Positive(d.context, "data.context");
  }
}

// The dictionary's shape and the sae.* coefficients.
void CheckSae(const DataConfig& d, const SaeConfig& s, Checker& c) {
  // latents: given, or expansion_factor * d_in where d_in is known here.
  c.Check(s.latents >= 0, "sae.latents", absl::StrCat("must be > 0 (got ", s.latents, ")"));
  c.Check(s.expansion_factor >= 0, "sae.expansion_factor", absl::StrCat("must be > 0 (got ", s.expansion_factor, ")"));
  c.Check(s.latents > 0 || s.expansion_factor > 0, "sae.latents", "required (or sae.expansion_factor)");
  // The data's width where the file gives it (synthetic); 0 = known later.
  const int64_t d_in = d.kind == DataKind::kSynthetic && d.d_in > 0 && d.d_in <= kMaxDIn ? d.d_in : 0;
  int64_t latents = s.latents;
  if (s.expansion_factor > 0 && d_in > 0) {
    c.Check(s.expansion_factor <= std::numeric_limits<int64_t>::max() / d_in, "sae.expansion_factor",
            "expansion_factor * data.d_in overflows");
    if (latents == 0 && s.expansion_factor <= std::numeric_limits<int64_t>::max() / d_in) {
      latents = s.expansion_factor * d_in;
    }
    if (s.latents > 0) {
      c.Check(
          s.latents / d_in == s.expansion_factor && s.latents % d_in == 0, "sae.latents",
          absl::StrCat(s.latents, " is not sae.expansion_factor (", s.expansion_factor, ") * data.d_in (", d_in, ")"));
    }
  }
  if (latents > 0) {
    c.Merge(CheckSaeShape(d_in, latents, s.k, s.k_schedule.enabled ? s.k_schedule.start : 0));
  } else {
    c.Positive(s.k, "sae.k");
  }
  if (s.k_schedule.enabled) {
    const KScheduleConfig& ks = s.k_schedule;
    c.CheckRelation(ks.end == s.k, absl::StrCat("sae.k_schedule.end (", ks.end, ") must equal sae.k (", s.k, ")"));
    c.CheckRelation(ks.start == 0 || ks.start >= ks.end,
                    absl::StrCat("sae.k_schedule.start (", ks.start, ") must be >= end (", ks.end, ")"));
    c.Fraction(ks.fraction, "sae.k_schedule.fraction", /*zero_ok=*/false);
    c.NonNegative(ks.current_k_weight, "sae.k_schedule.current_k_weight");
  }
  c.Positive(s.dead_window_tokens, "sae.dead_window_tokens");
  c.NonNegative(s.aux_coefficient, "sae.aux_coefficient");
}

// train.* and world.*, and how the batch divides among the workers.
void CheckTrainAndWorld(const TrainConfig& t, const WorldConfig& w, Checker& c) {
  c.Check(t.tokens > 0, "train.tokens", "must be > 0");
  c.Positive(t.batch_tokens, "train.batch_tokens");
  c.Check(w.workers >= 1, "world.workers", absl::StrCat("must be >= 1 (got ", w.workers, ")"));
  c.Check(w.timeout_seconds > 0, "world.timeout_seconds", "must be > 0");
  if (t.batch_tokens > 0 && w.workers >= 1) {
    c.CheckRelation(t.batch_tokens >= w.workers, absl::StrCat("train.batch_tokens (", t.batch_tokens,
                                                              ") must be >= world.workers (", w.workers, ")"));
    c.CheckRelation(
        t.batch_tokens % w.workers == 0,
        absl::StrCat("train.batch_tokens (", t.batch_tokens, ") must be divisible by world.workers (", w.workers, ")"));
  }
  c.NonNegative(t.lr, "train.lr");
  c.Fraction(t.warmup_fraction, "train.warmup_fraction", /*zero_ok=*/true);
  c.Fraction(t.decay_start_fraction, "train.decay_start_fraction", /*zero_ok=*/true);
  c.NonNegative(t.grad_clip, "train.grad_clip");
  c.Check(t.checkpoint_every_tokens >= 0, "train.checkpoint_every_tokens",
          absl::StrCat("must be >= 0 (got ", t.checkpoint_every_tokens, ")"));
  c.Check(t.log_every_steps >= 0, "train.log_every_steps",
          absl::StrCat("must be >= 0 (0: about 100 records per run; got ", t.log_every_steps, ")"));
  c.Check(t.threads >= 0, "train.threads", absl::StrCat("must be >= 0 (got ", t.threads, ")"));
  c.Check(t.threads <= kMaxThreads, "train.threads", absl::StrCat(t.threads, " exceeds ", kMaxThreads));
}

}  // namespace

absl::Status ValidateJobConfig(const JobConfig& cfg, const std::string& origin) {
  Checker c(origin);
  CheckTextFields(cfg, c);
  CheckData(cfg.data, c);
  CheckSae(cfg.data, cfg.sae, c);
  CheckTrainAndWorld(cfg.train, cfg.world, c);
  c.Check(!cfg.output.empty(), "output", "required (a directory)");
  return c.status();
}

absl::Status CheckSaeShape(int64_t d_in, int64_t latents, int64_t k, int64_t k_schedule_start) {
  auto fail = [](const std::string& field, const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
  };
  if (latents <= 0) return fail("sae.latents", absl::StrCat("must be > 0 (got ", latents, ")"));
  if (latents > kMaxLatents) return fail("sae.latents", absl::StrCat(latents, " exceeds ", kMaxLatents));
  if (d_in > 0 && d_in <= kMaxDIn) {
    const double gib = EstimateTrainingBytes(latents, d_in) / double(int64_t{1} << 30);
    if (gib > kMaxTrainingGiB)
      return fail("sae.latents",
                  absl::StrCat(latents, " latents x d_in ", d_in, " need about ", static_cast<int64_t>(gib),
                               " GiB (parameters, gradients, Adam state), more than ", kMaxTrainingGiB));
  }
  if (k < 1) return fail("sae.k", absl::StrCat("must be > 0 (got ", k, ")"));
  if (k > latents) return fail("sae.k", absl::StrCat(k, " exceeds sae.latents (", latents, ")"));
  if (k_schedule_start > latents)
    return fail("sae.k_schedule.start", absl::StrCat(k_schedule_start, " exceeds sae.latents (", latents, ")"));
  return absl::OkStatus();
}

absl::StatusOr<JobConfig> ParseJobConfig(const std::string& yaml, const std::string& origin) {
  JobConfig cfg;
  try {
    YAML::Node root = YAML::Load(yaml);
    Reader reader(origin);
    SAE_RETURN_IF_ERROR(reader.Read(root, &cfg));
  } catch (const YAML::Exception& e) {
    std::string where = e.mark.is_null() ? "" : absl::StrCat(":", e.mark.line + 1, ":", e.mark.column + 1);
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
  out << YAML::BeginMap;
  JobConfig::Fields(cfg, Writer{out});
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<JobField> ListJobFields(const JobConfig& cfg) {
  std::vector<JobField> out;
  JobConfig::Fields(cfg, Lister{&out, ""});
  return out;
}

}  // namespace sae
