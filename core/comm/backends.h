// Constructors of the built-in backends (internal to core/comm).
#pragma once

#include <memory>

#include "core/comm/communicator.h"

namespace sae::internal {

std::unique_ptr<Communicator> NewLocalCommunicator();
#ifdef SAE_HAVE_MPI
absl::StatusOr<std::unique_ptr<Communicator>> NewMpiCommunicator(const std::atomic<bool>* abort = nullptr);
#endif
#ifdef SAE_HAVE_GLOO
absl::StatusOr<std::unique_ptr<Communicator>> NewGlooCommunicator(const CommOptions& opts);
#endif
#ifdef SAE_HAVE_NCCL
absl::StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(const CommOptions& opts);
#endif

}  // namespace sae::internal
