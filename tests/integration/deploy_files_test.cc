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
const std::set<std::string> kContractMetrics = {
    "sae_dead_latents_ratio", "sae_reconstruction_mse", "sae_fraction_variance_unexplained", "sae_l0",
    "sae_k", "sae_auxiliary_loss", "sae_tokens_total", "sae_train_steps_total", "sae_step_duration_seconds",
    "sae_allreduce_duration_seconds", "sae_data_wait_seconds_total", "sae_jobs", "sae_workers",
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
                        "Tokens/s", "Step time p50 / p99", "All-reduce time p50 / p99",
                        "All-reduce share of the step", "Data wait", "Jobs by state", "Workers by state",
                        "Job restarts"})
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
