// A narrow wrapper of libsentencepiece with std types only: sentencepiece's
// headers define their own absl names and cannot share a translation unit with
// abseil, so only sp_processor.cc includes them. Thread-safe after Load.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace sae {

class SpProcessor {
 public:
  SpProcessor();
  ~SpProcessor();
  // Empty on success, else sentencepiece's message.
  std::string Load(const std::string& path);
  int PieceSize() const;
  int BosId() const;
  int EosId() const;
  bool IsControl(int id) const;
  bool IsByte(int id) const;
  std::string IdToPiece(int id) const;
  bool Encode(const std::string& text, std::vector<int>* ids) const;
  bool Decode(const std::vector<int>& ids, std::string* text) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Trains a model with sentencepiece's trainer (flags as its command line).
// Empty on success, else the message. For tests and tools.
std::string SpTrain(const std::string& flags);

}  // namespace sae
