// Summarises an activation-shard directory for `sae inspect`: the manifest,
// element statistics over the first rows (streamed, bounded memory) and,
// optionally, every shard's sha256 checked against the manifest. Stateless.
#pragma once

#include <cstdint>
#include <string>

#include "core/base/status.h"

namespace sae {

struct InspectOptions {
  bool verify = false;         // check every shard's sha256
  bool json = false;           // one JSON object instead of a text report
  int64_t max_rows = 1 << 20;  // rows read for statistics, in manifest order
};

// Returns the report. A checksum mismatch is a DataLoss error naming the
// shard file; a malformed manifest or shard is the error LoadManifest /
// OpenShard give. NaN/Inf values are counted, not errors.
absl::StatusOr<std::string> InspectShards(const std::string& dir, const InspectOptions& opts);

}  // namespace sae
