#include "cli/report_command.h"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/flags.h"
#include "core/base/exit_code.h"
#include "core/telemetry/report.h"

namespace sae {
namespace {

struct ReportArgs {
  std::string run_dir;
  std::string out;
  bool json = false;
};

int RunReport(const ReportArgs& args) {
  auto path = WriteRunReport(args.run_dir, args.out);
  if (!path.ok()) return Fail(path.status());
  if (args.json) {
    std::printf("%s\n", nlohmann::json({{"report", *path}}).dump().c_str());
  } else {
    std::error_code ec;
    const std::string abs = std::filesystem::absolute(*path, ec).lexically_normal().string();
    std::printf("report: %s (open it in a browser: file://%s)\n", path->c_str(), ec ? path->c_str() : abs.c_str());
  }
  return 0;
}

}  // namespace

CommandRunner AddReportCommand(flags::Command* app) {
  auto args = std::make_shared<ReportArgs>();
  flags::Command* report =
      app->AddSubcommand("report",
                         "write one self-contained HTML page of a run's metrics (FVU, MSE, dead ratio, k, L0, "
                         "auxiliary loss, tokens/s over tokens)");
  report->AddOption("run_dir", args->run_dir, "training output directory (or one still training)").Required();
  report->AddOption("--out", args->out, "HTML file to write (default RUN_DIR/report.html)");
  report->AddFlag("--json", args->json, "print {\"report\": PATH} instead of a sentence");
  return [=]() { return report->Parsed() ? RunReport(*args) : kNotParsed; };
}

}  // namespace sae
