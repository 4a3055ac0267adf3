// The job checks that need a shard directory's manifest (d_in known only
// there), shared by the coordinator's submit and `sae train`.
#pragma once

#include <string>

#include "core/base/config.h"
#include "core/base/status.h"

namespace sae {

// The size checks of ValidateJobConfig that need d_in, for a job on
// activation shards, with d_in read from data.path's manifest.json (CheckSaeShape):
// sae.latents (or sae.expansion_factor x d_in) within kMaxLatents, sae.k
// within the latents, and the training state (EstimateTrainingBytes) within
// kMaxTrainingGiB. Run at submit by the coordinator (on the resolved
// data.path) and by `sae train` before it starts. Errors start with `origin`
// and name the field and the manifest. Passes for other data kinds and when
// data.path has no manifest.json yet (the trainer reports that when it opens
// the data); a malformed manifest is LoadManifest's error.
absl::Status CheckJobAgainstManifest(const JobConfig& cfg, const std::string& origin);

}  // namespace sae
