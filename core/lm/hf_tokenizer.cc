// Hugging Face tokenizer.json (the `tokenizers` library's serialisation):
// BPE models, byte-level (GPT-2, Llama 3, Qwen2) or SentencePiece-style with
// ▁ and byte fallback (Llama 2, Mistral, Gemma). Encoding follows the
// library's pipeline: added tokens are cut out of the raw text first, each
// remaining segment is normalized, pre-tokenized into words, and each word
// is split into characters (or bytes) and merged by merge rank. Regexes are
// Oniguruma's, the engine the `tokenizers` library itself uses; Unicode
// normalization is ICU's. Anything in the file this code does not implement
// is refused with the field's name.
#define ONIG_ESCAPE_UCHAR_COLLISION  // ICU has its own UChar
#include <oniguruma.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <set>
#include <tuple>
#include <unordered_map>

#include "core/base/parse.h"
#include "core/lm/tokenizer.h"

namespace sae {
namespace {

using json = nlohmann::json;

constexpr const char* kSpaceMark = "\xE2\x96\x81";  // U+2581 "▁"

size_t Utf8Len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

std::string Utf8(int cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

void ReplaceAll(std::string* s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t f = s->find(from, pos);
    if (f == std::string::npos) break;
    out.append(*s, pos, f - pos);
    out += to;
    pos = f + from.size();
  }
  out.append(*s, pos, std::string::npos);
  s->swap(out);
}

// An Oniguruma regex (Ruby syntax, UTF-8), as `tokenizers` compiles them.
class Regex {
 public:
  static absl::StatusOr<std::shared_ptr<Regex>> Compile(const std::string& pattern, const std::string& where) {
    static std::once_flag once;
    std::call_once(once, [] {
      OnigEncoding enc = ONIG_ENCODING_UTF8;
      onig_initialize(&enc, 1);
    });
    auto r = std::shared_ptr<Regex>(new Regex());
    OnigErrorInfo info;
    const auto* p = reinterpret_cast<const OnigUChar*>(pattern.data());
    const int rc =
        onig_new(&r->re_, p, p + pattern.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &info);
    if (rc != ONIG_NORMAL) {
      OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
      onig_error_code_to_str(msg, rc, &info);
      r->re_ = nullptr;
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": regex ", json(pattern).dump(), " does not compile: ", reinterpret_cast<char*>(msg)));
    }
    return r;
  }
  ~Regex() {
    if (re_) onig_free(re_);
  }
  // Non-overlapping matches [begin, end) left to right (empty ones skipped).
  std::vector<std::pair<size_t, size_t>> FindAll(const std::string& s) const {
    std::vector<std::pair<size_t, size_t>> out;
    OnigRegion* region = onig_region_new();
    const auto* str = reinterpret_cast<const OnigUChar*>(s.data());
    const OnigUChar* end = str + s.size();
    size_t pos = 0;
    while (pos <= s.size()) {
      const int r = onig_search(re_, str, end, str + pos, end, region, ONIG_OPTION_NONE);
      if (r < 0) break;
      const size_t b = static_cast<size_t>(region->beg[0]), e = static_cast<size_t>(region->end[0]);
      if (e > b) {
        out.emplace_back(b, e);
        pos = e;
      } else {  // an empty match: step over one character
        if (b >= s.size()) break;
        pos = b + Utf8Len(static_cast<unsigned char>(s[b]));
      }
    }
    onig_region_free(region, 1);
    return out;
  }

 private:
  Regex() = default;
  regex_t* re_ = nullptr;
};

// A "pattern" object: {"String": s} or {"Regex": r}.
struct Pattern {
  std::string literal;
  std::shared_ptr<Regex> regex;
  std::vector<std::pair<size_t, size_t>> FindAll(const std::string& s) const {
    if (regex) return regex->FindAll(s);
    std::vector<std::pair<size_t, size_t>> out;
    if (literal.empty()) return out;
    for (size_t p = s.find(literal); p != std::string::npos; p = s.find(literal, p + literal.size()))
      out.emplace_back(p, p + literal.size());
    return out;
  }
};

absl::Status Unknown(const std::string& where, const std::string& what) {
  return absl::UnimplementedError(absl::StrCat(where, ": ", what, " is not supported"));
}

// Refuses keys of `j` outside `known`.
absl::Status OnlyKeys(const json& j, std::initializer_list<const char*> known, const std::string& where) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool ok = false;
    for (const char* k : known) ok = ok || it.key() == k;
    if (!ok) return Unknown(where, absl::StrCat("field \"", it.key(), "\""));
  }
  return absl::OkStatus();
}

// A part of type "Sequence": the parts listed under `key` (an array), each
// read by part(json, where) in order. `w` names the Sequence in errors.
template <typename F>
absl::Status ForEachInSequence(const json& j, const char* key, const std::string& where, const std::string& w, F part) {
  SAE_RETURN_IF_ERROR(OnlyKeys(j, {"type", key}, w));
  if (!j.contains(key) || !j[key].is_array())
    return absl::InvalidArgumentError(absl::StrCat(w, ": \"", key, "\" is not an array"));
  for (size_t i = 0; i < j[key].size(); ++i)
    SAE_RETURN_IF_ERROR(part(j[key][i], absl::StrCat(where, ".", key, "[", i, "]")));
  return absl::OkStatus();
}

absl::StatusOr<std::string> Str(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j[key].is_string())
    return absl::InvalidArgumentError(absl::StrCat(where, ": field \"", key, "\" missing or not a string"));
  return j[key].get<std::string>();
}

// An optional boolean field (absent or null: `def`); anything else is an error naming it.
absl::StatusOr<bool> Bool(const json& j, const char* key, bool def, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_boolean())
    return absl::InvalidArgumentError(absl::StrCat(where, ": field \"", key, "\" is not true or false"));
  return j[key].get<bool>();
}

// An optional integer field in [0, max] (absent or null: `def`).
absl::StatusOr<int64_t> Int(const json& j, const char* key, int64_t def, int64_t max, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_number_integer() || j[key].get<int64_t>() < 0 || j[key].get<int64_t>() > max ||
      (j[key].is_number_unsigned() && j[key].get<uint64_t>() > static_cast<uint64_t>(max)))
    return absl::InvalidArgumentError(absl::StrCat(where, ": field \"", key, "\" is not an integer in [0, ", max, "]"));
  return j[key].get<int64_t>();
}

// A field holding exactly one character (the `tokenizers` library's `char`
// fields: Metaspace's replacement, Strip's content).
absl::StatusOr<std::string> Char(const json& j, const char* key, const std::string& where) {
  SAE_ASSIGN_OR_RETURN(std::string s, Str(j, key, where));
  if (s.empty() || Utf8Len(static_cast<unsigned char>(s[0])) != s.size())
    return absl::InvalidArgumentError(absl::StrCat(where, ": field \"", key, "\" is not one character"));
  return s;
}

// How deeply `j` nests (iteratively: the input may be deep).
constexpr int kMaxDepth = 64;
int Depth(const json& j) {
  int max = 0;
  std::vector<std::pair<const json*, int>> todo{{&j, 1}};
  while (!todo.empty()) {
    const auto [v, d] = todo.back();
    todo.pop_back();
    max = std::max(max, d);
    if (max > kMaxDepth) break;
    if (v->is_structured())
      for (const json& c : *v) todo.emplace_back(&c, d + 1);
  }
  return max;
}

// Ids and token strings are at most 2^24 (as the vocabulary's).
constexpr int64_t kMaxId = 1 << 24;

absl::StatusOr<Pattern> ParsePattern(const json& j, const std::string& where) {
  Pattern p;
  if (j.is_object() && j.size() == 1 && j.contains("String") && j["String"].is_string()) {
    p.literal = j["String"].get<std::string>();
    return p;
  }
  if (j.is_object() && j.size() == 1 && j.contains("Regex") && j["Regex"].is_string()) {
    SAE_ASSIGN_OR_RETURN(p.regex, Regex::Compile(j["Regex"].get<std::string>(), where));
    return p;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": pattern ", j.dump(), " is not {\"String\": …} or {\"Regex\": …}"));
}

// ---------- normalizers ----------

struct Normalizer {
  enum Kind { kPrepend, kReplace, kNfc, kNfd, kNfkc, kNfkd, kLowercase };
  Kind kind;
  std::string text;  // Prepend: prefix; Replace: content
  Pattern pattern;
};

absl::Status ParseNormalizer(const json& j, const std::string& where, std::vector<Normalizer>* out) {
  if (j.is_null()) return absl::OkStatus();
  SAE_ASSIGN_OR_RETURN(std::string type, Str(j, "type", where));
  const std::string w = absl::StrCat(where, " (", type, ")");
  if (type == "Sequence") {
    return ForEachInSequence(j, "normalizers", where, w,
                             [&](const json& part, const std::string& at) { return ParseNormalizer(part, at, out); });
  }
  Normalizer n;
  if (type == "Prepend") {
    SAE_RETURN_IF_ERROR(OnlyKeys(j, {"type", "prepend"}, w));
    n.kind = Normalizer::kPrepend;
    SAE_ASSIGN_OR_RETURN(n.text, Str(j, "prepend", w));
  } else if (type == "Replace") {
    SAE_RETURN_IF_ERROR(OnlyKeys(j, {"type", "pattern", "content"}, w));
    n.kind = Normalizer::kReplace;
    SAE_ASSIGN_OR_RETURN(n.text, Str(j, "content", w));
    if (!j.contains("pattern")) return absl::InvalidArgumentError(absl::StrCat(w, ": field \"pattern\" missing"));
    SAE_ASSIGN_OR_RETURN(n.pattern, ParsePattern(j["pattern"], w));
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD" || type == "Lowercase") {
    SAE_RETURN_IF_ERROR(OnlyKeys(j, {"type"}, w));
    n.kind = type == "NFC"    ? Normalizer::kNfc
             : type == "NFD"  ? Normalizer::kNfd
             : type == "NFKC" ? Normalizer::kNfkc
             : type == "NFKD" ? Normalizer::kNfkd
                              : Normalizer::kLowercase;
  } else {
    return Unknown(where, absl::StrCat("normalizer type \"", type, "\""));
  }
  out->push_back(std::move(n));
  return absl::OkStatus();
}

std::string Normalize(const std::vector<Normalizer>& ns, std::string s) {
  for (const Normalizer& n : ns) {
    switch (n.kind) {
      case Normalizer::kPrepend:
        if (!s.empty()) s = n.text + s;
        break;
      case Normalizer::kReplace: {
        const auto m = n.pattern.FindAll(s);
        std::string out;
        size_t pos = 0;
        for (const auto& [b, e] : m) {
          out.append(s, pos, b - pos);
          out += n.text;
          pos = e;
        }
        out.append(s, pos, std::string::npos);
        s.swap(out);
        break;
      }
      case Normalizer::kLowercase: {
        icu::UnicodeString u = icu::UnicodeString::fromUTF8(s);
        u.toLower();
        s.clear();
        u.toUTF8String(s);
        break;
      }
      default: {
        UErrorCode st = U_ZERO_ERROR;
        const icu::Normalizer2* norm = n.kind == Normalizer::kNfc    ? icu::Normalizer2::getNFCInstance(st)
                                       : n.kind == Normalizer::kNfd  ? icu::Normalizer2::getNFDInstance(st)
                                       : n.kind == Normalizer::kNfkc ? icu::Normalizer2::getNFKCInstance(st)
                                                                     : icu::Normalizer2::getNFKDInstance(st);
        if (U_FAILURE(st)) break;
        icu::UnicodeString u = norm->normalize(icu::UnicodeString::fromUTF8(s), st);
        if (U_FAILURE(st)) break;
        s.clear();
        u.toUTF8String(s);
        break;
      }
    }
  }
  return s;
}

// ---------- pre-tokenizers ----------

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizer {
  enum Kind { kSplit, kByteLevel, kMetaspace, kDigits };
  Kind kind;
  Pattern pattern;  // Split; ByteLevel with use_regex: GPT-2's
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false, use_regex = true;                  // ByteLevel
  std::string replacement = kSpaceMark, prepend_scheme = "always";  // Metaspace
  bool split = true;                                                // Metaspace
  bool individual_digits = false;                                   // Digits
};

// A piece of a segment being pre-tokenized: its text and whether it starts
// at offset 0 of the input (Metaspace's prepend_scheme "first").
struct Piece {
  std::string s;
  bool at_start;
};

const char* kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

absl::StatusOr<Behavior> ParseBehavior(const json& j, const std::string& where) {
  const std::string b = j.is_string() ? j.get<std::string>() : j.dump();
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return Unknown(where, absl::StrCat("behavior \"", b, "\""));
}

absl::Status ParsePreTokenizer(const json& j, const std::string& where, std::vector<PreTokenizer>* out) {
  if (j.is_null()) return absl::OkStatus();
  SAE_ASSIGN_OR_RETURN(std::string type, Str(j, "type", where));
  const std::string w = absl::StrCat(where, " (", type, ")");
  if (type == "Sequence") {
    return ForEachInSequence(j, "pretokenizers", where, w,
                             [&](const json& part, const std::string& at) { return ParsePreTokenizer(part, at, out); });
  }
  PreTokenizer p;
  if (type == "Split") {
    SAE_RETURN_IF_ERROR(OnlyKeys(j, {"type", "pattern", "behavior", "invert"}, w));
    p.kind = PreTokenizer::kSplit;
    if (!j.contains("pattern")) return absl::InvalidArgumentError(absl::StrCat(w, ": field \"pattern\" missing"));
    SAE_ASSIGN_OR_RETURN(p.pattern, ParsePattern(j["pattern"], w));
    if (j.contains("behavior")) {
      SAE_ASSIGN_OR_RETURN(p.behavior, ParseBehavior(j["behavior"], w));
    }
    SAE_ASSIGN_OR_RETURN(p.invert, Bool(j, "invert", false, w));
  } else if (type == "ByteLevel") {
    SAE_RETURN_IF_ERROR(OnlyKeys(j, {"type", "add_prefix_space", "trim_offsets", "use_regex"}, w));
    p.kind = PreTokenizer::kByteLevel;
    SAE_ASSIGN_OR_RETURN(p.add_prefix_space, Bool(j, "add_prefix_space", false, w));
    SAE_ASSIGN_OR_RETURN(p.use_regex, Bool(j, "use_regex", true, w));
    if (p.use_regex) {
      SAE_ASSIGN_OR_RETURN(p.pattern.regex, Regex::Compile(kGpt2Pattern, w));
    }
  } else if (type == "Metaspace") {
    SAE_RETURN_IF_ERROR(
        OnlyKeys(j, {"type", "replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep"}, w));
    p.kind = PreTokenizer::kMetaspace;
    if (j.contains("replacement")) {
      SAE_ASSIGN_OR_RETURN(p.replacement, Char(j, "replacement", w));
    }
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      p.prepend_scheme = j["prepend_scheme"].get<std::string>();
    } else if (j.contains("add_prefix_space")) {  // older files
      SAE_ASSIGN_OR_RETURN(const bool prefix, Bool(j, "add_prefix_space", true, w));
      p.prepend_scheme = prefix ? "always" : "never";
    }
    if (p.prepend_scheme != "always" && p.prepend_scheme != "first" && p.prepend_scheme != "never")
      return Unknown(w, absl::StrCat("prepend_scheme \"", p.prepend_scheme, "\""));
    SAE_ASSIGN_OR_RETURN(p.split, Bool(j, "split", true, w));
  } else if (type == "Digits") {
    SAE_RETURN_IF_ERROR(OnlyKeys(j, {"type", "individual_digits"}, w));
    p.kind = PreTokenizer::kDigits;
    SAE_ASSIGN_OR_RETURN(p.individual_digits, Bool(j, "individual_digits", false, w));
  } else {
    return Unknown(where, absl::StrCat("pre_tokenizer type \"", type, "\""));
  }
  out->push_back(std::move(p));
  return absl::OkStatus();
}

// Splits `s` at `matches` ([begin, end) ranges) as `tokenizers` does.
std::vector<std::string> SplitBy(const std::string& s, const std::vector<std::pair<size_t, size_t>>& matches,
                                 Behavior behavior, bool invert) {
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> parts;  // ((b, e), is_match)
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (b > prev) parts.push_back({{prev, b}, false});
    parts.push_back({{b, e}, true});
    prev = e;
  }
  if (prev < s.size()) parts.push_back({{prev, s.size()}, false});
  if (invert)
    for (auto& p : parts) p.second = !p.second;
  std::vector<std::pair<size_t, size_t>> out;
  switch (behavior) {
    case Behavior::kRemoved:
      for (const auto& p : parts)
        if (!p.second) out.push_back(p.first);
      break;
    case Behavior::kIsolated:
      for (const auto& p : parts) out.push_back(p.first);
      break;
    case Behavior::kContiguous: {
      bool prev_match = false;
      for (const auto& p : parts) {
        if (p.second && prev_match && !out.empty())
          out.back().second = p.first.second;
        else
          out.push_back(p.first);
        prev_match = p.second;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (const auto& p : parts) {
        if (p.second && !prev_match && !out.empty())
          out.back().second = p.first.second;
        else
          out.push_back(p.first);
        prev_match = p.second;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->second && !prev_match && !out.empty())
          out.back().first = it->first.first;
        else
          out.push_back(it->first);
        prev_match = it->second;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  std::vector<std::string> r;
  for (const auto& [b, e] : out)
    if (e > b) r.push_back(s.substr(b, e - b));
  return r;
}

// ---------- the tokenizer ----------

struct AddedToken {
  int32_t id;
  std::string content;
  bool lstrip = false, rstrip = false, special = false, normalized = false;
};

class HfTokenizer : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromText(const std::string& text, const std::string& path);

  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }

  std::vector<int32_t> Encode(const std::string& text, bool bos, bool eos) const override {
    std::vector<int32_t> out;
    if (bos) out.insert(out.end(), prefix_.begin(), prefix_.end());
    // As `tokenizers` does: added tokens with normalized false are cut out of
    // the raw text; each segment between them is normalized, and those with
    // normalized true are cut out of that (as their normalized form); what
    // remains is pre-tokenized and run through the model.
    SplitOnAdded(text, raw_added_, &out, [&](const std::string& seg, bool at_start) {
      const std::string norm = Normalize(normalizers_, seg);
      SplitOnAdded(norm, norm_added_, &out,
                   [&](const std::string& piece, bool first) { EncodeNormalized(piece, at_start && first, &out); });
    });
    if (eos) out.insert(out.end(), suffix_.begin(), suffix_.end());
    return out;
  }

  std::string DecodePiece(int32_t prev, int32_t token) const override {
    if (token < 0 || token >= vocab_size()) return "";
    if (special_.count(token)) return "";
    std::string s = pieces_[token];
    if (added_ids_.count(token)) return s;
    if (byte_level_decoder_) {
      std::string out;
      for (size_t i = 0; i < s.size();) {
        const size_t len = Utf8Len(static_cast<unsigned char>(s[i]));
        auto it = unbyte_.find(s.substr(i, len));
        if (it != unbyte_.end())
          out.push_back(it->second);
        else
          out.append(s, i, len);
        i += len;
      }
      return out;
    }
    uint8_t byte = 0;
    if (byte_fallback_decoder_ && s.size() == 6 && s.compare(0, 3, "<0x") == 0 && s[5] == '>' &&
        ParseHexByte(absl::string_view(s).substr(3, 2), &byte))
      return std::string(1, static_cast<char>(byte));
    for (const auto& [from, to] : decode_replace_) ReplaceAll(&s, from, to);
    const bool first = prev < 0 || prev == bos_;
    if (first)
      for (size_t n = 0; n < strip_left_ && s.compare(0, strip_content_.size(), strip_content_) == 0; ++n)
        s.erase(0, strip_content_.size());
    return s;
  }

 private:
  using AddedIndex = std::map<unsigned char, std::vector<std::pair<std::string, const AddedToken*>>>;

  // Cuts the leftmost-longest matches of `index` out of `s`: their ids go to
  // `out`, the text between them to `text(piece, starts_at_0)`.
  template <typename F>
  static void SplitOnAdded(const std::string& s, const AddedIndex& index, std::vector<int32_t>* out, F text) {
    size_t pos = 0, seg = 0;
    auto flush = [&](size_t b, size_t e) {
      if (e > b) text(s.substr(b, e - b), b == 0);
    };
    while (!index.empty() && pos < s.size()) {
      const std::pair<std::string, const AddedToken*>* hit = nullptr;
      auto it = index.find(static_cast<unsigned char>(s[pos]));
      if (it != index.end())
        for (const auto& cand : it->second)
          if (s.compare(pos, cand.first.size(), cand.first) == 0) {
            hit = &cand;  // longest first
            break;
          }
      if (hit == nullptr) {
        ++pos;
        continue;
      }
      size_t b = pos, e = pos + hit->first.size();
      if (hit->second->lstrip)
        while (b > seg && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
      if (hit->second->rstrip)
        while (e < s.size() && std::isspace(static_cast<unsigned char>(s[e]))) ++e;
      flush(seg, b);
      out->push_back(hit->second->id);
      pos = seg = e;
    }
    flush(seg, s.size());
  }

  void EncodeNormalized(const std::string& norm, bool at_start, std::vector<int32_t>* out) const {
    std::vector<Piece> pieces{{norm, at_start}};
    for (const PreTokenizer& p : pre_) {
      std::vector<Piece> next;
      for (Piece& pc : pieces) PreTokenize(p, std::move(pc), &next);
      pieces.swap(next);
    }
    for (const Piece& pc : pieces) EncodeWord(pc.s, out);
  }

  void PreTokenize(const PreTokenizer& p, Piece pc, std::vector<Piece>* out) const {
    auto emit = [&](std::vector<std::string> parts) {
      for (size_t i = 0; i < parts.size(); ++i) out->push_back({std::move(parts[i]), pc.at_start && i == 0});
    };
    switch (p.kind) {
      case PreTokenizer::kSplit: emit(SplitBy(pc.s, p.pattern.FindAll(pc.s), p.behavior, p.invert)); return;
      case PreTokenizer::kDigits: {
        std::vector<std::pair<size_t, size_t>> m;
        for (size_t i = 0; i < pc.s.size(); ++i)
          if (pc.s[i] >= '0' && pc.s[i] <= '9') m.emplace_back(i, i + 1);
        emit(SplitBy(pc.s, m, p.individual_digits ? Behavior::kIsolated : Behavior::kContiguous, false));
        return;
      }
      case PreTokenizer::kByteLevel: {
        if (p.add_prefix_space && pc.s.compare(0, 1, " ") != 0) pc.s = " " + pc.s;
        std::vector<std::string> parts = p.use_regex
                                             ? SplitBy(pc.s, p.pattern.FindAll(pc.s), Behavior::kIsolated, false)
                                             : std::vector<std::string>{pc.s};
        for (std::string& part : parts) {
          std::string m;
          for (unsigned char c : part) m += byte_str_[c];
          part.swap(m);
        }
        emit(std::move(parts));
        return;
      }
      case PreTokenizer::kMetaspace: {
        ReplaceAll(&pc.s, " ", p.replacement);
        const bool starts = pc.s.compare(0, p.replacement.size(), p.replacement) == 0;
        if (!starts && (p.prepend_scheme == "always" || (p.prepend_scheme == "first" && pc.at_start)))
          pc.s = p.replacement + pc.s;
        if (!p.split) {
          emit({pc.s});
          return;
        }
        std::vector<std::pair<size_t, size_t>> m;
        for (size_t f = pc.s.find(p.replacement); f != std::string::npos;
             f = pc.s.find(p.replacement, f + p.replacement.size()))
          m.emplace_back(f, f + p.replacement.size());
        emit(SplitBy(pc.s, m, Behavior::kMergedWithNext, false));
        return;
      }
    }
  }

  int32_t Find(const std::string& s) const {
    auto it = vocab_.find(s);
    return it == vocab_.end() ? -1 : it->second;
  }

  void EncodeWord(const std::string& word, std::vector<int32_t>* out) const {
    if (word.empty()) return;
    if (ignore_merges_) {
      const int32_t id = Find(word);
      if (id >= 0) {
        out->push_back(id);
        return;
      }
    }
    std::vector<int32_t> sym;
    bool last_unk = false;
    for (size_t i = 0; i < word.size();) {
      const size_t len = std::min(Utf8Len(static_cast<unsigned char>(word[i])), word.size() - i);
      const std::string ch = word.substr(i, len);
      i += len;
      const int32_t id = Find(ch);
      if (id >= 0) {
        sym.push_back(id);
        last_unk = false;
        continue;
      }
      if (byte_fallback_) {
        std::vector<int32_t> bytes;
        for (unsigned char b : ch) {
          const int32_t bid = byte_ids_[b];
          if (bid < 0) {
            bytes.clear();
            break;
          }
          bytes.push_back(bid);
        }
        if (!bytes.empty()) {
          sym.insert(sym.end(), bytes.begin(), bytes.end());
          last_unk = false;
          continue;
        }
      }
      if (unk_ >= 0) {
        if (!(fuse_unk_ && last_unk)) sym.push_back(unk_);
        last_unk = true;
      }
    }
    // Lowest merge rank first, leftmost among equals (a heap over a linked
    // list of symbols, O(n log n), as `tokenizers` does).
    const int n = static_cast<int>(sym.size());
    std::vector<int> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (int i = 0; i < n; ++i) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    using Cand = std::tuple<int, int, int32_t>;  // (rank, left position, merged id)
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](int i) {
      if (i < 0 || next[i] < 0) return;
      auto it = merges_.find(Key(sym[i], sym[next[i]]));
      if (it != merges_.end()) heap.emplace(it->second.first, i, it->second.second);
    };
    for (int i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      const auto [rank, i, merged] = heap.top();
      heap.pop();
      if (!alive[i] || next[i] < 0) continue;
      auto it = merges_.find(Key(sym[i], sym[next[i]]));
      if (it == merges_.end() || it->second.first != rank || it->second.second != merged) continue;  // stale
      const int j = next[i];
      sym[i] = merged;
      alive[j] = false;
      next[i] = next[j];
      if (next[j] >= 0) prev[next[j]] = i;
      push(prev[i]);
      push(i);
    }
    std::vector<int32_t> merged_syms;
    for (int i = 0; i >= 0 && i < n; i = next[i]) merged_syms.push_back(sym[i]);
    sym.swap(merged_syms);
    out->insert(out->end(), sym.begin(), sym.end());
  }

  static uint64_t Key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> pieces_;                               // id → token string
  std::unordered_map<uint64_t, std::pair<int, int32_t>> merges_;  // (a, b) → (rank, merged id)
  std::vector<AddedToken> added_;
  AddedIndex raw_added_, norm_added_;  // by first byte, longest first
  std::set<int32_t> added_ids_, special_;
  std::vector<Normalizer> normalizers_;
  std::vector<PreTokenizer> pre_;
  std::vector<int32_t> prefix_, suffix_;  // post-processor template around a single sequence
  int32_t bos_ = -1, eos_ = -1, unk_ = -1;
  int32_t byte_ids_[256];
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  std::string byte_str_[256];
  std::unordered_map<std::string, char> unbyte_;
  // decoder
  bool byte_level_decoder_ = false, byte_fallback_decoder_ = false;
  std::vector<std::pair<std::string, std::string>> decode_replace_;
  size_t strip_left_ = 0;
  std::string strip_content_ = " ";

  absl::Status CheckId(int32_t id, const std::string& path) const {
    if (id >= 0 && id < vocab_size()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(path, ": post_processor: special token id ", id,
                                                   " is not in the vocabulary (", vocab_size(), " tokens)"));
  }
  absl::Status ParseModel(const json& m, const std::string& where);
  absl::Status ParsePostProcessor(const json& p, const std::string& where);
  absl::Status ParseDecoder(const json& d, const std::string& where);
  // The steps of FromText after the parts of the pipeline are parsed.
  void InitByteLevelAlphabet();
  absl::Status ParseAddedTokens(const json& added, const std::string& path);
  std::unordered_map<std::string, int32_t> IndexAddedTokens();
  absl::Status BuildPieces(const std::string& path);
  void ChooseBosEos(const std::unordered_map<std::string, int32_t>& added_ix);
};

absl::Status HfTokenizer::ParseModel(const json& m, const std::string& where) {
  if (!m.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": not an object"));
  // Files from early `tokenizers` versions (GPT-2's on the Hub) leave out a BPE model's type.
  std::string type = "BPE";
  if (m.contains("type") || !m.contains("merges")) {
    SAE_ASSIGN_OR_RETURN(type, Str(m, "type", where));
  }
  if (type != "BPE") return Unknown(where, absl::StrCat("model type \"", type, "\" (BPE only)"));
  SAE_RETURN_IF_ERROR(OnlyKeys(m,
                               {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
                                "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges"},
                               where));
  if (m.contains("dropout") && !m["dropout"].is_null() &&
      !(m["dropout"].is_number() && m["dropout"].get<double>() == 0))
    return Unknown(where, "dropout");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(k) && !m[k].is_null() && !(m[k].is_string() && m[k].get<std::string>().empty()))
      return Unknown(where, absl::StrCat("field \"", k, "\" ", m[k].dump()));
  SAE_ASSIGN_OR_RETURN(byte_fallback_, Bool(m, "byte_fallback", false, where));
  SAE_ASSIGN_OR_RETURN(fuse_unk_, Bool(m, "fuse_unk", false, where));
  SAE_ASSIGN_OR_RETURN(ignore_merges_, Bool(m, "ignore_merges", false, where));
  if (!m.contains("vocab") || !m["vocab"].is_object())
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"vocab\" is not an object"));
  for (auto& [k, v] : m["vocab"].items()) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxId ||
        (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(kMaxId)))
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".vocab[", json(k).dump(), "]: id is not an integer in [0, 2^24]"));
    vocab_[k] = v.get<int32_t>();
  }
  if (m.contains("unk_token") && m["unk_token"].is_string()) unk_ = Find(m["unk_token"].get<std::string>());
  if (!m.contains("merges") || !m["merges"].is_array())
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"merges\" is not an array"));
  const json& merges = m["merges"];
  for (size_t r = 0; r < merges.size(); ++r) {
    std::string a, b;
    const json& e = merges[r];
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 >= s.size() || s.find(' ', sp + 1) != std::string::npos)
        return absl::InvalidArgumentError(absl::StrCat(where, ".merges[", r, "]: ", e.dump(), " is not \"A B\""));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(absl::StrCat(where, ".merges[", r, "]: not \"A B\" or [A, B]"));
    }
    const int32_t ia = Find(a), ib = Find(b), im = Find(a + b);
    if (ia < 0 || ib < 0 || im < 0)
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".merges[", r, "]: ", e.dump(), ": a part or the merged token is not in the vocabulary"));
    merges_.emplace(Key(ia, ib), std::make_pair(static_cast<int>(r), im));  // first occurrence wins
  }
  return absl::OkStatus();
}

absl::Status HfTokenizer::ParsePostProcessor(const json& p, const std::string& where) {
  if (p.is_null()) return absl::OkStatus();
  SAE_ASSIGN_OR_RETURN(std::string type, Str(p, "type", where));
  const std::string w = absl::StrCat(where, " (", type, ")");
  if (type == "Sequence") {
    return ForEachInSequence(p, "processors", where, w,
                             [&](const json& part, const std::string& at) { return ParsePostProcessor(part, at); });
  }
  if (type == "ByteLevel") {  // offsets only; ids unchanged
    return OnlyKeys(p, {"type", "add_prefix_space", "trim_offsets", "use_regex"}, w);
  }
  if (type != "TemplateProcessing") return Unknown(where, absl::StrCat("post_processor type \"", type, "\""));
  SAE_RETURN_IF_ERROR(OnlyKeys(p, {"type", "single", "pair", "special_tokens"}, w));
  if (!p.contains("single") || !p["single"].is_array())
    return absl::InvalidArgumentError(absl::StrCat(w, ": \"single\" is not an array"));
  const json& specials = p.value("special_tokens", json::object());
  bool seen_seq = false;
  for (size_t i = 0; i < p["single"].size(); ++i) {
    const json& item = p["single"][i];
    const std::string wi = absl::StrCat(w, ".single[", i, "]");
    if (item.contains("Sequence")) {
      if (seen_seq) return Unknown(wi, "a second sequence in \"single\"");
      seen_seq = true;
      continue;
    }
    if (!item.contains("SpecialToken") || !item["SpecialToken"].contains("id") ||
        !item["SpecialToken"]["id"].is_string())
      return Unknown(wi, absl::StrCat("template item ", item.dump()));
    const std::string name = item["SpecialToken"]["id"].get<std::string>();
    if (!specials.contains(name) || !specials[name].contains("ids") || !specials[name]["ids"].is_array())
      return absl::InvalidArgumentError(
          absl::StrCat(wi, ": special token \"", name, "\" has no ids in special_tokens"));
    for (const json& id : specials[name]["ids"]) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxId ||
          (id.is_number_unsigned() && id.get<uint64_t>() > static_cast<uint64_t>(kMaxId)))
        return absl::InvalidArgumentError(absl::StrCat(wi, ": ids of \"", name, "\" are not integers in [0, 2^24]"));
      (seen_seq ? suffix_ : prefix_).push_back(id.get<int32_t>());
    }
  }
  return absl::OkStatus();
}

absl::Status HfTokenizer::ParseDecoder(const json& d, const std::string& where) {
  if (d.is_null()) return absl::OkStatus();
  SAE_ASSIGN_OR_RETURN(std::string type, Str(d, "type", where));
  const std::string w = absl::StrCat(where, " (", type, ")");
  if (type == "Sequence") {
    return ForEachInSequence(d, "decoders", where, w,
                             [&](const json& part, const std::string& at) { return ParseDecoder(part, at); });
  }
  if (type == "ByteLevel") {
    byte_level_decoder_ = true;
    return OnlyKeys(d, {"type", "add_prefix_space", "trim_offsets", "use_regex"}, w);
  }
  if (type == "ByteFallback") {
    byte_fallback_decoder_ = true;
    return OnlyKeys(d, {"type"}, w);
  }
  if (type == "Fuse") return OnlyKeys(d, {"type"}, w);
  if (type == "Replace") {
    SAE_RETURN_IF_ERROR(OnlyKeys(d, {"type", "pattern", "content"}, w));
    if (!d.contains("pattern") || !d["pattern"].contains("String") || !d["pattern"]["String"].is_string())
      return Unknown(w, "a pattern other than {\"String\": …}");
    SAE_ASSIGN_OR_RETURN(std::string content, Str(d, "content", w));
    decode_replace_.emplace_back(d["pattern"]["String"].get<std::string>(), content);
    return absl::OkStatus();
  }
  if (type == "Strip") {
    SAE_RETURN_IF_ERROR(OnlyKeys(d, {"type", "content", "start", "stop"}, w));
    SAE_ASSIGN_OR_RETURN(strip_content_, Char(d, "content", w));
    SAE_ASSIGN_OR_RETURN(const int64_t start, Int(d, "start", 0, kMaxId, w));
    strip_left_ = static_cast<size_t>(start);
    SAE_ASSIGN_OR_RETURN(const int64_t stop, Int(d, "stop", 0, kMaxId, w));
    if (stop != 0) return Unknown(w, "stop > 0");
    return absl::OkStatus();
  }
  if (type == "Metaspace") {
    SAE_RETURN_IF_ERROR(
        OnlyKeys(d, {"type", "replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep"}, w));
    std::string rep = kSpaceMark;
    if (d.contains("replacement")) {
      SAE_ASSIGN_OR_RETURN(rep, Char(d, "replacement", w));
    }
    decode_replace_.emplace_back(rep, " ");
    SAE_ASSIGN_OR_RETURN(const bool prefix, Bool(d, "add_prefix_space", true, w));
    std::string scheme = prefix ? "always" : "never";
    if (d.contains("prepend_scheme") && !d["prepend_scheme"].is_null()) {
      SAE_ASSIGN_OR_RETURN(scheme, Str(d, "prepend_scheme", w));
    }
    if (scheme != "never") strip_left_ = 1;
    return absl::OkStatus();
  }
  return Unknown(where, absl::StrCat("decoder type \"", type, "\""));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> HfTokenizer::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return FromText(text, path);
}

// GPT-2's byte-level alphabet: each byte as a printable code point (the
// printable Latin-1 bytes as themselves, the others from U+0100 on).
void HfTokenizer::InitByteLevelAlphabet() {
  std::vector<int> m(256, -1);
  for (int b = 0; b < 256; ++b)
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) m[b] = b;
  int n = 0;
  for (int b = 0; b < 256; ++b)
    if (m[b] < 0) m[b] = 256 + n++;
  for (int b = 0; b < 256; ++b) {
    byte_str_[b] = Utf8(m[b]);
    unbyte_[byte_str_[b]] = static_cast<char>(b);
  }
}

absl::Status HfTokenizer::ParseAddedTokens(const json& added, const std::string& path) {
  if (!added.is_array()) return absl::InvalidArgumentError(absl::StrCat(path, ": \"added_tokens\" is not an array"));
  for (size_t i = 0; i < added.size(); ++i) {
    const json& a = added[i];
    const std::string w = absl::StrCat(path, ": added_tokens[", i, "]");
    if (!a.is_object()) return absl::InvalidArgumentError(absl::StrCat(w, ": not an object"));
    SAE_RETURN_IF_ERROR(OnlyKeys(a, {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"}, w));
    SAE_ASSIGN_OR_RETURN(const int64_t id, Int(a, "id", -1, kMaxId, w));
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat(w, ": field \"id\" missing"));
    AddedToken tok;
    tok.id = static_cast<int32_t>(id);
    SAE_ASSIGN_OR_RETURN(tok.content, Str(a, "content", w));
    if (tok.content.empty()) return absl::InvalidArgumentError(absl::StrCat(w, ": empty content"));
    SAE_ASSIGN_OR_RETURN(const bool single_word, Bool(a, "single_word", false, w));
    if (single_word) return Unknown(w, "single_word true");
    SAE_ASSIGN_OR_RETURN(tok.special, Bool(a, "special", false, w));
    SAE_ASSIGN_OR_RETURN(tok.normalized, Bool(a, "normalized", !tok.special, w));
    SAE_ASSIGN_OR_RETURN(tok.lstrip, Bool(a, "lstrip", false, w));
    SAE_ASSIGN_OR_RETURN(tok.rstrip, Bool(a, "rstrip", false, w));
    added_.push_back(tok);
  }
  return absl::OkStatus();
}

// The added tokens' id sets and match indexes (by first byte, longest
// first); returns content -> id.
std::unordered_map<std::string, int32_t> HfTokenizer::IndexAddedTokens() {
  std::unordered_map<std::string, int32_t> added_ix;
  for (const AddedToken& a : added_) {
    added_ix[a.content] = a.id;
    added_ids_.insert(a.id);
    if (a.special) special_.insert(a.id);
  }
  for (const AddedToken& a : added_) {
    const std::string key = a.normalized ? Normalize(normalizers_, a.content) : a.content;
    if (key.empty()) continue;
    (a.normalized ? norm_added_ : raw_added_)[static_cast<unsigned char>(key[0])].emplace_back(key, &a);
  }
  for (AddedIndex* ix : {&raw_added_, &norm_added_})
    for (auto& [b, list] : *ix)
      std::stable_sort(list.begin(), list.end(),
                       [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
  return added_ix;
}

// The piece of every id (vocabulary and added tokens), the byte-fallback
// ids, and the template's special ids checked against them.
absl::Status HfTokenizer::BuildPieces(const std::string& path) {
  int32_t max_id = -1;
  for (const auto& [s, id] : vocab_) max_id = std::max(max_id, id);
  for (const AddedToken& a : added_) max_id = std::max(max_id, a.id);
  pieces_.assign(max_id + 1, "");
  for (const auto& [s, id] : vocab_) pieces_[id] = s;
  for (const AddedToken& a : added_) pieces_[a.id] = a.content;
  for (const int32_t id : prefix_) SAE_RETURN_IF_ERROR(CheckId(id, path));
  for (const int32_t id : suffix_) SAE_RETURN_IF_ERROR(CheckId(id, path));
  if (pieces_.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": model: the vocabulary is empty"));
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    byte_ids_[b] = Find(name);
  }
  return absl::OkStatus();
}

// BOS/EOS: the template's tokens around the sequence, else special tokens by their usual names.
void HfTokenizer::ChooseBosEos(const std::unordered_map<std::string, int32_t>& added_ix) {
  auto named = [&](std::initializer_list<const char*> names) {
    for (const char* n : names) {
      auto it = added_ix.find(n);
      if (it != added_ix.end()) return it->second;
      const int32_t id = Find(n);
      if (id >= 0) return id;
    }
    return -1;
  };
  bos_ = !prefix_.empty() ? prefix_[0] : named({"<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>"});
  eos_ = !suffix_.empty() ? suffix_.back() : named({"<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"});
  if (prefix_.empty() && bos_ >= 0) prefix_ = {bos_};
  if (suffix_.empty() && eos_ >= 0) suffix_ = {eos_};
}

absl::StatusOr<std::unique_ptr<Tokenizer>> HfTokenizer::FromText(const std::string& text, const std::string& path) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  // Sequences nest by recursion here (and in error messages): real files nest 3 deep.
  if (Depth(j) > kMaxDepth)
    return absl::InvalidArgumentError(absl::StrCat(path, ": nested deeper than ", kMaxDepth, " levels"));
  std::unique_ptr<HfTokenizer> t(new HfTokenizer());
  SAE_RETURN_IF_ERROR(OnlyKeys(j,
                               {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer",
                                "model", "post_processor", "decoder"},
                               path));
  for (const char* k : {"truncation", "padding"})
    if (j.contains(k) && !j[k].is_null()) return Unknown(path, absl::StrCat("field \"", k, "\" (not null)"));
  t->InitByteLevelAlphabet();
  if (!j.contains("model")) return absl::InvalidArgumentError(absl::StrCat(path, ": field \"model\" missing"));
  SAE_RETURN_IF_ERROR(t->ParseModel(j["model"], path + ": model"));
  SAE_RETURN_IF_ERROR(ParseNormalizer(j.value("normalizer", json()), path + ": normalizer", &t->normalizers_));
  SAE_RETURN_IF_ERROR(ParsePreTokenizer(j.value("pre_tokenizer", json()), path + ": pre_tokenizer", &t->pre_));
  SAE_RETURN_IF_ERROR(t->ParsePostProcessor(j.value("post_processor", json()), path + ": post_processor"));
  SAE_RETURN_IF_ERROR(t->ParseDecoder(j.value("decoder", json()), path + ": decoder"));
  SAE_RETURN_IF_ERROR(t->ParseAddedTokens(j.value("added_tokens", json::array()), path));
  const std::unordered_map<std::string, int32_t> added_ix = t->IndexAddedTokens();
  SAE_RETURN_IF_ERROR(t->BuildPieces(path));
  t->ChooseBosEos(added_ix);
  return std::unique_ptr<Tokenizer>(std::move(t));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& path) { return HfTokenizer::Load(path); }

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizerFromText(const std::string& json_text,
                                                                   const std::string& name) {
  return HfTokenizer::FromText(json_text, name);
}

}  // namespace sae
