// bench_serve: latency of a running `sae serve` (start it first, e.g.
// `sae serve --model M --sae RUN --listen 127.0.0.1:8090`) under N concurrent
// clients on loopback, each sending a bounded number of requests:
//   POST /api/activations  a 64-token text, its tokens' codes
//   POST /api/generate     64 positions, unsteered and steered (one request: both columns)
// Prints p50/p99/max per endpoint and the requests/s of all clients together.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "benchmarks/bench_util.h"
#include "cli/flags.h"
#include "core/base/mutex.h"

using sae::bench::Commit;
using sae::bench::CpuModel;
using sae::bench::SteadyNow;
using json = nlohmann::json;

int main(int argc, char** argv) {
  sae::flags::Command app{"bench_serve: sae serve latency under concurrent clients"};
  std::string host = "127.0.0.1";
  int port = 8090, clients = 8, requests = 40, latent = 0;
  app.AddOption("--host", host, "server host");
  app.AddOption("--port", port, "server port").Required();
  app.AddOption("--clients", clients, "concurrent clients");
  app.AddOption("--requests", requests, "requests per client per endpoint");
  app.AddOption("--latent", latent, "latent steered and coloured");
  if (auto rc = app.Parse(argc, argv)) return *rc;
  httplib::Client probe(host, port);
  auto info = probe.Get("/api/info");
  if (!info || info->status != 200) {
    std::fprintf(stderr, "error: no sae serve answering on %s:%d\n", host.c_str(), port);
    return 1;
  }
  std::printf("machine: %s, %u hardware threads; build %s, commit %s\n", CpuModel().c_str(),
              std::thread::hardware_concurrency(), SAE_BUILD_TYPE, Commit().c_str());
  std::printf("server: %s\nconfig: %d clients x %d requests per endpoint, loopback\n\n", info->body.c_str(), clients,
              requests);
  // A text of exactly 64 tokens is not needed to the token; report what the server saw.
  std::string text =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. "
      "One day, she saw a big red ball in the park and ran to get it. Her mom said it was time to go";
  auto check = probe.Post("/api/activations", json{{"text", text}}.dump(), "application/json");
  const size_t text_tokens = check ? json::parse(check->body)["tokens"].size() : 0;
  const json gen = {
      {"prompt", "Once upon a time"}, {"steps", 64}, {"seed", 1}, {"steer", {{{"latent", latent}, {"scale", 4}}}}};
  auto bench = [&](const char* path, const std::string& body) {
    std::vector<double> lat;
    sae::Mutex mu;
    std::atomic<int> errors{0};
    const double t0 = SteadyNow();
    std::vector<std::thread> ts;
    for (int c = 0; c < clients; ++c)
      ts.emplace_back([&] {
        httplib::Client cl(host, port);
        cl.set_read_timeout(120, 0);
        std::vector<double> mine;
        for (int i = 0; i < requests; ++i) {
          const double s = SteadyNow();
          auto r = cl.Post(path, body, "application/json");
          if (!r || r->status != 200) ++errors;
          mine.push_back(SteadyNow() - s);
        }
        sae::MutexLock l(&mu);
        lat.insert(lat.end(), mine.begin(), mine.end());
      });
    for (auto& t : ts) t.join();
    const double wall = SteadyNow() - t0;
    std::sort(lat.begin(), lat.end());
    auto q = [&](double p) { return 1e3 * lat[std::min(lat.size() - 1, static_cast<size_t>(p * lat.size()))]; };
    std::printf("%-44s %8.1f %8.1f %8.1f %9.1f %6d\n", path, q(0.5), q(0.99), 1e3 * lat.back(), lat.size() / wall,
                errors.load());
  };
  std::printf("%-44s %8s %8s %8s %9s %6s\n", "endpoint", "p50 ms", "p99 ms", "max ms", "req/s", "errors");
  std::printf("(/api/activations text: %zu tokens; /api/generate: 64 positions, both columns)\n", text_tokens);
  bench("/api/activations", json{{"text", text}, {"latent", latent}}.dump());
  bench("/api/generate", gen.dump());
  return 0;
}
