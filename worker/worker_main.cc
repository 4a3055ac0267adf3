// sae-worker: trains jobs for sae-coordinator (--coordinator HOST:PORT) or
// one job file in this process (--job). Its own main and flags: it links the
// training runtime and the coordinator agent, not the `sae` command library.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <string>

#include "core/base/blas_kernel.h"
#include "worker/coordinator_agent.h"
#include "worker/train_command.h"

namespace sae {
namespace {

// The coordinator-mode flags (WorkerAgentOptions).
void AddWorkerAgentFlags(CLI::App* app, WorkerAgentOptions* o) {
  app->add_option("--worker-token-file", o->token_file, "coordinator mode: file with the worker bearer token");
  app->add_option("--tls-ca", o->tls_ca, "coordinator mode: PEM CA of the coordinator's certificate (TLS)");
  app->add_option("--worker-id", o->worker_id, "coordinator mode: this worker's id (default HOST-PID)");
  app->add_option("--advertise-host", o->host, "coordinator mode: address other ranks reach this worker at")
      ->capture_default_str();
  app->add_option("--rendezvous-port", o->rendezvous_port, "coordinator mode: gloo store port as rank 0 (0: free)");
  app->add_option("--data-cache", o->data_cache, "coordinator mode: directory for shards fetched via DataService");
  app->add_flag("--fetch-data", o->fetch_data,
                "coordinator mode: always read shards through DataService (no shared filesystem)");
}

int WorkerMain(int argc, char** argv) {
  CLI::App app{"sae-worker: trains SAE jobs for sae-coordinator (--coordinator HOST:PORT) or one job file (--job)"};
  TrainCommandArgs ta;
  std::string coordinator;
  app.add_option("--job", ta.job, "train this job file in this process");
  app.add_flag("--resume", ta.resume, "continue from the job's latest checkpoint");
  app.add_flag("--json", ta.json, "print the summary as one JSON object");
  app.add_option("--coordinator", coordinator, "HOST:PORT of sae-coordinator");
  app.add_option("--max-steps", ta.max_steps, "stop after this many steps, with a checkpoint");
  app.add_option("--metrics-listen", ta.metrics_listen,
                 "serve Prometheus metrics at HOST:PORT/metrics (rank r adds r to PORT)");
  app.add_option("--rank", ta.rank, "gloo: this worker's rank (or SAE_RANK)")->envname("SAE_RANK");
  app.add_option("--world-size", ta.world_size, "gloo: number of ranks (or SAE_WORLD_SIZE)")->envname("SAE_WORLD_SIZE");
  app.add_option("--rendezvous", ta.rendezvous, "gloo: HOST:PORT of the store rank 0 serves (or SAE_RENDEZVOUS)")
      ->envname("SAE_RENDEZVOUS");
  WorkerAgentOptions agent;
  AddWorkerAgentFlags(&app, &agent);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (!coordinator.empty()) {
    const std::atomic<bool>* stop = StopOnSignals();
    agent.coordinator = coordinator;
    agent.metrics_listen = ta.metrics_listen;
    return RunWorkerAgent(agent, stop);
  }
  if (ta.job.empty()) {
    std::fprintf(stderr, "error: give --job FILE\n%s", app.help().c_str());
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
