// The coordinator's state machine: jobs (PENDING → SCHEDULED → RUNNING ⇄
// RESTARTING → SUCCEEDED | FAILED | CANCELLED), workers and their leases,
// the scheduler that places a job needing world.workers workers on that many
// idle ones (priority first, then FIFO; later jobs fill workers an earlier
// job cannot use), sweeps, and restarts from the last checkpoint. Every
// change is written to the JobStore before it is visible: the writes of one
// call (or one scheduler tick) are one store transaction, and when one of
// them fails the call returns that error and its changes are undone in the
// store and in memory. The gRPC services (service.h) are thin adapters over
// this class.
// Thread-safe: one mutex guards all state; one background thread expires
// leases and schedules.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "coordinator/store.h"
#include "core/base/config.h"
#include "core/base/logging.h"
#include "core/base/mutex.h"
#include "core/base/status.h"
#include "sae/v1/job.pb.h"
#include "sae/v1/worker.pb.h"

namespace sae {

struct CoordinatorOptions {
  std::string db = ":memory:";
  double lease_seconds = 10;  // a worker silent this long is dead
  // A worker told to stop an attempt counts as busy until it reports the
  // attempt over, but no longer than this: then it may be given new work
  // (the worker agent ends the old attempt before it starts the new one).
  double stop_grace_seconds = 30;
  double heartbeat_seconds = 1;        // what workers are told to use
  std::string data_root, output_root;  // "" = no restriction (".." still refused)
  int default_max_restarts = 3;
};

// Counts the metrics endpoint exports, and the workers /sd lists.
struct CoordinatorSnapshot {
  std::map<std::string, int> jobs_by_state;     // every state, lower case
  std::map<std::string, int> workers_by_state;  // idle | busy | dead
  int64_t restarts_total = 0;
  struct Target {
    std::string worker_id, address, job_id;
  };
  std::vector<Target> targets;  // live workers with a metrics endpoint
};

class Coordinator {
 public:
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(const CoordinatorOptions& opts);
  ~Coordinator();

  const CoordinatorOptions& options() const { return opts_; }

  // JobService.
  absl::StatusOr<v1::SubmitResponse> Submit(const v1::SubmitRequest& req);
  absl::StatusOr<v1::Job> Get(const std::string& id);
  std::vector<v1::Job> List(bool include_children);
  absl::StatusOr<v1::Job> Cancel(const std::string& id, const std::string& reason);
  // Blocks up to `timeout` until job `id` has a version newer than *version;
  // then fills *job, updates *version and returns true. NotFound for an
  // unknown id.
  absl::StatusOr<bool> WaitForJob(const std::string& id, int64_t* version, v1::Job* job, double timeout_s);

  // WorkerService.
  absl::StatusOr<v1::RegisterResponse> Register(const v1::RegisterRequest& req);
  absl::Status Heartbeat(const v1::HeartbeatRequest& req);
  // Starts a new assignment stream for the worker (older streams of it end)
  // and queues its current order again. Returns the stream's generation.
  absl::StatusOr<int64_t> ConnectAssignments(const std::string& worker_id);
  // Waits up to `timeout` for the next order. Returns false on timeout;
  // Cancelled when a newer stream replaced this one.
  absl::StatusOr<bool> NextAssignment(const std::string& worker_id, int64_t generation, v1::Assignment* out,
                                      double timeout_s);
  absl::Status ReportProgress(const v1::ProgressReport& r);
  absl::Status ReportCheckpoint(const v1::CheckpointReport& r);
  absl::Status ReportResult(const v1::AttemptResult& r);

  CoordinatorSnapshot Snapshot();
  // Wakes every waiting stream (server shutdown).
  void Shutdown();

 private:
  struct JobRec {
    v1::Job job;
    JobConfig config;  // job.spec() parsed (at submit, or when loaded from the store)
    std::string request_id;
    int64_t version = 0;
    double restart_at = 0;  // steady seconds when it went RESTARTING
  };
  struct WorkerRec {
    v1::RegisterRequest info;
    bool alive = true;
    double last_heartbeat = 0;
    std::string job_id;  // assigned (or still stopping) attempt
    int attempt = 0;
    int rank = -1;
    bool stopping = false;
    double stop_since = 0;  // when `stopping` was set (steady clock)
    std::deque<v1::Assignment> outbox;
    int64_t stream_generation = 0;
  };

  // The undo log of the change in progress (BeginChange .. EndChange): the
  // records as they were before it touched them (nullopt: created by it).
  struct Undo {
    bool active = false;
    absl::Status error;  // the first failed store write
    std::map<std::string, std::optional<JobRec>> jobs;
    std::map<std::string, std::optional<WorkerRec>> workers;
    size_t order_size = 0;
    int64_t next_id = 0;
    std::string request_id;                               // added to by_request_ by this change
    std::vector<std::pair<LogLevel, std::string>> notes;  // logged once committed
  };

  explicit Coordinator(const CoordinatorOptions& opts) : opts_(opts) {}
  absl::Status Load();
  void Loop();
  void Tick() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireLeases(double now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Place(double now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Changes: every mutation of a job or worker record happens between
  // BeginChange and EndChange, after TouchJob/TouchWorker of the record.
  void BeginChange() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TouchJob(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TouchWorker(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Commits the change's store writes, or when one failed (or the commit
  // fails) rolls the store and the touched records back and returns the
  // error; else returns `result`.
  absl::Status EndChange(absl::Status result = absl::OkStatus()) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UndoChange() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A log line about the change, written once it is committed.
  void Note(LogLevel level, std::string line) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Store writes within a change: `if (Writable()) Wrote(store_->Put...)`.
  // Writable begins the store transaction; false once a write failed (the
  // change fails as a whole). Wrote records a failure.
  bool Writable() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Wrote(const absl::Status& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  JobRec& NewJob(const JobConfig& cfg, const std::string& request_id, int priority, int max_restarts)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::SubmitResponse> SubmitLocked(const v1::SubmitRequest& req, const JobConfig& base,
                                                  const std::vector<JobConfig>& variants, int max_restarts)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::Job> CancelLocked(const std::string& id, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status HeartbeatLocked(const v1::HeartbeatRequest& req) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ReportProgressLocked(const v1::ProgressReport& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ReportCheckpointLocked(const v1::CheckpointReport& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ReportResultLocked(const v1::AttemptResult& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Transition(JobRec* j, v1::JobState to, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SaveJob(JobRec* j) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SaveWorker(const WorkerRec& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StopGroup(JobRec* j, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void GroupFailed(JobRec* j, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateParent(const std::string& parent_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::Assignment BuildRun(const JobRec& j, int rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The coordinator's own rules on a parsed job (backends it can group, data
  // and output under its roots); returns it with the paths resolved.
  absl::StatusOr<JobConfig> CheckConfig(JobConfig cfg, const std::string& origin);
  std::string NewId() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CoordinatorOptions opts_;
  sae::Mutex mu_;
  std::unique_ptr<JobStore> store_ ABSL_PT_GUARDED_BY(mu_);
  sae::CondVar cv_;  // signalled on every change
  std::map<std::string, JobRec> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> order_ ABSL_GUARDED_BY(mu_);  // submission order
  std::map<std::string, std::string> by_request_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, WorkerRec> workers_ ABSL_GUARDED_BY(mu_);
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  Undo undo_ ABSL_GUARDED_BY(mu_);
  double last_store_error_log_ ABSL_GUARDED_BY(mu_) = -1e9;
  std::thread loop_;
};

std::string JobStateName(v1::JobState s);  // "PENDING", ...
bool IsTerminal(v1::JobState s);

}  // namespace sae
