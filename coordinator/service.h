// The coordinator's network edge: JobService, WorkerService and DataService
// over gRPC (sync API; each stream holds one server thread), bearer-token
// checks per role, TLS, request size limits, and the HTTP endpoint with
// Prometheus metrics (/metrics) and HTTP service discovery of workers (/sd).
// Protobuf types convert to the Coordinator's calls here; every handler
// returns a status, none throws.
#pragma once

#include <memory>
#include <string>

#include "coordinator/coordinator.h"
#include "core/base/status.h"

namespace grpc {
class Channel;
class Service;
}  // namespace grpc

namespace sae {

struct ServiceOptions {
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9464";  // "" = off
  std::string client_token, worker_token;         // "" = not required
  std::string tls_cert, tls_key;                  // PEM file paths; "" = plaintext
  int max_message_bytes = 4 << 20;
};

class CoordinatorServer {
 public:
  // Starts serving `coord` (which must outlive the server).
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(Coordinator* coord, const ServiceOptions& opts);
  ~CoordinatorServer();

  std::string address() const;          // gRPC HOST:PORT actually bound
  std::string metrics_address() const;  // "" when off
  // A channel to this server inside the process (no socket; tests and
  // fuzzing). Calls on it pass through the same handlers and token checks.
  std::shared_ptr<grpc::Channel> InProcessChannel() const;
  void Shutdown();  // ends streams, stops accepting

  struct Impl;

 private:
  explicit CoordinatorServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The three services over `coord` without a server (tests and fuzzing call
// their handlers directly): jobs is a v1::JobService::Service, workers a
// v1::WorkerService::Service, data a v1::DataService::Service. Tokens as in
// `opts` (a handler called without a ServerContext's metadata has none).
struct CoordinatorServices {
  std::unique_ptr<grpc::Service> jobs, workers, data;
};
CoordinatorServices MakeCoordinatorServices(Coordinator* coord, const ServiceOptions& opts);

// Reads a bearer token from a file (trailing whitespace dropped; empty is an error).
absl::StatusOr<std::string> ReadTokenFile(const std::string& flag, const std::string& path);

}  // namespace sae
