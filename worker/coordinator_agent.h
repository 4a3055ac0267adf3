// sae-worker in coordinator mode: registers with sae-coordinator, keeps its
// lease with heartbeats, follows the assignment stream (RUN / STOP), trains
// each assignment with RunTrainingJob (the standalone runtime) in a
// background thread, and reports progress, checkpoints and the result.
// Shards come from the job's path, or through DataService into a local cache
// when the path does not exist here. Runs until *stop becomes true.
#pragma once

#include <atomic>
#include <string>

namespace sae {

struct WorkerAgentOptions {
  std::string coordinator;         // HOST:PORT
  std::string token_file;          // worker bearer token
  std::string tls_ca;              // PEM CA: use TLS
  std::string worker_id;           // "" = HOST-PID
  std::string host = "127.0.0.1";  // address other ranks reach this worker at
  int rendezvous_port = 0;         // gloo store port when rank 0 (0 = a free one)
  std::string metrics_listen;      // HOST:PORT (port 0 = a free one, kept for life)
  std::string data_cache;          // where DataService downloads go ("" = temp dir)
  bool fetch_data = false;         // always use DataService, even if the path exists here
};

// Returns the process exit code (0 after a clean stop).
int RunWorkerAgent(WorkerAgentOptions opts, const std::atomic<bool>* stop);

}  // namespace sae
