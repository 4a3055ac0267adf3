#include "core/comm/communicator.h"

#include <cstdlib>

#include "core/comm/backends.h"

namespace sae {

size_t CommDTypeSize(CommDType t) {
  switch (t) {
    case CommDType::kF32: return 4;
    case CommDType::kBF16: return 2;
    case CommDType::kI64: return 8;
    case CommDType::kU8: return 1;
  }
  return 1;
}

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMin: return "min";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kOr: return "or";
  }
  return "?";
}

absl::Status CheckAllReduceArgs(CommDType dtype, ReduceOp op) {
  const bool integral = dtype == CommDType::kI64 || dtype == CommDType::kU8;
  if (op == ReduceOp::kAvg && integral)
    return absl::InvalidArgumentError("allreduce: avg of integers is not defined; use sum");
  if (op == ReduceOp::kOr && !integral) return absl::InvalidArgumentError("allreduce: or needs int64 or uint8 data");
  return absl::OkStatus();
}

bool LaunchedByMpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
}

std::vector<std::string> AvailableBackends() {
  std::vector<std::string> b = {"local"};
#ifdef SAE_HAVE_MPI
  b.push_back("mpi");
#endif
#ifdef SAE_HAVE_GLOO
  b.push_back("gloo");
#endif
#ifdef SAE_HAVE_NCCL
  b.push_back("nccl");
#endif
  return b;
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(const std::string& backend, const CommOptions& opts) {
  const bool by_mpirun = LaunchedByMpirun();  // before MPI_Init sets OMPI_* itself
  std::unique_ptr<Communicator> c;
  if (backend == "local") {
    c = internal::NewLocalCommunicator();
  } else if (backend == "mpi") {
#ifdef SAE_HAVE_MPI
    SAE_ASSIGN_OR_RETURN(c, internal::NewMpiCommunicator(opts.abort));
    (void)by_mpirun;
#else
    return absl::UnimplementedError("world.backend: mpi is not built in (Open MPI was not found)");
#endif
  } else if (backend == "gloo") {
#ifdef SAE_HAVE_GLOO
    SAE_ASSIGN_OR_RETURN(c, internal::NewGlooCommunicator(opts));
#else
    return absl::UnimplementedError("world.backend: gloo is not built in (no c10d/Gloo headers)");
#endif
  } else if (backend == "nccl") {
#ifdef SAE_HAVE_NCCL
    SAE_ASSIGN_OR_RETURN(c, internal::NewNcclCommunicator(opts));
#else
    return absl::UnimplementedError(
        "world.backend: nccl is not built in (this build has no CUDA LibTorch and NCCL; see scripts/gpu-check.sh)");
#endif
  } else {
    std::string have;
    for (const std::string& b : AvailableBackends()) absl::StrAppend(&have, have.empty() ? "" : ", ", b);
    return absl::InvalidArgumentError(
        absl::StrCat("world.backend: '", backend, "' is not built in this binary (have: ", have, ")"));
  }
  if (opts.expected_world_size > 0 && c->world_size() != opts.expected_world_size) {
    std::string hint;
    if (backend == "mpi" && c->world_size() == 1 && !by_mpirun)
      hint = " (this process was not started by mpirun: every such process believes it is rank 0 of 1)";
    return absl::FailedPreconditionError(absl::StrCat("world.workers is ", opts.expected_world_size, " but the ",
                                                      backend, " world has ", c->world_size(), " ranks", hint));
  }
  return c;
}

}  // namespace sae
