// The job file as the service sees it: conversion between JobConfig (the
// parsed YAML) and the sae.v1.JobSpec message, sweep expansion (`k: [32, 64]`
// in a job file becomes one job per value), and the path policy that keeps a
// job's data and output under the operator's roots. Pure functions.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/base/config.h"
#include "core/base/status.h"
#include "sae/v1/job.pb.h"

namespace sae {

v1::JobSpec JobSpecFromConfig(const JobConfig& cfg);
JobConfig JobConfigFromSpec(const v1::JobSpec& spec);

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
absl::StatusOr<std::vector<SweepVariant>> ExpandSweep(const JobConfig& base,
                                                      const std::vector<v1::SweepAxis>& axes);

// Checks that `path` (a job field, named `field` in errors) lies under `root`
// and returns it resolved: relative paths are taken under the root, absolute
// ones must be inside it, and no component may be "..". An empty root allows
// any path without "..".
absl::StatusOr<std::string> ResolveUnderRoot(const std::string& field, const std::string& path,
                                             const std::string& root);

}  // namespace sae
