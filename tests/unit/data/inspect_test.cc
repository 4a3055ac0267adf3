#include "core/data/inspect.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/data/shard_writer.h"
#include "gtest/gtest.h"
#include "tests/unit/data/test_util.h"

namespace sae {
namespace {

using testing_util::FlipByte;
using testing_util::ReadBytes;
using testing_util::ScratchDir;

// 6 rows x 4 columns: row r is (r, r, r, r) except one NaN and one Inf.
void MakeDataset(const std::string& dir) {
  ShardWriterOptions o;
  o.d_in = 4;
  o.rows_per_shard = 4;
  o.source.model = "tiny-llama";
  o.source.layer = 2;
  auto w = ShardWriter::Create(dir, o);
  ASSERT_TRUE(w.ok());
  std::vector<float> rows;
  for (int r = 0; r < 6; ++r) rows.insert(rows.end(), 4, static_cast<float>(r));
  rows[5 * 4 + 1] = std::numeric_limits<float>::quiet_NaN();
  rows[5 * 4 + 2] = -std::numeric_limits<float>::infinity();
  ASSERT_TRUE(w->Append(rows.data(), 6).ok());
  ASSERT_TRUE(w->Finish().ok());
}

TEST(InspectTest, TextReportHasManifestAndStatistics) {
  ScratchDir dir;
  MakeDataset(dir.path());
  auto report = InspectShards(dir.path(), {});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_NE(report->find("d_in:      4\n"), std::string::npos) << *report;
  EXPECT_NE(report->find("rows:      6\n"), std::string::npos) << *report;
  EXPECT_NE(report->find("shards:    2\n"), std::string::npos) << *report;
  EXPECT_NE(report->find("dtype:     float32"), std::string::npos) << *report;
  EXPECT_NE(report->find("model=tiny-llama"), std::string::npos) << *report;
  EXPECT_NE(report->find("nan 1  inf 1"), std::string::npos) << *report;
  EXPECT_EQ(report->find("verify"), std::string::npos);
}

TEST(InspectTest, JsonStatisticsAreCorrect) {
  ScratchDir dir;
  MakeDataset(dir.path());
  InspectOptions o;
  o.json = true;
  auto report = InspectShards(dir.path(), o);
  ASSERT_TRUE(report.ok()) << report.status();
  nlohmann::json j = nlohmann::json::parse(*report);
  EXPECT_EQ(j["d_in"], 4);
  EXPECT_EQ(j["rows"], 6);
  EXPECT_EQ(j["shard_count"], 2);
  EXPECT_EQ(j["dtype"], "float32");
  EXPECT_EQ(j["format"], "saeforge.activations.v1");
  EXPECT_EQ(j["source"]["layer"], 2);
  // Finite elements: 0 x4, 1 x4, 2 x4, 3 x4, 4 x4, 5 x2.
  std::vector<double> v;
  for (int r = 0; r < 5; ++r) v.insert(v.end(), 4, r);
  v.insert(v.end(), 2, 5);
  double mean = 0, var = 0;
  for (double x : v) mean += x / v.size();
  for (double x : v) var += (x - mean) * (x - mean) / v.size();
  const auto& s = j["stats"];
  EXPECT_EQ(s["rows"], 6);
  EXPECT_EQ(s["elements"], 22);
  EXPECT_NEAR(s["mean"].get<double>(), mean, 1e-12);
  EXPECT_NEAR(s["std"].get<double>(), std::sqrt(var), 1e-12);
  EXPECT_NEAR(s["mean_row_norm"].get<double>(), (0 + 2 + 4 + 6 + 8) / 5.0,
              1e-12);  // |(r,r,r,r)| = 2r
  EXPECT_EQ(s["min"], 0.0);
  EXPECT_EQ(s["max"], 5.0);
  EXPECT_EQ(s["nan"], 1);
  EXPECT_EQ(s["inf"], 1);

  o.max_rows = 3;  // statistics over a prefix only
  j = nlohmann::json::parse(*InspectShards(dir.path(), o));
  EXPECT_EQ(j["stats"]["rows"], 3);
  EXPECT_EQ(j["stats"]["max"], 2.0);
  EXPECT_EQ(j["stats"]["nan"], 0);
}

TEST(InspectTest, VerifyReportsOkAndDetectsAFlippedByte) {
  ScratchDir dir;
  MakeDataset(dir.path());
  InspectOptions o;
  o.verify = true;
  auto report = InspectShards(dir.path(), o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_NE(report->find("shard-00000.safetensors ok"), std::string::npos) << *report;
  EXPECT_NE(report->find("shard-00001.safetensors ok"), std::string::npos) << *report;
  o.json = true;
  nlohmann::json j = nlohmann::json::parse(*InspectShards(dir.path(), o));
  EXPECT_EQ(j["verify"]["shard-00001.safetensors"], "ok");

  const std::string shard = dir.path() + "/shard-00001.safetensors";
  FlipByte(shard, ReadBytes(shard).size() - 1);
  EXPECT_TRUE(InspectShards(dir.path(), {}).ok());  // without --verify the header is all that is checked
  auto bad = InspectShards(dir.path(), o);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find(shard), std::string::npos) << bad.status();
}

TEST(InspectTest, MissingDirectoryIsNotFound) {
  ScratchDir dir;
  EXPECT_EQ(InspectShards(dir.Sub("nope"), {}).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sae
