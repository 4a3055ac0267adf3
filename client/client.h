// Client side of the service for `sae` and sae-worker: a channel to the
// coordinator (plaintext, or TLS with a CA file), bearer-token metadata on
// each call, and gRPC status → absl::Status. Channels are thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "core/base/status.h"

namespace sae {

struct ClientOptions {
  std::string address;  // HOST:PORT
  std::string token;    // bearer token ("" = none)
  std::string tls_ca;   // PEM CA file; "" = plaintext
};

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& opts);
// A context with the token attached and a deadline `seconds` from now (<= 0: none).
std::unique_ptr<grpc::ClientContext> MakeContext(const ClientOptions& opts, double seconds);
absl::Status FromGrpc(const grpc::Status& s);

}  // namespace sae
