// The job file as the service sees it: JobConfig (the parsed YAML) to and
// from the sae.v1.JobSpec message (the canonical YAML text, so no field is
// named here), sweep expansion (`k: [32, 64]` in a job file becomes one job
// per value) and the JSON the clients print. Used by the clients (cli/,
// worker/) and by the coordinator. Pure functions.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/base/config.h"
#include "core/base/status.h"
#include "sae/v1/job.pb.h"

namespace sae {

// The message of a config: JobConfigToYaml(cfg).
v1::JobSpec JobSpecFromConfig(const JobConfig& cfg);
// The config of a message, read and validated as a job file would be;
// errors name `origin` (e.g. the job id) and the field.
absl::StatusOr<JobConfig> JobConfigFromSpec(const v1::JobSpec& spec, const std::string& origin);

// A message as `sae ... --json` prints it: protobuf's JSON mapping (field
// names as in the .proto, defaults printed), with every JobSpec shown as the
// fields of its job ({"name": .., "data": {"kind": "synthetic", "d_in": "64",
// ..}, ..}: int64 as strings, enums by name), the shape it had when the
// message mirrored the file field by field.
std::string MessageToJson(const google::protobuf::Message& m);

// One job of a sweep: the name suffix ("k-32") and its validated config.
struct SweepVariant {
  std::string suffix;
  JobConfig config;
};

// Reads a job file whose sae fields may hold lists of values. Returns the
// base config (lists replaced by their first value) and one axis per list.
absl::StatusOr<std::pair<JobConfig, std::vector<v1::SweepAxis>>> LoadJobFileWithSweep(const std::string& path);
absl::StatusOr<std::pair<JobConfig, std::vector<v1::SweepAxis>>> ParseJobWithSweep(const std::string& yaml,
                                                                                   const std::string& origin);

// Every combination of the axes applied to `base`, each validated; outputs
// become OUTPUT/<suffix>, names NAME-<suffix>. Errors name the axis.
absl::StatusOr<std::vector<SweepVariant>> ExpandSweep(const JobConfig& base, const std::vector<v1::SweepAxis>& axes);

}  // namespace sae
