// The SentencePiece module: thin functions over libsentencepiece (see sp_api.h).
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "core/lm/sp_api.h"

namespace sentencepiece {
namespace logging {
void SetMinLogLevel(int v);  // exported by libsentencepiece, not in its public headers
}  // namespace logging
}  // namespace sentencepiece

namespace {

// Under RTLD_DEEPBIND this module's std::cerr is libstdc++'s own, never
// constructed when the executable holds a copy of it: sentencepiece's LOG
// output would crash, so all its logging below FATAL is off (errors come back
// as statuses).
const bool kQuiet = [] {
  sentencepiece::logging::SetMinLogLevel(3);
  return true;
}();

using Proc = sentencepiece::SentencePieceProcessor;
const Proc* P(const void* sp) { return static_cast<const Proc*>(sp); }

const sae::SpApi kApi = {
    sae::kSpApiVersion,
    []() -> void* {
      (void)kQuiet;
      return new Proc();
    },
    [](void* sp) { delete static_cast<Proc*>(sp); },
    [](void* sp, const std::string& path) -> std::string {
      const auto st = static_cast<Proc*>(sp)->Load(path);
      return st.ok() ? std::string() : st.ToString();
    },
    [](const void* sp) { return P(sp)->GetPieceSize(); },
    [](const void* sp) { return P(sp)->bos_id(); },
    [](const void* sp) { return P(sp)->eos_id(); },
    [](const void* sp, int id) { return P(sp)->IsControl(id); },
    [](const void* sp, int id) { return P(sp)->IsByte(id); },
    [](const void* sp, int id) { return P(sp)->IdToPiece(id); },
    [](const void* sp, const std::string& text, std::vector<int>* ids) { return P(sp)->Encode(text, ids).ok(); },
    [](const void* sp, const std::vector<int>& ids, std::string* text) { return P(sp)->Decode(ids, text).ok(); },
    [](const std::string& flags) -> std::string {
      sentencepiece::logging::SetMinLogLevel(3);
      const auto st = sentencepiece::SentencePieceTrainer::Train(flags);
      return st.ok() ? std::string() : st.ToString();
    },
};

}  // namespace

extern "C" __attribute__((visibility("default"))) const sae::SpApi* sae_sp_api() { return &kApi; }
