// The files under deploy/ as their tools read them: the Grafana dashboard has
// the model essentials and only contract metric names; Prometheus accepts its
// config; compose, Kubernetes and provisioning files parse as YAML and hold
// what docs/deploy.md says; the Dockerfile installs scripts/packages.txt.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <regex>
#include <set>

#include "tests/integration/test_util.h"

namespace {

using json = nlohmann::json;

fs::path Source(const std::string& rel) {
  const char* dir = std::getenv("SAE_SOURCE_DIR");
  return fs::path(dir ? dir : ".") / rel;
}

// ARCHITECTURE.md's metric names (contract).
const std::set<std::string> kContractMetrics = {"sae_dead_latents_ratio",
                                                "sae_reconstruction_mse",
                                                "sae_fraction_variance_unexplained",
                                                "sae_l0",
                                                "sae_k",
                                                "sae_auxiliary_loss",
                                                "sae_tokens_total",
                                                "sae_train_steps_total",
                                                "sae_step_duration_seconds",
                                                "sae_allreduce_duration_seconds",
                                                "sae_data_wait_seconds_total",
                                                "sae_jobs",
                                                "sae_workers",
                                                "sae_job_restarts_total"};

TEST(DeployFiles, DashboardHasTheGrafanaModelEssentials) {
  const json d = json::parse(ReadAll(Source("deploy/grafana/dashboards/saeforge-training.json")), nullptr, false);
  ASSERT_FALSE(d.is_discarded());
  EXPECT_TRUE(d["uid"].is_string() && !d["uid"].get<std::string>().empty());
  EXPECT_LE(d["uid"].get<std::string>().size(), 40u);  // Grafana's uid limit
  EXPECT_TRUE(d["title"].is_string() && !d["title"].get<std::string>().empty());
  ASSERT_TRUE(d["schemaVersion"].is_number_integer());
  EXPECT_GE(d["schemaVersion"].get<int>(), 30);

  std::map<std::string, std::string> vars;  // name -> type
  for (const json& v : d["templating"]["list"]) vars[v["name"]] = v["type"];
  EXPECT_EQ(vars["datasource"], "datasource");
  for (const char* v : {"job", "sae", "rank"}) EXPECT_EQ(vars[v], "query") << v;

  std::set<int> ids;
  std::set<std::string> titles, used;
  const std::regex metric("\\bsae_[a-z0-9_]+");
  for (const json& p : d["panels"]) {
    EXPECT_TRUE(ids.insert(p["id"].get<int>()).second) << "duplicate panel id " << p["id"];
    const json& g = p["gridPos"];
    EXPECT_LE(g["x"].get<int>() + g["w"].get<int>(), 24) << p["title"];
    if (p["type"] == "row") continue;
    titles.insert(p["title"]);
    EXPECT_EQ(p["datasource"]["uid"], "${datasource}") << p["title"];
    ASSERT_TRUE(p["targets"].is_array() && !p["targets"].empty()) << p["title"];
    for (const json& t : p["targets"]) {
      const std::string e = t["expr"];
      EXPECT_FALSE(e.empty()) << p["title"];
      for (std::sregex_iterator it(e.begin(), e.end(), metric), end; it != end; ++it) {
        std::string name = it->str();
        for (const char* suffix : {"_bucket", "_sum", "_count"}) {
          const std::string s = suffix;
          if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0 &&
              kContractMetrics.count(name.substr(0, name.size() - s.size())))
            name = name.substr(0, name.size() - s.size());
        }
        EXPECT_TRUE(kContractMetrics.count(name)) << p["title"] << ": " << name << " is not a contract metric";
        used.insert(name);
      }
      // Worker panels follow the job/sae/rank variables.
      if (e.find("sae_jobs") == std::string::npos && e.find("sae_workers") == std::string::npos &&
          e.find("sae_job_restarts") == std::string::npos)
        EXPECT_NE(e.find("job=~\"$job\",sae=~\"$sae\",rank=~\"$rank\""), std::string::npos) << e;
    }
  }
  for (const char* t : {"Dead-latent ratio", "Reconstruction MSE and FVU", "L0 and current k", "Auxiliary loss",
                        "Tokens/s", "Step time p50 / p99", "All-reduce time p50 / p99", "All-reduce share of the step",
                        "Data wait", "Jobs by state", "Workers by state", "Job restarts"})
    EXPECT_TRUE(titles.count(t)) << "no panel " << t;
  std::set<std::string> want = kContractMetrics;
  want.erase("sae_train_steps_total");  // steps: tokens/s says it better
  for (const std::string& m : want) EXPECT_TRUE(used.count(m)) << "no panel shows " << m;
}

TEST(DeployFiles, PrometheusConfigIsValidAndDiscoversWorkersAtTheCoordinator) {
  const fs::path cfg = Source("deploy/prometheus/prometheus.yml");
  Result r = Sh("promtool check config " + cfg.string());
  EXPECT_EQ(r.code, 0) << r.out;
  const YAML::Node y = YAML::LoadFile(cfg.string());
  bool sd = false, coordinator = false;
  for (const YAML::Node& j : y["scrape_configs"]) {
    EXPECT_TRUE(j["honor_labels"] && j["honor_labels"].as<bool>()) << "the job label must stay the training job's";
    if (j["http_sd_configs"]) sd = j["http_sd_configs"][0]["url"].as<std::string>() == "http://coordinator:9464/sd";
    if (j["static_configs"]) coordinator = j["static_configs"][0]["targets"][0].as<std::string>() == "coordinator:9464";
  }
  EXPECT_TRUE(sd);
  EXPECT_TRUE(coordinator);
}

std::vector<YAML::Node> LoadAll(const fs::path& p) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAllFromFile(p.string());
  } catch (const YAML::Exception& e) {
    ADD_FAILURE() << p << ": " << e.what();
  }
  return docs;
}

TEST(DeployFiles, ComposeParsesAndRunsTheFourServices) {
  const auto docs = LoadAll(Source("deploy/compose.yaml"));
  ASSERT_EQ(docs.size(), 1u);
  const YAML::Node s = docs[0]["services"];
  for (const char* name : {"coordinator", "worker", "prometheus", "grafana"}) EXPECT_TRUE(s[name]) << name;
  // Flags are the executables' contract.
  const std::string coord = YAML::Dump(s["coordinator"]["command"]);
  for (const char* flag : {"--listen", "--db", "--metrics-listen", "--data-root", "--output-root"})
    EXPECT_NE(coord.find(flag), std::string::npos) << flag;
  const std::string worker = YAML::Dump(s["worker"]["command"]);
  EXPECT_NE(worker.find("--coordinator"), std::string::npos);
  EXPECT_NE(worker.find("--metrics-listen"), std::string::npos);
  // Token auth is on: the secrets the flags read are mounted, the workers get
  // only theirs.
  auto secrets = [&](const char* service) {
    std::set<std::string> out;
    for (const YAML::Node& n : s[service]["secrets"]) out.insert(n.as<std::string>());
    return out;
  };
  EXPECT_EQ(secrets("coordinator"), (std::set<std::string>{"client_token", "worker_token"}));
  EXPECT_EQ(secrets("worker"), (std::set<std::string>{"worker_token"}));
  for (const char* t : {"client_token", "worker_token"}) {
    EXPECT_TRUE(docs[0]["secrets"][t]["file"]) << t;
    EXPECT_NE(coord.find("/run/secrets/" + std::string(t)), std::string::npos) << t;
  }
  EXPECT_NE(worker.find("--worker-token-file=/run/secrets/worker_token"), std::string::npos) << worker;
  // Prometheus and Grafana get the files of this directory.
  EXPECT_NE(YAML::Dump(s["prometheus"]["volumes"]).find("./prometheus/prometheus.yml"), std::string::npos);
  EXPECT_NE(YAML::Dump(s["grafana"]["volumes"]).find("./grafana/dashboards"), std::string::npos);
  for (const char* f : {"deploy/grafana/provisioning/datasources/prometheus.yaml",
                        "deploy/grafana/provisioning/dashboards/saeforge.yaml"}) {
    const auto p = LoadAll(Source(f));
    ASSERT_EQ(p.size(), 1u) << f;
    EXPECT_EQ(p[0]["apiVersion"].as<int>(), 1) << f;
  }
}

// The flags of a program, from its --help output.
std::set<std::string> HelpFlags(const std::string& cmd) {
  Result r = Sh(cmd + " --help");
  EXPECT_EQ(r.code, 0) << cmd << ": " << r.out;
  std::set<std::string> flags;
  const std::regex flag("--[a-z][a-z0-9-]*");
  for (std::sregex_iterator it(r.out.begin(), r.out.end(), flag), end; it != end; ++it) flags.insert(it->str());
  return flags;
}

// The --flags given to `program` in `text`: on each line (backslash
// continuations joined), the flags after the first word that names the
// program (`sae-worker`, `/opt/bin/sae-worker`, "$SAE_BIN/sae-worker"; not
// `sae-worker:50051` or `sae-workers`).
std::vector<std::string> FlagsOf(const std::string& program, std::string text) {
  for (size_t p; (p = text.find("\\\n")) != std::string::npos;) text.replace(p, 2, " ");
  const std::regex word("(^|[\\s'\"(/])" + program + "($|[\\s'\")])");
  const std::regex flag("(^|[^A-Za-z0-9_-])(--[a-z][a-z0-9-]*)");
  std::vector<std::string> out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (!std::regex_search(line, m, word)) continue;
    const std::string rest = m.suffix().str();
    for (std::sregex_iterator it(rest.begin(), rest.end(), flag), end; it != end; ++it) out.push_back((*it)[2].str());
  }
  return out;
}

// Every scalar of a YAML document, and every sequence of scalars joined by
// spaces (a container's command/args list), one a line.
void CommandLines(const YAML::Node& n, std::string* out) {
  if (n.IsScalar()) {
    *out += n.as<std::string>() + "\n";
  } else if (n.IsSequence()) {
    std::string joined;
    bool scalars = true;
    for (const YAML::Node& e : n) {
      if (!e.IsScalar())
        scalars = false;
      else
        joined += e.as<std::string>() + " ";
    }
    if (scalars) *out += joined + "\n";
    for (const YAML::Node& e : n) CommandLines(e, out);
  } else if (n.IsMap()) {
    for (const auto& kv : n) CommandLines(kv.second, out);
  }
}

// compose, Kubernetes and Slurm files pass only flags the executables have
// (their --help), so the files cannot drift from the binaries. Comments count
// too: an example there is copied by someone.
TEST(DeployFiles, EveryFlagGivenToSaeforgeExistsInItsHelp) {
  struct Program {
    std::string name;
    std::set<std::string> flags;
  };
  std::vector<Program> programs = {{"sae-worker", HelpFlags(Bin("sae-worker"))},
                                   {"sae submit", HelpFlags(Bin("sae") + " submit")}};
#ifdef SAE_TEST_HAVE_COORDINATOR
  programs.push_back({"sae-coordinator", HelpFlags(Bin("sae-coordinator"))});
#endif
  for (const Program& p : programs) ASSERT_GE(p.flags.size(), 5u) << p.name;
  std::vector<fs::path> files = {Source("deploy/compose.yaml"), Source("deploy/slurm/train.sbatch")};
  for (const auto& e : fs::directory_iterator(Source("deploy/k8s")))
    if (e.path().extension() == ".yaml") files.push_back(e.path());
  std::map<std::string, std::set<std::string>> used;  // "file program" -> flags
  for (const fs::path& f : files) {
    std::string text = ReadAll(f);  // every line, comments included
    if (f.extension() == ".yaml")
      for (const YAML::Node& d : LoadAll(f)) CommandLines(d, &text);  // multi-line args lists
    for (const Program& p : programs) {
      for (const std::string& flag : FlagsOf(p.name, text)) {
        EXPECT_TRUE(p.flags.count(flag)) << f.filename() << ": " << p.name << " has no " << flag;
        used[f.filename().string() + " " + p.name].insert(flag);
      }
    }
  }
  // The parser sees the commands that matter (an empty match would pass).
  const std::vector<std::pair<std::string, std::string>> want = {
      {"compose.yaml sae-worker", "--worker-token-file"},
      {"compose.yaml sae-worker", "--advertise-host"},
      {"compose.yaml sae-worker", "--metrics-listen"},
      {"compose.yaml sae submit", "--token-file"},
      {"worker.yaml sae-worker", "--worker-token-file"},
      {"worker.yaml sae-worker", "--worker-id"},
      {"worker.yaml sae-worker", "--advertise-host"},
      {"worker.yaml sae-worker", "--rendezvous-port"},
      {"worker.yaml sae-worker", "--fetch-data"},
      {"mpijob.yaml sae-worker", "--job"},
      {"train.sbatch sae-worker", "--coordinator"},
      {"train.sbatch sae-worker", "--job"},
      {"train.sbatch sae-worker", "--advertise-host"},
#ifdef SAE_TEST_HAVE_COORDINATOR
      {"compose.yaml sae-coordinator", "--worker-token-file"},
      {"compose.yaml sae-coordinator", "--client-token-file"},
      {"coordinator.yaml sae-coordinator", "--worker-token-file"},
      {"coordinator.yaml sae-coordinator", "--db"},
#endif
  };
  for (const auto& [where, flag] : want) EXPECT_TRUE(used[where].count(flag)) << where << " " << flag;
}

TEST(DeployFiles, KubernetesManifestsParse) {
  std::multiset<std::string> kinds;
  int files = 0;
  for (const auto& e : fs::directory_iterator(Source("deploy/k8s"))) {
    if (e.path().extension() != ".yaml") continue;
    ++files;
    for (const YAML::Node& d : LoadAll(e.path())) {
      if (!d || d.IsNull()) continue;
      ASSERT_TRUE(d["apiVersion"] && d["kind"] && d["metadata"]["name"]) << e.path();
      kinds.insert(d["kind"].as<std::string>());
    }
  }
  EXPECT_GE(files, 3);
  for (const char* k : {"StatefulSet", "Service", "Deployment", "MPIJob"}) EXPECT_GE(kinds.count(k), 1u) << k;
}

TEST(DeployFiles, DockerfileAndSlurmUseTheOnePackageList) {
  const std::string docker = ReadAll(Source("deploy/docker/Dockerfile"));
  EXPECT_NE(docker.find("debian:bookworm"), std::string::npos);
  EXPECT_NE(docker.find("scripts/packages.txt"), std::string::npos);
  EXPECT_GE(std::count(docker.begin(), docker.end(), '\n'), 10);
  size_t froms = 0;
  for (size_t p = 0; (p = docker.find("\nFROM ", p)) != std::string::npos; ++p) ++froms;
  EXPECT_GE(froms + (docker.rfind("FROM ", 0) == 0), 2u) << "multi-stage";
  Result r = Sh("bash -n " + Source("deploy/slurm/train.sbatch").string());
  EXPECT_EQ(r.code, 0) << r.out;
  const std::string sbatch = ReadAll(Source("deploy/slurm/train.sbatch"));
  EXPECT_NE(sbatch.find("#SBATCH --gpus-per-node"), std::string::npos);
  EXPECT_NE(sbatch.find("srun"), std::string::npos);
}

}  // namespace
