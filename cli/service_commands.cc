#include "cli/service_commands.h"

#include <google/protobuf/util/json_util.h>
#include <unistd.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "cli/flags.h"
#include "client/client.h"
#include "client/job_spec.h"
#include "core/base/exit_code.h"
#include "core/base/file_util.h"
#include "core/base/human_format.h"
#include "sae/v1/job.grpc.pb.h"

namespace sae {

struct ServiceCli {
  flags::Command* submit = nullptr;
  flags::Command* jobs = nullptr;
  flags::Command* status = nullptr;
  flags::Command* watch = nullptr;
  flags::Command* cancel = nullptr;
  std::string coordinator = "127.0.0.1:50051";
  std::string token_file, tls_ca;
  double timeout = 30;  // seconds each call may wait for the coordinator, connecting included
  bool json = false;
  // submit
  std::string file, request_id;
  bool wait = false;
  int priority = 0, max_restarts = -1;
  // jobs
  bool all = false;
  int page_size = 100;  // jobs per List call
  // status / watch / cancel
  std::string id, reason;
};

namespace {

std::string ToJson(const google::protobuf::Message& m) { return MessageToJson(m); }

// The job a Job message carries (an empty config when it does not read).
JobConfig JobOf(const v1::Job& j) {
  auto c = JobConfigFromSpec(j.spec(), j.id());
  return c.ok() ? *c : JobConfig();
}

std::string TimeText(int64_t ms) {
  const time_t t = static_cast<time_t>(ms / 1000);
  tm g;
  gmtime_r(&t, &g);
  char b[32];
  std::strftime(b, sizeof(b), "%Y-%m-%d %H:%M:%S", &g);
  return b;
}

std::string StateName(v1::JobState s) { return v1::JobState_Name(s); }

// One line: state, bar, tokens, tokens/s, fvu, dead ratio, k, ETA.
std::string ProgressLine(const v1::Job& j) {
  const v1::Progress& p = j.progress();
  const double total = p.total_tokens() > 0 ? p.total_tokens() : JobOf(j).train.tokens;
  const double frac = total > 0 ? std::min(1.0, p.tokens() / total) : 0;
  char b[320];
  std::snprintf(b, sizeof(b), "%-10s [%s] %3.0f%% %s", StateName(j.state()).c_str(), ProgressBar(frac, 20).c_str(),
                100 * frac,
                ProgressStats(p.tokens(), total, p.tokens_per_second(), p.fvu(), p.dead_ratio(), p.k()).c_str());
  return b;
}

std::string NewRequestId() {
  std::random_device rd;
  std::mt19937_64 g((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(::getpid()));
  char b[40];
  std::snprintf(b, sizeof(b), "%016lx%016lx", static_cast<unsigned long>(g()), static_cast<unsigned long>(g()));
  return b;
}

class Client {
 public:
  static absl::StatusOr<Client> Make(const ServiceCli& c) {
    ClientOptions o;
    o.address = c.coordinator;
    o.tls_ca = c.tls_ca;
    if (!c.token_file.empty()) {
      auto t = ReadFileToString(c.token_file);
      if (!t.ok()) return Annotate(t.status(), "--token-file");
      o.token = std::string(absl::StripAsciiWhitespace(*t));
    }
    // Each call waits up to --timeout for the coordinator to accept it: a
    // connection refused or reset while it starts is retried within that.
    o.wait_for_ready = true;
    SAE_ASSIGN_OR_RETURN(auto ch, MakeChannel(o));
    return Client(o, ch, v1::JobService::NewStub(ch), c.timeout);
  }
  ClientOptions opts;
  std::shared_ptr<grpc::Channel> channel;
  std::shared_ptr<v1::JobService::Stub> stub;
  double timeout;

  // The error of a failed call `what` (names the address; see CallError).
  absl::Status Error(const grpc::Status& s, const std::string& what) const {
    return CallError(s, what, channel.get(), opts, timeout);
  }

 private:
  Client(ClientOptions o, std::shared_ptr<grpc::Channel> ch, std::unique_ptr<v1::JobService::Stub> s, double t)
      : opts(std::move(o)), channel(std::move(ch)), stub(std::move(s)), timeout(t) {}
};

// Follows a job until it finishes; returns the exit code (0 = SUCCEEDED).
int Watch(Client& c, const std::string& id, bool json, bool quiet) {
  const bool tty = isatty(STDOUT_FILENO);
  v1::Job last;
  grpc::Status s;
  for (int reconnects = 0; reconnects < 30; ++reconnects) {
    // A stream has no deadline (a job runs for days), so it does not wait
    // for the channel: the channel gets --timeout to connect (or to
    // reconnect to a restarted coordinator) before each stream, and a lost
    // stream is reopened after a second, 30 times.
    if (!c.channel->WaitForConnected(std::chrono::system_clock::now() +
                                     std::chrono::milliseconds(static_cast<int64_t>(c.timeout * 1000)))) {
      s = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "not connected");
      break;
    }
    auto ctx = MakeContext(c.opts, 0);
    v1::WatchJobRequest req;
    req.set_id(id);
    auto reader = c.stub->Watch(ctx.get(), req);
    v1::JobEvent ev;
    while (reader->Read(&ev)) {
      last = ev.job();
      if (json) {
        std::printf("%s\n", ToJson(ev).c_str());
      } else if (!quiet) {
        if (tty)
          std::printf("\r%s\x1b[K", ProgressLine(last).c_str());
        else
          std::printf("%s\n", ProgressLine(last).c_str());
        if (tty && ev.state_changed()) std::printf("\n");
      }
      std::fflush(stdout);
    }
    s = reader->Finish();
    if (s.ok() && (last.state() == v1::SUCCEEDED || last.state() == v1::FAILED || last.state() == v1::CANCELLED)) break;
    if (!s.ok() && s.error_code() != grpc::StatusCode::UNAVAILABLE) return Fail(c.Error(s, "watch " + id));
    std::this_thread::sleep_for(std::chrono::seconds(1));  // coordinator restarting: reconnect
  }
  if (!s.ok()) return Fail(c.Error(s, "watch " + id));
  if (!json && !quiet) {
    if (tty) std::printf("\n");
    std::printf("%s %s: %s\n", id.c_str(), StateName(last.state()).c_str(), last.reason().c_str());
    if (last.state() == v1::SUCCEEDED) std::printf("output: %s\n", last.output().c_str());
    // The HTML report of the run (plots over tokens from metrics.jsonl). A
    // stopped run keeps its metrics in OUTPUT.partial, which `sae report
    // OUTPUT` finds as well.
    const bool finished = last.state() == v1::SUCCEEDED || last.state() == v1::FAILED || last.state() == v1::CANCELLED;
    if (finished && !last.output().empty() && last.child_ids_size() > 0) {
      // A sweep: every variant is a run of its own under OUTPUT.
      std::printf("report: sae report %s/VARIANT for each variant's run (sae status CHILD_ID gives each output)\n",
                  last.output().c_str());
    } else if (finished && !last.output().empty()) {
      std::printf("report: sae report %s  (writes an HTML page of the run's metrics%s)\n", last.output().c_str(),
                  last.state() == v1::SUCCEEDED ? "" : " so far");
    }
  }
  return last.state() == v1::SUCCEEDED ? 0 : 1;
}

int DoSubmit(const ServiceCli& a) {
  auto parsed = LoadJobFileWithSweep(a.file);
  if (!parsed.ok()) return Fail(parsed.status());
  auto c = Client::Make(a);
  if (!c.ok()) return Fail(c.status());
  v1::SubmitRequest req;
  *req.mutable_spec() = JobSpecFromConfig(parsed->first);
  for (const auto& ax : parsed->second) *req.add_sweep() = ax;
  req.set_request_id(a.request_id.empty() ? NewRequestId() : a.request_id);
  req.set_priority(a.priority);
  if (a.max_restarts >= 0) req.set_max_restarts(a.max_restarts);
  v1::SubmitResponse resp;
  grpc::Status s;
  // A call lost to UNAVAILABLE after it was sent (the connection reset) is
  // sent again with the same request id (idempotent), all within --timeout.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(c->timeout);
  for (int attempt = 0; attempt < 5; ++attempt) {
    const double left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
    if (attempt > 0 && left <= 0) break;
    auto ctx = MakeContext(c->opts, std::max(left, 0.001));
    s = c->stub->Submit(ctx.get(), req, &resp);
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (!s.ok()) return Fail(c->Error(s, "submit " + a.file));
  if (a.json) {
    std::printf("%s\n", ToJson(resp).c_str());
  } else {
    std::printf("%s\n", resp.id().c_str());
    for (const auto& ch : resp.child_ids()) std::printf("  variant %s\n", ch.c_str());
  }
  std::fflush(stdout);
  if (!a.wait) return 0;
  return Watch(*c, resp.id(), a.json, a.json);
}

int DoJobs(const ServiceCli& a) {
  auto c = Client::Make(a);
  if (!c.ok()) return Fail(c.status());
  v1::ListJobsRequest req;
  req.set_include_children(a.all);
  req.set_page_size(a.page_size);
  v1::ListJobsResponse resp;  // every page, in submission order
  do {
    v1::ListJobsResponse page;
    auto ctx = MakeContext(c->opts, c->timeout);
    grpc::Status s = c->stub->List(ctx.get(), req, &page);
    if (!s.ok()) return Fail(c->Error(s, "jobs"));
    for (auto& j : *page.mutable_jobs()) *resp.add_jobs() = std::move(j);
    req.set_page_token(page.next_page_token());
  } while (!req.page_token().empty());
  if (a.json) {
    std::printf("%s\n", ToJson(resp).c_str());
    return 0;
  }
  std::printf("%-12s %-11s %-24s %8s %9s %s\n", "ID", "STATE", "NAME", "PROGRESS", "RESTARTS", "WORKERS");
  for (const auto& j : resp.jobs()) {
    const JobConfig job = JobOf(j);
    const double total = j.progress().total_tokens() > 0 ? j.progress().total_tokens() : job.train.tokens;
    std::string workers;
    for (const auto& w : j.workers()) workers += (workers.empty() ? "" : ",") + w;
    if (j.child_ids_size() > 0) workers = absl::StrCat("sweep of ", j.child_ids_size());
    std::printf("%-12s %-11s %-24s %7.0f%% %9d %s\n", j.id().c_str(), StateName(j.state()).c_str(), job.name.c_str(),
                total > 0 ? 100.0 * j.progress().tokens() / total : 0.0, j.restarts(), workers.c_str());
  }
  return 0;
}

int DoStatus(const ServiceCli& a) {
  auto c = Client::Make(a);
  if (!c.ok()) return Fail(c.status());
  v1::GetJobRequest req;
  req.set_id(a.id);
  v1::Job j;
  auto ctx = MakeContext(c->opts, c->timeout);
  grpc::Status s = c->stub->Get(ctx.get(), req, &j);
  if (!s.ok()) return Fail(c->Error(s, "status " + a.id));
  if (a.json) {
    std::printf("%s\n", ToJson(j).c_str());
    return 0;
  }
  const v1::Progress& p = j.progress();
  std::printf("job        %s (%s)\nstate      %s%s%s\nattempt    %d, restarts %d of %d\n", j.id().c_str(),
              JobOf(j).name.c_str(), StateName(j.state()).c_str(), j.reason().empty() ? "" : ": ", j.reason().c_str(),
              j.attempt(), j.restarts(), j.max_restarts());
  if (j.workers_size() > 0) {
    std::string w;
    for (const auto& x : j.workers()) w += (w.empty() ? "" : ", ") + x;
    std::printf("workers    %s\n", w.c_str());
  }
  for (const auto& ch : j.child_ids()) std::printf("variant    %s\n", ch.c_str());
  std::printf("progress   %s\n", ProgressLine(j).c_str());
  std::printf("metrics    mse %.4g  l0 %.2f  aux %.4g  step %ld\n", p.mse(), p.l0(), p.aux_loss(),
              static_cast<long>(p.step()));
  if (p.checkpoint_step() > 0)
    std::printf("checkpoint step %ld (%s tokens)\n", static_cast<long>(p.checkpoint_step()),
                HumanCount(p.checkpoint_tokens()).c_str());
  std::printf("output     %s\nhistory\n", j.output().c_str());
  for (const auto& t : j.history())
    std::printf("  %s  %-10s -> %-10s %s\n", TimeText(t.time_unix_ms()).c_str(), StateName(t.from()).c_str(),
                StateName(t.to()).c_str(), t.reason().c_str());
  return 0;
}

int DoCancel(const ServiceCli& a) {
  auto c = Client::Make(a);
  if (!c.ok()) return Fail(c.status());
  v1::CancelJobRequest req;
  req.set_id(a.id);
  req.set_reason(a.reason);
  v1::CancelJobResponse resp;
  auto ctx = MakeContext(c->opts, c->timeout);
  grpc::Status s = c->stub->Cancel(ctx.get(), req, &resp);
  if (!s.ok()) return Fail(c->Error(s, "cancel " + a.id));
  if (a.json)
    std::printf("%s\n", ToJson(resp.job()).c_str());
  else
    std::printf("%s %s\n", a.id.c_str(), StateName(resp.job().state()).c_str());
  return 0;
}

void Common(flags::Command* sub, ServiceCli* s) {
  sub->AddOption("--coordinator", s->coordinator, "HOST:PORT of sae-coordinator (or SAE_COORDINATOR)")
      .Env("SAE_COORDINATOR")
      .ShowDefault();
  sub->AddOption("--token-file", s->token_file, "file with the client bearer token (or SAE_TOKEN_FILE)")
      .Env("SAE_TOKEN_FILE");
  sub->AddOption("--tls-ca", s->tls_ca, "PEM CA of the coordinator's certificate: use TLS (or SAE_TLS_CA)")
      .Env("SAE_TLS_CA");
  sub->AddOption("--timeout", s->timeout,
                 "seconds each call waits for the coordinator, connecting included: one that is still starting is "
                 "waited for, an absent one is an error after this (or SAE_TIMEOUT)")
      .Env("SAE_TIMEOUT")
      .Positive()
      .ShowDefault();
  sub->AddFlag("--json", s->json, "JSON output");
}

int RunServiceCommand(const ServiceCli& s) {
  if (s.submit->Parsed()) return DoSubmit(s);
  if (s.jobs->Parsed()) return DoJobs(s);
  if (s.status->Parsed()) return DoStatus(s);
  if (s.watch->Parsed()) {
    auto c = Client::Make(s);
    return c.ok() ? Watch(*c, s.id, s.json, false) : Fail(c.status());
  }
  if (s.cancel->Parsed()) return DoCancel(s);
  return kNotParsed;
}

}  // namespace

CommandRunner AddServiceCommands(flags::Command* app) {
  auto s = std::make_shared<ServiceCli>();
  s->submit = app->AddSubcommand("submit", "submit a job file to the coordinator; prints the job id");
  s->submit->AddOption("file", s->file, "job file (YAML; sae fields may list values: a sweep)").Required();
  s->submit->AddFlag("--wait", s->wait, "follow the job until it finishes (exit 0 when SUCCEEDED)");
  s->submit->AddOption("--priority", s->priority, "higher runs first");
  s->submit->AddOption("--max-restarts", s->max_restarts, "restarts after failures (default: coordinator's)");
  s->submit->AddOption("--request-id", s->request_id, "idempotency key (default: random)");
  Common(s->submit, s.get());
  s->jobs = app->AddSubcommand("jobs", "list the coordinator's jobs");
  s->jobs->AddFlag("--all", s->all, "include sweep variants");
  s->jobs->AddOption("--page-size", s->page_size, "jobs per request (1 to 1000)").ShowDefault();
  Common(s->jobs, s.get());
  s->status = app->AddSubcommand("status", "a job's state, history, metrics and output");
  s->status->AddOption("id", s->id, "job id").Required();
  Common(s->status, s.get());
  s->watch = app->AddSubcommand("watch", "live progress of a job until it finishes");
  s->watch->AddOption("id", s->id, "job id").Required();
  Common(s->watch, s.get());
  s->cancel = app->AddSubcommand("cancel", "cancel a job (its last checkpoint stays)");
  s->cancel->AddOption("id", s->id, "job id").Required();
  s->cancel->AddOption("--reason", s->reason, "recorded in the job's history");
  Common(s->cancel, s.get());
  return [s]() { return RunServiceCommand(*s); };
}

}  // namespace sae
