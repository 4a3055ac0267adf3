#include "core/telemetry/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"

namespace sae {

struct HttpServer::Impl {
  std::string host;
  int port = 0;
  int fd = -1;
  Handler handler;
  std::atomic<bool> stop{false};
  std::thread thread;

  void Serve() {
    while (!stop.load()) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      const int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      timeval tv{2, 0};
      ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      ::setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      std::string req;
      char buf[2048];
      while (req.find("\r\n\r\n") == std::string::npos && req.size() < 16384) {
        const ssize_t n = ::recv(c, buf, sizeof(buf), 0);
        if (n <= 0) break;
        req.append(buf, static_cast<size_t>(n));
      }
      HttpResponse r;
      if (req.rfind("GET ", 0) == 0) {
        const size_t end = req.find_first_of(" ?", 4);
        const std::string path = req.substr(4, end == std::string::npos ? std::string::npos : end - 4);
        r = handler(path);
      } else {
        r.status = 405;
        r.body = "only GET\n";
      }
      const char* reason = r.status == 200 ? "OK" : r.status == 404 ? "Not Found" : "Error";
      const std::string resp = absl::StrCat("HTTP/1.1 ", r.status, " ", reason, "\r\nContent-Type: ", r.content_type,
                                            "\r\nContent-Length: ", r.body.size(),
                                            "\r\nConnection: close\r\n\r\n", r.body);
      for (size_t off = 0; off < resp.size();) {
        const ssize_t n = ::send(c, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += static_cast<size_t>(n);
      }
      ::close(c);
    }
  }
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& listen, Handler handler) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return absl::InvalidArgumentError(absl::StrCat("'", listen, "' is not HOST:PORT"));
  auto impl = std::make_unique<Impl>();
  impl->host = listen.substr(0, colon);
  impl->handler = std::move(handler);
  const std::string port_text = listen.substr(colon + 1);
  if (port_text.empty() || port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string::npos ||
      std::stol(port_text) > 65535)
    return absl::InvalidArgumentError(absl::StrCat("'", listen, "': bad port"));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::stoi(port_text)));
  const std::string host = impl->host == "localhost" ? "127.0.0.1" : impl->host;
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1)
    return absl::InvalidArgumentError(absl::StrCat("'", listen, "': HOST must be an IPv4 address"));
  impl->fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  if (impl->fd >= 0) ::setsockopt(impl->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  socklen_t len = sizeof(a);
  if (impl->fd < 0 || ::bind(impl->fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::listen(impl->fd, 64) != 0 || ::getsockname(impl->fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    const std::string err = std::strerror(errno);
    if (impl->fd >= 0) ::close(impl->fd);
    return absl::UnavailableError(absl::StrCat(listen, ": cannot listen: ", err));
  }
  impl->port = ntohs(a.sin_port);
  Impl* raw = impl.get();
  raw->thread = std::thread([raw] { raw->Serve(); });
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() {
  impl_->stop = true;
  if (impl_->thread.joinable()) impl_->thread.join();
  ::close(impl_->fd);
}

std::string HttpServer::address() const { return absl::StrCat(impl_->host, ":", impl_->port); }

}  // namespace sae
