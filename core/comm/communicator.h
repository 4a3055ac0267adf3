// Communicator: the collectives data-parallel training needs, on flat
// buffers, nothing else (AllReduce, Broadcast, AllGather, Barrier). Every call
// takes a timeout and returns DeadlineExceeded instead of hanging; after an
// error the communicator is unusable (the caller exits or restarts from a
// checkpoint). Backends are created by name; only core/comm/*_backend.cc
// include vendor headers. A Communicator is used from one thread at a time.
#pragma once

#include <atomic>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "core/base/status.h"

namespace sae {

enum class ReduceOp { kSum, kAvg, kMin, kMax, kOr };
enum class CommDType { kF32, kBF16, kI64, kU8 };

size_t CommDTypeSize(CommDType t);
const char* ReduceOpName(ReduceOp op);

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string backend() const = 0;

  // In place over `count` elements. kOr is for kU8 and kI64 (bitwise);
  // kAvg divides the sum by world_size (bf16: computed in float32).
  virtual absl::Status AllReduce(void* data, size_t count, CommDType dtype, ReduceOp op, absl::Duration timeout) = 0;
  // `bytes` from `root` to every rank, in place.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root, absl::Duration timeout) = 0;
  // Each rank's `bytes` from `in` land at out[rank * bytes] on every rank.
  virtual absl::Status AllGather(const void* in, size_t bytes, void* out, absl::Duration timeout) = 0;
  virtual absl::Status Barrier(absl::Duration timeout) = 0;
};

struct CommOptions {
  int expected_world_size = 0;  // 0 = accept what the launcher says
  // gloo: this process's rank, the world size and the rendezvous address
  // "HOST:PORT" of the TCP store that rank 0 serves.
  int rank = -1;
  int world_size = 0;
  std::string rendezvous;
  absl::Duration timeout = absl::Seconds(300);
  // When set, a rendezvous or collective that is waiting for other ranks
  // checks it about every half second; a rendezvous returns Cancelled once it
  // is true, a collective 3 s after (time for the ranks' stop agreement and
  // checkpoint), so a stop or cancel reaches a rank stuck on a lost peer
  // within seconds, not after `timeout`. The communicator is unusable after
  // a Cancelled. mpi and gloo honour it.
  const std::atomic<bool>* abort = nullptr;
};

// Rendezvous key-value store (c10d's TCPStore; rank 0 serves it). Every call
// has a timeout. Thread-safe.
class Store {
 public:
  virtual ~Store() = default;
  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;
  // Waits up to `timeout` for the key.
  virtual absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) = 0;
  virtual absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) = 0;
};

// A TCP store at HOST:PORT; `serve` makes this process its server.
absl::StatusOr<std::unique_ptr<Store>> CreateTcpStore(const std::string& address, bool serve, int world_size,
                                                      absl::Duration timeout);

// InvalidArgument for combinations no backend supports (avg of integers,
// or of floats). Backends call it first.
absl::Status CheckAllReduceArgs(CommDType dtype, ReduceOp op);

// Backends compiled into this build ("local"; "mpi" when Open MPI was found;
// "gloo" when LibTorch has c10d and Gloo's headers were found).
std::vector<std::string> AvailableBackends();
// Creates a backend by name. "mpi" initialises MPI (once per process).
absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(const std::string& backend,
                                                                 const CommOptions& opts = {});
// True when this process was started by mpirun (Open MPI's environment).
bool LaunchedByMpirun();

}  // namespace sae
