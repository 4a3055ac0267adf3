#include "coordinator/coordinator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/job_spec.h"
#include "coordinator/roots.h"
#include "core/base/clock.h"
#include "core/base/logging.h"
#include "core/data/manifest_check.h"

namespace sae {
namespace {

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Errors that a restart cannot fix: the job fails with the message.
bool IsPermanent(int code) {
  switch (static_cast<absl::StatusCode>(code)) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kPermissionDenied: return true;
    default: return false;
  }
}

}  // namespace

std::string JobStateName(v1::JobState s) {
  switch (s) {
    case v1::PENDING: return "PENDING";
    case v1::SCHEDULED: return "SCHEDULED";
    case v1::RUNNING: return "RUNNING";
    case v1::RESTARTING: return "RESTARTING";
    case v1::SUCCEEDED: return "SUCCEEDED";
    case v1::FAILED: return "FAILED";
    case v1::CANCELLED: return "CANCELLED";
    default: return "UNSPECIFIED";
  }
}

bool IsTerminal(v1::JobState s) { return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED; }

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(const CoordinatorOptions& opts) {
  if (opts.lease_seconds <= 0 || opts.heartbeat_seconds <= 0 || opts.heartbeat_seconds >= opts.lease_seconds)
    return absl::InvalidArgumentError("--lease-seconds must exceed --heartbeat-seconds > 0");
  std::unique_ptr<Coordinator> c(new Coordinator(opts));
  SAE_ASSIGN_OR_RETURN(c->store_, JobStore::Open(opts.db));
  SAE_RETURN_IF_ERROR(c->Load());
  c->loop_ = std::thread([p = c.get()] { p->Loop(); });
  return c;
}

Coordinator::~Coordinator() {
  Shutdown();
  if (loop_.joinable()) loop_.join();
}

void Coordinator::Shutdown() {
  sae::MutexLock l(&mu_);
  shutdown_ = true;
  cv_.SignalAll();
}

absl::Status Coordinator::Load() {
  sae::MutexLock l(&mu_);
  SAE_ASSIGN_OR_RETURN(auto jobs, store_->LoadJobs());
  for (auto& [job, rid] : jobs) {
    JobRec r;
    r.job = job;
    r.request_id = rid;
    r.version = 1;
    r.restart_at = SteadyNow();
    if (!rid.empty()) by_request_[rid] = job.id();
    int64_t n = 0;
    if (std::sscanf(job.id().c_str(), "job-%ld", &n) == 1) next_id_ = std::max(next_id_, n + 1);
    order_.push_back(job.id());
    auto cfg = JobConfigFromSpec(job.spec(), job.id());
    if (cfg.ok()) r.config = *cfg;
    JobRec& stored = jobs_[job.id()] = std::move(r);
    if (!cfg.ok()) {
      // E.g. written by a coordinator older than the YAML spec: it cannot be
      // scheduled; say so instead of running a default job.
      SAE_LOG(kWarn) << "store: " << cfg.status().message();
      if (!IsTerminal(stored.job.state()) && stored.job.child_ids_size() == 0)
        Transition(&stored, v1::FAILED,
                   absl::StrCat("its stored spec does not read: ", cfg.status().message(), "; submit it again"));
    }
  }
  SAE_ASSIGN_OR_RETURN(auto workers, store_->LoadWorkers());
  const double now = SteadyNow();
  for (auto& w : workers) {
    WorkerRec r;
    r.info = w.info;
    r.alive = w.state == "alive";
    r.last_heartbeat = now + opts_.lease_seconds;  // two leases to come back after our restart
    r.job_id = w.job_id;
    r.attempt = w.attempt;
    r.rank = w.rank;
    workers_[w.info.worker_id()] = std::move(r);
  }
  if (!jobs.empty() || !workers.empty()) {
    SAE_LOG(kInfo) << "restored " << jobs.size() << " job(s) and " << workers.size() << " worker(s) from " << opts_.db;
  }
  return absl::OkStatus();
}

std::string Coordinator::NewId() {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "job-%06ld", next_id_++);
  return buf;
}

void Coordinator::BeginChange() {
  undo_ = Undo();
  undo_.active = true;
  undo_.order_size = order_.size();
  undo_.next_id = next_id_;
}

void Coordinator::TouchJob(const std::string& id) {
  if (!undo_.active || undo_.jobs.count(id)) return;
  auto it = jobs_.find(id);
  undo_.jobs[id] = it == jobs_.end() ? std::nullopt : std::optional<JobRec>(it->second);
}

void Coordinator::TouchWorker(const std::string& id) {
  if (!undo_.active || undo_.workers.count(id)) return;
  auto it = workers_.find(id);
  undo_.workers[id] = it == workers_.end() ? std::nullopt : std::optional<WorkerRec>(it->second);
}

bool Coordinator::Writable() {
  if (!undo_.error.ok()) return false;  // the change fails as a whole
  if (undo_.active && !store_->in_transaction()) undo_.error = store_->Begin();
  return undo_.error.ok();
}

void Coordinator::Wrote(const absl::Status& s) {
  if (s.ok()) return;
  if (undo_.active) {
    undo_.error = s;
  } else {  // not reached: every write is part of a change
    SAE_LOG(kError) << "job store " << opts_.db << ": " << s.message();
  }
}

void Coordinator::Note(LogLevel level, std::string line) {
  if (undo_.active) {
    undo_.notes.emplace_back(level, std::move(line));
  } else if (level >= GetLogLevel()) {
    LogLine(level, line);
  }
}

absl::Status Coordinator::EndChange(absl::Status result) {
  if (undo_.error.ok() && store_->in_transaction()) undo_.error = store_->Commit();
  absl::Status error = undo_.error;
  if (error.ok()) {
    for (const auto& [level, line] : undo_.notes)
      if (level >= GetLogLevel()) LogLine(level, line);
  }
  if (!error.ok()) {
    store_->Rollback();
    UndoChange();
    error = absl::Status(error.code(),
                         absl::StrCat("job store ", opts_.db, ": ", error.message(), " (the change was not made)"));
    // Ticks retry every 100 ms: at most one line per 10 s while the store fails.
    const double now = SteadyNow();
    if (now - last_store_error_log_ >= 10) {
      last_store_error_log_ = now;
      SAE_LOG(kError) << error.message();
    }
  }
  undo_ = Undo();
  return error.ok() ? result : error;
}

void Coordinator::UndoChange() {
  for (auto& [id, rec] : undo_.jobs) {
    if (rec)
      jobs_[id] = std::move(*rec);
    else
      jobs_.erase(id);
  }
  for (auto& [id, rec] : undo_.workers) {
    if (rec)
      workers_[id] = std::move(*rec);
    else
      workers_.erase(id);
  }
  order_.resize(undo_.order_size);
  next_id_ = undo_.next_id;
  if (!undo_.request_id.empty()) by_request_.erase(undo_.request_id);
  cv_.SignalAll();
}

void Coordinator::SaveJob(JobRec* j) {
  TouchJob(j->job.id());
  j->version++;
  j->job.set_updated_unix_ms(UnixMs());
  if (Writable()) Wrote(store_->PutJob(j->job, j->request_id));
  cv_.SignalAll();
}

void Coordinator::SaveWorker(const WorkerRec& w) {
  StoredWorker sw;
  sw.info = w.info;
  sw.state = w.alive ? "alive" : "dead";
  sw.job_id = w.job_id;
  sw.attempt = w.attempt;
  sw.rank = w.rank;
  if (Writable()) Wrote(store_->PutWorker(sw));
}

void Coordinator::Transition(JobRec* j, v1::JobState to, const std::string& reason) {
  TouchJob(j->job.id());
  v1::Transition* t = j->job.add_history();
  t->set_from(j->job.state());
  t->set_to(to);
  t->set_time_unix_ms(UnixMs());
  t->set_reason(reason);
  Note(LogLevel::kInfo, absl::StrCat(j->job.id(), ": ", JobStateName(j->job.state()), " -> ", JobStateName(to),
                                     reason.empty() ? "" : ": ", reason));
  j->job.set_state(to);
  j->job.set_reason(reason);
  if (to == v1::RESTARTING) j->restart_at = SteadyNow();
  if (Writable()) Wrote(store_->AddTransition(j->job.id(), *t));
  SaveJob(j);
  if (!j->job.parent_id().empty()) UpdateParent(j->job.parent_id());
}

void Coordinator::UpdateParent(const std::string& parent_id) {
  auto it = jobs_.find(parent_id);
  if (it == jobs_.end()) return;
  TouchJob(parent_id);
  JobRec& p = it->second;
  int done = 0, ok = 0, failed = 0, cancelled = 0, running = 0;
  // A sweep's progress is its variants' together (tokens, rates); the
  // per-variant quality metrics stay on the children.
  int64_t tokens = 0, total = 0, trained = 0;
  double rate = 0;
  for (const auto& cid : p.job.child_ids()) {
    auto c = jobs_.find(cid);
    if (c == jobs_.end()) continue;
    const v1::JobState s = c->second.job.state();
    const v1::Progress& cp = c->second.job.progress();
    tokens += cp.tokens();
    total += cp.total_tokens() > 0 ? cp.total_tokens() : c->second.config.train.tokens;
    trained += cp.tokens_trained();
    if (s == v1::RUNNING) rate += cp.tokens_per_second();
    if (IsTerminal(s)) ++done;
    if (s == v1::SUCCEEDED) ++ok;
    if (s == v1::FAILED) ++failed;
    if (s == v1::CANCELLED) ++cancelled;
    if (s == v1::RUNNING || s == v1::SCHEDULED || s == v1::RESTARTING) ++running;
  }
  v1::Progress* pp = p.job.mutable_progress();
  pp->set_tokens(tokens);
  pp->set_total_tokens(total);
  pp->set_tokens_trained(trained);
  pp->set_tokens_per_second(rate);
  p.version++;
  v1::JobState to = p.job.state();
  std::string reason;
  const int n = p.job.child_ids_size();
  if (done == n) {
    to = failed ? v1::FAILED : cancelled ? v1::CANCELLED : v1::SUCCEEDED;
    reason = absl::StrCat(ok, " of ", n, " variants succeeded");
  } else if (running > 0) {
    to = v1::RUNNING;
    reason = absl::StrCat(running, " variant(s) running, ", done, " of ", n, " finished");
  }
  if (to != p.job.state()) Transition(&p, to, reason);
}

absl::StatusOr<JobConfig> Coordinator::CheckConfig(JobConfig cfg, const std::string& origin) {
  if (cfg.world.backend != Backend::kAuto && cfg.world.backend != Backend::kGloo &&
      cfg.world.backend != Backend::kLocal)
    return absl::InvalidArgumentError(absl::StrCat(origin, ": world.backend: '", OptionName(cfg.world.backend),
                                                   "': coordinator groups run gloo (or local for one worker)"));
  if (cfg.world.backend == Backend::kLocal && cfg.world.workers > 1)
    return absl::InvalidArgumentError(absl::StrCat(origin, ": world.backend: local needs world.workers 1"));
  if (cfg.data.kind == DataKind::kShards) {
    auto p = ResolveUnderRoot("data.path", cfg.data.path, opts_.data_root);
    if (!p.ok()) return Annotate(p.status(), origin);
    cfg.data.path = *p;
    // d_in is known from the manifest: refuse an SAE that cannot be trained on it.
    SAE_RETURN_IF_ERROR(CheckJobAgainstManifest(cfg, origin));
  } else if (cfg.data.kind == DataKind::kLm) {
    for (auto* f : {&cfg.data.model, &cfg.data.corpus}) {
      if (f->empty() || *f == "generate") continue;
      auto p = ResolveUnderRoot(f == &cfg.data.model ? "data.model" : "data.corpus", *f, opts_.data_root);
      if (!p.ok()) return Annotate(p.status(), origin);
      *f = *p;
    }
  }
  auto out = ResolveUnderRoot("output", cfg.output, opts_.output_root);
  if (!out.ok()) return Annotate(out.status(), origin);
  cfg.output = *out;
  return cfg;
}

absl::StatusOr<v1::SubmitResponse> Coordinator::Submit(const v1::SubmitRequest& req) {
  {
    sae::MutexLock l(&mu_);
    if (!req.request_id().empty()) {
      auto it = by_request_.find(req.request_id());
      if (it != by_request_.end()) {
        v1::SubmitResponse r;
        r.set_id(it->second);
        r.set_existing(true);
        for (const auto& c : jobs_[it->second].job.child_ids()) r.add_child_ids(c);
        return r;
      }
    }
  }
  if (req.request_id().size() > 256) return absl::InvalidArgumentError("request_id: longer than 256 bytes");
  // Read and validated as a job file (a missing name becomes "job").
  SAE_ASSIGN_OR_RETURN(const JobConfig submitted, JobConfigFromSpec(req.spec(), "job"));
  SAE_ASSIGN_OR_RETURN(JobConfig base, CheckConfig(submitted, "job"));
  std::vector<JobConfig> variants;
  if (req.sweep_size() > 0) {
    std::vector<v1::SweepAxis> axes(req.sweep().begin(), req.sweep().end());
    SAE_ASSIGN_OR_RETURN(std::vector<SweepVariant> expanded, ExpandSweep(submitted, axes));
    for (auto& v : expanded) {
      SAE_ASSIGN_OR_RETURN(JobConfig checked, CheckConfig(v.config, absl::StrCat("job (sweep ", v.suffix, ")")));
      variants.push_back(std::move(checked));
    }
  }
  if (req.has_max_restarts() && (req.max_restarts() < 0 || req.max_restarts() > 100))
    return absl::InvalidArgumentError("max_restarts: must be in [0, 100]");
  const int max_restarts = req.has_max_restarts() ? req.max_restarts() : opts_.default_max_restarts;
  sae::MutexLock l(&mu_);
  BeginChange();
  auto resp = SubmitLocked(req, base, variants, max_restarts);
  absl::Status s = EndChange(resp.status());
  if (!s.ok()) return s;
  return resp;
}

absl::StatusOr<v1::SubmitResponse> Coordinator::SubmitLocked(const v1::SubmitRequest& req, const JobConfig& base,
                                                             const std::vector<JobConfig>& variants, int max_restarts) {
  if (!req.request_id().empty() && by_request_.count(req.request_id())) {  // raced with a twin
    v1::SubmitResponse r;
    r.set_id(by_request_[req.request_id()]);
    r.set_existing(true);
    return r;
  }
  v1::SubmitResponse resp;
  JobRec& top = NewJob(base, req.request_id(), req.priority(), max_restarts);
  resp.set_id(top.job.id());
  std::vector<std::string> children;
  for (const JobConfig& v : variants) {
    JobRec& c = NewJob(v, "", req.priority(), max_restarts);
    c.job.set_parent_id(top.job.id());
    children.push_back(c.job.id());
    resp.add_child_ids(c.job.id());
  }
  JobRec& parent = jobs_[resp.id()];
  for (const auto& c : children) parent.job.add_child_ids(c);
  if (!req.request_id().empty()) {
    by_request_[req.request_id()] = resp.id();
    undo_.request_id = req.request_id();
  }
  Transition(&parent, v1::PENDING,
             children.empty() ? "submitted" : absl::StrCat("sweep of ", children.size(), " variants"));
  for (const auto& c : children) Transition(&jobs_[c], v1::PENDING, "submitted as a sweep variant");
  return resp;
}

Coordinator::JobRec& Coordinator::NewJob(const JobConfig& cfg, const std::string& request_id, int priority,
                                         int max_restarts) {
  const std::string id = NewId();
  TouchJob(id);
  JobRec& r = jobs_[id];
  r.request_id = request_id;
  r.job.set_id(id);
  r.config = cfg;
  *r.job.mutable_spec() = JobSpecFromConfig(cfg);
  r.job.set_priority(priority);
  r.job.set_max_restarts(max_restarts);
  r.job.set_created_unix_ms(UnixMs());
  r.job.set_output(cfg.output);
  order_.push_back(id);
  return r;
}

absl::StatusOr<v1::Job> Coordinator::Get(const std::string& id) {
  sae::MutexLock l(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job ", id, ": no such job"));
  return it->second.job;
}

std::vector<v1::Job> Coordinator::List(bool include_children) {
  sae::MutexLock l(&mu_);
  std::vector<v1::Job> out;
  for (const auto& id : order_) {
    const v1::Job& j = jobs_[id].job;
    if (!include_children && !j.parent_id().empty()) continue;
    v1::Job copy = j;
    copy.clear_history();
    out.push_back(std::move(copy));
  }
  return out;
}

void Coordinator::StopGroup(JobRec* j, const std::string& reason) {
  TouchJob(j->job.id());
  for (auto& [id, w] : workers_) {
    if (w.job_id != j->job.id() || w.attempt != j->job.attempt()) continue;
    TouchWorker(id);
    v1::Assignment a;
    a.set_kind(v1::Assignment::STOP);
    a.set_job_id(j->job.id());
    a.set_attempt(j->job.attempt());
    a.set_reason(reason);
    w.outbox.push_back(a);
    if (!w.stopping) w.stop_since = SteadyNow();
    w.stopping = true;
  }
  j->job.clear_workers();
  cv_.SignalAll();
}

absl::StatusOr<v1::Job> Coordinator::Cancel(const std::string& id, const std::string& reason) {
  sae::MutexLock l(&mu_);
  BeginChange();
  auto job = CancelLocked(id, reason);
  absl::Status s = EndChange(job.status());
  if (!s.ok()) return s;
  return job;
}

absl::StatusOr<v1::Job> Coordinator::CancelLocked(const std::string& id, const std::string& reason) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job ", id, ": no such job"));
  JobRec& j = it->second;
  if (IsTerminal(j.job.state()))
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " already finished (", JobStateName(j.job.state()), ")"));
  const std::string why = reason.empty() ? "cancelled by the user" : reason;
  for (const auto& cid : j.job.child_ids()) {
    JobRec& c = jobs_[cid];
    if (IsTerminal(c.job.state())) continue;
    StopGroup(&c, why);
    Transition(&c, v1::CANCELLED, why);
  }
  if (!IsTerminal(j.job.state())) {
    StopGroup(&j, why);
    Transition(&j, v1::CANCELLED, why);
  }
  return j.job;
}

absl::StatusOr<bool> Coordinator::WaitForJob(const std::string& id, int64_t* version, v1::Job* job, double timeout_s) {
  sae::MutexLock l(&mu_);
  const absl::Time deadline = absl::Now() + absl::Seconds(timeout_s);
  while (true) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job ", id, ": no such job"));
    if (it->second.version > *version) {
      *version = it->second.version;
      *job = it->second.job;
      return true;
    }
    if (shutdown_) return absl::UnavailableError("coordinator shutting down");
    if (cv_.WaitWithDeadline(&mu_, deadline)) return false;
  }
}

absl::StatusOr<v1::RegisterResponse> Coordinator::Register(const v1::RegisterRequest& req) {
  if (req.worker_id().empty() || req.worker_id().size() > 128)
    return absl::InvalidArgumentError("worker_id: 1 to 128 characters");
  if (req.host().empty()) return absl::InvalidArgumentError("host: empty");
  sae::MutexLock l(&mu_);
  BeginChange();
  TouchWorker(req.worker_id());
  WorkerRec& w = workers_[req.worker_id()];
  const bool known = w.info.worker_id() == req.worker_id();
  w.info = req;
  w.alive = true;
  w.last_heartbeat = SteadyNow();
  if (!known) {
    Note(LogLevel::kInfo,
         absl::StrCat("worker ", req.worker_id(), " registered (", req.host(), ", ", req.resources().cpus(), " cpus)"));
  }
  SaveWorker(w);
  cv_.SignalAll();
  SAE_RETURN_IF_ERROR(EndChange());
  v1::RegisterResponse r;
  r.set_lease_seconds(opts_.lease_seconds);
  r.set_heartbeat_seconds(opts_.heartbeat_seconds);
  return r;
}

absl::Status Coordinator::Heartbeat(const v1::HeartbeatRequest& req) {
  sae::MutexLock l(&mu_);
  BeginChange();
  return EndChange(HeartbeatLocked(req));
}

absl::Status Coordinator::HeartbeatLocked(const v1::HeartbeatRequest& req) {
  auto it = workers_.find(req.worker_id());
  if (it == workers_.end() || !it->second.alive)
    return absl::NotFoundError(absl::StrCat("worker ", req.worker_id(), ": not registered (register again)"));
  TouchWorker(req.worker_id());
  WorkerRec& w = it->second;
  w.last_heartbeat = SteadyNow();
  if (req.running_job_id().empty()) {
    if (w.stopping) {  // the stopped attempt is over
      w.job_id.clear();
      w.stopping = false;
      w.rank = -1;
      SaveWorker(w);
      cv_.SignalAll();
    }
  } else if (req.running_job_id() != w.job_id || req.running_attempt() != w.attempt) {
    // Running something we did not (or no longer) assign: stop it once.
    bool queued = false;
    for (const auto& a : w.outbox) queued |= a.kind() == v1::Assignment::STOP && a.job_id() == req.running_job_id();
    if (!queued) {
      v1::Assignment a;
      a.set_kind(v1::Assignment::STOP);
      a.set_job_id(req.running_job_id());
      a.set_attempt(req.running_attempt());
      a.set_reason("not assigned to this worker");
      w.outbox.push_back(a);
      cv_.SignalAll();
    }
  }
  return absl::OkStatus();
}

v1::Assignment Coordinator::BuildRun(const JobRec& j, int rank) {
  v1::Assignment a;
  a.set_kind(v1::Assignment::RUN);
  a.set_job_id(j.job.id());
  a.set_attempt(j.job.attempt());
  *a.mutable_spec() = j.job.spec();
  a.set_rank(rank);
  a.set_world_size(j.job.workers_size());
  a.set_rendezvous(j.job.rendezvous());
  return a;
}

absl::StatusOr<int64_t> Coordinator::ConnectAssignments(const std::string& worker_id) {
  sae::MutexLock l(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return absl::NotFoundError(absl::StrCat("worker ", worker_id, ": not registered"));
  WorkerRec& w = it->second;
  w.stream_generation++;
  std::deque<v1::Assignment> keep;
  for (auto& a : w.outbox)
    if (a.kind() == v1::Assignment::STOP) keep.push_back(a);
  w.outbox = std::move(keep);
  if (!w.job_id.empty() && !w.stopping) {
    auto j = jobs_.find(w.job_id);
    if (j != jobs_.end() && j->second.job.attempt() == w.attempt &&
        (j->second.job.state() == v1::SCHEDULED || j->second.job.state() == v1::RUNNING))
      w.outbox.push_back(BuildRun(j->second, w.rank));
  }
  cv_.SignalAll();
  return w.stream_generation;
}

absl::StatusOr<bool> Coordinator::NextAssignment(const std::string& worker_id, int64_t generation, v1::Assignment* out,
                                                 double timeout_s) {
  sae::MutexLock l(&mu_);
  const absl::Time deadline = absl::Now() + absl::Seconds(timeout_s);
  while (true) {
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) return absl::NotFoundError("worker gone");
    WorkerRec& w = it->second;
    if (w.stream_generation != generation) return absl::CancelledError("a newer assignment stream replaced this one");
    if (shutdown_) return absl::UnavailableError("coordinator shutting down");
    if (!w.outbox.empty()) {
      *out = w.outbox.front();
      w.outbox.pop_front();
      return true;
    }
    if (cv_.WaitWithDeadline(&mu_, deadline)) return false;
  }
}

absl::Status Coordinator::ReportProgress(const v1::ProgressReport& r) {
  sae::MutexLock l(&mu_);
  BeginChange();
  return EndChange(ReportProgressLocked(r));
}

absl::Status Coordinator::ReportProgressLocked(const v1::ProgressReport& r) {
  auto it = jobs_.find(r.job_id());
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job ", r.job_id(), ": no such job"));
  auto w = workers_.find(r.worker_id());
  if (w != workers_.end()) {
    TouchWorker(r.worker_id());
    w->second.last_heartbeat = SteadyNow();
  }
  TouchJob(r.job_id());
  JobRec& j = it->second;
  if (r.attempt() != j.job.attempt()) return absl::OkStatus();  // a stale attempt
  if (j.job.state() == v1::SCHEDULED)
    Transition(&j, v1::RUNNING, absl::StrCat("training on ", j.job.workers_size(), " worker(s)"));
  if (j.job.state() != v1::RUNNING || r.rank() != 0) return absl::OkStatus();
  const int64_t ck_step = j.job.progress().checkpoint_step(), ck_tok = j.job.progress().checkpoint_tokens();
  *j.job.mutable_progress() = r.progress();
  j.job.mutable_progress()->set_tokens_trained(j.job.tokens_trained_before() + r.progress().tokens_trained());
  j.job.mutable_progress()->set_checkpoint_step(ck_step);
  j.job.mutable_progress()->set_checkpoint_tokens(ck_tok);
  j.version++;  // progress is not persisted on every report; state changes are
  if (!j.job.parent_id().empty()) UpdateParent(j.job.parent_id());
  cv_.SignalAll();
  return absl::OkStatus();
}

absl::Status Coordinator::ReportCheckpoint(const v1::CheckpointReport& r) {
  sae::MutexLock l(&mu_);
  BeginChange();
  return EndChange(ReportCheckpointLocked(r));
}

absl::Status Coordinator::ReportCheckpointLocked(const v1::CheckpointReport& r) {
  auto it = jobs_.find(r.job_id());
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job ", r.job_id(), ": no such job"));
  TouchJob(r.job_id());
  JobRec& j = it->second;
  if (Writable()) Wrote(store_->AddCheckpoint(r.job_id(), r.attempt(), r.step(), r.tokens(), r.path()));
  if (r.attempt() == j.job.attempt()) {
    j.job.mutable_progress()->set_checkpoint_step(r.step());
    j.job.mutable_progress()->set_checkpoint_tokens(r.tokens());
    SaveJob(&j);
  }
  return absl::OkStatus();
}

void Coordinator::GroupFailed(JobRec* j, const std::string& reason) {
  if (j->job.state() != v1::SCHEDULED && j->job.state() != v1::RUNNING) return;
  TouchJob(j->job.id());
  StopGroup(j, reason);
  j->job.set_tokens_trained_before(j->job.progress().tokens_trained());
  if (j->job.restarts() >= j->job.max_restarts()) {
    Transition(j, v1::FAILED, absl::StrCat(reason, "; gave up after ", j->job.restarts(), " restart(s)"));
    return;
  }
  j->job.set_restarts(j->job.restarts() + 1);
  Transition(j, v1::RESTARTING,
             absl::StrCat(reason, "; restart ", j->job.restarts(), " of ", j->job.max_restarts(),
                          " from the last checkpoint"));
}

absl::Status Coordinator::ReportResult(const v1::AttemptResult& r) {
  sae::MutexLock l(&mu_);
  BeginChange();
  return EndChange(ReportResultLocked(r));
}

absl::Status Coordinator::ReportResultLocked(const v1::AttemptResult& r) {
  auto w = workers_.find(r.worker_id());
  if (w != workers_.end() && w->second.job_id == r.job_id() && w->second.attempt == r.attempt()) {
    TouchWorker(r.worker_id());
    w->second.job_id.clear();
    w->second.stopping = false;
    w->second.rank = -1;
    w->second.last_heartbeat = SteadyNow();
    SaveWorker(w->second);
    cv_.SignalAll();
  }
  auto it = jobs_.find(r.job_id());
  if (it == jobs_.end()) return absl::OkStatus();
  TouchJob(r.job_id());
  JobRec& j = it->second;
  if (r.attempt() != j.job.attempt()) return absl::OkStatus();
  // A job RESTARTING after its worker was declared lost still has the lost
  // attempt as its latest (a new one is numbered when it is placed). If that
  // attempt's rank 0 finished, its output is complete and in place (the
  // fence lets only the latest attempt write it), so the job succeeded:
  // placing a new attempt would only find a finished output and fail.
  const bool finished_while_restarting =
      j.job.state() == v1::RESTARTING && r.code() == 0 && r.finished() && r.rank() == 0;
  if (j.job.state() != v1::SCHEDULED && j.job.state() != v1::RUNNING && !finished_while_restarting)
    return absl::OkStatus();
  const std::string who = absl::StrCat("rank ", r.rank(), " on worker ", r.worker_id());
  if (r.rank() == 0 && r.has_progress()) {
    // The result carries the attempt's last progress, newer than the last
    // report: tokens trained count up to it whether the attempt finished or
    // failed; the checkpoint fields stay those the checkpoint reports set.
    const int64_t ck_step = j.job.progress().checkpoint_step(), ck_tok = j.job.progress().checkpoint_tokens();
    if (r.code() == 0 && r.finished()) {
      *j.job.mutable_progress() = r.progress();
      j.job.mutable_progress()->set_checkpoint_step(ck_step);
      j.job.mutable_progress()->set_checkpoint_tokens(ck_tok);
    }
    j.job.mutable_progress()->set_tokens_trained(j.job.tokens_trained_before() + r.progress().tokens_trained());
  }
  if (r.code() == 0) {
    if (r.finished() && r.rank() == 0) {
      j.job.set_output(r.output());
      StopGroup(&j, "finished");
      Transition(&j, v1::SUCCEEDED, absl::StrCat("trained ", r.progress().tokens(), " tokens; output ", r.output()));
    } else if (!r.finished()) {
      GroupFailed(&j, absl::StrCat(who, " stopped before the end"));
    }
    return absl::OkStatus();
  }
  if (IsPermanent(r.code())) {
    StopGroup(&j, "failed");
    Transition(&j, v1::FAILED, absl::StrCat(who, ": ", r.message()));
  } else {
    GroupFailed(&j, absl::StrCat(who, ": ", r.message()));
  }
  return absl::OkStatus();
}

void Coordinator::Loop() {
  sae::MutexLock l(&mu_);
  while (!shutdown_) {
    // A tick is one change: when a store write fails, its changes are
    // undone and the next tick tries again.
    BeginChange();
    Tick();
    EndChange().IgnoreError();  // logged by EndChange
    cv_.WaitWithTimeout(&mu_, absl::Milliseconds(100));
  }
}

void Coordinator::Tick() {
  const double now = SteadyNow();
  ExpireLeases(now);
  Place(now);
}

void Coordinator::ExpireLeases(double now) {
  for (auto& [id, w] : workers_) {
    if (!w.alive || now - w.last_heartbeat <= opts_.lease_seconds) continue;
    TouchWorker(id);
    w.alive = false;
    Note(LogLevel::kWarn, absl::StrCat("worker ", id, " lost: no heartbeat for ", opts_.lease_seconds, " s"));
    const std::string job_id = w.job_id;
    const int attempt = w.attempt;
    w.job_id.clear();
    w.stopping = false;
    w.outbox.clear();
    SaveWorker(w);
    auto j = jobs_.find(job_id);
    if (j != jobs_.end() && j->second.job.attempt() == attempt)
      GroupFailed(&j->second, absl::StrCat("worker ", id, " lost (no heartbeat for ", opts_.lease_seconds, " s)"));
    cv_.SignalAll();
  }
  // Stopping workers that never report the end of the stopped attempt (a
  // rank stuck on a lost peer, a lost report) are free again after a grace.
  for (auto& [id, w] : workers_) {
    if (!w.alive || !w.stopping || now - w.stop_since <= opts_.stop_grace_seconds) continue;
    Note(LogLevel::kWarn, absl::StrCat("worker ", id, " still stopping ", w.job_id, " attempt ", w.attempt, " after ",
                                       opts_.stop_grace_seconds, " s: free for new work"));
    TouchWorker(id);
    w.job_id.clear();
    w.stopping = false;
    w.rank = -1;
    SaveWorker(w);
  }
}

// Placement: priority, then submission order; a job that does not fit
// leaves the idle workers to later ones.
void Coordinator::Place(double now) {
  std::vector<JobRec*> ready;
  const double settle = 2.5 * opts_.heartbeat_seconds;
  for (const auto& id : order_) {
    JobRec& j = jobs_[id];
    if (j.job.child_ids_size() > 0) continue;  // a sweep's parent only aggregates
    if (j.job.state() == v1::PENDING || (j.job.state() == v1::RESTARTING && now - j.restart_at >= settle))
      ready.push_back(&j);
  }
  if (ready.empty()) return;
  std::stable_sort(ready.begin(), ready.end(),
                   [](const JobRec* a, const JobRec* b) { return a->job.priority() > b->job.priority(); });
  std::vector<WorkerRec*> idle;
  for (auto& [id, w] : workers_)
    if (w.alive && w.job_id.empty() && w.last_heartbeat <= now && now - w.last_heartbeat < settle) idle.push_back(&w);
  for (JobRec* j : ready) {
    const size_t n = static_cast<size_t>(j->config.world.workers);
    if (n == 0 || idle.size() < n) continue;
    std::vector<WorkerRec*> group(idle.begin(), idle.begin() + static_cast<long>(n));
    idle.erase(idle.begin(), idle.begin() + static_cast<long>(n));
    TouchJob(j->job.id());
    j->job.set_attempt(j->job.attempt() + 1);
    j->job.clear_workers();
    std::vector<std::string> names;
    for (WorkerRec* w : group) {
      j->job.add_workers(w->info.worker_id());
      names.push_back(w->info.worker_id());
    }
    j->job.set_rendezvous(n > 1 ? absl::StrCat(group[0]->info.host(), ":", group[0]->info.rendezvous_port()) : "");
    for (size_t r = 0; r < n; ++r) {
      WorkerRec* w = group[r];
      TouchWorker(w->info.worker_id());
      w->job_id = j->job.id();
      w->attempt = j->job.attempt();
      w->rank = static_cast<int>(r);
      w->stopping = false;
      w->outbox.push_back(BuildRun(*j, static_cast<int>(r)));
      SaveWorker(*w);
    }
    Transition(j, v1::SCHEDULED,
               absl::StrCat("attempt ", j->job.attempt(), " on ", absl::StrJoin(names, ", "),
                            n > 1 ? absl::StrCat(" (rendezvous ", j->job.rendezvous(), ")") : ""));
  }
}

CoordinatorSnapshot Coordinator::Snapshot() {
  sae::MutexLock l(&mu_);
  CoordinatorSnapshot s;
  for (auto st : {v1::PENDING, v1::SCHEDULED, v1::RUNNING, v1::RESTARTING, v1::SUCCEEDED, v1::FAILED, v1::CANCELLED}) {
    std::string name = JobStateName(st);
    for (char& c : name) c = static_cast<char>(std::tolower(c));
    s.jobs_by_state[name] = 0;
  }
  for (const auto& [id, j] : jobs_) {
    std::string name = JobStateName(j.job.state());
    for (char& c : name) c = static_cast<char>(std::tolower(c));
    s.jobs_by_state[name]++;
    s.restarts_total += j.job.restarts();
  }
  s.workers_by_state = {{"idle", 0}, {"busy", 0}, {"dead", 0}};
  for (const auto& [id, w] : workers_) {
    s.workers_by_state[!w.alive ? "dead" : w.job_id.empty() ? "idle" : "busy"]++;
    if (w.alive && !w.info.metrics_address().empty()) s.targets.push_back({id, w.info.metrics_address(), w.job_id});
  }
  return s;
}

}  // namespace sae
