#include "core/telemetry/http_server.h"

#include <arpa/inet.h>
#include <httplib.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/base/parse.h"

namespace sae {

// Served by cpp-httplib (Debian libcpp-httplib-dev), as `sae serve` is.
struct HttpServer::Impl {
  std::string host;
  int port = 0;
  httplib::Server server;
  std::thread thread;
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& listen, Handler handler) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return absl::InvalidArgumentError(absl::StrCat("'", listen, "' is not HOST:PORT"));
  auto impl = std::make_unique<Impl>();
  impl->host = listen.substr(0, colon);
  const std::string port_text = listen.substr(colon + 1);
  auto port_number = ParseInt64(port_text, listen);
  if (port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string::npos || !port_number.ok() ||
      *port_number > 65535)
    return absl::InvalidArgumentError(absl::StrCat("'", listen, "': bad port"));
  const std::string host = impl->host == "localhost" ? "127.0.0.1" : impl->host;
  in_addr probe{};
  if (::inet_pton(AF_INET, host.c_str(), &probe) != 1)
    return absl::InvalidArgumentError(absl::StrCat("'", listen, "': HOST must be an IPv4 address"));
  httplib::Server& s = impl->server;
  s.new_task_queue = [] { return new httplib::ThreadPool(1); };  // one handler thread, as before
  s.set_read_timeout(2, 0);
  s.set_write_timeout(2, 0);
  s.set_keep_alive_max_count(1);
  // SO_REUSEADDR only: cpp-httplib's default adds SO_REUSEPORT, which would let
  // a second server bind a port that is in use.
  s.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  auto respond = [handler = std::move(handler)](const httplib::Request& req, httplib::Response& res) {
    const HttpResponse r = handler(req.path);
    res.status = r.status;
    res.set_content(r.body, r.content_type.c_str());
  };
  s.Get(R"(/.*)", respond);
  auto only_get = [](const httplib::Request&, httplib::Response& res) {
    res.status = 405;
    res.set_content("only GET\n", "text/plain; charset=utf-8");
  };
  s.Post(R"(/.*)", only_get);
  s.Put(R"(/.*)", only_get);
  s.Delete(R"(/.*)", only_get);
  const int want = static_cast<int>(*port_number);
  const int port = want == 0 ? s.bind_to_any_port(host) : (s.bind_to_port(host, want) ? want : -1);
  if (port < 0) return absl::UnavailableError(absl::StrCat(listen, ": cannot listen (address in use?)"));
  impl->port = port;
  Impl* raw = impl.get();
  raw->thread = std::thread([raw] { raw->server.listen_after_bind(); });
  // stop() only works once the server runs: wait for it (the destructor may come at once).
  for (int i = 0; i < 5000 && !raw->server.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() {
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

std::string HttpServer::address() const { return absl::StrCat(impl_->host, ":", impl_->port); }

}  // namespace sae
