#include "worker/training_run.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "core/base/clock.h"
#include "core/base/file_util.h"
#include "core/base/human_format.h"
#include "core/base/logging.h"
#include "core/base/parse.h"
#include "core/data/synthetic.h"
#include "core/sae/checkpoint.h"
#include "core/sae/trainer.h"
#include "core/telemetry/metrics.h"
#include "worker/batch_source.h"
#include "worker/metrics_sink.h"
#include "worker/run_fence.h"
#include "worker/run_world.h"
#include "worker/step_loop.h"

namespace sae {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

class Progress {
 public:
  Progress(ProgressMode mode, int64_t total) : total_(total) {
    if (mode == ProgressMode::kAuto) mode = isatty(STDERR_FILENO) ? ProgressMode::kBar : ProgressMode::kLines;
    mode_ = mode;
  }
  void Update(const StepMetrics& m, double tok_s, bool log_line) {
    if (mode_ == ProgressMode::kQuiet) return;
    const double frac = static_cast<double>(m.tokens) / total_;
    const std::string stats = ProgressStats(m.tokens, total_, tok_s, m.fvu, m.dead_ratio, m.k);
    if (mode_ == ProgressMode::kBar) {
      const double now = SteadyNow();
      if (now - last_draw_ < 0.1 && m.tokens < total_) return;
      last_draw_ = now;
      std::fprintf(stderr, "\r[%s] %3.0f%% %s\x1b[K", ProgressBar(frac, 24).c_str(), 100 * frac, stats.c_str());
      if (m.tokens >= total_) std::fprintf(stderr, "\n");
      std::fflush(stderr);
    } else if (log_line) {
      SAE_LOG(kInfo) << "step " << m.step << " " << stats;
    }
  }
  void Finish() {
    if (mode_ == ProgressMode::kBar) std::fprintf(stderr, "\n");
  }

 private:
  ProgressMode mode_;
  int64_t total_;
  double last_draw_ = 0;
};

// For a planted dictionary: the share of true atoms that some decoder row
// matches with cosine >= 0.9 (-1 for other data).
double PlantedRecovery(const JobConfig& job, const SaeParams& p) {
  if (job.data.kind != DataKind::kSynthetic) return -1;
  const SyntheticOptions o = SyntheticOptionsFromJob(job);
  auto dict = PlantedDictionary::Create(o);
  if (!dict.ok()) return -1;
  at::Tensor D = at::from_blob(const_cast<float*>(dict->dictionary().data()), {o.atoms, o.d_in}, at::kFloat);
  at::Tensor Wd = p.W_dec.cpu();
  at::Tensor W = Wd / Wd.norm(2, 1, true).clamp_min(1e-12);
  at::Tensor best = std::get<0>(at::mm(D, W.t()).max(1));
  return (best >= 0.9).to(at::kFloat).mean().item<double>();
}

// Serves this rank's Prometheus metrics when asked to (null otherwise).
absl::StatusOr<std::unique_ptr<TrainingMetrics>> StartTelemetry(const JobConfig& job, const RunOptions& opts, int rank,
                                                                int world) {
  if (opts.metrics_listen.empty()) return std::unique_ptr<TrainingMetrics>();
  const std::string listen = MetricsListenFor(opts.metrics_listen, rank, world, opts.metrics_port_per_rank);
  MetricLabels labels;
  labels.job = job.name;
  labels.sae = job.name;
  labels.rank = std::to_string(rank);
  labels.remedy = OptionName(job.sae.dead_remedy);
  SAE_ASSIGN_OR_RETURN(auto telemetry, TrainingMetrics::Start(listen, labels));
  SAE_LOG(kInfo) << "rank " << rank << " metrics at http://" << telemetry->address() << "/metrics";
  return telemetry;
}

StepSample SampleOf(const StepReport& r) {
  const StepMetrics& m = r.metrics;
  StepSample sample;
  sample.tokens = r.rank_rows;  // this rank's share: a sum over ranks is the job's tokens
  sample.k = m.k;
  sample.fvu = m.fvu;
  sample.mse = m.mse;
  sample.l0 = m.l0;
  sample.dead_ratio = m.dead_ratio;
  sample.aux_loss = m.aux_loss;
  sample.step_seconds = m.seconds;
  sample.allreduce_seconds = m.allreduce_seconds;
  sample.data_wait_seconds = r.data_wait_seconds;
  sample.screen_fallback_rows = m.screen_fallback_rows;
  sample.screen_candidates = m.screen_candidates;
  return sample;
}

// The trainer and its data source, positioned at the checkpoint when resuming.
struct Prepared {
  std::unique_ptr<SaeTrainer> trainer;
  std::unique_ptr<BatchSource> source;
};

absl::StatusOr<Prepared> PrepareTrainer(const JobConfig& job, const RunOptions& opts, const RunDir& dir,
                                        Communicator* comm) {
  // Resume: the state file tells the data position, read after creating the
  // trainer; the source opened at 0 gives d_in first.
  std::string state_path;
  if (opts.resume) {
    SAE_ASSIGN_OR_RETURN(state_path, LatestStatePath(dir));
  }
  DataShare share;
  share.rank = comm->rank();
  share.world = comm->world_size();
  share.batch_rows = job.train.batch_tokens - job.train.batch_tokens % share.world;
  Prepared p;
  SAE_ASSIGN_OR_RETURN(p.source, OpenBatchSource(job, 0, share));
  SAE_ASSIGN_OR_RETURN(TrainerOptions topts, TrainerOptionsFromJob(job, p.source->d_in()));
  topts.comm = comm;
  topts.comm_timeout = absl::Seconds(job.world.timeout_seconds);
  SAE_ASSIGN_OR_RETURN(p.trainer, SaeTrainer::Create(topts));
  if (!opts.resume) return p;
  auto extra = p.trainer->LoadState(state_path);
  if (!extra.ok()) return Annotate(extra.status(), "--resume");
  SAE_ASSIGN_OR_RETURN(const int64_t data_pos, DataPositionOf(*extra, state_path));
  p.source.reset();
  SAE_ASSIGN_OR_RETURN(p.source, OpenBatchSource(job, data_pos, share));
  SAE_LOG(kInfo) << "resuming " << state_path << " at step " << p.trainer->step() << ", " << p.trainer->tokens_seen()
                 << " tokens";
  return p;
}

// Rank 0 claims the run directory for its attempt and starts metrics.jsonl:
// lines after the checkpoint resumed from (or every line, when starting
// afresh after an attempt that died before its first checkpoint) are
// written again by this attempt.
absl::Status StartRunDir(const JobConfig& job, const RunDir& dir, RunFence& fence, MetricsSink& metrics,
                         int64_t resumed_step) {
  SAE_RETURN_IF_ERROR(MakeDirs(dir.work_dir));
  SAE_RETURN_IF_ERROR(fence.Claim());
  SAE_ASSIGN_OR_RETURN(RunFence::Held held, fence.Hold());
  SAE_RETURN_IF_ERROR(metrics.Open(resumed_step));
  return AtomicWriteFile(dir.work_dir + "/job.yaml", JobConfigToYaml(job));
}

// The numbers of a finished run (averages over the last steps at final k).
RunSummary Summarize(const JobConfig& job, const SaeTrainer& t, const StepLoop& loop, int rank, int world) {
  RunSummary sum;
  sum.rank = rank;
  sum.world = world;
  sum.finished = true;
  sum.output = job.output;
  sum.tokens = t.tokens_seen();
  sum.steps = t.step();
  const auto& recent = loop.recent();
  for (const StepMetrics& m : recent) {
    sum.fvu += m.fvu / recent.size();
    sum.mse += m.mse / recent.size();
    sum.l0 += m.l0 / recent.size();
    sum.aux_loss += m.aux_loss / recent.size();
  }
  sum.dead_ratio = t.dead().DeadRatio();
  sum.seconds = loop.seconds();
  sum.tokens_per_second = (sum.tokens - loop.tokens_at_start()) / std::max(sum.seconds, 1e-9);
  sum.k = t.CurrentK();
  sum.latents = t.options().latents;
  sum.d_in = t.options().d_in;
  sum.remedy = OptionName(t.options().remedy);
  sum.planted_recovered = PlantedRecovery(job, t.params());
  return sum;
}

// Rank 0: the final SAE and summary.json, then OUTPUT.partial/ renamed to OUTPUT.
absl::Status WriteFinalOutputs(const JobConfig& job, const RunOptions& opts, const RunDir& dir, const RunFence& fence,
                               const SaeTrainer& t, const BatchSource& source, const RunSummary& sum) {
  SAE_ASSIGN_OR_RETURN(RunFence::Held held, fence.Hold());
  SAE_ASSIGN_OR_RETURN(json data, ParseJson(source.DescribeJson(), "data source description"));
  json prov = {{"job", job.name}, {"data", data}, {"ranks", sum.world}};
  SAE_RETURN_IF_ERROR(t.ExportSae(dir.work_dir, prov.dump()));
  json summary = {{"name", job.name},
                  {"tokens", sum.tokens},
                  {"steps", sum.steps},
                  {"fvu", sum.fvu},
                  {"mse", sum.mse},
                  {"l0", sum.l0},
                  {"dead_ratio", sum.dead_ratio},
                  {"dead_latents", t.dead().NumDead()},
                  {"aux_loss", sum.aux_loss},
                  {"tokens_per_second", sum.tokens_per_second},
                  {"seconds", sum.seconds},
                  {"d_in", sum.d_in},
                  {"latents", sum.latents},
                  {"k", sum.k},
                  {"dead_remedy", sum.remedy}};
  if (sum.planted_recovered >= 0) summary["planted_atoms_recovered"] = sum.planted_recovered;
  if (!opts.job_id.empty()) {
    summary["job_id"] = opts.job_id;
    summary["attempt"] = opts.attempt;
  }
  SAE_RETURN_IF_ERROR(AtomicWriteFile(dir.work_dir + "/" + kSummaryFile, summary.dump(2) + "\n"));
  // The fence's files do not belong to the output; a stale attempt that
  // looks now finds no owner (or no directory) and stops.
  std::error_code ec;
  fs::remove(dir.work_dir + "/attempt", ec);
  fs::remove(dir.work_dir + "/.lock", ec);
  return DurableRename(dir.work_dir, dir.final_dir);
}

StepLoopConfig LoopConfigOf(const JobConfig& job, const RunOptions& opts) {
  StepLoopConfig c;
  c.total_tokens = job.train.tokens;
  c.batch_tokens = job.train.batch_tokens;
  c.checkpoint_every_tokens = job.train.checkpoint_every_tokens;
  // 0 (the default): about 100 records per run, enough for a readable curve.
  c.log_every_steps = job.train.log_every_steps > 0
                          ? job.train.log_every_steps
                          : std::max<int64_t>(1, job.train.tokens / std::max<int64_t>(1, job.train.batch_tokens) / 100);
  c.max_steps = opts.max_steps;
  c.timeout = absl::Seconds(job.world.timeout_seconds);
  c.stop = opts.stop;
  return c;
}

void SetThreads(const JobConfig& job) {
  at::set_num_threads(job.train.threads > 0 ? static_cast<int>(job.train.threads)
                                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

}  // namespace

std::string FormatSummaryTable(const RunSummary& s) {
  std::vector<std::pair<std::string, std::string>> rows;
  char buf[64];
  auto add = [&](const std::string& k, const std::string& v) { rows.emplace_back(k, v); };
  add("output", s.output);
  add("tokens", HumanCount(static_cast<double>(s.tokens)));
  add("steps", std::to_string(s.steps));
  add("d_in x latents", std::to_string(s.d_in) + " x " + std::to_string(s.latents));
  add("k", std::to_string(s.k));
  add("dead remedy", s.remedy);
  std::snprintf(buf, sizeof(buf), "%.4f", s.fvu);
  add("fvu", buf);
  std::snprintf(buf, sizeof(buf), "%.4g", s.mse);
  add("mse", buf);
  std::snprintf(buf, sizeof(buf), "%.2f", s.l0);
  add("l0", buf);
  std::snprintf(buf, sizeof(buf), "%.2f%%", 100 * s.dead_ratio);
  add("dead latents", buf);
  if (s.planted_recovered >= 0) {
    std::snprintf(buf, sizeof(buf), "%.1f%% (cosine >= 0.9)", 100 * s.planted_recovered);
    add("planted atoms found", buf);
  }
  add("tokens/s", HumanCount(s.tokens_per_second));
  add("wall time", HumanDuration(s.seconds));
  size_t w = 0;
  for (const auto& r : rows) w = std::max(w, r.first.size());
  std::string out;
  for (const auto& r : rows) out += "  " + r.first + std::string(w - r.first.size() + 2, ' ') + r.second + "\n";
  return out;
}

bool HasResumableCheckpoint(const std::string& output) { return RunDir(output).HasCheckpoint(); }

namespace {

// OUTPUT as an earlier attempt of the coordinator's job `job_id` finished it
// (summary.json names the job), or nullopt when OUTPUT does not exist or is
// not that job's.
absl::StatusOr<std::optional<RunSummary>> FinishedByThisJob(const RunDir& dir, const std::string& job_id) {
  if (job_id.empty() || !PathExists(dir.final_dir)) return std::optional<RunSummary>();
  const std::string path = dir.final_dir + "/" + kSummaryFile;
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return std::optional<RunSummary>();  // not a finished run of ours: the policy check says why
  SAE_ASSIGN_OR_RETURN(json j, ParseJson(*text, path));
  if (!j.is_object() || !j.contains("job_id") || j["job_id"] != job_id) return std::optional<RunSummary>();
  RunSummary s;
  s.finished = true;
  s.output = dir.final_dir;
  auto num = [&](const char* key) { return j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0.0; };
  s.tokens = static_cast<int64_t>(num("tokens"));
  s.steps = static_cast<int64_t>(num("steps"));
  s.fvu = num("fvu");
  s.mse = num("mse");
  s.l0 = num("l0");
  s.dead_ratio = num("dead_ratio");
  s.aux_loss = num("aux_loss");
  s.tokens_per_second = num("tokens_per_second");
  s.seconds = num("seconds");
  s.k = static_cast<int64_t>(num("k"));
  s.latents = static_cast<int64_t>(num("latents"));
  s.d_in = static_cast<int64_t>(num("d_in"));
  if (j.contains("dead_remedy") && j["dead_remedy"].is_string()) s.remedy = j["dead_remedy"].get<std::string>();
  SAE_LOG(kInfo) << dir.final_dir << " was finished by attempt " << num("attempt") << " of " << job_id
                 << " (its worker was declared lost afterwards): reporting it, not training again";
  return std::optional<RunSummary>(s);
}

}  // namespace

absl::StatusOr<RunSummary> RunTrainingJob(const JobConfig& job, const RunOptions& opts) {
  const std::string origin = job.source_path.empty() ? "job" : job.source_path;
  SAE_RETURN_IF_ERROR(ValidateJobConfig(job, origin));
  {
    // Before the rendezvous: every rank of the attempt sees the same output.
    SAE_ASSIGN_OR_RETURN(std::optional<RunSummary> done, FinishedByThisJob(RunDir(job.output), opts.job_id));
    if (done.has_value()) {
      done->rank = std::max(opts.rank, 0);
      done->world = std::max(opts.world_size, 1);
      return *done;
    }
  }
  SAE_ASSIGN_OR_RETURN(RunWorld w, OpenRunWorld(job, opts, origin));
  Communicator* comm = w.comm.get();
  const int rank = comm->rank(), world = comm->world_size();
  const bool leader = rank == 0;
  SAE_ASSIGN_OR_RETURN(std::unique_ptr<TrainingMetrics> telemetry, StartTelemetry(job, opts, rank, world));
  SetThreads(job);
  const RunDir dir(job.output);
  SAE_RETURN_IF_ERROR(CheckRunDirPolicy(dir, opts.resume, origin));
  SAE_ASSIGN_OR_RETURN(Prepared p, PrepareTrainer(job, opts, dir, comm));
  SaeTrainer& trainer = *p.trainer;
  // Rank 0 writes every file, each write under the attempt fence; all ranks
  // take part in the replica check.
  RunFence fence(dir.work_dir, leader ? opts.attempt : 0);
  MetricsSink metrics(dir.metrics, &fence);
  if (leader) SAE_RETURN_IF_ERROR(StartRunDir(job, dir, fence, metrics, opts.resume ? trainer.step() : 0));
  StepLoop loop(LoopConfigOf(job, opts), &trainer, p.source.get(), comm);
  loop.checkpoint = [&]() -> absl::Status {
    SAE_RETURN_IF_ERROR(trainer.CheckReplicasAgree());
    if (!leader) return absl::OkStatus();
    SAE_ASSIGN_OR_RETURN(RunFence::Held held, fence.Hold());
    SAE_RETURN_IF_ERROR(WriteCheckpoint(dir, trainer, p.source->position(), 2));
    if (opts.on_checkpoint)
      opts.on_checkpoint(trainer.step(), trainer.tokens_seen(), dir.CheckpointPath(trainer.step()));
    return absl::OkStatus();
  };
  Progress progress(leader ? opts.progress : ProgressMode::kQuiet, job.train.tokens);
  loop.on_step = [&](const StepReport& r) -> absl::Status {
    if (telemetry) telemetry->Record(SampleOf(r));
    if (r.log_now && leader)
      SAE_RETURN_IF_ERROR(metrics.Write(r.metrics, {r.tokens_per_second, r.total_data_wait, world}));
    progress.Update(r.metrics, r.tokens_per_second, r.log_now);
    if (opts.on_step) opts.on_step(r.metrics);
    return absl::OkStatus();
  };
  if (leader) {
    SAE_LOG(kInfo) << "training " << (job.name.empty() ? origin : job.name) << " on " << world << " rank(s) ("
                   << w.backend << "): d_in " << p.source->d_in() << ", latents " << trainer.options().latents << ", k "
                   << trainer.options().k << ", " << job.train.tokens << " tokens, batch " << job.train.batch_tokens
                   << ", lr " << trainer.base_lr() << ", " << at::get_num_threads() << " threads";
  }
  SAE_ASSIGN_OR_RETURN(const LoopEnd end, loop.Run());
  if (end == LoopEnd::kStopped) {
    progress.Finish();
    return absl::CancelledError(
        absl::StrCat("stopped at step ", trainer.step(), "; checkpoint written, continue with --resume"));
  }
  if (end == LoopEnd::kPaused) {
    progress.Finish();
    RunSummary partial;
    partial.tokens = trainer.tokens_seen();
    partial.steps = trainer.step();
    return partial;
  }
  if (leader) metrics.Close();
  // Finished: final checkpoint, SAE, summary; then rename into place.
  SAE_RETURN_IF_ERROR(loop.checkpoint());
  RunSummary sum = Summarize(job, trainer, loop, rank, world);
  if (!leader) return sum;  // rank 0 writes the outputs
  SAE_RETURN_IF_ERROR(WriteFinalOutputs(job, opts, dir, fence, trainer, *p.source, sum));
  return sum;
}

}  // namespace sae
