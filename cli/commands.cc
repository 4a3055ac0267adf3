#include "cli/commands.h"
#include "cli/interp_commands.h"
#include "cli/lm_commands.h"

#include <CLI/CLI.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/service_commands.h"
#include "core/base/config.h"
#include "core/base/logging.h"
#include "core/data/inspect.h"
#include "core/data/manifest_check.h"
#include "core/data/shard_writer.h"
#include "core/data/synthetic.h"
#include "cli/report_command.h"
#include "worker/coordinator_agent.h"
#include "worker/training_run.h"

namespace sae {
namespace {

using json = nlohmann::json;

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  return 1;
}

absl::StatusOr<DType> ParseShardDType(const std::string& s) {
  if (s == "float32" || s == "f32") return DType::kF32;
  if (s == "bfloat16" || s == "bf16") return DType::kBF16;
  if (s == "float16" || s == "f16") return DType::kF16;
  return absl::InvalidArgumentError(absl::StrCat("--dtype: '", s, "' is not float32, bfloat16 or float16"));
}

struct TrainArgs {
  std::string job;
  bool resume = false;
  bool json = false;
  bool quiet = false;
  std::string output;
  int64_t max_steps = -1;
  int rank = -1, world_size = 0;
  std::string rendezvous;
  std::string metrics_listen;
};

int RunTrain(const TrainArgs& a) {
  auto job = LoadJobConfig(a.job);
  if (!job.ok()) return Fail(job.status());
  if (!a.output.empty()) {
    job->output = a.output;
    absl::Status v = ValidateJobConfig(*job, a.job);
    if (!v.ok()) return Fail(v);
  }
  if (absl::Status v = CheckJobAgainstManifest(*job, a.job); !v.ok()) return Fail(v);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  RunOptions ro;
  ro.resume = a.resume;
  ro.stop = &g_stop;
  ro.max_steps = a.max_steps;
  ro.rank = a.rank;
  ro.world_size = a.world_size;
  ro.rendezvous = a.rendezvous;
  ro.metrics_listen = a.metrics_listen;
  if (a.quiet || a.json) ro.progress = ProgressMode::kQuiet;
  auto sum = RunTrainingJob(*job, ro);
  if (!sum.ok()) return Fail(sum.status());
  if (sum->rank != 0) return 0;  // rank 0 reports for the world
  if (!sum->finished) {
    std::printf("stopped after step %ld (%ld tokens); continue with --resume\n", sum->steps, sum->tokens);
    return 0;
  }
  if (a.json) {
    json j = {{"output", sum->output}, {"tokens", sum->tokens}, {"steps", sum->steps},
              {"fvu", sum->fvu}, {"mse", sum->mse}, {"l0", sum->l0},
              {"dead_ratio", sum->dead_ratio}, {"tokens_per_second", sum->tokens_per_second}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("trained %s\n%s", job->name.c_str(), FormatSummaryTable(*sum).c_str());
  }
  return 0;
}

}  // namespace

int SaeMain(int argc, char** argv) {
  CLI::App app{"sae: train and inspect sparse autoencoders on LLM activations (saeforge); submit and follow jobs on sae-coordinator"};
  app.require_subcommand(1);

  TrainArgs ta;
  CLI::App* train = app.add_subcommand("train", "train an SAE from a job file, in this process");
  train->add_option("job", ta.job, "job file (YAML)")->required();
  train->add_flag("--resume", ta.resume, "continue from OUTPUT.partial/checkpoints/latest");
  train->add_option("--output", ta.output, "override the job's output directory");
  train->add_flag("--json", ta.json, "print the summary as one JSON object");
  train->add_flag("--quiet", ta.quiet, "no progress output");
  train->add_option("--metrics-listen", ta.metrics_listen,
                    "serve Prometheus metrics at HOST:PORT/metrics (port 0: any free port)");
  train->add_option("--max-steps", ta.max_steps,
                    "stop after this many steps in this invocation, with a checkpoint (resumable)");

  std::string in_dir, npy, out_dir, dtype = "float32";
  bool verify = false, in_json = false;
  int64_t max_rows = 1 << 20, rows_per_shard = 65536;
  CLI::App* inspect = app.add_subcommand("inspect", "show an activation-shard directory, verify it, or import .npy");
  inspect->add_option("dir", in_dir, "shard directory (with manifest.json)");
  inspect->add_flag("--verify", verify, "check every shard's sha256");
  inspect->add_flag("--json", in_json, "one JSON object");
  inspect->add_option("--max-rows", max_rows, "rows read for statistics");
  inspect->add_option("--import-npy", npy, "import a 2-D .npy array as shards (needs --out)");
  inspect->add_option("--out", out_dir, "output directory of --import-npy");
  inspect->add_option("--dtype", dtype, "stored dtype for --import-npy: float32|bfloat16|float16");
  inspect->add_option("--rows-per-shard", rows_per_shard, "rows per shard for --import-npy");

  SyntheticOptions so;
  int64_t syn_rows = 100000;
  std::string syn_out, syn_dtype = "float32";
  int64_t syn_rps = 65536;
  CLI::App* synth = app.add_subcommand("synth", "write planted-dictionary activations as shards");
  synth->add_option("--out", syn_out, "output directory")->required();
  synth->add_option("--rows", syn_rows, "rows to write");
  synth->add_option("--d-in", so.d_in, "dimension");
  synth->add_option("--atoms", so.atoms, "true dictionary size");
  synth->add_option("--k", so.k, "atoms per row");
  synth->add_option("--seed", so.seed, "seed");
  synth->add_option("--noise", so.noise, "noise std per element");
  synth->add_option("--frequency-decay", so.frequency_decay, "atom i drawn with weight (i+1)^-decay");
  synth->add_option("--rows-per-shard", syn_rps, "rows per shard");
  synth->add_option("--dtype", syn_dtype, "float32|bfloat16|float16");

  ReportArgs ra;
  CLI::App* report = AddReportCommand(app, &ra);
  auto service = AddServiceCommands(&app);  // submit, jobs, status, watch, cancel
  std::function<int()> run_lm = AddLmCommands(&app);
  std::function<int()> run_interp = AddInterpCommands(&app);  // features, concepts, serve

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  if (int rc = 0; RunServiceCommand(*service, &rc)) return rc;
  if (const int rc = run_lm(); rc >= 0) return rc;
  if (const int rc = run_interp(); rc >= 0) return rc;
  if (train->parsed()) return RunTrain(ta);
  if (report->parsed()) return RunReport(ra);
  if (inspect->parsed()) {
    if (!npy.empty()) {
      if (out_dir.empty()) return Fail(absl::InvalidArgumentError("--import-npy needs --out DIR"));
      auto dt = ParseShardDType(dtype);
      if (!dt.ok()) return Fail(dt.status());
      auto m = ImportNpy(npy, out_dir, *dt, rows_per_shard);
      if (!m.ok()) return Fail(m.status());
      std::printf("imported %ld rows x %ld into %s (%zu shards)\n", m->rows, m->d_in, out_dir.c_str(),
                  m->shards.size());
      return 0;
    }
    if (in_dir.empty()) return Fail(absl::InvalidArgumentError("inspect: give a shard directory"));
    InspectOptions io;
    io.verify = verify;
    io.json = in_json;
    io.max_rows = max_rows;
    auto report = InspectShards(in_dir, io);
    if (!report.ok()) return Fail(report.status());
    std::printf("%s", report->c_str());
    if (!report->empty() && report->back() != '\n') std::printf("\n");
    return 0;
  }
  if (synth->parsed()) {
    auto dt = ParseShardDType(syn_dtype);
    if (!dt.ok()) return Fail(dt.status());
    auto dict = PlantedDictionary::Create(so);
    if (!dict.ok()) return Fail(dict.status());
    auto m = dict->WriteShards(syn_out, syn_rows, syn_rps, *dt);
    if (!m.ok()) return Fail(m.status());
    std::printf("wrote %ld rows x %ld in %zu shards to %s (true dictionary: %s/dictionary.safetensors)\n",
                m->rows, m->d_in, m->shards.size(), syn_out.c_str(), syn_out.c_str());
    return 0;
  }
  return 2;
}

int WorkerMain(int argc, char** argv) {
  CLI::App app{"sae-worker: trains SAE jobs for sae-coordinator (--coordinator HOST:PORT) or one job file (--job)"};
  TrainArgs ta;
  std::string coordinator;
  app.add_option("--job", ta.job, "train this job file in this process");
  app.add_flag("--resume", ta.resume, "continue from the job's latest checkpoint");
  app.add_flag("--json", ta.json, "print the summary as one JSON object");
  app.add_option("--coordinator", coordinator, "HOST:PORT of sae-coordinator");
  app.add_option("--max-steps", ta.max_steps, "stop after this many steps, with a checkpoint");
  app.add_option("--metrics-listen", ta.metrics_listen,
                 "serve Prometheus metrics at HOST:PORT/metrics (rank r adds r to PORT)");
  app.add_option("--rank", ta.rank, "gloo: this worker's rank (or SAE_RANK)")->envname("SAE_RANK");
  app.add_option("--world-size", ta.world_size, "gloo: number of ranks (or SAE_WORLD_SIZE)")
      ->envname("SAE_WORLD_SIZE");
  app.add_option("--rendezvous", ta.rendezvous, "gloo: HOST:PORT of the store rank 0 serves (or SAE_RENDEZVOUS)")
      ->envname("SAE_RENDEZVOUS");
  WorkerAgentOptions agent;
  AddWorkerAgentFlags(&app, &agent);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (!coordinator.empty()) {
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    agent.coordinator = coordinator;
    agent.metrics_listen = ta.metrics_listen;
    return RunWorkerAgent(agent, &g_stop);
  }
  if (ta.job.empty()) {
    std::fprintf(stderr, "error: give --job FILE\n%s", app.help().c_str());
    return 2;
  }
  return RunTrain(ta);
}

}  // namespace sae
