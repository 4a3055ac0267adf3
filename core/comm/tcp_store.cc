#include "core/comm/tcp_store.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sae {
namespace internal {
namespace {

absl::Status SplitAddress(const std::string& address, std::string* host, uint16_t* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size())
    return absl::InvalidArgumentError(absl::StrCat("rendezvous address '", address, "' is not HOST:PORT"));
  *host = address.substr(0, colon);
  const std::string p = address.substr(colon + 1);
  if (p.find_first_not_of("0123456789") != std::string::npos || p.size() > 5 || std::stoi(p) > 65535 ||
      std::stoi(p) == 0)
    return absl::InvalidArgumentError(absl::StrCat("rendezvous address '", address, "': bad port"));
  *port = static_cast<uint16_t>(std::stoi(p));
  return absl::OkStatus();
}

class TcpStore : public Store {
 public:
  explicit TcpStore(c10::intrusive_ptr<c10d::TCPStore> s) : store_(std::move(s)) {}
  absl::Status Set(const std::string& key, const std::string& value) override {
    try {
      store_->set(key, std::vector<uint8_t>(value.begin(), value.end()));
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("store set '", key, "': ", e.what()));
    }
  }
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override {
    SAE_RETURN_IF_ERROR(Wait({key}, timeout));
    try {
      std::vector<uint8_t> v = store_->get(key);
      return std::string(v.begin(), v.end());
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("store get '", key, "': ", e.what()));
    }
  }
  absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) override {
    try {
      store_->wait(keys, Ms(timeout));
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return absl::DeadlineExceededError(absl::StrCat("store wait (", keys.size(), " keys): ", e.what()));
    }
  }
  c10::intrusive_ptr<c10d::TCPStore> raw() const { return store_; }

 private:
  c10::intrusive_ptr<c10d::TCPStore> store_;
};

}  // namespace

absl::StatusOr<c10::intrusive_ptr<c10d::TCPStore>> MakeTcpStore(const std::string& address, bool serve, int world,
                                                                absl::Duration timeout) {
  std::string host;
  uint16_t port = 0;
  SAE_RETURN_IF_ERROR(SplitAddress(address, &host, &port));
  c10d::TCPStoreOptions o;
  o.port = port;
  o.isServer = serve;
  o.numWorkers = static_cast<size_t>(world);
  o.waitWorkers = false;
  o.timeout = Ms(timeout);
  // The previous attempt's store on this port may still be closing (its
  // last collective ending): a server retries the bind for a while.
  const auto bind_deadline = std::chrono::steady_clock::now() + std::min(Ms(timeout), std::chrono::milliseconds(30000));
  while (true) {
    try {
      return c10::make_intrusive<c10d::TCPStore>(host, o);
    } catch (const std::exception& e) {
      const bool in_use = std::string(e.what()).find("Address already in use") != std::string::npos;
      if (serve && in_use && std::chrono::steady_clock::now() < bind_deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
        continue;
      }
      std::string msg = e.what();
      const size_t nl = msg.find('\n');
      if (nl != std::string::npos) msg.resize(nl);
      return absl::UnavailableError(absl::StrCat("rendezvous at ", address, serve ? " (serving)" : "", ": ", msg));
    }
  }
}

}  // namespace internal

absl::StatusOr<std::unique_ptr<Store>> CreateTcpStore(const std::string& address, bool serve, int world_size,
                                                      absl::Duration timeout) {
  SAE_ASSIGN_OR_RETURN(auto s, internal::MakeTcpStore(address, serve, world_size, timeout));
  return std::unique_ptr<Store>(new internal::TcpStore(std::move(s)));
}

}  // namespace sae
