#include "core/telemetry/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <map>

#include "core/base/blas_kernel.h"
#include "core/telemetry/http_server.h"

namespace sae {

struct TrainingMetrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<HttpServer> server;  // answers GET /metrics; stopped first by the destructor
  prometheus::Gauge* dead = nullptr;
  prometheus::Gauge* mse = nullptr;
  prometheus::Gauge* fvu = nullptr;
  prometheus::Gauge* l0 = nullptr;
  prometheus::Gauge* k = nullptr;
  prometheus::Gauge* aux = nullptr;
  prometheus::Counter* tokens = nullptr;
  prometheus::Counter* steps = nullptr;
  prometheus::Counter* data_wait = nullptr;
  prometheus::Histogram* step_time = nullptr;
  prometheus::Histogram* allreduce_time = nullptr;
  prometheus::Counter* screen_fallback = nullptr;
  prometheus::Gauge* screen_candidates = nullptr;
};

namespace {

prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  // 1 ms .. ~65 s, doubling.
  prometheus::Histogram::BucketBoundaries b;
  for (double v = 0.001; v < 70; v *= 2) b.push_back(v);
  return b;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TrainingMetrics>> TrainingMetrics::Start(const std::string& listen,
                                                                        const MetricLabels& labels) {
  auto impl = std::make_unique<Impl>();
  const std::map<std::string, std::string> l = {
      {"job", labels.job}, {"sae", labels.sae}, {"rank", labels.rank}, {"role", labels.role}};
  auto& reg = *impl->registry;
  auto gauge = [&](const char* name, const char* help, std::map<std::string, std::string> extra = {}) {
    auto all = l;
    all.insert(extra.begin(), extra.end());
    return &prometheus::BuildGauge().Name(name).Help(help).Register(reg).Add(all);
  };
  auto counter = [&](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(reg).Add(l);
  };
  auto histogram = [&](const char* name, const char* help) {
    return &prometheus::BuildHistogram().Name(name).Help(help).Register(reg).Add(l, SecondsBuckets());
  };
  impl->dead = gauge("sae_dead_latents_ratio", "Latents that did not fire in the dead window, over all latents.");
  impl->mse = gauge("sae_reconstruction_mse", "Mean squared reconstruction error of the last step.");
  impl->fvu = gauge("sae_fraction_variance_unexplained", "Fraction of variance unexplained of the last step.");
  impl->l0 = gauge("sae_l0", "Active latents per token in the last step.");
  impl->k = gauge("sae_k", "The current k of the k schedule.");
  impl->aux =
      gauge("sae_auxiliary_loss", "The dead-latent remedy's loss term of the last step.", {{"remedy", labels.remedy}});
  impl->tokens = counter("sae_tokens_total", "Tokens trained by this process.");
  impl->steps = counter("sae_train_steps_total", "Optimizer steps taken by this process.");
  impl->data_wait = counter("sae_data_wait_seconds_total", "Time steps waited for activation data.");
  impl->step_time = histogram("sae_step_duration_seconds", "Wall time of one optimizer step.");
  impl->allreduce_time = histogram("sae_allreduce_duration_seconds", "All-reduce time within one step.");
  // train.encoder: int8_screened (docs/algorithms.md): rows whose screened
  // top-k could not be certified and were recomputed exactly, and the
  // current candidate count C. Zero with the dense encoder.
  impl->screen_fallback = counter("sae_screen_fallback_rows_total",
                                  "Rows of the int8-screened encoder recomputed exactly (not certified).");
  impl->screen_candidates =
      gauge("sae_screen_candidates", "Candidates per row of the int8-screened encoder (0: dense encoder).");
  // The BLAS kernel this process runs its GEMMs on (core/base/blas_kernel.h).
  const BlasKernel& blas = CurrentBlasKernel();
  gauge("sae_build_info", "Constant 1; labels say how this process was built and runs.",
        {{"blas", blas.library}, {"blas_core", blas.core}, {"blas_core_source", blas.source}})
      ->Set(1);
  // The registry outlives the server: the handler holds a reference.
  std::shared_ptr<prometheus::Registry> registry = impl->registry;
  auto server = HttpServer::Start(listen, [registry](const std::string& path) {
    HttpResponse r;
    if (path != "/metrics") {
      r.status = 404;
      return r;
    }
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = prometheus::TextSerializer().Serialize(registry->Collect());
    return r;
  });
  if (!server.ok()) return Annotate(server.status(), "--metrics-listen");
  impl->server = std::move(*server);
  return std::unique_ptr<TrainingMetrics>(new TrainingMetrics(std::move(impl)));
}

TrainingMetrics::TrainingMetrics(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TrainingMetrics::~TrainingMetrics() { impl_->server.reset(); }

std::string TrainingMetrics::address() const { return impl_->server->address(); }

void TrainingMetrics::Record(const StepSample& s) {
  impl_->dead->Set(s.dead_ratio);
  impl_->mse->Set(s.mse);
  impl_->fvu->Set(s.fvu);
  impl_->l0->Set(s.l0);
  impl_->k->Set(static_cast<double>(s.k));
  impl_->aux->Set(s.aux_loss);
  impl_->tokens->Increment(static_cast<double>(s.tokens));
  impl_->steps->Increment();
  impl_->data_wait->Increment(s.data_wait_seconds);
  impl_->step_time->Observe(s.step_seconds);
  impl_->allreduce_time->Observe(s.allreduce_seconds);
  impl_->screen_fallback->Increment(static_cast<double>(s.screen_fallback_rows));
  impl_->screen_candidates->Set(static_cast<double>(s.screen_candidates));
}

}  // namespace sae
