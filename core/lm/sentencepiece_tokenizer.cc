// SentencePiece models through the system libsentencepiece.
#include "core/base/parse.h"
#include "core/lm/sp_processor.h"
#include "core/lm/tokenizer.h"

namespace sae {
namespace {

constexpr const char* kSpaceMark = "\xE2\x96\x81";  // U+2581 "▁"

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::unique_ptr<SpProcessor> sp) : sp_(std::move(sp)) {}
  int64_t vocab_size() const override { return sp_->PieceSize(); }
  int32_t bos_id() const override { return sp_->BosId(); }
  int32_t eos_id() const override { return sp_->EosId(); }
  std::vector<int32_t> Encode(const std::string& text, bool bos, bool eos) const override {
    std::vector<int> ids;
    if (!sp_->Encode(text, &ids)) ids.clear();
    std::vector<int32_t> out;
    if (bos && bos_id() >= 0) out.push_back(bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    if (eos && eos_id() >= 0) out.push_back(eos_id());
    return out;
  }
  std::string DecodePiece(int32_t prev, int32_t token) const override {
    if (token < 0 || token >= vocab_size() || sp_->IsControl(token)) return "";
    if (sp_->IsByte(token)) {
      const std::string p = sp_->IdToPiece(token);  // "<0xAB>"
      uint8_t byte = 0;
      if (p.size() == 6 && ParseHexByte(absl::string_view(p).substr(3, 2), &byte))
        return std::string(1, static_cast<char>(byte));
      return "";
    }
    std::string piece = sp_->IdToPiece(token);
    std::string out;
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, 3, kSpaceMark) == 0) {
        out.push_back(' ');
        i += 3;
      } else {
        out.push_back(piece[i++]);
      }
    }
    if (prev == bos_id() && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }
  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::vector<int> v(ids.begin(), ids.end());
    std::string out;
    if (!sp_->Decode(v, &out)) return Tokenizer::Decode(ids);
    return out;
  }

 private:
  std::unique_ptr<SpProcessor> sp_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path) {
  auto sp = std::make_unique<SpProcessor>();
  const std::string err = sp->Load(path);
  if (!err.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a SentencePiece model: ", err));
  return std::unique_ptr<Tokenizer>(new SentencePieceTokenizer(std::move(sp)));
}

}  // namespace sae
