// bench_service: the coordinator under load on loopback. One in-process
// sae-coordinator (real gRPC server, SQLite in a temp file), N simulated
// workers that register, heartbeat at the coordinator's interval, follow
// their assignment stream and report progress for what they are given, and
// M concurrent Watch streams on the running jobs. Reports p50/p99 latency of
// each RPC kind, watch events delivered, and whether any lease expired
// (none should: every simulated worker stays alive).
//   build/bin/bench_service --workers 64 --watchers 100 --seconds 60
#include <unistd.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cli/flags.h"
#include "client/client.h"
#include "coordinator/coordinator.h"
#include "coordinator/service.h"
#include "core/base/clock.h"
#include "core/base/mutex.h"
#include "sae/v1/job.grpc.pb.h"
#include "sae/v1/worker.grpc.pb.h"

namespace {

using sae::SteadyNow;

struct Latencies {
  sae::Mutex mu;
  std::vector<double> v ABSL_GUARDED_BY(mu);
  std::atomic<int64_t> errors{0};
  void Add(double s) {
    sae::MutexLock l(&mu);
    v.push_back(s);
  }
  double Pct(double p) {
    sae::MutexLock l(&mu);
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
  }
};

// A job's spec is its YAML text (the coordinator reads it as a job file).
sae::v1::JobSpec Spec(int i) {
  const std::string n = std::to_string(i);
  sae::v1::JobSpec s;
  s.set_yaml("name: bench-" + n +
             "\ndata: {kind: synthetic, d_in: 16, latents: 32, k: 2, noise: 0.01}\n"
             "sae: {latents: 64, k: 4, dead_window_tokens: 1000}\n"
             "train: {tokens: 1000000000, batch_tokens: 100, log_every_steps: 10}\n"
             "world: {workers: 1, timeout_seconds: 30}\noutput: bench/out-" +
             n + "\n");
  return s;
}

struct Flags {
  int workers = 64, watchers = 100, jobs = 10;
  double seconds = 60, lease = 10, heartbeat = 1;
};

// What the simulated clients share: the coordinator's address, the latency
// of each RPC kind, and the stop flag.
struct Load {
  Flags f;
  sae::ClientOptions cl;
  Latencies hb, prog, get, submit;
  std::atomic<int64_t> events{0};
  std::atomic<bool> stop{false};
};

// Submits f.jobs jobs; returns their ids (empty after a failure, printed).
std::vector<std::string> SubmitJobs(Load& load, const std::shared_ptr<grpc::Channel>& channel) {
  std::vector<std::string> job_ids;
  auto stub = sae::v1::JobService::NewStub(channel);
  for (int i = 0; i < load.f.jobs; ++i) {
    sae::v1::SubmitRequest r;
    *r.mutable_spec() = Spec(i);
    sae::v1::SubmitResponse resp;
    auto ctx = sae::MakeContext(load.cl, 5);
    const double t0 = SteadyNow();
    grpc::Status s = stub->Submit(ctx.get(), r, &resp);
    load.submit.Add(SteadyNow() - t0);
    if (!s.ok()) {
      std::fprintf(stderr, "submit: %s\n", s.error_message().c_str());
      return {};
    }
    job_ids.push_back(resp.id());
  }
  return job_ids;
}

// Simulated worker w: registers, follows its assignment stream, heartbeats
// at the coordinator's interval and reports progress every 0.5 s for the
// job it runs, until load.stop.
void SimulatedWorker(Load& load, int w) {
  const sae::ClientOptions& cl = load.cl;
  // Each simulated worker has its own channel, as separate processes would.
  auto ch = sae::MakeChannel(cl);
  auto stub = sae::v1::WorkerService::NewStub(*ch);
  const std::string id = "sim-" + std::to_string(w);
  sae::v1::RegisterRequest reg;
  reg.set_worker_id(id);
  reg.set_host("127.0.0.1");
  reg.set_rendezvous_port(20000 + w);
  sae::v1::RegisterResponse rr;
  {
    auto ctx = sae::MakeContext(cl, 5);
    stub->Register(ctx.get(), reg, &rr);
  }
  sae::Mutex mu;
  std::string job;
  int attempt = 0;
  auto actx = sae::MakeContext(cl, 0);
  sae::v1::AssignmentsRequest ar;
  ar.set_worker_id(id);
  std::thread reader([&] {
    auto rd = stub->Assignments(actx.get(), ar);
    sae::v1::Assignment a;
    while (rd->Read(&a)) {
      sae::MutexLock l(&mu);
      if (a.kind() == sae::v1::Assignment::RUN) {
        job = a.job_id();
        attempt = a.attempt();
      }
    }
    rd->Finish();
  });
  double next_hb = SteadyNow(), next_prog = SteadyNow();
  int64_t tokens = 0;
  while (!load.stop) {
    const double now = SteadyNow();
    if (now >= next_hb) {
      next_hb += load.f.heartbeat;
      sae::v1::HeartbeatRequest h;
      h.set_worker_id(id);
      {
        sae::MutexLock l(&mu);
        h.set_running_job_id(job);
        h.set_running_attempt(attempt);
      }
      sae::v1::HeartbeatResponse hr;
      auto ctx = sae::MakeContext(cl, 5);
      const double t0 = SteadyNow();
      grpc::Status s = stub->Heartbeat(ctx.get(), h, &hr);
      load.hb.Add(SteadyNow() - t0);
      if (!s.ok()) load.hb.errors++;
    }
    std::string j;
    int at;
    {
      sae::MutexLock l(&mu);
      j = job;
      at = attempt;
    }
    if (!j.empty() && now >= next_prog) {
      next_prog += 0.5;
      tokens += 10000;
      sae::v1::ProgressReport p;
      p.set_worker_id(id);
      p.set_job_id(j);
      p.set_attempt(at);
      p.mutable_progress()->set_tokens(tokens);
      p.mutable_progress()->set_fvu(0.1);
      sae::v1::Ack ack;
      auto ctx = sae::MakeContext(cl, 5);
      const double t0 = SteadyNow();
      grpc::Status s = stub->ReportProgress(ctx.get(), p, &ack);
      load.prog.Add(SteadyNow() - t0);
      if (!s.ok()) load.prog.errors++;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  actx->TryCancel();
  reader.join();
}

// A Watch stream on one job, reopened until load.stop; counts the events.
void Watcher(Load& load, const std::shared_ptr<grpc::Channel>& channel, const std::string& job_id) {
  auto stub = sae::v1::JobService::NewStub(channel);
  while (!load.stop) {
    auto ctx = sae::MakeContext(load.cl, 0);
    sae::v1::WatchJobRequest r;
    r.set_id(job_id);
    auto rd = stub->Watch(ctx.get(), r);
    sae::v1::JobEvent ev;
    std::thread canceller([&] {
      while (!load.stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      ctx->TryCancel();
    });
    while (rd->Read(&ev)) load.events++;
    rd->Finish();
    canceller.join();
  }
}

// A client polling Get, as `sae status` would.
void GetPoller(Load& load, const std::shared_ptr<grpc::Channel>& channel, const std::string& job_id) {
  auto stub = sae::v1::JobService::NewStub(channel);
  while (!load.stop) {
    sae::v1::GetJobRequest r;
    r.set_id(job_id);
    sae::v1::Job j;
    auto ctx = sae::MakeContext(load.cl, 5);
    const double t0 = SteadyNow();
    grpc::Status s = stub->Get(ctx.get(), r, &j);
    load.get.Add(SteadyNow() - t0);
    if (!s.ok()) load.get.errors++;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// Prints the latencies and the coordinator's view; true when no lease
// expired and every heartbeat went through.
bool Report(Load& load, sae::CoordinatorSnapshot snap, int64_t max_dead) {
  auto row = [](const char* name, Latencies& l) {
    std::printf("  %-15s %8zu calls  p50 %7.3f ms  p99 %7.3f ms  errors %ld\n", name, l.v.size(), 1e3 * l.Pct(0.5),
                1e3 * l.Pct(0.99), static_cast<long>(l.errors.load()));
  };
  row("Heartbeat", load.hb);
  row("ReportProgress", load.prog);
  row("Get", load.get);
  row("Submit", load.submit);
  std::printf("  watch events delivered: %ld over %d streams\n", static_cast<long>(load.events.load()),
              load.f.watchers);
  std::printf("  workers: %d idle, %d busy, %d dead (max dead seen: %ld); running jobs: %d\n",
              snap.workers_by_state["idle"], snap.workers_by_state["busy"], snap.workers_by_state["dead"],
              static_cast<long>(max_dead), snap.jobs_by_state["running"]);
  const bool ok = max_dead == 0 && load.hb.errors == 0;
  std::printf("%s\n", ok ? "OK: no lease expired" : "FAIL: a lease expired or heartbeats failed");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  sae::flags::Command app{"bench_service: coordinator RPC latency with simulated workers and watchers"};
  Load load;
  Flags& f = load.f;
  app.AddOption("--workers", f.workers, "simulated workers").ShowDefault();
  app.AddOption("--watchers", f.watchers, "concurrent Watch streams").ShowDefault();
  app.AddOption("--jobs", f.jobs, "jobs the workers run (progress every 0.5 s each)").ShowDefault();
  app.AddOption("--seconds", f.seconds, "duration").ShowDefault();
  app.AddOption("--lease-seconds", f.lease, "coordinator lease").ShowDefault();
  app.AddOption("--heartbeat-seconds", f.heartbeat, "heartbeat interval").ShowDefault();
  if (auto rc = app.Parse(argc, argv)) return *rc;

  const std::string db =
      (std::filesystem::temp_directory_path() / ("bench_service_" + std::to_string(::getpid()) + ".db")).string();
  sae::CoordinatorOptions co;
  co.db = db;
  co.lease_seconds = f.lease;
  co.heartbeat_seconds = f.heartbeat;
  auto coord = sae::Coordinator::Create(co);
  if (!coord.ok()) {
    std::fprintf(stderr, "%s\n", std::string(coord.status().message()).c_str());
    return 1;
  }
  sae::ServiceOptions so;
  so.listen = "127.0.0.1:0";
  so.metrics_listen = "";
  auto server = sae::CoordinatorServer::Start(coord->get(), so);
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  std::printf("bench_service: %u cpus, %d workers (heartbeat %.1f s, lease %.1f s), %d watchers, %d jobs, %.0f s\n",
              std::thread::hardware_concurrency(), f.workers, f.heartbeat, f.lease, f.watchers, f.jobs, f.seconds);
  load.cl.address = (*server)->address();
  auto channel = sae::MakeChannel(load.cl);
  const std::vector<std::string> job_ids = SubmitJobs(load, *channel);
  if (job_ids.empty()) return 1;
  std::vector<std::thread> threads;
  for (int w = 0; w < f.workers; ++w) threads.emplace_back([&, w] { SimulatedWorker(load, w); });
  for (int m = 0; m < f.watchers; ++m)
    threads.emplace_back([&, m] { Watcher(load, *channel, job_ids[m % job_ids.size()]); });
  threads.emplace_back([&] { GetPoller(load, *channel, job_ids[0]); });
  const double t_end = SteadyNow() + f.seconds;
  int64_t max_dead = 0;
  while (SteadyNow() < t_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    max_dead = std::max<int64_t>(max_dead, (*coord)->Snapshot().workers_by_state["dead"]);
  }
  auto snap = (*coord)->Snapshot();
  load.stop = true;
  for (auto& t : threads) t.join();
  (*server)->Shutdown();
  std::filesystem::remove(db);
  std::filesystem::remove(db + "-wal");
  std::filesystem::remove(db + "-shm");
  return Report(load, std::move(snap), max_dead) ? 0 : 1;
}
