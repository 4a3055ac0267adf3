// The function table of the SentencePiece module (libsae_sp.so). Debian's
// libsentencepiece exports its own copy of protobuf-lite, which clashes with
// the libprotobuf LibTorch loads (a crash in static initialisation when both
// are linked into one executable). So sentencepiece lives in a module that
// sp_processor.cc opens with dlopen(RTLD_LOCAL | RTLD_DEEPBIND): its protobuf
// symbols stay private. Same compiler and libstdc++ on both sides, so std
// types cross the boundary. No abseil here (sentencepiece's headers clash with it).
#pragma once

#include <string>
#include <vector>

namespace sae {

struct SpApi {
  int version;  // kSpApiVersion
  void* (*create)();
  void (*destroy)(void* sp);
  std::string (*load)(void* sp, const std::string& path);  // "" on success
  int (*piece_size)(const void* sp);
  int (*bos_id)(const void* sp);
  int (*eos_id)(const void* sp);
  bool (*is_control)(const void* sp, int id);
  bool (*is_byte)(const void* sp, int id);
  std::string (*id_to_piece)(const void* sp, int id);
  bool (*encode)(const void* sp, const std::string& text, std::vector<int>* ids);
  bool (*decode)(const void* sp, const std::vector<int>& ids, std::string* text);
  std::string (*train)(const std::string& flags);  // "" on success
};

constexpr int kSpApiVersion = 1;

}  // namespace sae

// Exported by the module.
extern "C" const sae::SpApi* sae_sp_api();
