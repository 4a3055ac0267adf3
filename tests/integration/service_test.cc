// The service as operators and researchers run it: a real sae-coordinator,
// real sae-worker processes and the `sae` client on loopback, ephemeral
// ports, temporary directories. Every wait is bounded.
#include "tests/integration/service_fixture.h"

#include <cstdio>

#include "core/base/config.h"

namespace {

using sae::FieldUse;
using sae::JobConfig;
using sae::JobField;
using sae::ListJobFields;
using sae::LoadJobConfig;
using sae::ParseJobConfig;

TEST_F(Service, TwoWorkersTrainAJobEndToEnd) {
  StartCoordinator({});
  StartWorker("w1");
  StartWorker("w2");
  const std::string id = Submit(SynthJob("run", 2, 40000, 10000));
  Result watch = Sae("watch " + id);
  EXPECT_EQ(watch.code, 0) << watch.out;
  EXPECT_NE(watch.out.find("tok/s"), std::string::npos) << watch.out;
  EXPECT_NE(watch.out.find("RUNNING"), std::string::npos) << watch.out;
  EXPECT_NE(watch.out.find("SUCCEEDED"), std::string::npos) << watch.out;
  // It says where the HTML report is: the command that writes it.
  EXPECT_NE(watch.out.find("report: sae report " + (dir_ / "run").string()), std::string::npos) << watch.out;
  // --json stays machine-readable: one JSON object a line, no hint.
  Result wj = Sae("watch " + id + " --json");
  EXPECT_EQ(wj.code, 0) << wj.out;
  std::istringstream lines(wj.out);
  int objects = 0;
  for (std::string line; std::getline(lines, line);) {
    EXPECT_TRUE(json::parse(line, nullptr, false).is_object()) << line;
    ++objects;
  }
  EXPECT_GE(objects, 1) << wj.out;
  json st = Status(id);
  ASSERT_TRUE(StateIs(st, "SUCCEEDED")) << st.dump();
  EXPECT_EQ(st["workers"].size(), 0u);
  EXPECT_EQ(Num(st["progress"], "tokens"), 40000);
  const fs::path out = dir_ / "run";
  for (const char* f : {"sae.safetensors", "cfg.json", "metrics.jsonl", "summary.json"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  json summary = json::parse(ReadAll(out / "summary.json"));
  EXPECT_EQ(summary["tokens"].get<int64_t>(), 40000);
  EXPECT_LT(summary["fvu"].get<double>(), 1.0);
  auto tensors = ReadF32Tensors(out / "sae.safetensors");
  EXPECT_FALSE(tensors.empty());
  // History: PENDING → SCHEDULED → RUNNING → SUCCEEDED, with times.
  std::vector<std::string> states;
  for (const auto& t : st["history"]) states.push_back(t["to"]);
  EXPECT_EQ(states, (std::vector<std::string>{"PENDING", "SCHEDULED", "RUNNING", "SUCCEEDED"})) << st.dump();
  Result jobs = Sae("jobs");
  EXPECT_NE(jobs.out.find(id), std::string::npos) << jobs.out;
  // Cancelling a finished job is refused; an unknown id is NOT_FOUND.
  Result c = Sae("cancel " + id);
  EXPECT_EQ(c.code, 1);
  EXPECT_NE(c.out.find("already finished"), std::string::npos) << c.out;
  Result nf = Sae("status job-999999");
  EXPECT_EQ(nf.code, 1);
  EXPECT_NE(nf.out.find("no such job"), std::string::npos) << nf.out;

  // Metrics: contract names, promtool-clean; /sd lists both workers.
  const std::string m = HttpGet("/metrics");
  EXPECT_NE(m.find("sae_jobs{"), std::string::npos) << m;
  EXPECT_NE(m.find("state=\"succeeded\""), std::string::npos) << m;
  EXPECT_NE(m.find("sae_workers{"), std::string::npos) << m;
  EXPECT_NE(m.find("sae_job_restarts_total"), std::string::npos) << m;
  WriteAll(dir_ / "metrics.txt", m);
  Result prom = Sh("promtool check metrics < " + (dir_ / "metrics.txt").string());
  EXPECT_EQ(prom.code, 0) << prom.out;
  json sd = json::parse(HttpGet("/sd"), nullptr, false);
  ASSERT_TRUE(sd.is_array()) << HttpGet("/sd");
  std::set<std::string> workers;
  for (const auto& t : sd) {
    workers.insert(t["labels"]["worker"].get<std::string>());
    EXPECT_EQ(t["targets"].size(), 1u);
    EXPECT_EQ(t["targets"][0].get<std::string>().rfind("127.0.0.1:", 0), 0u);
  }
  EXPECT_EQ(workers, (std::set<std::string>{"w1", "w2"}));
  // An idle worker's target stays up (an empty exposition) for Prometheus.
  const std::string coord_metrics = metrics_;
  metrics_ = sd[0]["targets"][0].get<std::string>();
  WriteAll(dir_ / "idle.txt", HttpGet("/metrics"));
  EXPECT_TRUE(last_http_ok_) << "idle worker endpoint " << metrics_;
  metrics_ = coord_metrics;
  Result idle = Sh("promtool check metrics < " + (dir_ / "idle.txt").string());
  EXPECT_EQ(idle.code, 0) << idle.out;
}

// Every job field survives submit -> coordinator -> worker: jobs that set
// every field to a value other than its default (one synthetic, one on
// shards: the two kinds' data fields), submitted with `sae submit` to a real
// coordinator, trained by two real workers over gloo; the job each run
// writes as OUTPUT/job.yaml (the config it trained with) is compared field
// by field with the submitted file. The field list comes from the config
// structs, so a new field is checked here without an edit, and the test
// fails until the jobs below set it (docs/formats.md "Adding a job field").
TEST_F(Service, EveryJobFieldReachesTheWorkerUnchanged) {
  // Shards for the second job: 512 rows x 24 float32 from a .npy file.
  const int rows = 512, d = 24;
  {
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                         std::to_string(d) + "), }";
    header.append(64 - (10 + header.size() + 1) % 64, ' ');
    header += '\n';
    std::string npy = std::string("\x93NUMPY\x01\x00", 8);
    npy.push_back(static_cast<char>(header.size() & 0xff));
    npy.push_back(static_cast<char>(header.size() >> 8));
    npy += header;
    for (int i = 0; i < rows * d; ++i) {
      const float v = static_cast<float>(((i * 7919) % 1000) / 500.0 - 1.0);
      npy.append(reinterpret_cast<const char*>(&v), sizeof(v));
    }
    WriteAll(dir_ / "acts.npy", npy);
    Result imp =
        Sh(Bin("sae") + " inspect --import-npy " + (dir_ / "acts.npy").string() + " --out " + (dir_ / "acts").string());
    ASSERT_EQ(imp.code, 0) << imp.out;
  }
  __builtin_cpu_init();
  const bool kInt8Cpu = __builtin_cpu_supports("avx512vnni") || __builtin_cpu_supports("avxvnni");
  const std::string model_and_training =
      "  k: 6\n"
      "  k_schedule: {start: 12, end: 6, fraction: 0.5, shape: cosine, loss: current_k, current_k_weight: 0.5}\n"
      "  dead_window_tokens: 5000\n"
      "  dead_remedy: ghost_grads\n"
      "  aux_coefficient: 0.05\n"
      "  normalize: layer_norm\n"
      "  init_b_dec: zero\n"
      "  auxk_scale: none\n"
      "  init_encoder_scale: match_norm\n"
      "train:\n"
      "  tokens: 3072\n"
      "  batch_tokens: 128\n"
      "  lr: 0.001\n"
      "  warmup_fraction: 0.05\n"
      "  lr_decay: cosine\n"
      "  decay_start_fraction: 0.5\n"
      "  grad_clip: 0.5\n"
      "  seed: 9\n"
      "  precision: bf16\n" +
      // int8_screened needs VNNI (core/sae/int8_screen.h); elsewhere it stays dense.
      std::string(kInt8Cpu ? "  encoder: int8_screened\n" : "") +
      "  checkpoint_every_tokens: 1024\n"
      "  log_every_steps: 3\n"
      "  device: cpu\n"
      "  threads: 1\n"
      "world: {workers: 2, backend: gloo, timeout_seconds: 45}\n";
  const std::string synthetic =
      "name: every-field\n"
      "data: {kind: synthetic, d_in: 24, latents: 48, k: 3, seed: 11, noise: 0.02, frequency_decay: 0.5}\n"
      "sae:\n"
      "  expansion_factor: 4\n" +
      model_and_training + "output: " + (dir_ / "every").string() + "\n";
  const std::string shards =
      "name: every-field-shards\n"
      "data: {kind: shards, path: " +
      (dir_ / "acts").string() +
      ", shuffle_buffer_rows: 100}\n"
      "sae:\n"
      "  latents: 72\n" +
      model_and_training + "output: " + (dir_ / "every-shards").string() + "\n";

  StartCoordinator({});
  StartWorker("w1");
  StartWorker("w2");
  const std::vector<JobField> defaults = ListJobFields(JobConfig());
  std::vector<bool> changed(defaults.size(), false);
  for (const auto& [yaml, out] :
       {std::make_pair(synthetic, std::string("every")), std::make_pair(shards, std::string("every-shards"))}) {
    SCOPED_TRACE(out);
    auto sent = ParseJobConfig(yaml, out + ".yaml");
    ASSERT_TRUE(sent.ok()) << sent.status();
    const std::string id = Submit(yaml);
    json st = WaitFor(id, Terminal, 240);
    ASSERT_TRUE(StateIs(st, "SUCCEEDED")) << st.dump();
    // `sae status --json` still shows the spec as the job's fields.
    EXPECT_EQ(st["spec"]["sae"]["k"], "6") << st["spec"].dump();
    EXPECT_EQ(st["spec"]["train"]["lr_decay"], "cosine") << st["spec"].dump();
    auto trained = LoadJobConfig((dir_ / out / "job.yaml").string());
    ASSERT_TRUE(trained.ok()) << trained.status();
    const std::vector<JobField> a = ListJobFields(*sent), b = ListJobFields(*trained);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i].use == FieldUse::kNotInFile) continue;  // source_path
      EXPECT_EQ(a[i].value, b[i].value) << a[i].name << " changed on its way to the worker";
      if (a[i].value != defaults[i].value) changed[i] = true;
      if (a[i].use == FieldUse::kKey && a[i].name != "data.kind" && (a[i].name != "train.encoder" || kInt8Cpu))
        EXPECT_NE(a[i].value, defaults[i].value) << a[i].name << ": give it a non-default value in this test";
    }
    EXPECT_TRUE(fs::exists(dir_ / out / "summary.json"));
  }
  // Across the two jobs every field but lm's data fields is away from its
  // default (lm jobs: the reader/writer round trip in test_base covers them).
  for (size_t i = 0; i < defaults.size(); ++i) {
    const std::string& n = defaults[i].name;
    if (defaults[i].use == FieldUse::kNotInFile || n == "data.model" || n == "data.layer" || n == "data.corpus" ||
        n == "data.context" || (n == "train.encoder" && !kInt8Cpu))
      continue;
    EXPECT_TRUE(changed[i]) << n << ": no job here sets it";
  }
}

TEST_F(Service, KilledWorkerRestartsTheJobFromItsCheckpoint) {
  StartCoordinator({});
  StartWorker("w1");
  Proc& w2 = StartWorker("w2");
  const int64_t total = 400000, every = 40000;
  const std::string id = Submit(SynthJob("run", 2, total, every));
  json st = WaitFor(
      id,
      [&](const json& j) { return Prog(j, "checkpoint_step") > 0 && Prog(j, "tokens") > Prog(j, "checkpoint_tokens"); },
      120);
  ASSERT_FALSE(Terminal(st)) << "the job finished before the kill: make it longer";
  ASSERT_EQ(st["workers"].size(), 2u);
  w2.Kill(SIGKILL);
  st = WaitFor(
      id, [](const json& j) { return StateIs(j, "RESTARTING") || Terminal(j); }, 60);
  EXPECT_TRUE(StateIs(st, "RESTARTING")) << st.dump();
  EXPECT_NE(st.value("reason", "").find("restart 1 of 3"), std::string::npos) << st.dump();
  StartWorker("w3");
  st = WaitFor(id, Terminal, 240);
  ASSERT_TRUE(StateIs(st, "SUCCEEDED")) << st.dump();
  EXPECT_EQ(st.value("restarts", 0), 1);
  const int64_t trained = Num(st["progress"], "tokens_trained");
  EXPECT_GE(trained, total);
  EXPECT_LE(trained, total + every) << "resumed from the checkpoint, not from the start";
  std::set<std::string> seen;
  for (const auto& t : st["history"]) seen.insert(t["to"].get<std::string>());
  EXPECT_TRUE(seen.count("RESTARTING"));
  EXPECT_TRUE(fs::exists(dir_ / "run" / "summary.json"));
  EXPECT_NE(HttpGet("/metrics").find("sae_job_restarts_total{role=\"coordinator\"} 1"), std::string::npos)
      << HttpGet("/metrics");
}

// One client cannot break `sae jobs` for everyone: names are bounded (and
// free of control characters) at submit, and the listing comes in pages.
TEST_F(Service, ListingPagesAndBoundedNames) {
  StartCoordinator({});
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(Submit(SynthJob("out" + std::to_string(i), 1, 1000, 0)));
  Result r = Sae("jobs --json --page-size 2");
  ASSERT_EQ(r.code, 0) << r.out;
  json all = json::parse(r.out);
  ASSERT_EQ(all["jobs"].size(), 5u) << r.out;
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(all["jobs"][i]["id"], ids[i]);
  EXPECT_NE(Sae("jobs --page-size 5000").code, 0);
  for (const std::string& name : {std::string(300, 'x'), std::string("two\nlines")}) {
    const fs::path f = dir_ / "bad_name.yaml";
    json quoted = name;
    WriteAll(f, "name: " + quoted.dump() + "\n" +
                    SynthJob("bad", 1, 1000, 0).substr(SynthJob("bad", 1, 1000, 0).find('\n') + 1));
    Result b = Sae("submit " + f.string());
    EXPECT_NE(b.code, 0) << b.out;
    EXPECT_NE(b.out.find("name"), std::string::npos) << b.out;
  }
  EXPECT_EQ(json::parse(Sae("jobs --json").out)["jobs"].size(), 5u);
}

TEST_F(Service, CoordinatorRestartKeepsTheJob) {
  Proc* coord = &StartCoordinator({});
  const std::string listen = addr_;
  Proc& w1 = StartWorker("w1");
  // Long enough to be still training when the coordinator is killed: on an
  // idle core this job trains at ~190k tokens/s since the small-d encoder
  // landed, and 300k tokens once finished before the first progress report
  // reached the test (the job SUCCEEDED before the kill). 3M tokens is
  // ~16 s there; the first checkpoint comes after 300k.
  const std::string id = Submit(SynthJob("run", 1, 3000000, 300000));
  json st = WaitFor(
      id, [](const json& j) { return Prog(j, "checkpoint_step") > 0 || Terminal(j); }, 120);
  ASSERT_TRUE(StateIs(st, "RUNNING")) << st.dump();
  coord->Kill(SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  StartCoordinator({}, listen);
  ASSERT_EQ(addr_, listen);
  st = WaitFor(id, Terminal, 240);
  EXPECT_TRUE(StateIs(st, "SUCCEEDED")) << st.dump();
  EXPECT_EQ(st.value("restarts", 0), 0) << "the worker kept training through the coordinator's restart";
  EXPECT_TRUE(fs::exists(dir_ / "run" / "summary.json"));
  // The worker says how long its heartbeats went unanswered (within two
  // leases, or the job would have restarted): the recovery time of
  // docs/reliability.md.
  const std::string wlog = ReadAll(w1.log);
  const size_t again = wlog.find("reconnected to ");
  EXPECT_NE(again, std::string::npos) << wlog;
  if (again != std::string::npos) std::cout << "worker: " << wlog.substr(again, wlog.find('\n', again) - again) << "\n";
  std::vector<std::string> states;
  for (const auto& t : st["history"]) states.push_back(t["to"]);
  EXPECT_EQ(states.front(), "PENDING") << "history survived the restart";
}

// A coordinator that answers each new connection 2 s late (a loaded machine:
// after a coordinator restart at load 20 the worker's first heartbeat once
// came 8.7 s later, past the lease) is still reached, by a worker and by
// `sae`: a connection attempt may take up to 5 s (client/client.cc), not
// just the 0.2-1 s between attempts. Before, each attempt was abandoned after
// its backoff (at most 1.2 s), so neither ever got through.
TEST_F(Service, AWorkerAndAClientGetThroughASlowHandshake) {
  StartCoordinator({});
  const std::string direct = addr_;
  SlowProxy proxy(direct, std::chrono::milliseconds(2000));
  addr_ = proxy.address();
  StartWorker("w1");
  Result r = Sae("jobs --json --timeout 20");
  EXPECT_EQ(r.code, 0) << r.out;
  addr_ = direct;
  const std::string id = Submit(SynthJob("run", 1, 2560, 0));
  json st = WaitFor(id, Terminal, 60);
  EXPECT_TRUE(StateIs(st, "SUCCEEDED")) << st.dump();
  EXPECT_GE(proxy.connections(), 2);  // the worker's and the client's
}

TEST_F(Service, TwoJobsRunAtOnceAndASweepBecomesThreeJobs) {
  StartCoordinator({});
  for (const char* w : {"w1", "w2", "w3", "w4"}) StartWorker(w);
  const std::string a = Submit(SynthJob("a", 2, 200000, 50000));
  const std::string b = Submit(SynthJob("b", 2, 200000, 50000));
  bool together = false;
  const auto deadline = DeadlineIn(120);
  json ja, jb;
  while (Clock::now() < deadline) {
    ja = Status(a);
    jb = Status(b);
    if (StateIs(ja, "RUNNING") && StateIs(jb, "RUNNING")) {
      std::set<std::string> ws;
      for (const auto& w : ja["workers"]) ws.insert(w);
      for (const auto& w : jb["workers"]) ws.insert(w);
      EXPECT_EQ(ws.size(), 4u) << "disjoint workers: " << ja.dump() << jb.dump();
      together = true;
      break;
    }
    if (Terminal(ja) || Terminal(jb)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(together) << ja.dump() << "\n" << jb.dump();
  EXPECT_TRUE(StateIs(WaitFor(a, Terminal, 240), "SUCCEEDED"));
  EXPECT_TRUE(StateIs(WaitFor(b, Terminal, 240), "SUCCEEDED"));

  const std::string sweep = Submit(SynthJob("sweep", 1, 20000, 0, "[4, 8, 16]"));
  json s = WaitFor(sweep, Terminal, 240);
  EXPECT_TRUE(StateIs(s, "SUCCEEDED")) << s.dump();
  ASSERT_EQ(s["child_ids"].size(), 3u);
  for (const char* k : {"4", "8", "16"}) {
    const fs::path out = dir_ / "sweep" / (std::string("k-") + k) / "summary.json";
    ASSERT_TRUE(fs::exists(out)) << out;
    EXPECT_EQ(json::parse(ReadAll(out))["k"].get<int64_t>(), std::stoi(k));
  }
}

TEST_F(Service, ShardsThroughDataServiceAndACorruptShardFailsTheJob) {
  fs::create_directories(dir_ / "data");
  Result syn = Sh(Bin("sae") + " synth --out " + (dir_ / "data" / "acts").string() +
                  " --rows 6000 --rows-per-shard 2000 --d-in 16 --atoms 32 --k 2 --seed 4");
  ASSERT_EQ(syn.code, 0) << syn.out;
  StartCoordinator({"--data-root", (dir_ / "data").string(), "--output-root", dir_.string()});
  // No shared filesystem: the worker downloads manifest and shards, checks sha256.
  Proc& w1 = StartWorker("w1", {"--fetch-data", "--data-cache", (dir_ / "cache").string()});
  const std::string job =
      "name: shards\ndata: {kind: shards, path: acts, shuffle_buffer_rows: 500}\n"
      "sae: {latents: 64, k: 4}\ntrain: {tokens: 6000, batch_tokens: 250, threads: 1}\n"
      "output: run\n";
  const std::string id = Submit(job);
  json st = WaitFor(id, Terminal, 120);
  ASSERT_TRUE(StateIs(st, "SUCCEEDED")) << st.dump();
  EXPECT_TRUE(fs::exists(dir_ / "run" / "summary.json"));
  EXPECT_TRUE(fs::exists(dir_ / "cache")) << "read through DataService";

  // DataService serves only the manifest and the shards it lists, under --data-root.
  {
    sae::ClientOptions co;
    co.address = addr_;
    auto data = sae::v1::DataService::NewStub(*sae::MakeChannel(co));
    auto code = [&](const std::string& path, const std::string& file) {
      sae::v1::ShardRequest r;
      r.set_path(path);
      r.set_file(file);
      auto ctx = sae::MakeContext(co, 10);
      auto rd = data->StreamShard(ctx.get(), r);
      sae::v1::ShardChunk c;
      int64_t bytes = 0;
      while (rd->Read(&c)) bytes += static_cast<int64_t>(c.data().size());
      return std::make_pair(rd->Finish().error_code(), bytes);
    };
    EXPECT_EQ(code("acts", "manifest.json").first, grpc::StatusCode::OK);
    EXPECT_GT(code("acts", "shard-00000.safetensors").second, 0);
    EXPECT_EQ(code("acts", "../../coord.db").first, grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(code("..", "coord.db").first, grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(code(dir_.string(), "coord.db").first, grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(code("acts", "dictionary.safetensors").first, grpc::StatusCode::NOT_FOUND);
  }
  // A truncated shard, read from the shared filesystem by another worker: the
  // job FAILS (no restarts) and the reason names the shard.
  w1.Kill(SIGTERM);
  StartWorker("w2");
  std::this_thread::sleep_for(std::chrono::seconds(2));
  fs::path shard = dir_ / "data" / "acts" / "shard-00001.safetensors";
  ASSERT_TRUE(fs::exists(shard));
  fs::resize_file(shard, fs::file_size(shard) / 2);
  std::string job2 = job;
  job2.replace(job2.find("output: run"), 11, "output: run2");
  const std::string bad = Submit(job2);
  st = WaitFor(bad, Terminal, 120);
  EXPECT_TRUE(StateIs(st, "FAILED")) << st.dump();
  EXPECT_NE(st.value("reason", "").find("shard-00001"), std::string::npos) << st.dump();
  EXPECT_EQ(st.value("restarts", 0), 0) << st.dump();
  EXPECT_FALSE(fs::exists(dir_ / "run2" / "summary.json"));
}

TEST_F(Service, CancelStopsTheJobWithinSecondsKeepingItsCheckpoint) {
  StartCoordinator({});
  StartWorker("w1");
  const std::string id = Submit(SynthJob("run", 1, 5000000, 20000));
  json st = WaitFor(
      id, [](const json& j) { return Prog(j, "checkpoint_step") > 0 || Terminal(j); }, 120);
  ASSERT_TRUE(StateIs(st, "RUNNING")) << st.dump();
  Result c = Sae("cancel " + id + " --reason 'enough for today'");
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("CANCELLED"), std::string::npos) << c.out;
  // The worker stops within seconds: it is idle again in the metrics.
  const auto t0 = Clock::now();
  std::string m;
  while (Clock::now() - t0 < std::chrono::seconds(10 * TimeScale())) {
    m = HttpGet("/metrics");
    if (m.find("sae_workers{role=\"coordinator\",state=\"idle\"} 1") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(m.find("sae_workers{role=\"coordinator\",state=\"idle\"} 1"), std::string::npos) << m;
  EXPECT_NE(m.find("sae_jobs{role=\"coordinator\",state=\"cancelled\"} 1"), std::string::npos) << m;
  st = Status(id);
  EXPECT_TRUE(StateIs(st, "CANCELLED"));
  EXPECT_EQ(st.value("reason", ""), "enough for today");
  EXPECT_TRUE(fs::exists(dir_ / "run.partial" / "checkpoints" / "latest")) << "the last checkpoint stays";
  EXPECT_FALSE(fs::exists(dir_ / "run" / "summary.json"));
  EXPECT_LT(Num(st["progress"], "tokens"), 5000000);
}

TEST_F(Service, TlsWithACaFile) {
  const fs::path cert = dir_ / "cert.pem", key = dir_ / "key.pem";
  Result gen =
      Sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
         "subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " +
         key.string() + " -out " + cert.string());
  ASSERT_EQ(gen.code, 0) << gen.out;
  StartCoordinator({"--tls-cert", cert.string(), "--tls-key", key.string()});
  Result plain = Sae("jobs");
  EXPECT_EQ(plain.code, 1) << "a plaintext client cannot talk to a TLS coordinator: " << plain.out;
  StartWorker("w1", {"--tls-ca", cert.string()});
  const fs::path f = dir_ / "job.yaml";
  WriteAll(f, SynthJob("run", 1, 5000, 0));
  Result r = Sae("submit " + f.string() + " --wait --tls-ca " + cert.string());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir_ / "run" / "summary.json"));
}

// Direct RPCs, as a client that bypasses `sae`'s own checks would send them.
TEST_F(Service, TokensRootsAndBadSpecsAreEnforced) {
  WriteAll(dir_ / "client.token", "client-secret\n");
  WriteAll(dir_ / "worker.token", "worker-secret\n");
  fs::create_directories(dir_ / "data");
  fs::create_directories(dir_ / "out");
  StartCoordinator({"--client-token-file", (dir_ / "client.token").string(), "--worker-token-file",
                    (dir_ / "worker.token").string(), "--data-root", (dir_ / "data").string(), "--output-root",
                    (dir_ / "out").string()});
  std::string job = SynthJob("x", 1, 1000, 0);
  job = job.substr(0, job.find("output:")) + "output: x\n";  // relative: under --output-root
  WriteAll(dir_ / "ok.yaml", job);
  // No token, a wrong token, the worker's token: all UNAUTHENTICATED.
  Result none = Sae("submit " + (dir_ / "ok.yaml").string());
  EXPECT_EQ(none.code, 1);
  EXPECT_NE(none.out.find("missing bearer token"), std::string::npos) << none.out;
  Result wrong = Sae("submit " + (dir_ / "ok.yaml").string() + " --token-file " + (dir_ / "worker.token").string());
  EXPECT_EQ(wrong.code, 1);
  EXPECT_NE(wrong.out.find("wrong bearer token"), std::string::npos) << wrong.out;
  Result list = Sae("jobs --token-file " + (dir_ / "client.token").string());
  EXPECT_EQ(list.code, 0) << list.out;

  sae::ClientOptions co;
  co.address = addr_;
  co.token = "client-secret";
  auto ch = sae::MakeChannel(co);
  ASSERT_TRUE(ch.ok());
  auto jobs = sae::v1::JobService::NewStub(*ch);
  auto workers = sae::v1::WorkerService::NewStub(*ch);
  // Clients cannot register as workers.
  {
    sae::v1::RegisterRequest r;
    r.set_worker_id("intruder");
    r.set_host("127.0.0.1");
    sae::v1::RegisterResponse resp;
    auto ctx = sae::MakeContext(co, 5);
    EXPECT_EQ(workers->Register(ctx.get(), r, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  // The spec is the job's YAML text (sae.v1.JobSpec.yaml); the coordinator
  // reads it with the job-file reader and applies its own rules.
  const std::string base =
      "name: x\ndata: {kind: synthetic, d_in: 16, latents: 32, k: 2, noise: 0.01}\n"
      "sae: {latents: 64, k: 4, dead_window_tokens: 1000}\n"
      "train: {tokens: 1000, batch_tokens: 100, log_every_steps: 10}\n"
      "world: {workers: 1, backend: auto, timeout_seconds: 30}\noutput: x\n";
  auto submit = [&](const std::function<std::string(std::string)>& edit) {
    sae::v1::SubmitRequest req;
    req.mutable_spec()->set_yaml(edit(base));
    sae::v1::SubmitResponse resp;
    auto ctx = sae::MakeContext(co, 5);
    return jobs->Submit(ctx.get(), req, &resp);
  };
  // `text` with `from` replaced by `to` (the test fails if `from` is absent).
  auto edit = [](const std::string& from, const std::string& to) {
    return [from, to](std::string text) {
      const size_t at = text.find(from);
      EXPECT_NE(at, std::string::npos) << from;
      if (at != std::string::npos) text.replace(at, from.size(), to);
      return text;
    };
  };
  grpc::Status ok = submit([](std::string t) { return t; });
  EXPECT_TRUE(ok.ok()) << ok.error_message();
  struct Bad {
    std::function<std::string(std::string)> edit;
    std::string field;
  };
  std::vector<Bad> bad = {
      {edit("k: 4,", "k: 100,"), "sae.k"},
      {edit("tokens: 1000,", "tokens: 0,"), "train.tokens"},
      {edit("k: 4,", "k: 4, dead_remedy: magic,"), "sae.dead_remedy"},
      {edit("backend: auto", "backend: mpi"), "world.backend"},
      {edit("output: x", "output: ../escape"), "output"},
      {edit("output: x", "output: /etc/sae"), "outside the configured root"},
      {edit("{kind: synthetic, d_in: 16, latents: 32, k: 2, noise: 0.01}", "{kind: shards, path: acts/../../secret}"),
       "data.path"},
      {edit("{kind: synthetic, d_in: 16, latents: 32, k: 2, noise: 0.01}", "{kind: shards, path: /root/acts}"),
       "outside the configured root"},
      {edit("noise: 0.01", "noise: 0.01, path: acts"), "unknown key 'data.path'"},
      {[](std::string) { return std::string("- not\n- a job\n"); }, "mapping"},
      {[](std::string) { return std::string(); }, "no job"},
  };
  for (const auto& b : bad) {
    grpc::Status s = submit(b.edit);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << b.field << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(b.field), std::string::npos) << s.error_message();
  }
  // Requests over --max-message-bytes (4 MiB by default) are refused.
  grpc::Status big = submit(edit("name: x", "name: " + std::string(5 << 20, 'x')));
  EXPECT_EQ(big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << big.error_message();
  // Idempotent submit: the same request id gives the same job.
  Result r1 = Sae("submit " + (dir_ / "ok.yaml").string() + " --request-id abc --token-file " +
                  (dir_ / "client.token").string());
  Result r2 = Sae("submit " + (dir_ / "ok.yaml").string() + " --request-id abc --token-file " +
                  (dir_ / "client.token").string());
  EXPECT_EQ(r1.code, 0) << r1.out;
  EXPECT_EQ(r1.out, r2.out);
  // A worker with the client's token never registers; with its own it does.
  StartWorker("bad", {"--worker-token-file", (dir_ / "client.token").string()});
  StartWorker("good", {"--worker-token-file", (dir_ / "worker.token").string()});
  std::string sd;
  const auto deadline = DeadlineIn(60);
  while (Clock::now() < deadline && sd.find("\"good\"") == std::string::npos) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    sd = HttpGet("/sd");
  }
  EXPECT_NE(sd.find("\"good\""), std::string::npos) << sd;
  const auto deadline2 = DeadlineIn(30);
  while (Clock::now() < deadline2 && ReadAll(dir_ / "worker-bad.log").find("bearer token") == std::string::npos)
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_NE(ReadAll(dir_ / "worker-bad.log").find("wrong bearer token"), std::string::npos);
  EXPECT_EQ(HttpGet("/sd").find("\"bad\""), std::string::npos) << sd;
}

}  // namespace
