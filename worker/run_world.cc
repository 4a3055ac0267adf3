#include "worker/run_world.h"

#include <ATen/Context.h>

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace sae {

std::string ChooseBackend(const std::string& configured, const BackendFacts& f) {
  if (configured != "auto") return configured;
  const bool multi = f.mpirun || f.rendezvous;
  if (f.gpu && f.nccl_built && multi) return "nccl";
  return f.mpirun ? "mpi" : f.rendezvous ? "gloo" : "local";
}

BackendFacts BackendFactsFor(const JobConfig& job, const RunOptions& opts) {
  BackendFacts f;
  f.gpu = job.train.device == Device::kCuda || (job.train.device == Device::kAuto && at::hasCUDA());
  const auto built = AvailableBackends();
  f.nccl_built = std::find(built.begin(), built.end(), "nccl") != built.end();
  f.mpirun = LaunchedByMpirun();
  f.rendezvous = !opts.rendezvous.empty();
  return f;
}

absl::StatusOr<RunWorld> OpenRunWorld(const JobConfig& job, const RunOptions& opts, const std::string& origin) {
  RunWorld w;
  const std::string configured = OptionName(job.world.backend);
  w.backend = configured == "auto" ? ChooseBackend(configured, BackendFactsFor(job, opts)) : configured;
  if (w.backend == "local" && job.world.workers != 1)
    return absl::FailedPreconditionError(
        absl::StrCat(origin, ": world.workers: ", job.world.workers, " workers need `mpirun -np ", job.world.workers,
                     " sae-worker --job FILE` (or a coordinator); this process trains alone"));
  CommOptions co;
  co.expected_world_size = static_cast<int>(job.world.workers);
  co.rank = opts.rank;
  co.world_size = opts.world_size;
  co.rendezvous = opts.rendezvous;
  co.timeout = absl::Seconds(job.world.timeout_seconds);
  co.abort = opts.stop;  // a stop ends a wait on lost ranks within about a second
  auto comm = CreateCommunicator(w.backend, co);
  if (!comm.ok()) return Annotate(comm.status(), origin);
  w.comm = std::move(*comm);
  return w;
}

std::string MetricsListenFor(const std::string& listen, int rank, int world, bool per_rank) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || world <= 1 || !per_rank) return listen;
  const int port = std::atoi(listen.c_str() + colon + 1);
  if (port <= 0) return listen;
  return absl::StrCat(listen.substr(0, colon), ":", port + rank);
}

}  // namespace sae
