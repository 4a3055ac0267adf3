#include "cli/report_command.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/telemetry/report.h"

namespace sae {

CLI::App* AddReportCommand(CLI::App& app, ReportArgs* args) {
  CLI::App* report = app.add_subcommand(
      "report", "write one self-contained HTML page of a run's metrics (FVU, MSE, dead ratio, k, L0, "
                "auxiliary loss, tokens/s over tokens)");
  report->add_option("run_dir", args->run_dir, "training output directory (or one still training)")->required();
  report->add_option("--out", args->out, "HTML file to write (default RUN_DIR/report.html)");
  report->add_flag("--json", args->json, "print {\"report\": PATH} instead of a sentence");
  return report;
}

int RunReport(const ReportArgs& args) {
  auto path = WriteRunReport(args.run_dir, args.out);
  if (!path.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(path.status().message()).c_str());
    return 1;
  }
  if (args.json) {
    std::printf("%s\n", nlohmann::json({{"report", *path}}).dump().c_str());
  } else {
    std::error_code ec;
    const std::string abs = std::filesystem::absolute(*path, ec).lexically_normal().string();
    std::printf("report: %s (open it in a browser: file://%s)\n", path->c_str(), ec ? path->c_str() : abs.c_str());
  }
  return 0;
}

}  // namespace sae
