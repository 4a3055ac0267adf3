#include "core/telemetry/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/text_serializer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <map>
#include <thread>

namespace sae {

struct TrainingMetrics::Impl {
  std::string host;
  int port = 0;
  int listen_fd = -1;
  std::atomic<bool> stop{false};
  std::thread server;  // answers GET /metrics, one connection at a time
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
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
};

namespace {

prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  // 1 ms .. ~65 s, doubling.
  prometheus::Histogram::BucketBoundaries b;
  for (double v = 0.001; v < 70; v *= 2) b.push_back(v);
  return b;
}

}  // namespace

// Serves the registry's text exposition to each connection until stopped.
void Serve(TrainingMetrics::Impl* impl, std::shared_ptr<prometheus::Registry> registry);

absl::StatusOr<std::unique_ptr<TrainingMetrics>> TrainingMetrics::Start(const std::string& listen,
                                                                        const MetricLabels& labels) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return absl::InvalidArgumentError(absl::StrCat("--metrics-listen: '", listen, "' is not HOST:PORT"));
  auto impl = std::make_unique<Impl>();
  impl->host = listen.substr(0, colon);
  const std::string port_text = listen.substr(colon + 1);
  if (port_text.empty() || port_text.find_first_not_of("0123456789") != std::string::npos ||
      std::stol(port_text) > 65535)
    return absl::InvalidArgumentError(absl::StrCat("--metrics-listen: '", listen, "': bad port"));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::stoi(port_text)));
  const std::string host = impl->host == "localhost" ? "127.0.0.1" : impl->host;
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1)
    return absl::InvalidArgumentError(absl::StrCat("--metrics-listen: '", listen, "': HOST must be an IPv4 address"));
  impl->listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  ::setsockopt(impl->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  socklen_t len = sizeof(a);
  if (impl->listen_fd < 0 || ::bind(impl->listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::listen(impl->listen_fd, 16) != 0 ||
      ::getsockname(impl->listen_fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    const std::string err = std::strerror(errno);
    if (impl->listen_fd >= 0) ::close(impl->listen_fd);
    return absl::UnavailableError(absl::StrCat("--metrics-listen ", listen, ": cannot listen: ", err));
  }
  impl->port = ntohs(a.sin_port);
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
  impl->aux = gauge("sae_auxiliary_loss", "The dead-latent remedy's loss term of the last step.",
                    {{"remedy", labels.remedy}});
  impl->tokens = counter("sae_tokens_total", "Tokens trained by this process.");
  impl->steps = counter("sae_train_steps_total", "Optimizer steps taken by this process.");
  impl->data_wait = counter("sae_data_wait_seconds_total", "Time steps waited for activation data.");
  impl->step_time = histogram("sae_step_duration_seconds", "Wall time of one optimizer step.");
  impl->allreduce_time = histogram("sae_allreduce_duration_seconds", "All-reduce time within one step.");
  Impl* raw = impl.get();
  raw->server = std::thread(Serve, raw, raw->registry);
  return std::unique_ptr<TrainingMetrics>(new TrainingMetrics(std::move(impl)));
}

void Serve(TrainingMetrics::Impl* impl, std::shared_ptr<prometheus::Registry> registry) {
  while (!impl->stop.load()) {
    pollfd p{impl->listen_fd, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    const int c = ::accept4(impl->listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    timeval tv{2, 0};
    ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    std::string req;
    char buf[2048];
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 16384) {
      const ssize_t n = ::recv(c, buf, sizeof(buf), 0);
      if (n <= 0) break;
      req.append(buf, static_cast<size_t>(n));
    }
    std::string resp;
    if (req.rfind("GET /metrics", 0) == 0) {
      const std::string body = prometheus::TextSerializer().Serialize(registry->Collect());
      resp = absl::StrCat("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                          "Content-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
    } else {
      resp = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    }
    for (size_t off = 0; off < resp.size();) {
      const ssize_t n = ::send(c, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    ::close(c);
  }
}

TrainingMetrics::TrainingMetrics(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TrainingMetrics::~TrainingMetrics() {
  impl_->stop = true;
  if (impl_->server.joinable()) impl_->server.join();
  ::close(impl_->listen_fd);
}

std::string TrainingMetrics::address() const { return absl::StrCat(impl_->host, ":", impl_->port); }

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
}

}  // namespace sae
