// Client side of the service for `sae` and sae-worker: a channel to the
// coordinator (plaintext, or TLS with a CA file), bearer-token metadata on
// each call, and gRPC status → absl::Status. Channels are thread-safe.
//
// Waiting for the coordinator: with ClientOptions::wait_for_ready (the `sae`
// commands set it) a call with a deadline waits, up to that deadline, for the
// channel to connect: a connection refused, reset or not yet accepted (the
// coordinator starting, restarting, or a loaded machine) is retried with
// gRPC's reconnect backoff (200 ms to 1 s) instead of failing the call at
// once; a connection attempt in progress may take up to kConnectTimeoutMs. An absent coordinator is then a
// DEADLINE_EXCEEDED at the deadline, which CallError turns into an error naming the address.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "core/base/status.h"

namespace sae {

// How long one connection attempt to the coordinator may take (TCP connect
// and the HTTP/2 handshake) before gRPC abandons it and, after its backoff
// (0.2 s growing to 1 s), tries again.
inline constexpr int kConnectTimeoutMs = 5000;

struct ClientOptions {
  std::string address;  // HOST:PORT
  std::string token;    // bearer token ("" = none)
  std::string tls_ca;   // PEM CA file; "" = plaintext
  // Calls with a deadline wait for the channel to be ready until then (gRPC
  // wait_for_ready); false: fail at once while it is not connected (the
  // worker agent, whose loops retry). Calls without a deadline always fail
  // at once.
  bool wait_for_ready = false;
};

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& opts);
// A context with the token attached and a deadline `seconds` from now (<= 0:
// none), waiting for the channel until the deadline if opts.wait_for_ready.
std::unique_ptr<grpc::ClientContext> MakeContext(const ClientOptions& opts, double seconds);
absl::Status FromGrpc(const grpc::Status& s);
// The error of a failed call `what` (e.g. "jobs") to the coordinator at
// opts.address on `channel`, made with a deadline of `seconds`: "WHAT:
// coordinator ADDRESS unreachable: no connection within N s" when the
// deadline passed (or the call failed) without the channel ever connecting,
// "... did not answer within N s" when it connected, "... unavailable: ..."
// for UNAVAILABLE; any other error keeps its code and message, prefixed by
// WHAT.
absl::Status CallError(const grpc::Status& s, const std::string& what, grpc::Channel* channel,
                       const ClientOptions& opts, double seconds);

}  // namespace sae
