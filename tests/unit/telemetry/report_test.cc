// The run report: metrics.jsonl parsing with errors that name file and line,
// and a page with one inline SVG plot per series, no external resources.
#include "core/telemetry/report.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

namespace sae {
namespace {

namespace fs = std::filesystem;

std::string Line(int step, double tokens, double fvu) {
  return "{\"step\":" + std::to_string(step) + ",\"tokens\":" + std::to_string(tokens) +
         ",\"k\":" + std::to_string(64 - step) + ",\"fvu\":" + std::to_string(fvu) +
         ",\"mse\":" + std::to_string(fvu / 10) + ",\"aux_loss\":0.01,\"l0\":" + std::to_string(60 - step) +
         ",\"dead_ratio\":" + std::to_string(0.5 / step) + ",\"tokens_per_second\":" + std::to_string(1000 * step) +
         "}\n";
}

fs::path RunDir(const std::string& name, const std::string& metrics) {
  const fs::path d = fs::path(::testing::TempDir()) / ("sae_report_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  std::ofstream(d / "metrics.jsonl") << metrics;
  return d;
}

TEST(ParseMetricsJsonl, ReadsTheSeries) {
  auto p = ParseMetricsJsonl(Line(1, 100, 0.9) + "\n" + Line(2, 200, 0.5), "m.jsonl");
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 2u);
  EXPECT_EQ((*p)[1].tokens, 200);
  EXPECT_DOUBLE_EQ((*p)[1].fvu, 0.5);
  EXPECT_DOUBLE_EQ((*p)[1].k, 62);
  EXPECT_DOUBLE_EQ((*p)[0].tokens_per_second, 1000);
  // A field a record lacks is a gap, not a zero.
  auto gap = ParseMetricsJsonl("{\"tokens\": 5, \"fvu\": 0.3}\n", "m.jsonl");
  ASSERT_TRUE(gap.ok()) << gap.status();
  EXPECT_TRUE(std::isnan((*gap)[0].mse));
}

TEST(ParseMetricsJsonl, ErrorsNameFileAndLine) {
  struct Case {
    std::string text, want;
  } cases[] = {
      {Line(1, 100, 0.9) + Line(2, 200, 0.5) + "{\"tokens\": 3", "run/metrics.jsonl:3: not valid JSON"},
      {Line(1, 100, 0.9) + "[1,2]\n", "run/metrics.jsonl:2: not a JSON object"},
      {"{\"fvu\": 0.1}\n", "run/metrics.jsonl:1: field 'tokens' is missing"},
      {Line(1, 100, 0.9) + "{\"tokens\": 200, \"mse\": \"high\"}\n",
       "run/metrics.jsonl:2: field 'mse' is not a number"},
      {Line(1, 300, 0.9) + Line(2, 200, 0.5), "run/metrics.jsonl:2: tokens 200 is less than"},
      {"\n\n", "run/metrics.jsonl: no records"},
  };
  for (const Case& c : cases) {
    auto p = ParseMetricsJsonl(c.text, "run/metrics.jsonl");
    ASSERT_FALSE(p.ok()) << c.want;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(p.status().message()).find(c.want), std::string::npos) << p.status() << " vs " << c.want;
  }
}

TEST(RunReport, OnePlotPerSeriesAndNoExternalResources) {
  std::string m;
  for (int i = 1; i <= 40; ++i) m += Line(i, 1000.0 * i, 1.0 / (i * i));
  const fs::path d = RunDir("ok", m);
  std::ofstream(d / "summary.json") << "{\"name\": \"demo<1>\", \"tokens\": 40000, \"fvu\": 0.0125}";
  auto html = RenderRunReport(d.string());
  ASSERT_TRUE(html.ok()) << html.status();
  for (const char* id : {"fvu", "mse", "dead_ratio", "k", "l0", "aux_loss", "tokens_per_second"}) {
    const std::string tag = std::string("id=\"plot-") + id + "\"";
    const size_t at = html->find(tag);
    ASSERT_NE(at, std::string::npos) << id;
    const size_t poly = html->find("<polyline class=\"series\" data-points=\"40\"", at);
    EXPECT_LT(poly, html->find("</svg>", at)) << id << ": no 40-point polyline in its svg";
  }
  // y positions follow the values: FVU falls, so the line goes down the page (svg y grows).
  const size_t fvu = html->find("id=\"plot-fvu\"");
  const size_t pts = html->find("\" points=\"", fvu) + 10;
  const std::string points = html->substr(pts, html->find('"', pts) - pts);
  std::smatch first, last;
  ASSERT_TRUE(std::regex_search(points, first, std::regex("^([0-9.]+),([0-9.]+)")));
  ASSERT_TRUE(std::regex_search(points, last, std::regex("([0-9.]+),([0-9.]+)$")));
  EXPECT_LT(std::stod(first[1]), std::stod(last[1]));
  EXPECT_LT(std::stod(first[2]), std::stod(last[2]));
  EXPECT_NE(html->find("log scale"), std::string::npos);  // FVU spans 3 decades
  // summary.json is shown, escaped; nothing is fetched from elsewhere.
  EXPECT_NE(html->find("demo&lt;1&gt;"), std::string::npos);
  EXPECT_NE(html->find("<td>fvu</td><td>0.0125</td>"), std::string::npos);
  EXPECT_EQ(html->find("src="), std::string::npos);
  EXPECT_EQ(html->find("href="), std::string::npos);
  std::string body = html->substr(html->find("<body"));
  for (size_t p; (p = body.find("xmlns=\"http://www.w3.org/2000/svg\"")) != std::string::npos;) body.erase(p, 34);
  EXPECT_EQ(body.find("http"), std::string::npos);
  EXPECT_EQ(body.find("fetch("), std::string::npos);
}

TEST(RunReport, PartialRunAndWriteToFile) {
  const fs::path d = RunDir("partial.partial", Line(1, 10, 0.5) + Line(2, 20, 0.4));
  const std::string run = d.string().substr(0, d.string().size() - 8);  // without .partial
  auto written = WriteRunReport(run);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, d.string() + "/report.html");
  std::ifstream in(*written);
  std::string html((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(html.find("no summary.json yet"), std::string::npos);
  EXPECT_NE(html.find("id=\"plot-l0\""), std::string::npos);

  auto missing = RenderRunReport((fs::path(::testing::TempDir()) / "no_such_run").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("no_such_run/metrics.jsonl"), std::string::npos);
}

}  // namespace
}  // namespace sae
