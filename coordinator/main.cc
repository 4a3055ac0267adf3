// sae-coordinator: schedules SAE jobs onto sae-worker processes (see
// coordinator/coordinator.h and docs in README "Running the service").
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/flags.h"
#include "coordinator/coordinator.h"
#include "coordinator/service.h"
#include "core/base/blas_kernel.h"
#include "core/base/exit_code.h"
#include "core/base/file_util.h"
#include "core/base/logging.h"

namespace {

using sae::Fail;

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

}  // namespace

int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  sae::flags::Command app{"sae-coordinator: schedules SAE training jobs onto sae-worker processes"};
  sae::CoordinatorOptions co;
  sae::ServiceOptions so;
  std::string client_token_file, worker_token_file, ready_file;
  co.db = "sae-coordinator.db";
  app.AddOption("--listen", so.listen, "gRPC HOST:PORT (port 0: any free port)").ShowDefault();
  app.AddOption("--db", co.db, "SQLite database (jobs, transitions, workers, checkpoints)").ShowDefault();
  app.AddOption("--metrics-listen", so.metrics_listen, "HTTP HOST:PORT for /metrics and /sd (\"\" = off)")
      .ShowDefault();
  app.AddOption("--lease-seconds", co.lease_seconds, "a worker silent this long is dead").ShowDefault();
  app.AddOption("--stop-grace-seconds", co.stop_grace_seconds, "a worker told to stop counts as busy at most this long")
      .ShowDefault();
  app.AddOption("--heartbeat-seconds", co.heartbeat_seconds, "heartbeat interval told to workers").ShowDefault();
  app.AddOption("--max-restarts", co.default_max_restarts, "default restarts of a job before it FAILS").ShowDefault();
  app.AddOption("--data-root", co.data_root, "job data paths must lie under this directory");
  app.AddOption("--output-root", co.output_root, "job outputs must lie under this directory");
  app.AddOption("--client-token-file", client_token_file, "bearer token clients (sae) must present");
  app.AddOption("--worker-token-file", worker_token_file, "bearer token workers must present");
  app.AddOption("--tls-cert", so.tls_cert, "PEM certificate: serve TLS");
  app.AddOption("--tls-key", so.tls_key, "PEM private key of --tls-cert");
  app.AddOption("--max-message-bytes", so.max_message_bytes, "largest request accepted").ShowDefault();
  app.AddOption("--ready-file", ready_file, "write {\"listen\", \"metrics\"} as JSON here once serving");
  if (auto rc = app.Parse(argc, argv)) return *rc == 0 ? 0 : 2;
  if (!client_token_file.empty()) {
    auto t = sae::ReadTokenFile("--client-token-file", client_token_file);
    if (!t.ok()) return Fail(t.status());
    so.client_token = *t;
  }
  if (!worker_token_file.empty()) {
    auto t = sae::ReadTokenFile("--worker-token-file", worker_token_file);
    if (!t.ok()) return Fail(t.status());
    so.worker_token = *t;
  }
  if (!so.client_token.empty() && so.client_token == so.worker_token)
    return Fail(absl::InvalidArgumentError("client and worker tokens must differ"));
  auto coord = sae::Coordinator::Create(co);
  if (!coord.ok()) return Fail(coord.status());
  auto server = sae::CoordinatorServer::Start(coord->get(), so);
  if (!server.ok()) return Fail(server.status());
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  SAE_LOG(kInfo) << "sae-coordinator listening on " << (*server)->address()
                 << (so.tls_cert.empty() ? " (plaintext)" : " (TLS)") << ", metrics at http://"
                 << (*server)->metrics_address() << "/metrics, db " << co.db;
  if (!ready_file.empty()) {
    nlohmann::json j = {{"listen", (*server)->address()}, {"metrics", (*server)->metrics_address()}};
    absl::Status s = sae::AtomicWriteFile(ready_file, j.dump() + "\n");
    if (!s.ok()) return Fail(s);
  }
  while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  SAE_LOG(kInfo) << "sae-coordinator: stopping";
  (*server)->Shutdown();
  return 0;
}
