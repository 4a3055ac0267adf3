#include "worker/training_run.h"

#include <ATen/Parallel.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "core/base/clock.h"
#include "core/base/file_util.h"
#include "core/base/logging.h"
#include "core/comm/communicator.h"
#include "core/telemetry/metrics.h"
#include "core/data/synthetic.h"
#include "worker/batch_source.h"
#include "worker/run_fence.h"

namespace sae {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

std::string HumanCount(double v) {
  char buf[32];
  if (v >= 1e9) std::snprintf(buf, sizeof(buf), "%.2fG", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof(buf), "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof(buf), "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof(buf), "%.0f", v);
  return buf;
}

std::string HumanDuration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const int64_t t = static_cast<int64_t>(s);
  if (t >= 3600) std::snprintf(buf, sizeof(buf), "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60) std::snprintf(buf, sizeof(buf), "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof(buf), "%lds", t);
  return buf;
}

std::string StepDirName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%09ld", step);
  return buf;
}

// Writes a checkpoint atomically: state into step-N.tmp/, renamed to step-N/,
// then the `latest` pointer replaced; keeps the newest `keep` checkpoints.
absl::Status WriteCheckpoint(const std::string& ckpt_root, const SaeTrainer& t, int64_t data_pos,
                             int keep) {
  SAE_RETURN_IF_ERROR(MakeDirs(ckpt_root));
  const std::string name = StepDirName(t.step());
  const std::string final_dir = ckpt_root + "/" + name;
  const std::string tmp_dir = final_dir + ".tmp";
  SAE_RETURN_IF_ERROR(RemoveAll(tmp_dir));
  SAE_RETURN_IF_ERROR(MakeDirs(tmp_dir));
  SAE_RETURN_IF_ERROR(t.SaveState(tmp_dir + "/state.safetensors",
                                  {{"data_position", std::to_string(data_pos)}}));
  SAE_RETURN_IF_ERROR(RemoveAll(final_dir));
  SAE_RETURN_IF_ERROR(DurableRename(tmp_dir, final_dir));
  SAE_RETURN_IF_ERROR(AtomicWriteFile(ckpt_root + "/" + kLatestFile, name + "\n"));
  // Prune older checkpoints (never the one `latest` names).
  std::vector<std::string> steps;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(ckpt_root, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step-", 0) == 0 && n.find(".tmp") == std::string::npos)
      steps.push_back(n);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + keep < steps.size(); ++i)
    if (steps[i] != name) RemoveAll(ckpt_root + "/" + steps[i]).IgnoreError();
  return absl::OkStatus();
}

// Keeps only metrics lines up to `step` (a resumed run rewrites the rest).
absl::Status TruncateMetrics(const std::string& path, int64_t step) {
  if (!PathExists(path)) return absl::OkStatus();
  SAE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  std::istringstream in(text);
  std::string line, kept;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) continue;
    if (j["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  return AtomicWriteFile(path, kept);
}

class Progress {
 public:
  Progress(ProgressMode mode, int64_t total) : total_(total) {
    if (mode == ProgressMode::kAuto) mode = isatty(STDERR_FILENO) ? ProgressMode::kBar : ProgressMode::kLines;
    mode_ = mode;
  }
  void Update(const StepMetrics& m, double tok_s, bool log_line) {
    if (mode_ == ProgressMode::kQuiet) return;
    const double frac = static_cast<double>(m.tokens) / total_;
    const double eta = tok_s > 0 ? (total_ - m.tokens) / tok_s : NAN;
    char stats[256];
    std::snprintf(stats, sizeof(stats), "%s/%s tok  %s tok/s  fvu %.4f  dead %.2f%%  k %ld  ETA %s",
                  HumanCount(m.tokens).c_str(), HumanCount(total_).c_str(), HumanCount(tok_s).c_str(),
                  m.fvu, 100 * m.dead_ratio, m.k, HumanDuration(eta).c_str());
    if (mode_ == ProgressMode::kBar) {
      const double now = SteadyNow();
      if (now - last_draw_ < 0.1 && m.tokens < total_) return;
      last_draw_ = now;
      const int width = 24;
      const int filled = static_cast<int>(std::clamp(frac, 0.0, 1.0) * width);
      std::string bar(filled, '=');
      if (filled < width) bar += '>' + std::string(width - filled - 1, ' ');
      std::fprintf(stderr, "\r[%s] %3.0f%% %s\x1b[K", bar.c_str(), 100 * frac, stats);
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

absl::StatusOr<RunSummary> RunTrainingJob(const JobConfig& job, const RunOptions& opts) {
  const std::string origin = job.source_path.empty() ? "job" : job.source_path;
  SAE_RETURN_IF_ERROR(ValidateJobConfig(job, origin));
  // The world: mpirun-started ranks use MPI, a lone process trains alone.
  std::string backend = OptionName(job.world.backend);
  if (backend == "auto") {
    // NCCL when the SAE trains on GPUs and NCCL is built in; else MPI under
    // mpirun, Gloo with a rendezvous address, or this process alone.
    const bool gpu = job.train.device == Device::kCuda || (job.train.device == Device::kAuto && at::hasCUDA());
    const auto built = AvailableBackends();
    const bool nccl = std::find(built.begin(), built.end(), "nccl") != built.end();
    const bool multi = LaunchedByMpirun() || !opts.rendezvous.empty();
    if (gpu && nccl && multi) {
      backend = "nccl";
    } else {
      backend = LaunchedByMpirun() ? "mpi" : !opts.rendezvous.empty() ? "gloo" : "local";
    }
  }
  if (backend == "local" && job.world.workers != 1)
    return absl::FailedPreconditionError(absl::StrCat(
        origin, ": world.workers: ", job.world.workers,
        " workers need `mpirun -np ", job.world.workers,
        " sae-worker --job FILE` (or a coordinator); this process trains alone"));
  CommOptions co;
  co.expected_world_size = static_cast<int>(job.world.workers);
  co.rank = opts.rank;
  co.world_size = opts.world_size;
  co.rendezvous = opts.rendezvous;
  co.timeout = absl::Seconds(job.world.timeout_seconds);
  co.abort = opts.stop;  // a stop ends a wait on lost ranks within about a second
  auto comm_or = CreateCommunicator(backend, co);
  if (!comm_or.ok()) return Annotate(comm_or.status(), origin);
  std::unique_ptr<Communicator> comm = std::move(*comm_or);
  const int rank = comm->rank(), world = comm->world_size();
  const bool leader = rank == 0;

  std::unique_ptr<TrainingMetrics> telemetry;
  if (!opts.metrics_listen.empty()) {
    std::string listen = opts.metrics_listen;
    const size_t colon = listen.rfind(':');
    if (colon != std::string::npos && world > 1 && opts.metrics_port_per_rank) {
      const int port = std::atoi(listen.c_str() + colon + 1);
      if (port > 0) listen = absl::StrCat(listen.substr(0, colon), ":", port + rank);
    }
    MetricLabels labels;
    labels.job = job.name;
    labels.sae = job.name;
    labels.rank = std::to_string(rank);
    labels.remedy = OptionName(job.sae.dead_remedy);
    auto t = TrainingMetrics::Start(listen, labels);
    if (!t.ok()) return t.status();
    telemetry = std::move(*t);
    SAE_LOG(kInfo) << "rank " << rank << " metrics at http://" << telemetry->address() << "/metrics";
  }
  at::set_num_threads(job.train.threads > 0 ? static_cast<int>(job.train.threads)
                                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));

  const std::string final_dir = job.output;
  const std::string work_dir = final_dir + kPartialSuffix;
  const std::string ckpt_root = work_dir + "/" + kCheckpointDir;
  const std::string metrics_path = work_dir + "/metrics.jsonl";
  if (PathExists(final_dir))
    return absl::AlreadyExistsError(absl::StrCat(
        origin, ": output: ", final_dir, " already exists (a finished run); choose another output"));
  const bool have_ckpt = PathExists(ckpt_root + "/" + kLatestFile);
  if (!opts.resume && have_ckpt)
    return absl::FailedPreconditionError(absl::StrCat(
        work_dir, " holds checkpoints of an unfinished run: pass --resume to continue it, or remove it"));
  if (opts.resume && !have_ckpt)
    return absl::NotFoundError(absl::StrCat("--resume: no checkpoint under ", ckpt_root));

  // Resume: the state file first tells the data position.
  std::string state_path;
  if (opts.resume) {
    SAE_ASSIGN_OR_RETURN(std::string latest, ReadFileToString(ckpt_root + "/" + kLatestFile));
    latest.erase(latest.find_last_not_of(" \n\r\t") + 1);
    state_path = ckpt_root + "/" + latest + "/state.safetensors";
  }
  // The data position is read from the state after creating the trainer; the
  // source needs it, so peek at d_in first with a source at 0 only if needed.
  int64_t data_pos = 0;
  std::unique_ptr<SaeTrainer> trainer;
  std::unique_ptr<BatchSource> source;
  DataShare share;
  share.rank = rank;
  share.world = world;
  share.batch_rows = job.train.batch_tokens - job.train.batch_tokens % world;
  {
    SAE_ASSIGN_OR_RETURN(source, OpenBatchSource(job, 0, share));
    auto topts = TrainerOptionsFromJob(job, source->d_in());
    if (!topts.ok()) return topts.status();
    topts->comm = comm.get();
    topts->comm_timeout = absl::Seconds(job.world.timeout_seconds);
    SAE_ASSIGN_OR_RETURN(trainer, SaeTrainer::Create(*topts));
    if (opts.resume) {
      auto extra = trainer->LoadState(state_path);
      if (!extra.ok()) return Annotate(extra.status(), "--resume");
      auto it = extra->find("data_position");
      if (it == extra->end())
        return absl::DataLossError(absl::StrCat(state_path, ": no data_position in the state"));
      if (!absl::SimpleAtoi(it->second, &data_pos) || data_pos < 0)
        return absl::DataLossError(absl::StrCat(state_path, ": data_position '", it->second, "' is not a row number"));
      source.reset();
      SAE_ASSIGN_OR_RETURN(source, OpenBatchSource(job, data_pos, share));
      SAE_LOG(kInfo) << "resuming " << state_path << " at step " << trainer->step() << ", "
                     << trainer->tokens_seen() << " tokens";
    }
  }
  // Rank 0 writes every file, each write under the attempt fence; all ranks
  // take part in the replica check.
  RunFence fence(work_dir, leader ? opts.attempt : 0);
  std::ofstream metrics;
  if (leader) {
    SAE_RETURN_IF_ERROR(MakeDirs(work_dir));
    SAE_RETURN_IF_ERROR(fence.Claim());
    SAE_ASSIGN_OR_RETURN(RunFence::Held held, fence.Hold());
    // Lines after the checkpoint resumed from (or every line, when starting
    // afresh after an attempt that died before its first checkpoint) are
    // written again by this attempt.
    SAE_RETURN_IF_ERROR(TruncateMetrics(metrics_path, opts.resume ? trainer->step() : 0));
    SAE_RETURN_IF_ERROR(AtomicWriteFile(work_dir + "/job.yaml", JobConfigToYaml(job)));
    metrics.open(metrics_path, std::ios::app);
    if (!metrics) return absl::InternalError(absl::StrCat(metrics_path, ": cannot open for writing"));
  }
  auto checkpoint = [&]() -> absl::Status {
    SAE_RETURN_IF_ERROR(trainer->CheckReplicasAgree());
    if (!leader) return absl::OkStatus();
    SAE_ASSIGN_OR_RETURN(RunFence::Held held, fence.Hold());
    SAE_RETURN_IF_ERROR(WriteCheckpoint(ckpt_root, *trainer, source->position(), 2));
    if (opts.on_checkpoint)
      opts.on_checkpoint(trainer->step(), trainer->tokens_seen(), ckpt_root + "/" + StepDirName(trainer->step()));
    return absl::OkStatus();
  };

  const int64_t total = job.train.tokens;
  const int64_t batch = job.train.batch_tokens;
  const int64_t every = job.train.checkpoint_every_tokens;
  Progress progress(leader ? opts.progress : ProgressMode::kQuiet, total);
  std::vector<float> rows;
  std::deque<StepMetrics> recent;
  const double t_start = SteadyNow();
  const int64_t tokens_at_start = trainer->tokens_seen();
  double data_wait = 0;
  int64_t steps_here = 0;
  if (leader) {
    SAE_LOG(kInfo) << "training " << (job.name.empty() ? origin : job.name) << " on " << world << " rank(s) (" << backend << "): d_in "
                 << source->d_in() << ", latents " << trainer->options().latents << ", k "
                 << trainer->options().k << ", " << total << " tokens, batch " << batch << ", lr "
                 << trainer->base_lr() << ", " << at::get_num_threads() << " threads";
  }

  while (trainer->tokens_seen() < total) {
    uint8_t stop_now = opts.stop != nullptr && opts.stop->load() ? 1 : 0;
    if (world > 1) {
      // A signal reaches the ranks at different moments: agree on the step to
      // stop at, or one rank would checkpoint while another steps (and both
      // would wait on mismatched collectives until the timeout).
      SAE_RETURN_IF_ERROR(Annotate(comm->AllReduce(&stop_now, 1, CommDType::kU8, ReduceOp::kMax,
                                                   absl::Seconds(job.world.timeout_seconds)),
                                   "agreeing on a stop"));
    }
    if (stop_now) {
      SAE_RETURN_IF_ERROR(checkpoint());
      progress.Finish();
      return absl::CancelledError(absl::StrCat("stopped at step ", trainer->step(),
                                               "; checkpoint written, continue with --resume"));
    }
    int64_t n = std::min(batch, total - trainer->tokens_seen());
    n -= n % world;  // every rank takes an equal share
    if (n == 0) break;
    const double t0 = SteadyNow();
    absl::Status s = source->NextSlice(n, rank, world, &rows);
    const double waited = SteadyNow() - t0;
    data_wait += waited;
    if (!s.ok()) return Annotate(s, absl::StrCat("step ", trainer->step() + 1));
    auto m = trainer->Step(rows.data(), n / world);
    if (!m.ok()) return Annotate(m.status(), absl::StrCat("step ", trainer->step() + 1));
    ++steps_here;
    if (telemetry) {
      StepSample sample;
      sample.tokens = n / world;  // this rank's share: a sum over ranks is the job's tokens
      sample.k = m->k;
      sample.fvu = m->fvu;
      sample.mse = m->mse;
      sample.l0 = m->l0;
      sample.dead_ratio = m->dead_ratio;
      sample.aux_loss = m->aux_loss;
      sample.step_seconds = m->seconds;
      sample.allreduce_seconds = m->allreduce_seconds;
      sample.data_wait_seconds = waited;
      telemetry->Record(sample);
    }
    const double elapsed = SteadyNow() - t_start;
    const double tok_s = (trainer->tokens_seen() - tokens_at_start) / std::max(elapsed, 1e-9);
    // The summary averages the last steps at the final k of the schedule.
    if (!recent.empty() && recent.back().k != m->k) recent.clear();
    recent.push_back(*m);
    if (recent.size() > 10) recent.pop_front();
    const bool last = total - trainer->tokens_seen() < world;
    // 0 (the default): about 100 records per run, enough for a readable curve.
    const int64_t log_every = job.train.log_every_steps > 0
                                  ? job.train.log_every_steps
                                  : std::max<int64_t>(1, total / std::max<int64_t>(1, job.train.batch_tokens) / 100);
    const bool log_now = m->step % log_every == 0 || last;
    if (log_now && leader) {
      json j = {{"step", m->step}, {"tokens", m->tokens}, {"k", m->k}, {"lr", m->lr},
                {"loss", m->loss}, {"fvu", m->fvu}, {"mse", m->mse}, {"aux_loss", m->aux_loss},
                {"l0", m->l0}, {"dead_ratio", m->dead_ratio}, {"grad_norm", m->grad_norm},
                {"recon_norm_ratio", m->recon_norm_ratio},
                {"step_seconds", m->seconds}, {"tokens_per_second", tok_s},
                {"data_wait_seconds", data_wait}, {"allreduce_seconds", m->allreduce_seconds},
                {"allreduce_bytes", m->allreduce_bytes}, {"ranks", world}, {"time", static_cast<int64_t>(std::time(nullptr))}};
      SAE_ASSIGN_OR_RETURN(RunFence::Held held, fence.Hold());
      metrics << j.dump() << "\n";
      metrics.flush();
      if (!metrics) return absl::InternalError(absl::StrCat(metrics_path, ": write failed (disk full?)"));
    }
    progress.Update(*m, tok_s, log_now);
    if (opts.on_step) opts.on_step(*m);
    const bool crossed = every > 0 && (trainer->tokens_seen() / every) != ((trainer->tokens_seen() - n) / every);
    if (crossed && !last) SAE_RETURN_IF_ERROR(checkpoint());
    if (opts.max_steps >= 0 && steps_here >= opts.max_steps && !last) {
      SAE_RETURN_IF_ERROR(checkpoint());
      progress.Finish();
      RunSummary partial;
      partial.tokens = trainer->tokens_seen();
      partial.steps = trainer->step();
      return partial;
    }
  }
  if (leader) metrics.close();

  // Finished: final checkpoint, SAE, summary; then rename into place.
  SAE_RETURN_IF_ERROR(checkpoint());
  RunSummary sum;
  sum.rank = rank;
  sum.world = world;
  sum.finished = true;
  sum.output = final_dir;
  sum.tokens = trainer->tokens_seen();
  sum.steps = trainer->step();
  for (const StepMetrics& m : recent) {
    sum.fvu += m.fvu / recent.size();
    sum.mse += m.mse / recent.size();
    sum.l0 += m.l0 / recent.size();
    sum.aux_loss += m.aux_loss / recent.size();
  }
  sum.dead_ratio = trainer->dead().DeadRatio();
  sum.seconds = SteadyNow() - t_start;
  sum.tokens_per_second = (sum.tokens - tokens_at_start) / std::max(sum.seconds, 1e-9);
  sum.k = trainer->CurrentK();
  sum.latents = trainer->options().latents;
  sum.d_in = trainer->options().d_in;
  sum.remedy = OptionName(trainer->options().remedy);
  sum.planted_recovered = PlantedRecovery(job, trainer->params());
  if (!leader) return sum;  // rank 0 writes the outputs
  SAE_ASSIGN_OR_RETURN(RunFence::Held held, fence.Hold());
  json prov = {{"job", job.name}, {"data", json::parse(source->DescribeJson())}, {"ranks", world}};
  SAE_RETURN_IF_ERROR(trainer->ExportSae(work_dir, prov.dump()));
  json summary = {{"name", job.name}, {"tokens", sum.tokens}, {"steps", sum.steps},
                  {"fvu", sum.fvu}, {"mse", sum.mse}, {"l0", sum.l0},
                  {"dead_ratio", sum.dead_ratio}, {"dead_latents", trainer->dead().NumDead()},
                  {"aux_loss", sum.aux_loss}, {"tokens_per_second", sum.tokens_per_second},
                  {"seconds", sum.seconds}, {"d_in", sum.d_in}, {"latents", sum.latents},
                  {"k", sum.k}, {"dead_remedy", sum.remedy}};
  if (sum.planted_recovered >= 0) summary["planted_atoms_recovered"] = sum.planted_recovered;
  SAE_RETURN_IF_ERROR(AtomicWriteFile(work_dir + "/summary.json", summary.dump(2) + "\n"));
  // The fence's files do not belong to the output; a stale attempt that
  // looks now finds no owner (or no directory) and stops.
  std::error_code ec;
  fs::remove(work_dir + "/attempt", ec);
  fs::remove(work_dir + "/.lock", ec);
  SAE_RETURN_IF_ERROR(DurableRename(work_dir, final_dir));
  return sum;
}

}  // namespace sae
