// sae-worker: trains jobs for sae-coordinator (--coordinator HOST:PORT) or
// one job file in this process (--job). Its own main and flags: it links the
// training runtime and the coordinator agent, not the `sae` command library.
#include <cstdio>
#include <exception>
#include <string>

#include "cli/flags.h"
#include "core/base/blas_kernel.h"
#include "worker/coordinator_agent.h"
#include "worker/train_command.h"

namespace sae {
namespace {

// The coordinator-mode flags (WorkerAgentOptions).
void AddWorkerAgentFlags(flags::Command* app, WorkerAgentOptions* o) {
  app->AddOption("--worker-token-file", o->token_file, "coordinator mode: file with the worker bearer token");
  app->AddOption("--tls-ca", o->tls_ca, "coordinator mode: PEM CA of the coordinator's certificate (TLS)");
  app->AddOption("--worker-id", o->worker_id, "coordinator mode: this worker's id (default HOST-PID)");
  app->AddOption("--advertise-host", o->host, "coordinator mode: address other ranks reach this worker at")
      .ShowDefault();
  app->AddOption("--rendezvous-port", o->rendezvous_port, "coordinator mode: gloo store port as rank 0 (0: free)");
  app->AddOption("--data-cache", o->data_cache, "coordinator mode: directory for shards fetched via DataService");
  app->AddFlag("--fetch-data", o->fetch_data,
               "coordinator mode: always read shards through DataService (no shared filesystem)");
}

int WorkerMain(int argc, char** argv) {
  flags::Command app{
      "sae-worker: trains SAE jobs for sae-coordinator (--coordinator HOST:PORT) or one job file (--job)"};
  TrainCommandArgs ta;
  std::string coordinator;
  app.AddOption("--job", ta.job, "train this job file in this process");
  app.AddFlag("--resume", ta.resume, "continue from the job's latest checkpoint");
  app.AddFlag("--json", ta.json, "print the summary as one JSON object");
  app.AddOption("--coordinator", coordinator, "HOST:PORT of sae-coordinator");
  app.AddOption("--max-steps", ta.max_steps, "stop after this many steps, with a checkpoint");
  app.AddOption("--metrics-listen", ta.metrics_listen,
                "serve Prometheus metrics at HOST:PORT/metrics (rank r adds r to PORT)");
  app.AddOption("--rank", ta.rank, "gloo: this worker's rank (or SAE_RANK)").Env("SAE_RANK");
  app.AddOption("--world-size", ta.world_size, "gloo: number of ranks (or SAE_WORLD_SIZE)").Env("SAE_WORLD_SIZE");
  app.AddOption("--rendezvous", ta.rendezvous, "gloo: HOST:PORT of the store rank 0 serves (or SAE_RENDEZVOUS)")
      .Env("SAE_RENDEZVOUS");
  WorkerAgentOptions agent;
  AddWorkerAgentFlags(&app, &agent);
  if (auto rc = app.Parse(argc, argv)) return *rc == 0 ? 0 : 2;
  if (!coordinator.empty()) {
    const std::atomic<bool>* stop = StopOnSignals();
    agent.coordinator = coordinator;
    agent.metrics_listen = ta.metrics_listen;
    return RunWorkerAgent(agent, stop);
  }
  if (ta.job.empty()) {
    std::fprintf(stderr, "error: give --job FILE\n%s", app.Help().c_str());
    return 2;
  }
  return RunTrainCommand(ta);
}

}  // namespace
}  // namespace sae

// As in cli/sae_main.cc: an escaped exception ends the worker with a message
// and exit status 1 (jobs from a coordinator are caught per attempt).
int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  try {
    return sae::WorkerMain(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
