// `sae report RUN_DIR [--out FILE]`: writes the run's self-contained HTML
// report (core/telemetry/report.h) and prints where it is.
#pragma once

#include "cli/subcommand.h"

namespace sae {

// Adds `report` to `app` (cli/subcommand.h); it exits 0 ok, 1 error (the
// message on stderr names the file and line).
CommandRunner AddReportCommand(flags::Command* app);

}  // namespace sae
