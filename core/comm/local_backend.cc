// The one-rank backend: every collective is the identity.
#include <cstring>

#include "core/comm/backends.h"

namespace sae::internal {
namespace {

class LocalCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string backend() const override { return "local"; }
  absl::Status AllReduce(void*, size_t, CommDType dtype, ReduceOp op, absl::Duration) override {
    return CheckAllReduceArgs(dtype, op);
  }
  absl::Status Broadcast(void*, size_t, int root, absl::Duration) override {
    if (root != 0) return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " of a 1-rank world"));
    return absl::OkStatus();
  }
  absl::Status AllGather(const void* in, size_t bytes, void* out, absl::Duration) override {
    if (bytes > 0) std::memmove(out, in, bytes);
    return absl::OkStatus();
  }
  absl::Status Barrier(absl::Duration) override { return absl::OkStatus(); }
};

}  // namespace

std::unique_ptr<Communicator> NewLocalCommunicator() { return std::make_unique<LocalCommunicator>(); }

}  // namespace sae::internal
