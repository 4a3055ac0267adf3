#include "worker/step_loop.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/base/clock.h"
#include "core/comm/communicator.h"
#include "core/sae/trainer.h"
#include "worker/batch_source.h"

namespace sae {

absl::StatusOr<bool> AgreeOnStop(Communicator* comm, bool local, absl::Duration timeout) {
  uint8_t stop = local ? 1 : 0;
  if (comm != nullptr && comm->world_size() > 1) {
    SAE_RETURN_IF_ERROR(
        Annotate(comm->AllReduce(&stop, 1, CommDType::kU8, ReduceOp::kMax, timeout), "agreeing on a stop"));
  }
  return stop != 0;
}

StepLoop::StepLoop(const StepLoopConfig& cfg, SaeTrainer* trainer, BatchSource* source, Communicator* comm)
    : cfg_(cfg), trainer_(trainer), source_(source), comm_(comm) {
  if (comm_ != nullptr) {
    rank_ = comm_->rank();
    world_ = comm_->world_size();
  }
  t_start_ = SteadyNow();
  tokens_at_start_ = trainer_->tokens_seen();
}

double StepLoop::seconds() const { return SteadyNow() - t_start_; }

bool StepLoop::Crossed(int64_t n) const {
  const int64_t every = cfg_.checkpoint_every_tokens;
  const int64_t seen = trainer_->tokens_seen();
  return every > 0 && (seen / every) != ((seen - n) / every);
}

absl::StatusOr<LoopEnd> StepLoop::Run() {
  const int64_t total = cfg_.total_tokens;
  while (trainer_->tokens_seen() < total) {
    const bool local_stop = cfg_.stop != nullptr && cfg_.stop->load();
    SAE_ASSIGN_OR_RETURN(const bool stop, AgreeOnStop(comm_, local_stop, cfg_.timeout));
    if (stop) {
      SAE_RETURN_IF_ERROR(checkpoint());
      return LoopEnd::kStopped;
    }
    int64_t n = std::min(cfg_.batch_tokens, total - trainer_->tokens_seen());
    n -= n % world_;  // every rank takes an equal share
    if (n == 0) break;
    SAE_RETURN_IF_ERROR(StepOn(n));
    const bool last = total - trainer_->tokens_seen() < world_;
    if (Crossed(n) && !last) SAE_RETURN_IF_ERROR(checkpoint());
    if (cfg_.max_steps >= 0 && steps_here_ >= cfg_.max_steps && !last) {
      SAE_RETURN_IF_ERROR(checkpoint());
      return LoopEnd::kPaused;
    }
  }
  return LoopEnd::kFinished;
}

absl::Status StepLoop::StepOn(int64_t n) {
  const double t0 = SteadyNow();
  absl::Status s = source_->NextSlice(n, rank_, world_, &rows_);
  const double waited = SteadyNow() - t0;
  data_wait_ += waited;
  if (!s.ok()) return Annotate(s, absl::StrCat("step ", trainer_->step() + 1));
  auto m = trainer_->Step(rows_.data(), n / world_);
  if (!m.ok()) return Annotate(m.status(), absl::StrCat("step ", trainer_->step() + 1));
  ++steps_here_;
  const double elapsed = SteadyNow() - t_start_;
  // The summary averages the last steps at the final k of the schedule.
  if (!recent_.empty() && recent_.back().k != m->k) recent_.clear();
  recent_.push_back(*m);
  if (recent_.size() > 10) recent_.pop_front();
  const bool last = cfg_.total_tokens - trainer_->tokens_seen() < world_;
  StepReport r{*m};
  r.rank_rows = n / world_;
  r.data_wait_seconds = waited;
  r.total_data_wait = data_wait_;
  r.tokens_per_second = (trainer_->tokens_seen() - tokens_at_start_) / std::max(elapsed, 1e-9);
  r.log_now = m->step % std::max<int64_t>(1, cfg_.log_every_steps) == 0 || last;
  return on_step ? on_step(r) : absl::OkStatus();
}

}  // namespace sae
