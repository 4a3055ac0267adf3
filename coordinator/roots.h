// The path policy of the coordinator: a job's data and output stay under the
// operator's roots (--data-root, --output-root). Pure function.
#pragma once

#include <string>

#include "core/base/status.h"

namespace sae {

// Checks that `path` (a job field, named `field` in errors) lies under `root`
// and returns it resolved: relative paths are taken under the root, absolute
// ones must be inside it, and no component may be "..". An empty root allows
// any path without "..".
absl::StatusOr<std::string> ResolveUnderRoot(const std::string& field, const std::string& path,
                                             const std::string& root);

}  // namespace sae
