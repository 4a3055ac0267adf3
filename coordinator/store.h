// Durable state of the coordinator in one SQLite file: jobs (the sae.v1.Job
// message and its idempotency key), state transitions with time and reason,
// workers with their current assignment, and reported checkpoints. Every
// write is one transaction, so a killed coordinator restarts from the last
// completed change (or group, Begin..Commit). Not thread-safe: the Coordinator serializes calls.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "sae/v1/job.pb.h"
#include "sae/v1/worker.pb.h"

struct sqlite3;

namespace sae {

struct StoredWorker {
  v1::RegisterRequest info;
  std::string state;  // alive | dead
  std::string job_id;
  int attempt = 0;
  int rank = -1;
};

class JobStore {
 public:
  // Opens or creates the database (":memory:" for none).
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  ~JobStore();

  absl::Status PutJob(const v1::Job& job, const std::string& request_id);
  absl::Status AddTransition(const std::string& job_id, const v1::Transition& t);
  absl::Status PutWorker(const StoredWorker& w);
  absl::Status AddCheckpoint(const std::string& job_id, int attempt, int64_t step, int64_t tokens,
                             const std::string& path);
  absl::StatusOr<std::vector<std::pair<v1::Job, std::string>>> LoadJobs();  // with request ids
  absl::StatusOr<std::vector<StoredWorker>> LoadWorkers();

  // Groups the writes that follow into one transaction: Commit makes them
  // durable together, Rollback discards them (also after a failed write).
  absl::Status Begin();
  absl::Status Commit();
  void Rollback();
  bool in_transaction() const;

 private:
  explicit JobStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const std::string& sql);
  sqlite3* db_;
};

}  // namespace sae
