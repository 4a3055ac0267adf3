// Monitoring end to end: a real Prometheus server (Debian `prometheus`) on
// loopback, configured from deploy/prometheus/prometheus.yml, scrapes a real
// `sae train --metrics-listen` process, or (the deployed path) a real
// sae-coordinator and the sae-worker processes it lists at /sd; then
// Prometheus' HTTP API must have the contract metrics for that job, and every
// query of the Grafana dashboard must evaluate (the panels with data).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <future>
#include <regex>
#include <set>
#include <thread>

#include "tests/integration/test_util.h"

namespace {

using json = nlohmann::json;

fs::path Source(const std::string& rel) {
  const char* dir = std::getenv("SAE_SOURCE_DIR");
  return fs::path(dir ? dir : ".") / rel;
}

void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// A loopback port that was free a moment ago.
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// GET http://127.0.0.1:port/target over HTTP/1.0 (no chunked replies);
// returns the body, or "" when the server does not answer 200.
std::string HttpGet(int port, const std::string& target) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + target + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[8192];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t body = out.find("\r\n\r\n");
  if (out.compare(0, 12, "HTTP/1.0 200") != 0 && out.compare(0, 12, "HTTP/1.1 200") != 0) return "";
  return body == std::string::npos ? "" : out.substr(body + 4);
}

std::string UrlEncode(const std::string& s) {
  std::string out;
  char buf[4];
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      std::snprintf(buf, sizeof(buf), "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

// Prometheus' answer to an instant query (status "error" when unreachable),
// evaluated now or at `time` (Unix seconds, as Prometheus returns them).
json Query(int port, const std::string& promql, double time = 0) {
  std::string target = "/api/v1/query?query=" + UrlEncode(promql);
  if (time > 0) {
    char t[32];
    std::snprintf(t, sizeof(t), "%.3f", time);
    target += std::string("&time=") + t;
  }
  const std::string body = HttpGet(port, target);
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) return json{{"status", "error"}, {"error", "no JSON reply: " + body.substr(0, 200)}};
  return j;
}

size_t ResultCount(const json& reply) {
  if (reply.value("status", "") != "success") return 0;
  return reply["data"]["result"].size();
}

// Where the test's Prometheus scrapes. With `coordinator` set, the deploy
// config is kept as it is (coordinator target and its /sd for the workers)
// with only the addresses replaced; without it, the coordinator job is left
// out and the workers' HTTP SD becomes a static list of `workers`.
struct ScrapeTargets {
  std::string coordinator;  // HOST:PORT, or "" when no coordinator runs
  std::vector<std::string> workers;
};

// deploy/prometheus/prometheus.yml rewritten for a test: 1 s scrapes, loopback
// addresses. Everything else (honor_labels, relabelling, paths) is kept, so
// the test checks the deployed scrape semantics.
std::string DerivePrometheusConfig(const YAML::Node& deploy, const ScrapeTargets& t) {
  YAML::Node cfg = YAML::Clone(deploy);
  cfg["global"]["scrape_interval"] = "1s";
  cfg["global"]["evaluation_interval"] = "1s";
  YAML::Node jobs(YAML::NodeType::Sequence);
  for (const YAML::Node& job : cfg["scrape_configs"]) {
    YAML::Node j = YAML::Clone(job);
    if (j["http_sd_configs"]) {
      if (!t.coordinator.empty()) {
        for (YAML::Node sd : j["http_sd_configs"]) {
          sd["url"] = "http://" + t.coordinator + "/sd";
          sd["refresh_interval"] = "1s";
        }
      } else {
        j.remove("http_sd_configs");
        YAML::Node targets(YAML::NodeType::Sequence);
        for (const std::string& w : t.workers) targets.push_back(w);
        YAML::Node sc;
        sc["targets"] = targets;
        j["static_configs"].push_back(sc);
      }
    } else if (j["static_configs"]) {
      if (t.coordinator.empty()) continue;  // the coordinator is not running
      for (YAML::Node sc : j["static_configs"]) {
        YAML::Node targets(YAML::NodeType::Sequence);
        targets.push_back(t.coordinator);
        sc["targets"] = targets;
      }
    }
    jobs.push_back(j);
  }
  cfg["scrape_configs"] = jobs;
  YAML::Emitter e;
  e << cfg;
  return std::string(e.c_str()) + "\n";
}

// A background process started through sh; its pid is the program's own (exec).
// With `group`, it leads a process group (started under setsid) and Stop
// signals the whole group.
struct Process {
  int pid = -1;
  bool group = false;
  void Start(const std::string& cmd, const fs::path& pid_file, const fs::path& log) {
    Sh("sh -c 'echo $$ > " + pid_file.string() + "; exec " + cmd + "' > " + log.string() + " 2>&1 &");
    for (int i = 0; i < 50 && pid < 0; ++i) {
      const std::string p = ReadAll(pid_file);
      if (!p.empty() && p.back() == '\n')
        pid = std::stoi(p);
      else
        SleepMs(50);
    }
  }
  // SIGTERM, then SIGKILL after `grace_ms`; true when it ended.
  bool Stop(int grace_ms = 10000) {
    if (pid <= 0) return true;
    const int target = group ? -pid : pid;
    kill(target, SIGTERM);
    for (int i = 0; i < grace_ms / 50; ++i) {
      if (kill(target, 0) != 0) {
        pid = -1;
        return true;
      }
      SleepMs(50);
    }
    kill(target, SIGKILL);
    pid = -1;
    return false;
  }
  ~Process() { Stop(2000); }
};

// Starts a real Prometheus on DIR/prometheus.yml (data in DIR/tsdb, log in
// DIR/prometheus.log) at a free loopback port; returns the port once it
// answers /-/ready, or 0.
int StartPrometheus(const fs::path& dir, Process* prometheus) {
  const int port = FreePort();
  prometheus->Start("prometheus --config.file=" + (dir / "prometheus.yml").string() +
                        " --storage.tsdb.path=" + (dir / "tsdb").string() +
                        " --web.listen-address=127.0.0.1:" + std::to_string(port) + " --log.level=warn",
                    dir / "prometheus.pid", dir / "prometheus.log");
  if (prometheus->pid <= 0) return 0;
  for (int i = 0; i < 300; ++i) {
    if (!HttpGet(port, "/-/ready").empty()) return port;
    SleepMs(100);
  }
  return 0;
}

// Every query of the Grafana dashboard, with the template variables a user
// picks (job = `job_name`), evaluated by Prometheus at `time` (0: now): all
// succeed; the training panels return finite data, and so do the coordinator's
// (jobs, workers, restarts) when `service_data`. The template variables'
// label_values(...) queries find the job, its SAE and rank 0.
void CheckDashboard(int port, const std::string& job_name, double time, bool service_data) {
  const json dash = json::parse(ReadAll(Source("deploy/grafana/dashboards/saeforge-training.json")));
  const std::map<std::string, std::string> vars = {
      {"$__rate_interval", "30s"}, {"$__interval", "2s"}, {"$__range", "1m"},
      {"$job", job_name},          {"$sae", ".*"},        {"$rank", ".*"}};
  auto substitute = [&](std::string e) {
    for (const auto& [k, v] : vars)
      for (size_t p; (p = e.find(k)) != std::string::npos;) e.replace(p, k.size(), v);
    return e;
  };
  const std::regex service_metric("sae_(jobs|workers|job_restarts_total)\\b");
  int exprs = 0, training = 0, service = 0;
  for (const json& panel : dash["panels"]) {
    if (!panel.contains("targets")) continue;
    for (const json& target : panel["targets"]) {
      const std::string expr = substitute(target["expr"].get<std::string>());
      EXPECT_EQ(expr.find('$'), std::string::npos) << "unsubstituted variable: " << expr;
      const json r = Query(port, expr, time);
      ++exprs;
      EXPECT_EQ(r.value("status", ""), "success") << panel["title"] << ": " << expr << ": " << r.dump();
      if (std::regex_search(expr, service_metric)) {
        ++service;
        if (!service_data) continue;  // the coordinator's: not scraped here
      } else {
        ++training;
      }
      EXPECT_GT(ResultCount(r), 0u) << panel["title"] << ": no data for " << expr;
      for (const json& s : r["data"]["result"]) {
        const std::string v = s["value"][1].get<std::string>();
        EXPECT_TRUE(v != "NaN" && v != "+Inf" && v != "-Inf") << panel["title"] << ": " << expr << " = " << v;
      }
    }
  }
  EXPECT_GE(exprs, 15);
  EXPECT_GE(training, 12);
  EXPECT_GE(service, 3);

  const std::regex label_values("^label_values\\((.*),\\s*(\\w+)\\)$");
  std::set<std::string> labels;
  for (const json& v : dash["templating"]["list"]) {
    if (v.value("type", "") != "query") continue;
    const std::string q =
        substitute(v["query"].is_object() ? v["query"]["query"].get<std::string>() : v["query"].get<std::string>());
    std::smatch m;
    ASSERT_TRUE(std::regex_match(q, m, label_values)) << q;
    const json r = Query(port, m[1].str(), time);
    ASSERT_GT(ResultCount(r), 0u) << q;
    for (const json& series : r["data"]["result"]) {
      const std::string got = series["metric"].value(m[2].str(), "");
      EXPECT_FALSE(got.empty()) << q;
      labels.insert(m[2].str() + "=" + got);
    }
  }
  for (const std::string& want : {"job=" + job_name, "sae=" + job_name, std::string("rank=0")})
    EXPECT_TRUE(labels.count(want)) << want << " not offered by the dashboard's variables";
}

TEST(DerivePrometheusConfig, CoordinatorCanBeSwitchedOn) {
  const YAML::Node deploy = YAML::LoadFile(Source("deploy/prometheus/prometheus.yml").string());
  const YAML::Node without = YAML::Load(DerivePrometheusConfig(deploy, {"", {"127.0.0.1:1234"}}));
  ASSERT_EQ(without["scrape_configs"].size(), 1u);
  EXPECT_FALSE(without["scrape_configs"][0]["http_sd_configs"]);
  EXPECT_EQ(without["scrape_configs"][0]["static_configs"][0]["targets"][0].as<std::string>(), "127.0.0.1:1234");
  EXPECT_TRUE(without["scrape_configs"][0]["honor_labels"].as<bool>());
  const YAML::Node with = YAML::Load(DerivePrometheusConfig(deploy, {"127.0.0.1:9999", {}}));
  ASSERT_EQ(with["scrape_configs"].size(), 2u);
  std::set<std::string> seen;
  for (const YAML::Node& j : with["scrape_configs"]) {
    if (j["http_sd_configs"])
      seen.insert(j["http_sd_configs"][0]["url"].as<std::string>());
    else
      seen.insert(j["static_configs"][0]["targets"][0].as<std::string>());
  }
  EXPECT_EQ(seen, (std::set<std::string>{"http://127.0.0.1:9999/sd", "127.0.0.1:9999"}));
}

TEST(Monitoring, PrometheusScrapesTrainingAndEveryDashboardQueryEvaluates) {
  const fs::path dir = fs::path(::testing::TempDir()) / "sae_monitoring";
  fs::remove_all(dir);
  fs::create_directories(dir / "tsdb");
  const std::string job_name = "montest";
  // Sized to outlive the test: it is stopped with SIGTERM at the end.
  WriteAll(dir / "job.yaml", "name: " + job_name +
                                 "\ndata: {kind: synthetic, d_in: 32, latents: 64, k: 3}\n"
                                 "sae: {latents: 128, k: 4, k_schedule: {start: 32, end: 4, fraction: 0.5},"
                                 " dead_remedy: auxk, dead_window_tokens: 20000}\n"
                                 "train: {tokens: 2G, batch_tokens: 512, threads: 1, log_every_steps: 20}\n"
                                 "output: " +
                                 (dir / "out").string() + "\n");
  Process trainer;
  trainer.Start(Bin("sae") + " train " + (dir / "job.yaml").string() + " --quiet --metrics-listen 127.0.0.1:0",
                dir / "trainer.pid", dir / "trainer.log");
  ASSERT_GT(trainer.pid, 0);
  std::string worker;
  for (int i = 0; i < 200 && worker.empty(); ++i) {
    SleepMs(100);
    const std::string text = ReadAll(dir / "trainer.log");
    const size_t p = text.find("metrics at http://");
    if (p != std::string::npos) worker = text.substr(p + 18, text.find("/metrics", p) - p - 18);
  }
  ASSERT_FALSE(worker.empty()) << ReadAll(dir / "trainer.log");

  // promtool accepts what the training process serves.
  const std::string exposition = HttpGet(std::stoi(worker.substr(worker.rfind(':') + 1)), "/metrics");
  ASSERT_NE(exposition.find("sae_tokens_total"), std::string::npos) << exposition;
  WriteAll(dir / "metrics.txt", exposition);
  Result lint = Sh("promtool check metrics < " + (dir / "metrics.txt").string());
  EXPECT_EQ(lint.code, 0) << lint.out;

  const YAML::Node deploy = YAML::LoadFile(Source("deploy/prometheus/prometheus.yml").string());
  WriteAll(dir / "prometheus.yml", DerivePrometheusConfig(deploy, {"", {worker}}));
  Process prometheus;
  const int port = StartPrometheus(dir, &prometheus);
  ASSERT_GT(port, 0) << ReadAll(dir / "prometheus.log");

  // Enough scrapes for rate() and histogram_quantile() over a 30 s window.
  const std::string sel = "{job=\"" + job_name + "\"}";
  double scrapes = 0;
  for (int i = 0; i < 60 && scrapes < 6; ++i) {
    SleepMs(500);
    const json r = Query(port, "count_over_time(sae_tokens_total" + sel + "[1m])");
    if (ResultCount(r) > 0) scrapes = std::stod(r["data"]["result"][0]["value"][1].get<std::string>());
  }
  ASSERT_GE(scrapes, 6) << ReadAll(dir / "prometheus.log") << ReadAll(dir / "trainer.log");

  // The contract metrics carry the training job's name (honor_labels keeps it).
  auto value = [&](const std::string& promql) {
    const json r = Query(port, promql);
    EXPECT_EQ(ResultCount(r), 1u) << promql << ": " << r.dump();
    return ResultCount(r) ? std::stod(r["data"]["result"][0]["value"][1].get<std::string>()) : -1.0;
  };
  EXPECT_GT(value("sae_tokens_total" + sel), 0);
  EXPECT_GE(value("sae_reconstruction_mse" + sel), 0);
  const double dead = value("sae_dead_latents_ratio" + sel);
  EXPECT_GE(dead, 0);
  EXPECT_LE(dead, 1);
  EXPECT_GT(value("rate(sae_tokens_total" + sel + "[30s])"), 0);

  CheckDashboard(port, job_name, 0, /*service_data=*/false);

  EXPECT_TRUE(prometheus.Stop());
  EXPECT_TRUE(trainer.Stop(60000));
  // The run stopped with a checkpoint; its report is readable.
  Result rep = Sh(Bin("sae") + " report " + (dir / "out").string() + " --json");
  EXPECT_EQ(rep.code, 0) << rep.out;
  EXPECT_TRUE(fs::exists(dir / "out.partial/report.html")) << rep.out;
}

// The deployed path: sae-coordinator, two sae-worker processes registered
// with it, and Prometheus configured from deploy/prometheus/prometheus.yml
// with only the coordinator's address replaced, so it scrapes the coordinator
// and finds the workers through the coordinator's /sd (no worker is named in
// its config). A job submitted with `sae submit --wait` trains while
// Prometheus scrapes every second.
TEST(Monitoring, PrometheusFindsWorkersThroughTheCoordinatorsServiceDiscovery) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path dir = fs::path(::testing::TempDir()) / "sae_monitoring_sd";
  fs::remove_all(dir);
  fs::create_directories(dir / "tsdb");

  Process coordinator;
  coordinator.Start(
      Bin("sae-coordinator") + " --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --db " +
          (dir / "coord.db").string() + " --ready-file " + (dir / "ready.json").string() +
          " --lease-seconds 10 --heartbeat-seconds 1",  // the defaults: a busy CI host must not lose a lease
      dir / "coordinator.pid", dir / "coordinator.log");
  ASSERT_GT(coordinator.pid, 0);
  for (int i = 0; i < 200 && !fs::exists(dir / "ready.json"); ++i) SleepMs(50);
  ASSERT_TRUE(fs::exists(dir / "ready.json")) << ReadAll(dir / "coordinator.log");
  const json ready = json::parse(ReadAll(dir / "ready.json"));
  const std::string grpc_addr = ready["listen"], metrics_addr = ready["metrics"];
  const int coord_port = std::stoi(metrics_addr.substr(metrics_addr.rfind(':') + 1));

  Process workers[2];
  const std::set<std::string> worker_ids = {"mon-w1", "mon-w2"};
  int w = 0;
  for (const std::string& id : worker_ids) {
    workers[w].Start(
        Bin("sae-worker") + " --coordinator " + grpc_addr + " --worker-id " + id + " --metrics-listen 127.0.0.1:0",
        dir / (id + ".pid"), dir / (id + ".log"));
    ASSERT_GT(workers[w++].pid, 0);
  }
  auto logs = [&] {
    std::string all;
    for (const char* f : {"coordinator.log", "mon-w1.log", "mon-w2.log", "prometheus.log", "submit.log"})
      all += std::string("---- ") + f + "\n" + ReadAll(dir / f).substr(0, 8000) + "\n";
    return all;
  };
  // Both workers registered: the coordinator lists their endpoints at /sd.
  json sd;
  for (int i = 0; i < 200 && !(sd.is_array() && sd.size() == 2); ++i) {
    SleepMs(100);
    sd = json::parse(HttpGet(coord_port, "/sd"), nullptr, false);
  }
  ASSERT_TRUE(sd.is_array() && sd.size() == 2) << sd.dump() << logs();

  // The deploy config with the coordinator's address: its static target and
  // its /sd; nothing names a worker.
  const YAML::Node deploy = YAML::LoadFile(Source("deploy/prometheus/prometheus.yml").string());
  const std::string config = DerivePrometheusConfig(deploy, {metrics_addr, {}});
  for (const json& t : sd) ASSERT_EQ(config.find(t["targets"][0].get<std::string>()), std::string::npos) << config;
  WriteAll(dir / "prometheus.yml", config);
  Process prometheus;
  const int port = StartPrometheus(dir, &prometheus);
  ASSERT_GT(port, 0) << logs();

  // api/v1/targets: the coordinator target and both workers up, the workers
  // found at the coordinator's /sd (their `worker` label comes from it).
  std::set<std::string> up_workers;
  bool coordinator_up = false;
  json targets;
  for (int i = 0; i < 150 && !(coordinator_up && up_workers == worker_ids); ++i) {
    SleepMs(100);
    targets = json::parse(HttpGet(port, "/api/v1/targets?state=active"), nullptr, false);
    if (targets.is_discarded() || !targets.contains("data")) continue;
    up_workers.clear();
    coordinator_up = false;
    for (const json& t : targets["data"]["activeTargets"]) {
      if (t.value("health", "") != "up") continue;
      if (t["labels"].value("instance", "") == metrics_addr) coordinator_up = true;
      if (t["discoveredLabels"].value("__meta_url", "") == "http://" + metrics_addr + "/sd")
        up_workers.insert(t["labels"].value("worker", ""));
    }
  }
  EXPECT_TRUE(coordinator_up) << targets.dump();
  ASSERT_EQ(up_workers, worker_ids) << "workers not discovered through /sd: " << targets.dump() << logs();

  // A job on both workers (data parallel when gloo is built), sized to train
  // for several seconds (about 5 s at 300k tokens/s, 20 s at 75k on a busy
  // machine): enough 1 s scrapes for rate() and quantiles.
#ifdef SAE_TEST_HAVE_GLOO
  const int ranks = 2;
#else
  const int ranks = 1;
#endif
  const std::string job_name = "montest-sd";
  WriteAll(dir / "job.yaml", "name: " + job_name +
                                 "\ndata: {kind: synthetic, d_in: 32, latents: 64, k: 3}\n"
                                 "sae: {latents: 128, k: 4, k_schedule: {start: 32, end: 4, fraction: 0.5},"
                                 " dead_remedy: auxk, dead_window_tokens: 20000}\n"
                                 "train: {tokens: 1500000, batch_tokens: 512, threads: 1, log_every_steps: 20}\n"
                                 "world: {workers: " +
                                 std::to_string(ranks) +
                                 ", timeout_seconds: 20}\n"
                                 "output: " +
                                 (dir / "out").string() + "\n");
  auto submit = std::async(std::launch::async, [&] {
    return Sh(Bin("sae") + " submit " + (dir / "job.yaml").string() + " --wait --coordinator " + grpc_addr);
  });

  // While it trains: several scrapes of every rank. `at` is a moment during
  // training; the queries below are evaluated there.
  const std::string sel = "{job=\"" + job_name + "\"}";
  double at = 0;
  for (int i = 0; i < 120 && at == 0; ++i) {
    SleepMs(250);
    const json r = Query(port, "min(count_over_time(sae_tokens_total" + sel + "[1m])) and count(sae_tokens_total" +
                                   sel + ") == " + std::to_string(ranks));
    if (ResultCount(r) > 0 && std::stod(r["data"]["result"][0]["value"][1].get<std::string>()) >= 3)
      at = r["data"]["result"][0]["value"][0].get<double>();
    if (submit.wait_for(std::chrono::seconds(0)) == std::future_status::ready) break;
  }
  ASSERT_GT(at, 0) << "fewer than 3 scrapes of each rank during training (make the job longer?)\n" << logs();

  ASSERT_EQ(submit.wait_for(std::chrono::seconds(240)), std::future_status::ready) << logs();
  const Result sub = submit.get();
  EXPECT_EQ(sub.code, 0) << sub.out;
  EXPECT_NE(sub.out.find("SUCCEEDED"), std::string::npos) << sub.out;
  // `sae submit --wait` (like `sae watch`) says where the HTML report is.
  EXPECT_NE(sub.out.find("report: sae report " + (dir / "out").string()), std::string::npos) << sub.out;

  // The contract metrics of the job, one series per rank, scraped through the
  // `sae-workers` pool of the deploy config (the one fed by /sd).
  auto values = [&](const std::string& promql) {
    const json r = Query(port, promql, at);
    EXPECT_EQ(ResultCount(r), static_cast<size_t>(ranks)) << promql << ": " << r.dump();
    std::vector<double> v;
    for (const json& s : r["data"]["result"]) v.push_back(std::stod(s["value"][1].get<std::string>()));
    return v;
  };
  const std::string pool = "{job=\"" + job_name + "\",scrape_job=\"sae-workers\"}";
  for (double v : values("sae_tokens_total" + pool)) EXPECT_GT(v, 0);
  for (double v : values("sae_reconstruction_mse" + pool)) EXPECT_GE(v, 0);
  for (double v : values("sae_dead_latents_ratio" + pool)) {
    EXPECT_GE(v, 0);
    EXPECT_LE(v, 1);
  }
  std::set<std::string> ranks_seen;
  const json by_rank = Query(port, "sae_tokens_total" + pool, at);
  for (const json& s : by_rank["data"]["result"]) ranks_seen.insert(s["metric"].value("rank", ""));
  EXPECT_EQ(ranks_seen.size(), static_cast<size_t>(ranks));

  // The coordinator's own metrics, from its static target: a running job and
  // busy workers at that moment.
  const std::string coord = "{instance=\"" + metrics_addr + "\",scrape_job=\"sae-coordinator\"";
  const json running = Query(port, "sae_jobs" + coord + ",state=\"running\"}", at);
  ASSERT_EQ(ResultCount(running), 1u) << running.dump();
  EXPECT_EQ(running["data"]["result"][0]["value"][1], "1") << running.dump();
  const json workers_q = Query(port, "sum(sae_workers" + coord + "})", at);
  ASSERT_EQ(ResultCount(workers_q), 1u) << workers_q.dump();
  EXPECT_EQ(workers_q["data"]["result"][0]["value"][1], "2") << workers_q.dump();

  // Every dashboard query, the jobs/workers/restarts panels with data too.
  CheckDashboard(port, job_name, at, /*service_data=*/true);

  // After the job: the coordinator reports it succeeded.
  bool succeeded = false;
  for (int i = 0; i < 40 && !succeeded; ++i) {
    const json r = Query(port, "sae_jobs" + coord + ",state=\"succeeded\"} == 1");
    succeeded = ResultCount(r) == 1;
    if (!succeeded) SleepMs(250);
  }
  EXPECT_TRUE(succeeded);

  EXPECT_TRUE(prometheus.Stop());
  for (Process& p : workers) EXPECT_TRUE(p.Stop());
  EXPECT_TRUE(coordinator.Stop());
  const auto took = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - t0);
  EXPECT_LT(took.count(), 90) << "keep this test short";
}

// Value of the series `name{...}` in a /metrics text (-1 when absent).
double Sample(const std::string& text, const std::string& name) {
  const size_t p = text.find("\n" + name + "{");
  if (p == std::string::npos) return -1;
  return std::stod(text.substr(text.find("} ", p) + 2));
}

// Under data parallelism every rank counts the tokens it trained (its share
// of the global batch), so sum(rate(sae_tokens_total)) is the job's tokens/s.
TEST(Monitoring, EachRankCountsItsShareOfTheTokens) {
#ifndef SAE_TEST_HAVE_GLOO
  GTEST_SKIP() << "built without the gloo backend";
#endif
  const fs::path dir = fs::path(::testing::TempDir()) / "sae_monitoring_ranks";
  fs::remove_all(dir);
  fs::create_directories(dir);
  WriteAll(dir / "job.yaml",
           "name: ranks\ndata: {kind: synthetic, d_in: 16, latents: 32, k: 2}\n"
           "sae: {latents: 64, k: 4}\ntrain: {tokens: 2G, batch_tokens: 512, threads: 1}\n"
           "world: {workers: 2, timeout_seconds: 30}\noutput: " +
               (dir / "out").string() + "\n");
  int base = FreePort();
  for (int i = 0; i < 20 && base >= 65535; ++i) base = FreePort();
  const std::string cmd = Source("tests/run_ranks.sh").string() + " 2 " + Bin("sae-worker") + " --job " +
                          (dir / "job.yaml").string() + " --metrics-listen 127.0.0.1:" + std::to_string(base);
  Process ranks;
  ranks.group = true;  // run_ranks.sh and both ranks
  ranks.Start("setsid " + cmd, dir / "ranks.pid", dir / "ranks.log");
  ASSERT_GT(ranks.pid, 0);
  std::string m[2];
  for (int i = 0; i < 300 && (Sample(m[0], "sae_train_steps_total") < 3 || Sample(m[1], "sae_train_steps_total") < 3);
       ++i) {
    SleepMs(100);
    for (int r = 0; r < 2; ++r) m[r] = HttpGet(base + r, "/metrics");
  }
  for (int r = 0; r < 2; ++r) {
    const double steps = Sample(m[r], "sae_train_steps_total"), tokens = Sample(m[r], "sae_tokens_total");
    ASSERT_GE(steps, 3) << "rank " << r << ":\n" << m[r] << ReadAll(dir / "ranks.log");
    EXPECT_NE(m[r].find("rank=\"" + std::to_string(r) + "\""), std::string::npos) << m[r];
    // A scrape may fall between the two increments of one step.
    EXPECT_GE(tokens / 256, steps) << "rank " << r;
    EXPECT_LE(tokens / 256, steps + 1) << "rank " << r;
  }
  EXPECT_TRUE(ranks.Stop(30000));  // SIGTERM: both ranks checkpoint and stop
}

}  // namespace
