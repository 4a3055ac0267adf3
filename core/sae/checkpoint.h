// The layout of a training run's directory and its checkpoints (contract):
//
//   OUTPUT.partial/            while the run is unfinished (renamed to OUTPUT
//     job.yaml                 when training finished)
//     metrics.jsonl            one JSON object per logged step
//     checkpoints/latest       the name of the newest checkpoint, "step-N\n"
//     checkpoints/step-N/state.safetensors   SaeTrainer::SaveState
//     summary.json, sae.safetensors, cfg.json  (only once finished)
//
// A checkpoint is written into step-N.tmp/, renamed to step-N/, and only then
// named by `latest`; the newest `keep` checkpoints stay. Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "core/base/status.h"

namespace sae {

class SaeTrainer;

// Names of the files in OUTPUT (contract).
inline constexpr char kPartialSuffix[] = ".partial";
inline constexpr char kCheckpointDir[] = "checkpoints";
inline constexpr char kLatestFile[] = "latest";
inline constexpr char kStateFile[] = "state.safetensors";
inline constexpr char kMetricsFile[] = "metrics.jsonl";
inline constexpr char kSummaryFile[] = "summary.json";
// The key of SaveState's metadata that holds the data source's position.
inline constexpr char kDataPositionKey[] = "data_position";

// The paths of one run, from its final OUTPUT directory.
struct RunDir {
  explicit RunDir(const std::string& output);
  std::string final_dir;    // OUTPUT
  std::string work_dir;     // OUTPUT.partial
  std::string checkpoints;  // OUTPUT.partial/checkpoints
  std::string metrics;      // OUTPUT.partial/metrics.jsonl
  std::string latest() const { return checkpoints + "/" + kLatestFile; }
  std::string CheckpointPath(int64_t step) const;  // checkpoints/step-N
  // Whether an unfinished run left a checkpoint to resume from.
  bool HasCheckpoint() const;
};

// "step-000000042": a checkpoint's directory name (sorts by step).
std::string CheckpointName(int64_t step);

// The output/resume policy: a finished OUTPUT is never overwritten; the
// checkpoints of an unfinished run are continued only with `resume`, and
// `resume` needs one. `origin` names the job in messages.
absl::Status CheckRunDirPolicy(const RunDir& dir, bool resume, const std::string& origin);

// The state file `latest` names (the resume lookup); NotFound/DataLoss naming
// the file when the pointer is missing, empty or names no checkpoint.
absl::StatusOr<std::string> LatestStatePath(const RunDir& dir);

// The data position stored with a state (kDataPositionKey); DataLoss naming
// `state_path` and the field when missing or not a row number.
absl::StatusOr<int64_t> DataPositionOf(const std::map<std::string, std::string>& extra, const std::string& state_path);

// Writes the trainer's state as the checkpoint of its current step, atomically
// (see above), with `data_pos` stored in it; keeps the newest `keep`.
absl::Status WriteCheckpoint(const RunDir& dir, const SaeTrainer& trainer, int64_t data_pos, int keep);

// Removes all but the newest `keep` checkpoint directories (never `current`).
void PruneCheckpoints(const std::string& checkpoints, int keep, const std::string& current);

}  // namespace sae
