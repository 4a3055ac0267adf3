// The rendezvous key-value store over c10d's TCPStore (internal to
// core/comm): CreateTcpStore of communicator.h, and the raw c10d store that
// the gloo backend builds its process group on. Compiled when gloo or nccl is
// (SAE_HAVE_TCP_STORE); the nccl backend needs only this file, not gloo's.
#pragma once

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <string>

#include "absl/time/time.h"
#include "core/comm/communicator.h"

namespace sae::internal {

inline std::chrono::milliseconds Ms(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

// A c10d TCPStore client of HOST:PORT (`serve`: this process also serves it;
// a busy port is retried for up to 30 s while a previous store closes).
absl::StatusOr<c10::intrusive_ptr<c10d::TCPStore>> MakeTcpStore(const std::string& address, bool serve, int world,
                                                                absl::Duration timeout);

}  // namespace sae::internal
