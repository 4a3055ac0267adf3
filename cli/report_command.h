// `sae report RUN_DIR [--out FILE]`: writes the run's self-contained HTML
// report (core/telemetry/report.h) and prints where it is.
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace sae {

struct ReportArgs {
  std::string run_dir;
  std::string out;
  bool json = false;
};

// Adds the `report` subcommand to `app`, parsing into `args` (which must outlive `app`).
CLI::App* AddReportCommand(CLI::App& app, ReportArgs* args);
// Runs it: 0 ok, 1 error (message on stderr naming the file and line).
int RunReport(const ReportArgs& args);

}  // namespace sae
