#include "worker/coordinator_agent.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <deque>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/client.h"
#include "client/job_spec.h"
#include "core/base/clock.h"
#include "core/base/file_util.h"
#include "core/base/logging.h"
#include "core/base/mutex.h"
#include "core/telemetry/http_server.h"
#include "sae/v1/worker.grpc.pb.h"
#include "worker/training_run.h"

namespace sae {
namespace {

void Sleep(double s) { std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(s * 1000))); }

// A port that was free a moment ago on `host` (0 on failure).
int FreePort(const std::string& host) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = 0;
  if (::inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &a.sin_addr) != 1)
    a.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof(a);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

// Sends an attempt's progress and checkpoint reports from its own thread, so
// a slow or unreachable coordinator never stalls training: the step loop
// only hands over the newest progress and queues checkpoint reports. The
// destructor sends what is still queued (for up to `flush_s`), so the
// coordinator learns of the last checkpoint before the attempt's result.
class Reporter {
 public:
  using SendProgress = std::function<void(const v1::ProgressReport&)>;
  using SendCheckpoint = std::function<bool(const v1::CheckpointReport&)>;  // true: delivered
  Reporter(SendProgress p, SendCheckpoint c, double flush_s)
      : send_progress_(std::move(p)), send_checkpoint_(std::move(c)), flush_s_(flush_s), thread_([this] { Loop(); }) {}
  ~Reporter() {
    {
      sae::MutexLock l(&mu_);
      done_ = true;
    }
    thread_.join();
  }
  void Progress(const v1::ProgressReport& r) {
    sae::MutexLock l(&mu_);
    progress_ = r;
    have_progress_ = true;
  }
  void Checkpoint(const v1::CheckpointReport& r) {
    sae::MutexLock l(&mu_);
    checkpoints_.push_back(r);
  }

 private:
  bool HasWork() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ || !checkpoints_.empty(); }

  void Loop() {
    mu_.Lock();
    double flush_deadline = -1;
    while (true) {
      mu_.AwaitWithTimeout(absl::Condition(this, &Reporter::HasWork), absl::Milliseconds(500));
      if (done_ && flush_deadline < 0) flush_deadline = SteadyNow() + flush_s_;
      if (have_progress_ && !done_) {
        v1::ProgressReport r = progress_;
        have_progress_ = false;
        mu_.Unlock();
        send_progress_(r);  // best effort
        mu_.Lock();
      }
      while (!checkpoints_.empty()) {
        v1::CheckpointReport r = checkpoints_.front();
        mu_.Unlock();
        const bool sent = send_checkpoint_(r);
        mu_.Lock();
        if (sent || (flush_deadline >= 0 && SteadyNow() > flush_deadline)) {
          checkpoints_.pop_front();
        } else {
          break;  // retry on the next round
        }
      }
      if (done_ && (checkpoints_.empty() || SteadyNow() > flush_deadline)) break;
    }
    mu_.Unlock();
  }

  SendProgress send_progress_;
  SendCheckpoint send_checkpoint_;
  double flush_s_;
  sae::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool have_progress_ ABSL_GUARDED_BY(mu_) = false;
  v1::ProgressReport progress_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::CheckpointReport> checkpoints_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

class Agent {
 public:
  Agent(WorkerAgentOptions o, ClientOptions c, std::shared_ptr<grpc::Channel> ch, const std::atomic<bool>* stop)
      : opts_(std::move(o)),
        client_(c),
        waiting_(WaitingFor(std::move(c))),
        channel_(ch),
        stub_(v1::WorkerService::NewStub(ch)),
        data_(v1::DataService::NewStub(ch)),
        stop_(stop) {}

  int Run() {
    ServeIdleMetrics(true);
    while (!stop_->load() && !Register()) Sleep(0.5);
    std::thread hb([this] { HeartbeatLoop(); });
    std::thread as([this] { AssignmentLoop(); });
    while (!stop_->load()) Sleep(0.1);
    StopCurrent("worker shutting down");
    JoinFinished(true);
    {
      sae::MutexLock l(&mu_);
      if (stream_ctx_) stream_ctx_->TryCancel();
      if (heartbeat_ctx_) heartbeat_ctx_->TryCancel();
    }
    as.join();
    hb.join();
    return 0;
  }

 private:
  struct Current {
    std::string job_id;
    int attempt = 0;
    std::atomic<bool> stop{false};
    std::thread thread;
    std::atomic<bool> done{false};
  };

  bool Register() {
    v1::RegisterRequest req;
    req.set_worker_id(opts_.worker_id);
    req.set_host(opts_.host);
    req.mutable_resources()->set_cpus(static_cast<int>(std::thread::hardware_concurrency()));
    req.mutable_resources()->set_memory_bytes(static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE));
    req.set_metrics_address(opts_.metrics_listen);
    req.set_rendezvous_port(opts_.rendezvous_port);
    {
      sae::MutexLock l(&mu_);
      if (cur_ && !cur_->done) {
        req.set_running_job_id(cur_->job_id);
        req.set_running_attempt(cur_->attempt);
      }
    }
    v1::RegisterResponse resp;
    auto ctx = MakeContext(waiting_, 5);
    grpc::Status s = stub_->Register(ctx.get(), req, &resp);
    if (!s.ok()) {
      if (!warned_.exchange(true)) {
        SAE_LOG(kWarn) << "register at " << opts_.coordinator << ": " << s.error_message() << " (retrying)";
      }
      if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED || s.error_code() == grpc::StatusCode::INVALID_ARGUMENT)
        Sleep(2);
      return false;
    }
    warned_ = false;
    heartbeat_s_ = resp.heartbeat_seconds() > 0 ? resp.heartbeat_seconds() : 1.0;
    SAE_LOG(kInfo) << "worker " << opts_.worker_id << " registered at " << opts_.coordinator << " (lease "
                   << resp.lease_seconds() << " s)";
    return true;
  }

  void HeartbeatLoop() {
    double last_ok = -1;  // SteadyNow() of the last answered heartbeat
    bool warned_heartbeat = false;
    while (!stop_->load()) {
      Sleep(heartbeat_s_);
      JoinFinished(false);
      v1::HeartbeatRequest req;
      req.set_worker_id(opts_.worker_id);
      {
        sae::MutexLock l(&mu_);
        if (cur_ && !cur_->done) {
          req.set_running_job_id(cur_->job_id);
          req.set_running_attempt(cur_->attempt);
        }
      }
      v1::HeartbeatResponse resp;
      auto ctx = MakeContext(waiting_, 5);
      {
        sae::MutexLock l(&mu_);
        if (stop_->load()) break;
        heartbeat_ctx_ = ctx.get();
      }
      const bool connected = channel_->GetState(false) == GRPC_CHANNEL_READY;
      grpc::Status s = stub_->Heartbeat(ctx.get(), req, &resp);
      {
        sae::MutexLock l(&mu_);
        heartbeat_ctx_ = nullptr;
      }
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) Register();
      // After a reconnect: how long the coordinator went without a
      // heartbeat, for operators (and the recovery times in
      // docs/reliability.md).
      const double now = SteadyNow();
      if (!s.ok() && s.error_code() != grpc::StatusCode::NOT_FOUND && !warned_heartbeat && !stop_->load()) {
        warned_heartbeat = true;
        SAE_LOG(kWarn) << "heartbeat to " << opts_.coordinator << ": " << s.error_message() << " (retrying)";
      } else if (s.ok()) {
        if (!connected && last_ok >= 0) {
          SAE_LOG(kInfo) << "heartbeat: reconnected to " << opts_.coordinator << ", "
                         << absl::StrFormat("%.1f", now - last_ok) << " s after the previous answered heartbeat";
        }
        last_ok = now;
        warned_heartbeat = false;
      }
    }
  }

  void AssignmentLoop() {
    while (!stop_->load()) {
      auto ctx = MakeContext(client_, 0);
      {
        sae::MutexLock l(&mu_);
        stream_ctx_ = ctx.get();
      }
      v1::AssignmentsRequest req;
      req.set_worker_id(opts_.worker_id);
      auto reader = stub_->Assignments(ctx.get(), req);
      v1::Assignment a;
      while (!stop_->load() && reader->Read(&a)) Handle(a);
      grpc::Status s = reader->Finish();
      {
        sae::MutexLock l(&mu_);
        stream_ctx_ = nullptr;
      }
      if (stop_->load()) break;
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) Register();
      Sleep(0.3);
    }
  }

  void Handle(const v1::Assignment& a) {
    if (a.kind() == v1::Assignment::STOP) {
      sae::MutexLock l(&mu_);
      if (cur_ && cur_->job_id == a.job_id() && !cur_->done) {
        SAE_LOG(kInfo) << "stopping " << a.job_id() << " attempt " << cur_->attempt << ": " << a.reason();
        cur_->stop = true;
      }
      return;
    }
    if (a.kind() != v1::Assignment::RUN) return;
    {
      sae::MutexLock l(&mu_);
      if (cur_ && cur_->job_id == a.job_id() && cur_->attempt == a.attempt()) return;  // already ours
    }
    StopCurrent("replaced by a new assignment");
    JoinFinished(true);
    sae::MutexLock l(&mu_);
    cur_ = std::make_unique<Current>();
    cur_->job_id = a.job_id();
    cur_->attempt = a.attempt();
    Current* c = cur_.get();
    c->thread = std::thread([this, a, c] {
      RunAttempt(a, c);
      c->done = true;
    });
  }

  void StopCurrent(const std::string& why) {
    sae::MutexLock l(&mu_);
    if (cur_ && !cur_->done) {
      SAE_LOG(kInfo) << "stopping " << cur_->job_id << ": " << why;
      cur_->stop = true;
    }
  }

  // Joins a finished training thread (or, with `wait`, the running one).
  void JoinFinished(bool wait) {
    std::unique_ptr<Current> old;
    {
      sae::MutexLock l(&mu_);
      if (!cur_ || (!wait && !cur_->done)) return;
      old = std::move(cur_);
    }
    if (old->thread.joinable()) old->thread.join();
  }

  template <typename Req, typename Call>
  void SendWithRetry(const Req& req, Call call, double give_up_s) {
    const double t0 = SteadyNow();
    while (true) {
      v1::Ack ack;
      auto ctx = MakeContext(client_, 5);
      grpc::Status s = call(ctx.get(), req, &ack);
      if (s.ok()) return;
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) Register();
      if (SteadyNow() - t0 > give_up_s) {
        SAE_LOG(kWarn) << "report to the coordinator failed: " << s.error_message();
        return;
      }
      Sleep(0.5);
    }
  }

  // Downloads the manifest and every shard it lists through DataService.
  absl::StatusOr<std::string> FetchShards(const std::string& path) {
    std::string dir = opts_.data_cache.empty() ? "/tmp/sae-data-" + opts_.worker_id : opts_.data_cache;
    std::string sub = path;
    for (char& ch : sub)
      if (ch == '/') ch = '_';
    dir += "/" + sub;
    SAE_RETURN_IF_ERROR(MakeDirs(dir));
    auto fetch = [&](const std::string& file, const std::string& want_sha) -> absl::Status {
      const std::string dst = dir + "/" + file;
      if (!want_sha.empty() && PathExists(dst)) {
        auto have = Sha256File(dst);
        if (have.ok() && *have == want_sha) return absl::OkStatus();
      }
      v1::ShardRequest req;
      req.set_path(path);
      req.set_file(file);
      auto ctx = MakeContext(client_, 600);
      auto reader = data_->StreamShard(ctx.get(), req);
      std::ofstream out(dst + ".tmp", std::ios::binary | std::ios::trunc);
      v1::ShardChunk c;
      std::string sha;
      while (reader->Read(&c)) {
        out.write(c.data().data(), static_cast<std::streamsize>(c.data().size()));
        if (c.last()) sha = c.sha256();
      }
      out.close();
      SAE_RETURN_IF_ERROR(Annotate(FromGrpc(reader->Finish()), absl::StrCat("DataService ", path, "/", file)));
      SAE_ASSIGN_OR_RETURN(std::string got, Sha256File(dst + ".tmp"));
      if (got != sha || (!want_sha.empty() && got != want_sha))
        return absl::DataLossError(absl::StrCat("shard ", path, "/", file, ": sha256 mismatch after download"));
      return DurableRename(dst + ".tmp", dst);
    };
    SAE_RETURN_IF_ERROR(fetch("manifest.json", ""));
    SAE_ASSIGN_OR_RETURN(std::string m, ReadFileToString(dir + "/manifest.json"));
    auto j = nlohmann::json::parse(m, nullptr, false);
    if (j.is_discarded() || !j.contains("shards"))
      return absl::DataLossError(absl::StrCat(path, "/manifest.json: not a shard manifest"));
    for (const auto& s : j["shards"]) SAE_RETURN_IF_ERROR(fetch(s.value("file", ""), s.value("sha256", "")));
    SAE_LOG(kInfo) << "fetched " << path << " through DataService into " << dir;
    return dir;
  }

  void RunAttempt(const v1::Assignment& a, Current* c) {
    SAE_LOG(kInfo) << "running " << a.job_id() << " attempt " << a.attempt() << " as rank " << a.rank() << " of "
                   << a.world_size();
    // The job as the coordinator resolved it, read like a job file (an
    // unreadable spec fails the attempt below with the reader's message).
    absl::StatusOr<JobConfig> parsed = JobConfigFromSpec(a.spec(), a.job_id());
    JobConfig cfg = parsed.ok() ? *parsed : JobConfig();
    v1::AttemptResult res;
    res.set_worker_id(opts_.worker_id);
    res.set_job_id(a.job_id());
    res.set_attempt(a.attempt());
    res.set_rank(a.rank());
    absl::Status fetched = parsed.status();
    if (fetched.ok() && cfg.data.kind == DataKind::kShards &&
        (opts_.fetch_data || !PathExists(cfg.data.path + "/manifest.json"))) {
      auto local = FetchShards(cfg.data.path);
      if (local.ok())
        cfg.data.path = *local;
      else
        fetched = local.status();
    }
    RunOptions ro;
    ro.progress = ProgressMode::kQuiet;
    ro.stop = &c->stop;
    ro.attempt = a.attempt();
    ro.job_id = a.job_id();
    ro.resume = HasResumableCheckpoint(cfg.output);
    if (a.world_size() > 1) {
      ro.rank = a.rank();
      ro.world_size = a.world_size();
      ro.rendezvous = a.rendezvous();
    }
    ro.metrics_listen = opts_.metrics_listen;
    ro.metrics_port_per_rank = false;
    const double t0 = SteadyNow();
    int64_t start_tokens = -1, trained = 0, prev_tokens = 0;
    v1::Progress last;
    last.set_total_tokens(cfg.train.tokens);
    auto reporter = std::make_unique<Reporter>(
        [this](const v1::ProgressReport& r) {
          v1::Ack ack;
          auto ctx = MakeContext(client_, 2);
          stub_->ReportProgress(ctx.get(), r, &ack);
        },
        [this](const v1::CheckpointReport& r) {
          v1::Ack ack;
          auto ctx = MakeContext(client_, 5);
          grpc::Status st = stub_->ReportCheckpoint(ctx.get(), r, &ack);
          if (st.error_code() == grpc::StatusCode::NOT_FOUND) Register();
          return st.ok();
        },
        stop_->load() ? 2 : 30);
    ro.on_step = [&](const StepMetrics& m) {
      if (start_tokens < 0) {
        start_tokens = std::max<int64_t>(0, m.tokens - cfg.train.batch_tokens);
        prev_tokens = start_tokens;
      }
      trained += m.tokens - prev_tokens;
      prev_tokens = m.tokens;
      last.set_step(m.step);
      last.set_tokens(m.tokens);
      last.set_tokens_per_second((m.tokens - start_tokens) / std::max(SteadyNow() - t0, 1e-9));
      last.set_fvu(m.fvu);
      last.set_mse(m.mse);
      last.set_l0(m.l0);
      last.set_dead_ratio(m.dead_ratio);
      last.set_k(m.k);
      last.set_aux_loss(m.aux_loss);
      last.set_tokens_trained(trained);
      v1::ProgressReport r;
      r.set_worker_id(opts_.worker_id);
      r.set_job_id(a.job_id());
      r.set_attempt(a.attempt());
      r.set_rank(a.rank());
      *r.mutable_progress() = last;
      reporter->Progress(r);
    };
    ro.on_checkpoint = [&](int64_t step, int64_t tokens, const std::string& dir) {
      v1::CheckpointReport r;
      r.set_worker_id(opts_.worker_id);
      r.set_job_id(a.job_id());
      r.set_attempt(a.attempt());
      r.set_step(step);
      r.set_tokens(tokens);
      r.set_path(dir);
      reporter->Checkpoint(r);
    };
    ServeIdleMetrics(false);  // the training process serves this port now
    absl::StatusOr<RunSummary> sum = absl::InternalError("not run");
    if (!fetched.ok()) {
      sum = fetched;
    } else {
      // A job's failure is the job's, never the worker's: anything thrown
      // (std::bad_alloc, an I/O exception) fails this attempt with its reason.
      try {
        sum = RunTrainingJob(cfg, ro);
      } catch (const std::exception& e) {
        sum = absl::InternalError(absl::StrCat("training failed: ", e.what()));
      }
    }
    ServeIdleMetrics(true);
    reporter.reset();  // delivers the queued checkpoint reports first
    if (sum.ok()) {
      res.set_finished(sum->finished);
      res.set_output(sum->output);
      if (sum->finished) {
        last.set_tokens(sum->tokens);
        last.set_step(sum->steps);
        last.set_fvu(sum->fvu);
        last.set_mse(sum->mse);
        last.set_l0(sum->l0);
        last.set_dead_ratio(sum->dead_ratio);
        last.set_k(sum->k);
        last.set_tokens_per_second(sum->tokens_per_second);
      }
      SAE_LOG(kInfo) << a.job_id() << " attempt " << a.attempt() << (sum->finished ? " finished" : " stopped");
    } else {
      res.set_code(static_cast<int>(sum.status().code()));
      res.set_message(std::string(sum.status().message()));
      SAE_LOG(kWarn) << a.job_id() << " attempt " << a.attempt() << ": " << sum.status().message();
    }
    *res.mutable_progress() = last;
    SendWithRetry(
        res,
        [this](grpc::ClientContext* ctx, const v1::AttemptResult& q, v1::Ack* k) {
          return stub_->ReportResult(ctx, q, k);
        },
        stop_->load() ? 5 : 300);
  }

  // Between jobs the metrics port answers with an empty exposition, so the
  // target /sd lists stays up for Prometheus.
  void ServeIdleMetrics(bool on) {
    sae::MutexLock l(&idle_mu_);
    idle_http_.reset();
    if (!on || opts_.metrics_listen.empty()) return;
    auto h = HttpServer::Start(opts_.metrics_listen, [](const std::string& path) {
      HttpResponse r;
      if (path == "/metrics") {
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      } else {
        r.status = 404;
      }
      return r;
    });
    if (h.ok()) idle_http_ = std::move(*h);
  }

  WorkerAgentOptions opts_;
  // The options of every call, which fails at once while the channel is
  // not connected (the loops retry).
  ClientOptions client_;
  // The same with wait_for_ready, for Register and the heartbeat: a call
  // that waits for the channel is what drives a reconnect. gRPC advances a
  // connection attempt (the TCP connect, the HTTP/2 handshake) only while
  // some thread polls for it: a call waiting on the channel, or else its
  // backup poller, every 5 s. Calls that fail at once poll nothing, and
  // pick_first keeps the channel in TRANSIENT_FAILURE until an attempt
  // succeeds, so with only those a worker reached a restarted coordinator
  // when a backup poll happened to land in a connection attempt: after up
  // to 10 s, past the lease (Service.CoordinatorRestartKeepsTheJob, once at
  // load 20 and every time with 5 s connect attempts).
  ClientOptions waiting_;
  static ClientOptions WaitingFor(ClientOptions c) {
    c.wait_for_ready = true;
    return c;
  }
  sae::Mutex idle_mu_;
  std::unique_ptr<HttpServer> idle_http_ ABSL_GUARDED_BY(idle_mu_);
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::unique_ptr<v1::DataService::Stub> data_;
  const std::atomic<bool>* stop_;
  sae::Mutex mu_;
  std::unique_ptr<Current> cur_ ABSL_GUARDED_BY(mu_);
  grpc::ClientContext* stream_ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
  grpc::ClientContext* heartbeat_ctx_ ABSL_GUARDED_BY(mu_) = nullptr;  // cancelled at shutdown
  std::atomic<double> heartbeat_s_{1.0};
  std::atomic<bool> warned_{false};  // Register runs on the heartbeat, training and reporter threads
};

}  // namespace

int RunWorkerAgent(WorkerAgentOptions opts, const std::atomic<bool>* stop) {
  ClientOptions c;
  c.address = opts.coordinator;
  c.tls_ca = opts.tls_ca;
  if (!opts.token_file.empty()) {
    auto t = ReadFileToString(opts.token_file);
    if (!t.ok()) {
      std::fprintf(stderr, "error: --worker-token-file: %s\n", std::string(t.status().message()).c_str());
      return 1;
    }
    c.token = std::string(absl::StripAsciiWhitespace(*t));
  }
  auto ch = MakeChannel(c);
  if (!ch.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(ch.status().message()).c_str());
    return 1;
  }
  if (opts.worker_id.empty()) {
    char host[256] = {0};
    ::gethostname(host, sizeof(host) - 1);
    opts.worker_id = absl::StrCat(host, "-", ::getpid());
  }
  if (opts.rendezvous_port == 0) opts.rendezvous_port = FreePort(opts.host);
  if (!opts.metrics_listen.empty()) {
    const size_t colon = opts.metrics_listen.rfind(':');
    if (colon != std::string::npos && opts.metrics_listen.substr(colon + 1) == "0")
      opts.metrics_listen =
          absl::StrCat(opts.metrics_listen.substr(0, colon), ":", FreePort(opts.metrics_listen.substr(0, colon)));
  }
  Agent agent(opts, c, *ch, stop);
  return agent.Run();
}

}  // namespace sae
