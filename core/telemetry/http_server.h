// A small HTTP/1.1 server for metrics endpoints on cpp-httplib: a background
// thread accepts connections on HOST:PORT and answers each GET with the
// handler's response (other methods: 405). Enough for Prometheus scrapes and
// service discovery; `sae serve` uses cpp-httplib directly. Thread-safe; the
// handler runs on one server thread.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "core/base/status.h"

namespace sae {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  // `path` is the request path without the query string.
  using Handler = std::function<HttpResponse(const std::string& path)>;

  // Listens on `listen` ("HOST:PORT", IPv4; port 0 picks a free one).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& listen, Handler handler);
  ~HttpServer();  // stops the thread and closes the socket

  std::string address() const;  // "HOST:PORT" actually bound

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sae
