// Fuzzes the coordinator's request handlers (coordinator/service.cc over
// coordinator/coordinator.cc and its SQLite store), in process: each input
// starts a fresh Coordinator on a temporary SQLite file and replays a
// sequence of calls whose request messages are decoded from the fuzz bytes.
// Unary handlers are called directly (MakeCoordinatorServices); Watch and
// Assignments run the coordinator calls their handlers loop over with short
// waits; StreamShard goes through a gRPC server's in-process channel, with
// its bearer token. Properties: the process never crashes (no handler
// throws), and every call returns within 10 s (no hang or deadlock).
//
// Input: records of [op][flags][len lo][len hi][len bytes: the request,
// protobuf wire format]. op % kOps picks the call (see kNames); flags bit 0
// sends StreamShard a wrong bearer token. Records that do not decode are skipped.
// SAE_FUZZ_WRITE_SEEDS=DIR writes the seed corpus (scenarios below) and exits.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "coordinator/coordinator.h"
#include "coordinator/service.h"
#include "core/base/clock.h"
#include "core/base/file_util.h"
#include "core/base/logging.h"
#include "core/data/manifest.h"
#include "core/data/safetensors.h"
#include "sae/v1/job.grpc.pb.h"
#include "sae/v1/worker.grpc.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace sae;

enum Op {
  kSubmit,
  kGet,
  kList,
  kCancel,
  kRegister,
  kHeartbeat,
  kProgress,
  kCheckpoint,
  kResult,
  kStreamShard,
  kWatch,
  kAssignments,
  kSettle,
  kOps
};
constexpr const char* kNames[] = {
    "Submit",           "Get",          "List",        "Cancel", "Register",    "Heartbeat", "ReportProgress",
    "ReportCheckpoint", "ReportResult", "StreamShard", "Watch",  "Assignments", "settle"};
constexpr double kUnaryDeadline = 10;  // seconds; longer means a handler hung

struct Roots {
  std::string data, output;
};

// --data-root holds one valid shard directory "acts" (4 x 8 float32).
const Roots& TheRoots() {
  static const Roots r = [] {
    Roots x{fuzz::FreshDir("data"), fuzz::FreshDir("out")};
    const std::string dir = x.data + "/acts";
    std::filesystem::create_directories(dir);
    std::vector<float> act(32);
    for (size_t i = 0; i < act.size(); ++i) act[i] = 0.5f * static_cast<float>(i % 7) - 1.0f;
    SafetensorsWriter w;
    if (!w.AddFloat("activations", DType::kF32, {4, 8}, act.data()).ok() ||
        !w.Write(dir + "/shard-00000.safetensors").ok())
      std::abort();
    Manifest m;
    m.d_in = 8;
    m.rows = 4;
    auto sha = Sha256File(dir + "/shard-00000.safetensors");
    if (!sha.ok()) std::abort();
    m.shards.push_back({"shard-00000.safetensors", 4, *sha});
    if (!SaveManifest(dir, m).ok()) std::abort();
    return x;
  }();
  return r;
}

template <typename Req>
bool Decode(const std::string& bytes, Req* r) {
  return r->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

// DataService only reads the coordinator's options: one server for the
// process, with tokens, reached through its in-process channel.
v1::DataService::Stub* ShardStub() {
  static std::unique_ptr<Coordinator> coord;
  static std::unique_ptr<CoordinatorServer> server;
  static std::unique_ptr<v1::DataService::Stub> stub;
  if (!stub) {
    CoordinatorOptions co;
    co.data_root = TheRoots().data;
    co.output_root = TheRoots().output;
    auto c = Coordinator::Create(co);
    SAE_FUZZ_CHECK(c.ok(), c.status().ToString());
    coord = std::move(*c);
    ServiceOptions so;
    so.listen = "127.0.0.1:0";
    so.metrics_listen = "";
    so.worker_token = "worker-token";
    auto srv = CoordinatorServer::Start(coord.get(), so);
    SAE_FUZZ_CHECK(srv.ok(), srv.status().ToString());
    server = std::move(*srv);
    stub = v1::DataService::NewStub(server->InProcessChannel());
  }
  return stub.get();
}

void RunOne(const uint8_t* data, size_t size) {
  const Roots& roots = TheRoots();
  const std::string db = fuzz::ScratchDir() + "/coordinator.db";
  for (const char* suffix : {"", "-journal", "-wal", "-shm"}) std::filesystem::remove(db + suffix);
  CoordinatorOptions co;
  co.db = db;
  co.lease_seconds = 10;
  co.heartbeat_seconds = 1;
  co.data_root = roots.data;
  co.output_root = roots.output;
  auto created = Coordinator::Create(co);
  SAE_FUZZ_CHECK(created.ok(), created.status().ToString());
  Coordinator* coord = created->get();
  // The handlers themselves, called directly (no tokens: a bare
  // ServerContext carries no metadata; StreamShard checks tokens below).
  CoordinatorServices services = MakeCoordinatorServices(coord, ServiceOptions{});
  auto* jobs = static_cast<v1::JobService::Service*>(services.jobs.get());
  auto* workers = static_cast<v1::WorkerService::Service*>(services.workers.get());

  size_t pos = 0;
  int settles = 0;
  for (int n = 0; n < 48 && pos + 4 <= size; ++n) {
    const int op = data[pos] % kOps;
    const bool wrong_token = data[pos + 1] & 1;
    const size_t len = std::min<size_t>(data[pos + 2] | (data[pos + 3] << 8), size - pos - 4);
    const std::string msg(reinterpret_cast<const char*>(data + pos + 4), len);
    pos += 4 + len;
    grpc::ServerContext ctx;
    const double t0 = SteadyNow();
    switch (op) {
      case kSubmit: {
        v1::SubmitRequest r;
        v1::SubmitResponse resp;
        if (Decode(msg, &r)) (void)jobs->Submit(&ctx, &r, &resp);
        break;
      }
      case kGet: {
        v1::GetJobRequest r;
        v1::Job resp;
        if (Decode(msg, &r)) (void)jobs->Get(&ctx, &r, &resp);
        break;
      }
      case kList: {
        v1::ListJobsRequest r;
        v1::ListJobsResponse resp;
        if (Decode(msg, &r)) (void)jobs->List(&ctx, &r, &resp);
        break;
      }
      case kCancel: {
        v1::CancelJobRequest r;
        v1::CancelJobResponse resp;
        if (Decode(msg, &r)) (void)jobs->Cancel(&ctx, &r, &resp);
        break;
      }
      case kRegister: {
        v1::RegisterRequest r;
        v1::RegisterResponse resp;
        if (Decode(msg, &r)) (void)workers->Register(&ctx, &r, &resp);
        break;
      }
      case kHeartbeat: {
        v1::HeartbeatRequest r;
        v1::HeartbeatResponse resp;
        if (Decode(msg, &r)) (void)workers->Heartbeat(&ctx, &r, &resp);
        break;
      }
      case kProgress: {
        v1::ProgressReport r;
        v1::Ack resp;
        if (Decode(msg, &r)) (void)workers->ReportProgress(&ctx, &r, &resp);
        break;
      }
      case kCheckpoint: {
        v1::CheckpointReport r;
        v1::Ack resp;
        if (Decode(msg, &r)) (void)workers->ReportCheckpoint(&ctx, &r, &resp);
        break;
      }
      case kResult: {
        v1::AttemptResult r;
        v1::Ack resp;
        if (Decode(msg, &r)) (void)workers->ReportResult(&ctx, &r, &resp);
        break;
      }
      case kStreamShard: {  // through gRPC (a stream needs a real call); ends by itself
        v1::ShardRequest r;
        if (!Decode(msg, &r)) break;
        ClientOptions who;
        who.token = wrong_token ? "wrong" : "worker-token";
        auto cctx = MakeContext(who, kUnaryDeadline);
        auto reader = ShardStub()->StreamShard(cctx.get(), r);
        v1::ShardChunk c;
        while (reader->Read(&c)) {
        }
        const grpc::Status st = reader->Finish();
        SAE_FUZZ_CHECK(st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED, "StreamShard hung");
        break;
      }
      case kWatch: {  // what the Watch handler loops over, with short waits
        v1::WatchJobRequest r;
        if (!Decode(msg, &r)) break;
        int64_t version = 0;
        v1::Job job;
        for (int i = 0; i < 64; ++i) {
          auto changed = coord->WaitForJob(r.id(), &version, &job, 0.002);
          if (!changed.ok() || !*changed || IsTerminal(job.state())) break;
        }
        break;
      }
      case kAssignments: {  // what the Assignments handler loops over
        v1::AssignmentsRequest r;
        if (!Decode(msg, &r)) break;
        auto gen = coord->ConnectAssignments(r.worker_id());
        if (!gen.ok()) break;
        v1::Assignment a;
        for (int i = 0; i < 64; ++i) {
          auto got = coord->NextAssignment(r.worker_id(), *gen, &a, 0.001);
          if (!got.ok() || !*got) break;
        }
        break;
      }
      case kSettle:  // lets the scheduler thread place jobs (at most 4 per input: waits cost executions)
        if (++settles <= 4) std::this_thread::sleep_for(std::chrono::milliseconds(3));
        break;
    }
    SAE_FUZZ_CHECK(SteadyNow() - t0 < kUnaryDeadline, std::string(kNames[op]) + " took over 10 s (a hang)");
  }
  services = CoordinatorServices{};
  created->reset();
}

// ---------------------------------------------------------------------------
// Seed scenarios.

void Add(std::string* out, Op op, const google::protobuf::Message& m, bool wrong_token = false) {
  const std::string b = m.SerializeAsString();
  if (b.size() > 0xffff) std::abort();
  out->push_back(static_cast<char>(op));
  out->push_back(wrong_token ? 1 : 0);
  out->push_back(static_cast<char>(b.size() & 0xff));
  out->push_back(static_cast<char>(b.size() >> 8));
  *out += b;
}
void Settle(std::string* out) { out->append({static_cast<char>(kSettle), 0, 3, 0, 'x', 'x', 'x'}); }

// A job's spec is its YAML text (the coordinator reads it as a job file).
v1::JobSpec SyntheticSpec(const std::string& name, int workers,
                          const std::string& data = "{kind: synthetic, d_in: 16, latents: 32, k: 2, noise: 0.01}") {
  v1::JobSpec s;
  s.set_yaml("name: " + name + "\ndata: " + data +
             "\nsae: {latents: 64, k: 4, dead_window_tokens: 100000}\n"
             "train: {tokens: 4096, batch_tokens: 256, checkpoint_every_tokens: 1024, log_every_steps: 10, "
             "device: cpu}\n"
             "world: {workers: " +
             std::to_string(workers) + ", timeout_seconds: 30}\noutput: " + name + "\n");
  return s;
}

v1::RegisterRequest Worker(const std::string& id, int port) {
  v1::RegisterRequest r;
  r.set_worker_id(id);
  r.set_host("127.0.0.1");
  r.mutable_resources()->set_cpus(2);
  r.mutable_resources()->set_memory_bytes(int64_t{1} << 30);
  r.set_rendezvous_port(port);
  r.set_metrics_address("127.0.0.1:9000");
  return r;
}

void WriteSeeds(const std::string& dir) {
  std::filesystem::create_directories(dir);
  auto save = [&](const std::string& name, const std::string& bytes) { fuzz::WriteFile(dir + "/" + name, bytes); };
  {  // One worker trains a job to the end.
    std::string s;
    Add(&s, kRegister, Worker("w1", 29500));
    v1::SubmitRequest sub;
    *sub.mutable_spec() = SyntheticSpec("one", 1);
    sub.set_request_id("req-1");
    Add(&s, kSubmit, sub);
    Settle(&s);
    v1::AssignmentsRequest ar;
    ar.set_worker_id("w1");
    Add(&s, kAssignments, ar);
    v1::HeartbeatRequest hb;
    hb.set_worker_id("w1");
    hb.set_running_job_id("job-000001");
    hb.set_running_attempt(1);
    Add(&s, kHeartbeat, hb);
    v1::ProgressReport pr;
    pr.set_worker_id("w1");
    pr.set_job_id("job-000001");
    pr.set_attempt(1);
    pr.mutable_progress()->set_step(4);
    pr.mutable_progress()->set_tokens(1024);
    pr.mutable_progress()->set_total_tokens(4096);
    pr.mutable_progress()->set_tokens_trained(1024);
    Add(&s, kProgress, pr);
    v1::CheckpointReport ck;
    ck.set_worker_id("w1");
    ck.set_job_id("job-000001");
    ck.set_attempt(1);
    ck.set_step(4);
    ck.set_tokens(1024);
    ck.set_path("one/checkpoints/step-4");
    Add(&s, kCheckpoint, ck);
    v1::AttemptResult res;
    res.set_worker_id("w1");
    res.set_job_id("job-000001");
    res.set_attempt(1);
    res.set_finished(true);
    res.set_output("one");
    *res.mutable_progress() = pr.progress();
    Add(&s, kResult, res);
    v1::GetJobRequest g;
    g.set_id("job-000001");
    Add(&s, kGet, g);
    v1::WatchJobRequest wj;
    wj.set_id("job-000001");
    Add(&s, kWatch, wj);
    v1::ListJobsRequest l;
    l.set_include_children(true);
    Add(&s, kList, l);
    Add(&s, kSubmit, sub);  // the same request id again
    save("train_to_end", s);
  }
  {  // Two workers; rank 1 fails with a retryable error; the group restarts; cancel.
    std::string s;
    Add(&s, kRegister, Worker("w1", 29500));
    Add(&s, kRegister, Worker("w2", 29501));
    v1::SubmitRequest sub;
    *sub.mutable_spec() = SyntheticSpec("two", 2);
    sub.set_priority(3);
    sub.set_max_restarts(1);
    Add(&s, kSubmit, sub);
    Settle(&s);
    v1::AttemptResult res;
    res.set_worker_id("w2");
    res.set_job_id("job-000001");
    res.set_attempt(1);
    res.set_rank(1);
    res.set_code(14);
    res.set_message("connection reset");
    Add(&s, kResult, res);
    v1::HeartbeatRequest hb;
    hb.set_worker_id("w1");
    Add(&s, kHeartbeat, hb);
    hb.set_worker_id("w2");
    Add(&s, kHeartbeat, hb);
    v1::CancelJobRequest c;
    c.set_id("job-000001");
    c.set_reason("enough");
    Add(&s, kCancel, c);
    v1::GetJobRequest g;
    g.set_id("job-000001");
    Add(&s, kGet, g);
    save("restart_and_cancel", s);
  }
  {  // A sweep over k and latents; list with and without children; cancel the parent.
    std::string s;
    v1::SubmitRequest sub;
    *sub.mutable_spec() = SyntheticSpec("sweep", 1);
    auto* a = sub.add_sweep();
    a->set_field("k");
    a->add_values("2");
    a->add_values("4");
    auto* b = sub.add_sweep();
    b->set_field("latents");
    b->add_values("32");
    b->add_values("64");
    Add(&s, kSubmit, sub);
    v1::ListJobsRequest l;
    Add(&s, kList, l);
    l.set_include_children(true);
    Add(&s, kList, l);
    v1::CancelJobRequest c;
    c.set_id("job-000001");
    Add(&s, kCancel, c);
    save("sweep", s);
  }
  {  // A shards job under --data-root; DataService streams its files.
    std::string s;
    v1::SubmitRequest sub;
    *sub.mutable_spec() = SyntheticSpec("shards", 1, "{kind: shards, path: acts}");
    Add(&s, kSubmit, sub);
    v1::ShardRequest sr;
    sr.set_path("acts");
    sr.set_file("manifest.json");
    Add(&s, kStreamShard, sr);
    sr.set_file("shard-00000.safetensors");
    Add(&s, kStreamShard, sr);
    sr.set_file("../acts/manifest.json");
    Add(&s, kStreamShard, sr);
    sr.set_path("/etc");
    sr.set_file("passwd");
    Add(&s, kStreamShard, sr);
    save("shards", s);
  }
  {  // Calls with the wrong token, unknown ids and stale attempts.
    std::string s;
    v1::GetJobRequest g;
    g.set_id("job-000001");
    Add(&s, kGet, g, true);
    Add(&s, kRegister, Worker("w1", 1), true);
    Add(&s, kRegister, Worker("w1", 1));
    v1::ProgressReport pr;
    pr.set_worker_id("w1");
    pr.set_job_id("job-000042");
    pr.set_attempt(7);
    pr.set_rank(-1);
    Add(&s, kProgress, pr);
    v1::AttemptResult res;
    res.set_worker_id("nobody");
    res.set_job_id("job-000001");
    res.set_attempt(-3);
    res.set_code(999);
    Add(&s, kResult, res);
    v1::AssignmentsRequest ar;
    ar.set_worker_id("nobody");
    Add(&s, kAssignments, ar);
    save("bad_calls", s);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  SetLogLevel(LogLevel::kError);
  // Requests that do not decode are skipped; protobuf need not log each one.
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  if (const char* d = std::getenv("SAE_FUZZ_WRITE_SEEDS")) {
    WriteSeeds(d);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  RunOne(data, size);
  return 0;
}
