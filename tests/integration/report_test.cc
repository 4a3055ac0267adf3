// `sae report` as a user runs it, and the page as a browser renders it:
// headless Chromium (Debian `chromium`) loads the file and its inline script
// counts the plots the browser laid out with a non-empty line.
#include <gtest/gtest.h>

#include "tests/integration/test_util.h"

namespace {

fs::path Dir(const std::string& name) {
  const fs::path d = fs::path(::testing::TempDir()) / ("sae_report_cli_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string Record(int i) {
  return "{\"step\":" + std::to_string(i) + ",\"tokens\":" + std::to_string(512 * i) +
         ",\"k\":" + std::to_string(std::max(8, 64 - i)) + ",\"fvu\":" + std::to_string(1.0 / i) +
         ",\"mse\":" + std::to_string(0.1 / i) + ",\"aux_loss\":" + std::to_string(0.02 / i) +
         ",\"l0\":" + std::to_string(std::max(8, 64 - i)) + ",\"dead_ratio\":" + std::to_string(0.3 / i) +
         ",\"tokens_per_second\":" + std::to_string(10000 + 10 * i) + "}\n";
}

TEST(ReportCli, WritesThePageAndChromiumRendersEveryPlot) {
  const fs::path run = Dir("ok");
  std::string m;
  for (int i = 1; i <= 30; ++i) m += Record(i);
  WriteAll(run / "metrics.jsonl", m);
  WriteAll(run / "summary.json", "{\"name\": \"rep\", \"tokens\": 15360, \"fvu\": 0.033}\n");
  Result r = Sh(Bin("sae") + " report " + run.string() + " --out " + (run / "page.html").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find((run / "page.html").string()), std::string::npos) << r.out;

  if (std::system("command -v chromium > /dev/null 2>&1") != 0) GTEST_SKIP() << "chromium is not installed";
  // --dump-dom prints the DOM after load, with what the page's script set.
  Result dom =
      Sh("timeout 120 chromium --headless --no-sandbox --disable-gpu --no-first-run "
         "--user-data-dir=" +
         (run / "chromium").string() + " --virtual-time-budget=5000 --dump-dom file://" + (run / "page.html").string() +
         " 2>/dev/null");
  ASSERT_EQ(dom.code, 0) << dom.out;
  EXPECT_NE(dom.out.find("data-plots-rendered=\"7\""), std::string::npos) << dom.out.substr(0, 2000);
  for (const char* id : {"fvu", "mse", "dead_ratio", "k", "l0", "aux_loss", "tokens_per_second"})
    EXPECT_NE(dom.out.find(std::string("id=\"plot-") + id + "\""), std::string::npos) << id;
}

TEST(ReportCli, BadMetricsLineIsAnErrorNamingFileAndLine) {
  const fs::path run = Dir("bad");
  WriteAll(run / "metrics.jsonl", Record(1) + Record(2) + "{\"tokens\": 1536, \"fvu\": oops}\n");
  Result r = Sh(Bin("sae") + " report " + run.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find((run / "metrics.jsonl").string() + ":3: not valid JSON"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(run / "report.html"));
  Result none = Sh(Bin("sae") + " report " + (run / "nothing").string());
  EXPECT_EQ(none.code, 1);
  EXPECT_NE(none.out.find("nothing/metrics.jsonl: not found"), std::string::npos) << none.out;
}

}  // namespace
