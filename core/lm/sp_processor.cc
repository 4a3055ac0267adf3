#include "core/lm/sp_processor.h"

#include <dlfcn.h>
#include <limits.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

#include "core/lm/sp_api.h"

namespace sae {
namespace {

std::string g_error;

// Opens libsae_sp.so once: $SAE_SP_MODULE, then ../lib beside the running
// executable, then the build tree's lib directory.
// ASan and TSan refuse dlopen with RTLD_DEEPBIND (they abort the process),
// so sanitizer builds report SentencePiece as unavailable instead.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SAE_SP_UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SAE_SP_UNDER_SANITIZER 1
#endif
#endif

const SpApi* Api() {
  static std::once_flag once;
  static const SpApi* api = nullptr;
  std::call_once(once, [] {
#ifdef SAE_SP_UNDER_SANITIZER
    g_error =
        "SentencePiece is not available in sanitizer (ASan/TSan) builds: libsae_sp.so is opened with "
        "RTLD_DEEPBIND, which the sanitizer runtimes refuse";
    return;
#endif
    std::vector<std::string> candidates;
    if (const char* e = std::getenv("SAE_SP_MODULE")) candidates.push_back(e);
    char exe[PATH_MAX];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
      std::string dir(exe, static_cast<size_t>(n));
      dir = dir.substr(0, dir.rfind('/'));
      candidates.push_back(dir + "/../lib/libsae_sp.so");
      candidates.push_back(dir + "/libsae_sp.so");
    }
#ifdef SAE_SP_MODULE_DIR
    candidates.push_back(std::string(SAE_SP_MODULE_DIR) + "/libsae_sp.so");
#endif
    std::string tried;
    for (const std::string& c : candidates) {
      void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (h == nullptr) {
        tried += (tried.empty() ? "" : "; ") + std::string(dlerror());
        continue;
      }
      auto fn = reinterpret_cast<const SpApi* (*)()>(dlsym(h, "sae_sp_api"));
      if (fn != nullptr && fn()->version == kSpApiVersion) {
        api = fn();
        return;
      }
      tried += "; " + c + ": not a saeforge SentencePiece module of this version";
    }
    g_error = "the SentencePiece module libsae_sp.so could not be loaded (set SAE_SP_MODULE): " + tried;
  });
  return api;
}

}  // namespace

struct SpProcessor::Impl {
  const SpApi* api = nullptr;
  void* sp = nullptr;
  ~Impl() {
    if (api && sp) api->destroy(sp);
  }
};

SpProcessor::SpProcessor() : impl_(new Impl()) {}
SpProcessor::~SpProcessor() = default;

std::string SpProcessor::Load(const std::string& path) {
  impl_->api = Api();
  if (impl_->api == nullptr) return g_error;
  impl_->sp = impl_->api->create();
  return impl_->api->load(impl_->sp, path);
}
int SpProcessor::PieceSize() const { return impl_->api->piece_size(impl_->sp); }
int SpProcessor::BosId() const { return impl_->api->bos_id(impl_->sp); }
int SpProcessor::EosId() const { return impl_->api->eos_id(impl_->sp); }
bool SpProcessor::IsControl(int id) const { return impl_->api->is_control(impl_->sp, id); }
bool SpProcessor::IsByte(int id) const { return impl_->api->is_byte(impl_->sp, id); }
std::string SpProcessor::IdToPiece(int id) const { return impl_->api->id_to_piece(impl_->sp, id); }
bool SpProcessor::Encode(const std::string& text, std::vector<int>* ids) const {
  return impl_->api->encode(impl_->sp, text, ids);
}
bool SpProcessor::Decode(const std::vector<int>& ids, std::string* text) const {
  return impl_->api->decode(impl_->sp, ids, text);
}

std::string SpTrain(const std::string& flags) {
  const SpApi* api = Api();
  if (api == nullptr) return g_error;
  return api->train(flags);
}

}  // namespace sae
