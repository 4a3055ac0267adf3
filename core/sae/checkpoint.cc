#include "core/sae/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/base/file_util.h"
#include "core/base/parse.h"
#include "core/sae/trainer.h"

namespace sae {

namespace fs = std::filesystem;

RunDir::RunDir(const std::string& output)
    : final_dir(output),
      work_dir(output + kPartialSuffix),
      checkpoints(work_dir + "/" + kCheckpointDir),
      metrics(work_dir + "/" + kMetricsFile) {}

std::string RunDir::CheckpointPath(int64_t step) const { return checkpoints + "/" + CheckpointName(step); }

bool RunDir::HasCheckpoint() const { return PathExists(latest()); }

std::string CheckpointName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%09ld", static_cast<long>(step));
  return buf;
}

absl::Status CheckRunDirPolicy(const RunDir& dir, bool resume, const std::string& origin) {
  if (PathExists(dir.final_dir))
    return absl::AlreadyExistsError(
        absl::StrCat(origin, ": output: ", dir.final_dir, " already exists (a finished run); choose another output"));
  const bool have_ckpt = dir.HasCheckpoint();
  if (!resume && have_ckpt)
    return absl::FailedPreconditionError(absl::StrCat(
        dir.work_dir, " holds checkpoints of an unfinished run: pass --resume to continue it, or remove it"));
  if (resume && !have_ckpt) return absl::NotFoundError(absl::StrCat("--resume: no checkpoint under ", dir.checkpoints));
  return absl::OkStatus();
}

absl::StatusOr<std::string> LatestStatePath(const RunDir& dir) {
  SAE_ASSIGN_OR_RETURN(std::string latest, ReadFileToString(dir.latest()));
  const std::string name(absl::StripAsciiWhitespace(latest));
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
    return absl::DataLossError(absl::StrCat(dir.latest(), ": '", name, "' is not a checkpoint name"));
  return dir.checkpoints + "/" + name + "/" + kStateFile;
}

absl::StatusOr<int64_t> DataPositionOf(const std::map<std::string, std::string>& extra, const std::string& state_path) {
  const auto it = extra.find(kDataPositionKey);
  if (it == extra.end())
    return absl::DataLossError(absl::StrCat(state_path, ": no ", kDataPositionKey, " in the state"));
  auto pos = ParseInt64(it->second, absl::StrCat(state_path, ": ", kDataPositionKey));
  if (!pos.ok() || *pos < 0)
    return absl::DataLossError(
        absl::StrCat(state_path, ": ", kDataPositionKey, " '", it->second, "' is not a row number"));
  return *pos;
}

absl::Status WriteCheckpoint(const RunDir& dir, const SaeTrainer& trainer, int64_t data_pos, int keep) {
  SAE_RETURN_IF_ERROR(MakeDirs(dir.checkpoints));
  const std::string name = CheckpointName(trainer.step());
  const std::string final_dir = dir.checkpoints + "/" + name;
  const std::string tmp_dir = final_dir + ".tmp";
  SAE_RETURN_IF_ERROR(RemoveAll(tmp_dir));
  SAE_RETURN_IF_ERROR(MakeDirs(tmp_dir));
  SAE_RETURN_IF_ERROR(trainer.SaveState(tmp_dir + "/" + kStateFile, {{kDataPositionKey, std::to_string(data_pos)}}));
  SAE_RETURN_IF_ERROR(RemoveAll(final_dir));
  SAE_RETURN_IF_ERROR(DurableRename(tmp_dir, final_dir));
  SAE_RETURN_IF_ERROR(AtomicWriteFile(dir.latest(), name + "\n"));
  PruneCheckpoints(dir.checkpoints, keep, name);
  return absl::OkStatus();
}

void PruneCheckpoints(const std::string& checkpoints, int keep, const std::string& current) {
  std::vector<std::string> steps;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(checkpoints, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step-", 0) == 0 && n.find(".tmp") == std::string::npos) steps.push_back(n);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + keep < steps.size(); ++i)
    if (steps[i] != current) RemoveAll(checkpoints + "/" + steps[i]).IgnoreError();
}

}  // namespace sae
