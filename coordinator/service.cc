#include "coordinator/service.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "client/job_spec.h"
#include "coordinator/roots.h"
#include "core/base/file_util.h"
#include "core/base/logging.h"
#include "core/base/mutex.h"
#include "core/telemetry/http_server.h"
#include "sae/v1/job.grpc.pb.h"
#include "sae/v1/worker.grpc.pb.h"

namespace sae {
namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

bool SameToken(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
  return d == 0;
}

// OK when `expected` is empty or the call carries "authorization: Bearer <expected>".
grpc::Status CheckToken(grpc::ServerContext* ctx, const std::string& expected, const char* role) {
  if (expected.empty()) return grpc::Status::OK;
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end())
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, absl::StrCat("missing bearer token (", role, " token)"));
  const std::string v(it->second.data(), it->second.size());
  if (v.rfind("Bearer ", 0) != 0 || !SameToken(v.substr(7), expected))
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, absl::StrCat("wrong bearer token for a ", role, " call"));
  return grpc::Status::OK;
}

class JobServiceImpl final : public v1::JobService::Service {
 public:
  JobServiceImpl(Coordinator* c, std::string token) : c_(c), token_(std::move(token)) {}

  grpc::Status Submit(grpc::ServerContext* ctx, const v1::SubmitRequest* req, v1::SubmitResponse* resp) override {
    if (auto s = CheckToken(ctx, token_, "client"); !s.ok()) return s;
    auto r = c_->Submit(*req);
    if (!r.ok()) return ToGrpc(r.status());
    *resp = *r;
    return grpc::Status::OK;
  }
  grpc::Status Get(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* resp) override {
    if (auto s = CheckToken(ctx, token_, "client"); !s.ok()) return s;
    auto r = c_->Get(req->id());
    if (!r.ok()) return ToGrpc(r.status());
    *resp = *r;
    return grpc::Status::OK;
  }
  grpc::Status List(grpc::ServerContext* ctx, const v1::ListJobsRequest* req, v1::ListJobsResponse* resp) override {
    if (auto s = CheckToken(ctx, token_, "client"); !s.ok()) return s;
    if (req->page_size() < 0 || req->page_size() > 1000)
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "page_size: 0 (default 100) to 1000");
    const size_t page = req->page_size() > 0 ? static_cast<size_t>(req->page_size()) : 100;
    std::vector<v1::Job> all = c_->List(req->include_children());
    size_t first = 0;
    if (!req->page_token().empty()) {
      while (first < all.size() && all[first].id() != req->page_token()) ++first;
      if (first == all.size())
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "page_token: no job " + req->page_token().substr(0, 64));
      ++first;
    }
    for (size_t i = first; i < all.size() && i < first + page; ++i) *resp->add_jobs() = std::move(all[i]);
    if (first + page < all.size()) resp->set_next_page_token(resp->jobs(resp->jobs_size() - 1).id());
    return grpc::Status::OK;
  }
  grpc::Status Watch(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                     grpc::ServerWriter<v1::JobEvent>* w) override {
    if (auto s = CheckToken(ctx, token_, "client"); !s.ok()) return s;
    int64_t version = 0;
    v1::JobState last = v1::JOB_STATE_UNSPECIFIED;
    while (!ctx->IsCancelled()) {
      v1::Job job;
      auto changed = c_->WaitForJob(req->id(), &version, &job, 1.0);
      if (!changed.ok()) return ToGrpc(changed.status());
      if (!*changed) continue;
      v1::JobEvent ev;
      ev.set_state_changed(job.state() != last);
      last = job.state();
      *ev.mutable_job() = std::move(job);
      if (!w->Write(ev)) return grpc::Status::OK;
      if (IsTerminal(last)) return grpc::Status::OK;
    }
    return grpc::Status::OK;
  }
  grpc::Status Cancel(grpc::ServerContext* ctx, const v1::CancelJobRequest* req, v1::CancelJobResponse* resp) override {
    if (auto s = CheckToken(ctx, token_, "client"); !s.ok()) return s;
    auto r = c_->Cancel(req->id(), req->reason());
    if (!r.ok()) return ToGrpc(r.status());
    *resp->mutable_job() = *r;
    return grpc::Status::OK;
  }

 private:
  Coordinator* c_;
  std::string token_;
};

class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  WorkerServiceImpl(Coordinator* c, std::string token) : c_(c), token_(std::move(token)) {}

  grpc::Status Register(grpc::ServerContext* ctx, const v1::RegisterRequest* req, v1::RegisterResponse* resp) override {
    if (auto s = CheckToken(ctx, token_, "worker"); !s.ok()) return s;
    auto r = c_->Register(*req);
    if (!r.ok()) return ToGrpc(r.status());
    *resp = *r;
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    if (auto s = CheckToken(ctx, token_, "worker"); !s.ok()) return s;
    resp->set_lease_seconds(c_->options().lease_seconds);
    return ToGrpc(c_->Heartbeat(*req));
  }
  grpc::Status Assignments(grpc::ServerContext* ctx, const v1::AssignmentsRequest* req,
                           grpc::ServerWriter<v1::Assignment>* w) override {
    if (auto s = CheckToken(ctx, token_, "worker"); !s.ok()) return s;
    auto gen = c_->ConnectAssignments(req->worker_id());
    if (!gen.ok()) return ToGrpc(gen.status());
    while (!ctx->IsCancelled()) {
      v1::Assignment a;
      auto got = c_->NextAssignment(req->worker_id(), *gen, &a, 1.0);
      if (!got.ok()) return ToGrpc(got.status());
      if (*got && !w->Write(a)) return grpc::Status::OK;
    }
    return grpc::Status::OK;
  }
  grpc::Status ReportProgress(grpc::ServerContext* ctx, const v1::ProgressReport* r, v1::Ack*) override {
    if (auto s = CheckToken(ctx, token_, "worker"); !s.ok()) return s;
    return ToGrpc(c_->ReportProgress(*r));
  }
  grpc::Status ReportCheckpoint(grpc::ServerContext* ctx, const v1::CheckpointReport* r, v1::Ack*) override {
    if (auto s = CheckToken(ctx, token_, "worker"); !s.ok()) return s;
    return ToGrpc(c_->ReportCheckpoint(*r));
  }
  grpc::Status ReportResult(grpc::ServerContext* ctx, const v1::AttemptResult* r, v1::Ack*) override {
    if (auto s = CheckToken(ctx, token_, "worker"); !s.ok()) return s;
    return ToGrpc(c_->ReportResult(*r));
  }

 private:
  Coordinator* c_;
  std::string token_;
};

class DataServiceImpl final : public v1::DataService::Service {
 public:
  DataServiceImpl(Coordinator* c, std::string token) : c_(c), token_(std::move(token)) {}

  grpc::Status StreamShard(grpc::ServerContext* ctx, const v1::ShardRequest* req,
                           grpc::ServerWriter<v1::ShardChunk>* w) override {
    if (auto s = CheckToken(ctx, token_, "worker"); !s.ok()) return s;
    if (c_->options().data_root.empty())
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "DataService serves shards only when the coordinator has a --data-root");
    auto dir = ResolveUnderRoot("path", req->path(), c_->options().data_root);
    if (!dir.ok()) return ToGrpc(dir.status());
    const std::string& f = req->file();
    if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..")
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "file: a plain file name in the shard directory");
    if (f != "manifest.json") {  // only files the manifest lists
      auto m = ReadFileToString(*dir + "/manifest.json");
      if (!m.ok()) return ToGrpc(m.status());
      auto j = nlohmann::json::parse(*m, nullptr, false);
      bool listed = false;
      if (!j.is_discarded() && j.is_object() && j.contains("shards") && j["shards"].is_array())
        for (const auto& sh : j["shards"])
          listed |=
              sh.is_object() && sh.contains("file") && sh["file"].is_string() && sh["file"].get<std::string>() == f;
      if (!listed)
        return grpc::Status(grpc::StatusCode::NOT_FOUND,
                            absl::StrCat("file: ", f, " is not listed in ", *dir, "/manifest.json"));
    }
    const std::string path = *dir + "/" + f;
    auto sha = Sha256File(path);
    if (!sha.ok()) return ToGrpc(sha.status());
    if (absl::Status regular = CheckRegularFile(path); !regular.ok()) return ToGrpc(regular);
    std::ifstream in(path, std::ios::binary);
    if (!in) return grpc::Status(grpc::StatusCode::NOT_FOUND, path + ": cannot open");
    in.seekg(0, std::ios::end);
    const int64_t size = in.tellg();
    in.seekg(0);
    std::string buf(1 << 20, '\0');
    int64_t off = 0;
    do {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      const std::streamsize n = in.gcount();
      v1::ShardChunk c;
      c.set_data(buf.data(), static_cast<size_t>(n));
      c.set_offset(off);
      if (off == 0) c.set_total_size(size);
      off += n;
      if (off >= size) {
        c.set_last(true);
        c.set_sha256(*sha);
      }
      if (!w->Write(c)) return grpc::Status::OK;
    } while (off < size && !ctx->IsCancelled());
    return grpc::Status::OK;
  }

 private:
  Coordinator* c_;
  std::string token_;
};

// Renders the coordinator's contract metrics from a snapshot per scrape.
class CoordinatorMetrics {
 public:
  CoordinatorMetrics() {
    jobs_ = &prometheus::BuildGauge().Name("sae_jobs").Help("Jobs known to the coordinator, by state.").Register(reg_);
    workers_ = &prometheus::BuildGauge()
                    .Name("sae_workers")
                    .Help("Workers known to the coordinator, by state.")
                    .Register(reg_);
    restarts_ = &prometheus::BuildCounter()
                     .Name("sae_job_restarts_total")
                     .Help("Restarts of job groups after a worker or rank failed.")
                     .Register(reg_)
                     .Add({{"role", "coordinator"}});
  }
  std::string Render(const CoordinatorSnapshot& s) {
    sae::MutexLock l(&mu_);
    for (const auto& [state, n] : s.jobs_by_state) jobs_->Add({{"state", state}, {"role", "coordinator"}}).Set(n);
    for (const auto& [state, n] : s.workers_by_state) workers_->Add({{"state", state}, {"role", "coordinator"}}).Set(n);
    const double delta = static_cast<double>(s.restarts_total) - restarts_->Value();
    if (delta > 0) restarts_->Increment(delta);
    return prometheus::TextSerializer().Serialize(reg_.Collect());
  }

 private:
  sae::Mutex mu_;  // Render: the gauges are set, then collected, as one
  prometheus::Registry reg_;
  prometheus::Family<prometheus::Gauge>* jobs_ ABSL_PT_GUARDED_BY(mu_);
  prometheus::Family<prometheus::Gauge>* workers_ ABSL_PT_GUARDED_BY(mu_);
  prometheus::Counter* restarts_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace

CoordinatorServices MakeCoordinatorServices(Coordinator* coord, const ServiceOptions& opts) {
  CoordinatorServices s;
  s.jobs = std::make_unique<JobServiceImpl>(coord, opts.client_token);
  s.workers = std::make_unique<WorkerServiceImpl>(coord, opts.worker_token);
  s.data = std::make_unique<DataServiceImpl>(coord, opts.worker_token);
  return s;
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& flag, const std::string& path) {
  auto t = ReadFileToString(path);
  if (!t.ok()) return Annotate(t.status(), flag);
  std::string tok(absl::StripAsciiWhitespace(*t));
  if (tok.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": the file is empty"));
  return tok;
}

struct CoordinatorServer::Impl {
  Coordinator* coord = nullptr;
  std::unique_ptr<JobServiceImpl> jobs;
  std::unique_ptr<WorkerServiceImpl> workers;
  std::unique_ptr<DataServiceImpl> data;
  std::unique_ptr<grpc::Server> server;
  std::string address;
  CoordinatorMetrics metrics;
  std::unique_ptr<HttpServer> http;
};

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(Coordinator* coord,
                                                                            const ServiceOptions& opts) {
  auto impl = std::make_unique<Impl>();
  impl->coord = coord;
  impl->jobs = std::make_unique<JobServiceImpl>(coord, opts.client_token);
  impl->workers = std::make_unique<WorkerServiceImpl>(coord, opts.worker_token);
  impl->data = std::make_unique<DataServiceImpl>(coord, opts.worker_token);
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!opts.tls_cert.empty() || !opts.tls_key.empty()) {
    if (opts.tls_cert.empty() || opts.tls_key.empty())
      return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
    SAE_ASSIGN_OR_RETURN(std::string cert, ReadFileToString(opts.tls_cert));
    SAE_ASSIGN_OR_RETURN(std::string key, ReadFileToString(opts.tls_key));
    grpc::SslServerCredentialsOptions so;
    so.pem_key_cert_pairs.push_back({key, cert});
    creds = grpc::SslServerCredentials(so);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort(opts.listen, creds, &port);
  b.SetMaxReceiveMessageSize(opts.max_message_bytes);
  b.SetMaxSendMessageSize(8 << 20);
  b.RegisterService(impl->jobs.get());
  b.RegisterService(impl->workers.get());
  b.RegisterService(impl->data.get());
  impl->server = b.BuildAndStart();
  if (!impl->server || port == 0)
    return absl::UnavailableError(absl::StrCat("--listen ", opts.listen, ": cannot listen"));
  impl->address = absl::StrCat(opts.listen.substr(0, opts.listen.rfind(':')), ":", port);
  if (!opts.metrics_listen.empty()) {
    Impl* raw = impl.get();
    auto http = HttpServer::Start(opts.metrics_listen, [raw](const std::string& path) {
      HttpResponse r;
      if (path == "/metrics") {
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        r.body = raw->metrics.Render(raw->coord->Snapshot());
      } else if (path == "/sd") {
        nlohmann::json list = nlohmann::json::array();
        for (const auto& t : raw->coord->Snapshot().targets)
          list.push_back({{"targets", {t.address}}, {"labels", {{"worker", t.worker_id}, {"role", "worker"}}}});
        r.content_type = "application/json";
        r.body = list.dump();
      } else {
        r.status = 404;
        r.body = "try /metrics or /sd\n";
      }
      return r;
    });
    if (!http.ok()) {
      impl->server->Shutdown();
      return Annotate(http.status(), "--metrics-listen");
    }
    impl->http = std::move(*http);
  }
  return std::unique_ptr<CoordinatorServer>(new CoordinatorServer(std::move(impl)));
}

CoordinatorServer::CoordinatorServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CoordinatorServer::~CoordinatorServer() { Shutdown(); }

std::string CoordinatorServer::address() const { return impl_->address; }
std::string CoordinatorServer::metrics_address() const { return impl_->http ? impl_->http->address() : ""; }
std::shared_ptr<grpc::Channel> CoordinatorServer::InProcessChannel() const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(8 << 20);
  return impl_->server->InProcessChannel(args);
}

void CoordinatorServer::Shutdown() {
  if (!impl_->server) return;
  impl_->coord->Shutdown();
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  impl_->server.reset();
  impl_->http.reset();
}

}  // namespace sae
