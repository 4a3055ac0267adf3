// Constructors of the built-in backends (internal to core/comm).
#pragma once

#include <memory>

#include "core/comm/communicator.h"

namespace sae::internal {

std::unique_ptr<Communicator> NewLocalCommunicator();
#ifdef SAE_HAVE_MPI
absl::StatusOr<std::unique_ptr<Communicator>> NewMpiCommunicator();
#endif

}  // namespace sae::internal
