#include "core/lm/tokenizer.h"

#include "core/base/file_util.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <unordered_map>

namespace sae {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::string> Slurp(const std::string& path) { return ReadFileToString(path); }

// Parses "<0xAB>"; returns −1 when `s` is not a byte piece.
int BytePiece(const std::string& s) {
  if (s.size() != 6 || s.compare(0, 3, "<0x") != 0 || s[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int h = hex(s[3]), l = hex(s[4]);
  return h < 0 || l < 0 ? -1 : h * 16 + l;
}

class Llama2cTokenizer : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> vocab, std::vector<float> scores)
      : vocab_(std::move(vocab)), scores_(std::move(scores)) {
    for (size_t i = 0; i < vocab_.size(); ++i) lookup_.emplace(vocab_[i], static_cast<int32_t>(i));
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(vocab_.size()); }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }

  int32_t Find(const std::string& s) const {
    auto it = lookup_.find(s);
    return it == lookup_.end() ? -1 : it->second;
  }

  std::vector<int32_t> Encode(const std::string& text, bool bos, bool eos) const override {
    // llama2.c's encode: dummy-prefix space, UTF-8 code points to ids (bytes
    // + 3 as fallback), then greedy merges of the best-scoring pair.
    std::vector<int32_t> t;
    if (bos) t.push_back(1);
    if (!text.empty()) {
      const int32_t sp = Find(" ");
      if (sp >= 0) t.push_back(sp);
    }
    std::string buf;
    for (size_t i = 0; i < text.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(text[i]);
      if ((c & 0xC0) != 0x80) buf.clear();
      buf.push_back(static_cast<char>(c));
      if (i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80 && buf.size() < 4) continue;
      const int32_t id = Find(buf);
      if (id >= 0) {
        t.push_back(id);
      } else {
        // Byte tokens <0x00>..<0xFF> are ids 3..258; a vocabulary without
        // them gets <unk> (id 0), never an id outside it.
        for (char b : buf) {
          const int32_t byte_id = static_cast<int32_t>(static_cast<unsigned char>(b)) + 3;
          t.push_back(byte_id < vocab_size() ? byte_id : 0);
        }
      }
      buf.clear();
    }
    const size_t first = bos ? 1 : 0;
    while (true) {
      float best = -1e10f;
      int32_t best_id = -1;
      size_t best_i = 0;
      for (size_t i = first; i + 1 < t.size(); ++i) {
        const int32_t id = Find(vocab_[t[i]] + vocab_[t[i + 1]]);
        if (id >= 0 && scores_[id] > best) {
          best = scores_[id];
          best_id = id;
          best_i = i;
        }
      }
      if (best_id < 0) break;
      t[best_i] = best_id;
      t.erase(t.begin() + best_i + 1);
    }
    if (eos) t.push_back(2);
    return t;
  }

  std::string DecodePiece(int32_t prev, int32_t token) const override {
    if (token < 0 || token >= vocab_size()) return "";
    std::string piece = vocab_[token];
    if (prev == 1 && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    const int b = BytePiece(piece);
    if (b >= 0) return std::string(1, static_cast<char>(b));
    return piece;
  }

 private:
  std::vector<std::string> vocab_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> lookup_;
};

}  // namespace

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t id : ids) {
    if (id != bos_id() && id != eos_id()) out += DecodePiece(prev, id);
    prev = id;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path, int64_t vocab_size) {
  SAE_ASSIGN_OR_RETURN(std::string b, Slurp(path));
  size_t off = 0;
  auto read = [&](void* dst, size_t n) {
    if (off + n > b.size()) return false;
    std::memcpy(dst, b.data() + off, n);
    off += n;
    return true;
  };
  int32_t max_len = 0;
  if (!read(&max_len, 4) || max_len <= 0 || max_len > (1 << 16))
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a llama2.c tokenizer (bad max_token_length)"));
  std::vector<std::string> vocab;
  std::vector<float> scores;
  while (off < b.size()) {
    float score;
    int32_t len;
    if (!read(&score, 4) || !read(&len, 4) || len < 0 || len > max_len || off + len > b.size())
      return absl::InvalidArgumentError(absl::StrCat(path, ": truncated or corrupt at token ", vocab.size()));
    vocab.emplace_back(b.data() + off, len);
    scores.push_back(score);
    off += len;
  }
  if (static_cast<int64_t>(vocab.size()) != vocab_size)
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": tokenizer vocabulary has ", vocab.size(), " tokens but the model's has ", vocab_size));
  if (vocab.size() < 3)
    return absl::InvalidArgumentError(absl::StrCat(path,
                                                   ": a llama2.c tokenizer has at least 3 tokens (<unk>, BOS, "
                                                   "EOS), this one ",
                                                   vocab.size()));
  return std::unique_ptr<Tokenizer>(new Llama2cTokenizer(std::move(vocab), std::move(scores)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGpt2Tokenizer(const std::string& encoder_json,
                                                             const std::string& vocab_bpe) {
  SAE_ASSIGN_OR_RETURN(std::string ej, Slurp(encoder_json));
  SAE_ASSIGN_OR_RETURN(std::string vb, Slurp(vocab_bpe));
  nlohmann::json vocab = nlohmann::json::parse(ej, nullptr, false);
  if (vocab.is_discarded() || !vocab.is_object())
    return absl::InvalidArgumentError(absl::StrCat(encoder_json, ": not a JSON object of token ids"));
  // The decoder is a table indexed by id: bound it (GPT-2 has 50257 ids).
  constexpr int64_t kMaxId = (int64_t{1} << 22) - 1;
  for (auto& [k, v] : vocab.items()) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0)
      return absl::InvalidArgumentError(
          absl::StrCat(encoder_json, ": id of \"", k, "\" is not a non-negative integer"));
    if (v.get<int64_t>() > kMaxId)
      return absl::InvalidArgumentError(
          absl::StrCat(encoder_json, ": id ", v.get<int64_t>(), " of \"", k, "\" exceeds ", kMaxId));
  }
  nlohmann::json merges = nlohmann::json::array();
  size_t pos = 0;
  int line_no = 0;
  while (pos < vb.size()) {
    size_t e = vb.find('\n', pos);
    if (e == std::string::npos) e = vb.size();
    std::string line = vb.substr(pos, e - pos);
    pos = e + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 >= line.size())
      return absl::InvalidArgumentError(absl::StrCat(vocab_bpe, ":", line_no, ": not a merge \"A B\""));
    // Merges become JSON strings: bytes that are not UTF-8 would make the
    // dump below throw (nlohmann's type_error 316), and no token of
    // encoder.json (JSON, so UTF-8) could match them.
    try {
      (void)nlohmann::json(line).dump();
    } catch (const nlohmann::json::exception&) {
      return absl::InvalidArgumentError(absl::StrCat(vocab_bpe, ":", line_no, ": not UTF-8 text"));
    }
    merges.push_back({line.substr(0, sp), line.substr(sp + 1)});
  }
  nlohmann::json added = nlohmann::json::array();
  if (vocab.contains("<|endoftext|>"))
    added.push_back({{"id", vocab["<|endoftext|>"]},
                     {"content", "<|endoftext|>"},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  const nlohmann::json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  return LoadHfTokenizerFromText(j.dump(), absl::StrCat(encoder_json, " + ", vocab_bpe));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerFor(const std::string& model_path, int64_t vocab_size,
                                                            const std::string& explicit_path) {
  std::error_code ec;
  auto check = [&](absl::StatusOr<std::unique_ptr<Tokenizer>> t,
                   const std::string& file) -> absl::StatusOr<std::unique_ptr<Tokenizer>> {
    if (!t.ok()) return t.status();
    // GPT-2/SentencePiece vocabularies may be padded in the model, never larger.
    if ((*t)->vocab_size() > vocab_size)
      return absl::InvalidArgumentError(absl::StrCat(file, ": tokenizer vocabulary has ", (*t)->vocab_size(),
                                                     " tokens but the model's has ", vocab_size));
    return t;
  };
  auto by_file = [&](const fs::path& p) -> absl::StatusOr<std::unique_ptr<Tokenizer>> {
    if (p.extension() == ".model") return check(LoadSentencePieceTokenizer(p.string()), p.string());
    if (p.extension() == ".json") return check(LoadHfTokenizer(p.string()), p.string());
    return LoadLlama2cTokenizer(p.string(), vocab_size);
  };
  auto in_dir = [&](const fs::path& d) -> absl::StatusOr<std::unique_ptr<Tokenizer>> {
    for (const std::string& name : {std::string("tokenizer.bin"), absl::StrCat("tok", vocab_size, ".bin"),
                                    std::string("tokenizer.json"), std::string("tokenizer.model")})
      if (fs::exists(d / name, ec)) return by_file(d / name);
    if (fs::exists(d / "encoder.json", ec) && fs::exists(d / "vocab.bpe", ec))
      return check(LoadGpt2Tokenizer((d / "encoder.json").string(), (d / "vocab.bpe").string()),
                   (d / "encoder.json").string());
    if (fs::exists(d / "vocab.json", ec) && fs::exists(d / "merges.txt", ec))
      return check(LoadGpt2Tokenizer((d / "vocab.json").string(), (d / "merges.txt").string()),
                   (d / "vocab.json").string());
    return absl::NotFoundError(
        absl::StrCat(d.string(), ": no tokenizer found (tokenizer.bin, tok", vocab_size,
                     ".bin, tokenizer.json, tokenizer.model, encoder.json+vocab.bpe, vocab.json+merges.txt); "
                     "give --tokenizer"));
  };
  if (!explicit_path.empty()) {
    if (fs::is_directory(explicit_path, ec)) return in_dir(explicit_path);
    if (!fs::exists(explicit_path, ec))
      return absl::NotFoundError(absl::StrCat(explicit_path, ": no such tokenizer file"));
    return by_file(explicit_path);
  }
  const fs::path dir = fs::is_directory(model_path, ec) ? fs::path(model_path) : fs::path(model_path).parent_path();
  return in_dir(dir.empty() ? fs::path(".") : dir);
}

}  // namespace sae
