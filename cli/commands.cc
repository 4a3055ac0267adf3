#include "cli/commands.h"

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/flags.h"
#include "cli/interp_commands.h"
#include "cli/lm_commands.h"
#include "cli/report_command.h"
#include "cli/service_commands.h"
#include "cli/subcommand.h"
#include "core/base/exit_code.h"
#include "core/data/inspect.h"
#include "core/data/shard_writer.h"
#include "core/data/synthetic.h"
#include "worker/train_command.h"

namespace sae {
namespace {

absl::StatusOr<DType> ParseShardDType(const std::string& s) {
  if (s == "float32" || s == "f32") return DType::kF32;
  if (s == "bfloat16" || s == "bf16") return DType::kBF16;
  if (s == "float16" || s == "f16") return DType::kF16;
  return absl::InvalidArgumentError(absl::StrCat("--dtype: '", s, "' is not float32, bfloat16 or float16"));
}

// `sae train`: the same runtime and output as `sae-worker --job`.
CommandRunner AddTrainCommand(flags::Command* app) {
  auto ta = std::make_shared<TrainCommandArgs>();
  flags::Command* train = app->AddSubcommand("train", "train an SAE from a job file, in this process");
  train->AddOption("job", ta->job, "job file (YAML)").Required();
  train->AddFlag("--resume", ta->resume, "continue from OUTPUT.partial/checkpoints/latest");
  train->AddOption("--output", ta->output, "override the job's output directory");
  train->AddFlag("--json", ta->json, "print the summary as one JSON object");
  train->AddFlag("--quiet", ta->quiet, "no progress output");
  train->AddOption("--metrics-listen", ta->metrics_listen,
                   "serve Prometheus metrics at HOST:PORT/metrics (port 0: any free port)");
  train->AddOption("--max-steps", ta->max_steps,
                   "stop after this many steps in this invocation, with a checkpoint (resumable)");
  return [=]() { return train->Parsed() ? RunTrainCommand(*ta) : kNotParsed; };
}

struct InspectArgs {
  std::string in_dir, npy, out_dir, dtype = "float32";
  bool verify = false, json = false;
  int64_t max_rows = 1 << 20, rows_per_shard = 65536;
};

int RunInspect(const InspectArgs& a) {
  if (!a.npy.empty()) {
    if (a.out_dir.empty()) return Fail(absl::InvalidArgumentError("--import-npy needs --out DIR"));
    auto dt = ParseShardDType(a.dtype);
    if (!dt.ok()) return Fail(dt.status());
    auto m = ImportNpy(a.npy, a.out_dir, *dt, a.rows_per_shard);
    if (!m.ok()) return Fail(m.status());
    std::printf("imported %ld rows x %ld into %s (%zu shards)\n", m->rows, m->d_in, a.out_dir.c_str(),
                m->shards.size());
    return 0;
  }
  if (a.in_dir.empty()) return Fail(absl::InvalidArgumentError("inspect: give a shard directory"));
  InspectOptions io;
  io.verify = a.verify;
  io.json = a.json;
  io.max_rows = a.max_rows;
  auto report = InspectShards(a.in_dir, io);
  if (!report.ok()) return Fail(report.status());
  std::printf("%s", report->c_str());
  if (!report->empty() && report->back() != '\n') std::printf("\n");
  return 0;
}

struct SynthArgs {
  SyntheticOptions so;
  int64_t rows = 100000;
  std::string out, dtype = "float32";
  int64_t rows_per_shard = 65536;
};

int RunSynth(const SynthArgs& a) {
  auto dt = ParseShardDType(a.dtype);
  if (!dt.ok()) return Fail(dt.status());
  auto dict = PlantedDictionary::Create(a.so);
  if (!dict.ok()) return Fail(dict.status());
  auto m = dict->WriteShards(a.out, a.rows, a.rows_per_shard, *dt);
  if (!m.ok()) return Fail(m.status());
  std::printf("wrote %ld rows x %ld in %zu shards to %s (true dictionary: %s/dictionary.safetensors)\n", m->rows,
              m->d_in, m->shards.size(), a.out.c_str(), a.out.c_str());
  return 0;
}

// `sae inspect` and `sae synth`: activation shards.
CommandRunner AddDataCommands(flags::Command* app) {
  auto ia = std::make_shared<InspectArgs>();
  flags::Command* inspect =
      app->AddSubcommand("inspect", "show an activation-shard directory, verify it, or import .npy");
  inspect->AddOption("dir", ia->in_dir, "shard directory (with manifest.json)");
  inspect->AddFlag("--verify", ia->verify, "check every shard's sha256");
  inspect->AddFlag("--json", ia->json, "one JSON object");
  inspect->AddOption("--max-rows", ia->max_rows, "rows read for statistics");
  inspect->AddOption("--import-npy", ia->npy, "import a 2-D .npy array as shards (needs --out)");
  inspect->AddOption("--out", ia->out_dir, "output directory of --import-npy");
  inspect->AddOption("--dtype", ia->dtype, "stored dtype for --import-npy: float32|bfloat16|float16");
  inspect->AddOption("--rows-per-shard", ia->rows_per_shard, "rows per shard for --import-npy");

  auto sa = std::make_shared<SynthArgs>();
  SyntheticOptions& so = sa->so;
  flags::Command* synth = app->AddSubcommand("synth", "write planted-dictionary activations as shards");
  synth->AddOption("--out", sa->out, "output directory").Required();
  synth->AddOption("--rows", sa->rows, "rows to write");
  synth->AddOption("--d-in", so.d_in, "dimension");
  synth->AddOption("--atoms", so.atoms, "true dictionary size");
  synth->AddOption("--k", so.k, "atoms per row");
  synth->AddOption("--seed", so.seed, "seed");
  synth->AddOption("--noise", so.noise, "noise std per element");
  synth->AddOption("--frequency-decay", so.frequency_decay, "atom i drawn with weight (i+1)^-decay");
  synth->AddOption("--rows-per-shard", sa->rows_per_shard, "rows per shard");
  synth->AddOption("--dtype", sa->dtype, "float32|bfloat16|float16");

  return [=]() {
    if (inspect->Parsed()) return RunInspect(*ia);
    if (synth->Parsed()) return RunSynth(*sa);
    return kNotParsed;
  };
}

}  // namespace

int SaeMain(int argc, char** argv) {
  flags::Command app{
      "sae: train and inspect sparse autoencoders on LLM activations (saeforge); submit and follow jobs on "
      "sae-coordinator"};
  app.RequireSubcommand(1);
  // In the order of `sae --help`.
  const std::vector<CommandRunner> runners = {
      AddTrainCommand(&app),
      AddDataCommands(&app),  // inspect, synth
      AddReportCommand(&app),
      AddServiceCommands(&app),  // submit, jobs, status, watch, cancel
      AddLmCommands(&app),       // generate, harvest, eval
      AddInterpCommands(&app),   // features, concepts, serve
  };
  if (auto rc = app.Parse(argc, argv)) return *rc == 0 ? 0 : 2;
  for (const CommandRunner& run : runners) {
    if (const int rc = run(); rc != kNotParsed) return rc;
  }
  return 2;
}

}  // namespace sae
