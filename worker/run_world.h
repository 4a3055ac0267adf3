// The world a training run trains in: which communication backend
// (world.backend, or the automatic choice), the communicator over it, and
// where each rank serves its Prometheus metrics.
#pragma once

#include <memory>
#include <string>

#include "core/base/config.h"
#include "core/base/status.h"
#include "core/comm/communicator.h"
#include "worker/training_run.h"

namespace sae {

// What the automatic choice looks at.
struct BackendFacts {
  bool gpu = false;         // the SAE trains on a GPU
  bool nccl_built = false;  // NCCL is built in
  bool mpirun = false;      // this process was started by mpirun
  bool rendezvous = false;  // a gloo rendezvous address was given
};

// `configured` unless it is "auto": NCCL on GPUs with several processes when
// built in; else MPI under mpirun, Gloo with a rendezvous address, or "local"
// (this process alone).
std::string ChooseBackend(const std::string& configured, const BackendFacts& facts);

// The facts of this process for `job` and `opts`.
BackendFacts BackendFactsFor(const JobConfig& job, const RunOptions& opts);

struct RunWorld {
  std::string backend;
  std::unique_ptr<Communicator> comm;
};

// Chooses the backend and creates the communicator; errors name `origin`
// (a world of several workers without a launcher is refused by name).
absl::StatusOr<RunWorld> OpenRunWorld(const JobConfig& job, const RunOptions& opts, const std::string& origin);

// HOST:PORT where `rank` serves metrics: `listen` itself, or with several
// ranks on one host and per_rank, PORT + rank (a port of 0 stays 0).
std::string MetricsListenFor(const std::string& listen, int rank, int world, bool per_rank);

}  // namespace sae
