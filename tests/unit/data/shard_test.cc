#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/data/manifest.h"
#include "core/data/shard_writer.h"
#include "gtest/gtest.h"
#include "tests/unit/data/test_util.h"

namespace sae {
namespace {

using testing_util::ReadBytes;
using testing_util::ScratchDir;
using testing_util::WriteBytes;

std::vector<float> Ramp(int64_t rows, int64_t d) {
  std::vector<float> v(static_cast<size_t>(rows * d));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < d; ++j) v[r * d + j] = std::sin(0.1f * r + 0.7f * j) * (1 + j);
  }
  return v;
}

TEST(ShardWriterTest, WritesShardsAndContractManifest) {
  ScratchDir dir;
  const std::string out = dir.Sub("acts");
  ShardWriterOptions o;
  o.d_in = 5;
  o.rows_per_shard = 4;
  o.source.model = "gpt2";
  o.source.layer = 3;
  o.source.hook = "resid_post";
  o.source.corpus = "tiny.txt";
  o.source.tokens = 10;
  auto w = ShardWriter::Create(out, o);
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<float> data = Ramp(10, 5);
  std::vector<int32_t> tokens = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  ASSERT_TRUE(w->Append(data.data(), 3, tokens.data()).ok());
  ASSERT_TRUE(w->Append(data.data() + 15, 7, tokens.data() + 3).ok());
  EXPECT_FALSE(w->Append(data.data(), 1).ok());  // tokens with every Append or none
  auto m = w->Finish();
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FALSE(w->Finish().ok());
  ASSERT_EQ(m->shards.size(), 3u);
  EXPECT_EQ(m->rows, 10);
  EXPECT_EQ(m->shards[0].file, "shard-00000.safetensors");
  EXPECT_EQ(m->shards[2].file, "shard-00002.safetensors");
  EXPECT_EQ(m->shards[2].rows, 2);

  // The manifest on disk, read as plain JSON: the contract's field names and values.
  nlohmann::json j = nlohmann::json::parse(ReadBytes(out + "/manifest.json"));
  EXPECT_EQ(j["format"], "saeforge.activations.v1");
  EXPECT_EQ(j["d_in"], 5);
  EXPECT_EQ(j["dtype"], "float32");
  EXPECT_EQ(j["rows"], 10);
  ASSERT_EQ(j["shards"].size(), 3u);
  EXPECT_EQ(j["shards"][1]["file"], "shard-00001.safetensors");
  EXPECT_EQ(j["shards"][1]["rows"], 4);
  EXPECT_EQ(j["source"]["model"], "gpt2");
  EXPECT_EQ(j["source"]["layer"], 3);
  EXPECT_EQ(j["source"]["hook"], "resid_post");
  EXPECT_EQ(j["source"]["corpus"], "tiny.txt");
  EXPECT_EQ(j["source"]["tokens"], 10);
  for (const auto& s : j["shards"]) {
    auto sha = Sha256File(out + "/" + s["file"].get<std::string>());
    ASSERT_TRUE(sha.ok());
    EXPECT_EQ(s["sha256"], *sha);
  }

  auto loaded = LoadManifest(out);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->shards[1].sha256, m->shards[1].sha256);
  EXPECT_EQ(loaded->source.hook, "resid_post");

  // Shard 1 holds rows 4..7 and their tokens.
  auto shard = OpenShard(out, *loaded, 1);
  ASSERT_TRUE(shard.ok()) << shard.status();
  auto acts = shard->ReadFloat("activations");
  ASSERT_TRUE(acts.ok());
  EXPECT_EQ(*acts, std::vector<float>(data.begin() + 20, data.begin() + 40));
  std::vector<int32_t> tok(4);
  ASSERT_TRUE(shard->ReadRaw("tokens", tok.data(), 16).ok());
  EXPECT_EQ(tok, (std::vector<int32_t>{4, 5, 6, 7}));

  // A finished directory is not overwritten.
  EXPECT_EQ(ShardWriter::Create(out, o).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST(ShardWriterTest, HalfPrecisionShardsKeepPrecision) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    ScratchDir dir;
    ShardWriterOptions o;
    o.d_in = 7;
    o.dtype = dtype;
    o.rows_per_shard = 6;
    auto w = ShardWriter::Create(dir.path(), o);
    ASSERT_TRUE(w.ok());
    std::vector<float> data = Ramp(9, 7);
    ASSERT_TRUE(w->Append(data.data(), 9).ok());
    auto m = w->Finish();
    ASSERT_TRUE(m.ok());
    auto loaded = LoadManifest(dir.path());
    ASSERT_TRUE(loaded.ok());
    EXPECT_EQ(loaded->dtype, dtype);
    const double rel = dtype == DType::kBF16 ? 1.0 / 256 : dtype == DType::kF16 ? 1.0 / 2048 : 0;
    std::vector<float> back;
    for (size_t s = 0; s < loaded->shards.size(); ++s) {
      auto f = OpenShard(dir.path(), *loaded, s);
      ASSERT_TRUE(f.ok()) << f.status();
      auto v = f->ReadFloat("activations");
      ASSERT_TRUE(v.ok());
      back.insert(back.end(), v->begin(), v->end());
    }
    ASSERT_EQ(back.size(), data.size());
    for (size_t i = 0; i < data.size(); ++i) {
      EXPECT_LE(std::fabs(back[i] - data[i]), rel * std::fabs(data[i]) + 1e-7) << DTypeName(dtype) << i;
    }
  }
}

TEST(ShardWriterTest, RejectsBadOptions) {
  ScratchDir dir;
  ShardWriterOptions o;
  o.d_in = 0;
  EXPECT_EQ(ShardWriter::Create(dir.path(), o).status().code(), absl::StatusCode::kInvalidArgument);
  o.d_in = 4;
  o.rows_per_shard = 0;
  EXPECT_FALSE(ShardWriter::Create(dir.path(), o).ok());
  o.rows_per_shard = 4;
  o.dtype = DType::kI32;
  EXPECT_FALSE(ShardWriter::Create(dir.path(), o).ok());
}

// A valid manifest's JSON, to be broken field by field.
nlohmann::json GoodManifest() {
  return nlohmann::json::parse(
      R"({"format":"saeforge.activations.v1","d_in":4,"dtype":"bfloat16","rows":3,
    "shards":[{"file":"shard-00000.safetensors","rows":3,
               "sha256":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}],
    "source":{"model":"m","layer":2,"hook":"h","corpus":"c","tokens":3}})");
}

TEST(ManifestTest, LoadsAndRejectsFieldByField) {
  ScratchDir dir;
  const std::string path = dir.Sub("manifest.json");
  WriteBytes(path, GoodManifest().dump());
  auto m = LoadManifest(dir.path());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->dtype, DType::kBF16);
  EXPECT_EQ(m->source.layer, 2);

  struct Case {
    const char* field;
    std::function<void(nlohmann::json&)> edit;
  };
  std::vector<Case> cases = {
      {"format", [](nlohmann::json& j) { j["format"] = "other.v2"; }},
      {"dtype", [](nlohmann::json& j) { j["dtype"] = "F32"; }},
      {"d_in", [](nlohmann::json& j) { j["d_in"] = 0; }},
      {"d_in", [](nlohmann::json& j) { j.erase("d_in"); }},
      {"rows", [](nlohmann::json& j) { j["rows"] = 4; }},
      {"file", [](nlohmann::json& j) { j["shards"][0]["file"] = "../escape.safetensors"; }},
      {"file", [](nlohmann::json& j) { j["shards"][0]["file"] = "/abs.safetensors"; }},
      {"sha256", [](nlohmann::json& j) { j["shards"][0]["sha256"] = "xyz"; }},
      {"shards", [](nlohmann::json& j) { j["shards"] = 3; }},
  };
  for (const Case& c : cases) {
    nlohmann::json j = GoodManifest();
    c.edit(j);
    WriteBytes(path, j.dump());
    auto bad = LoadManifest(dir.path());
    ASSERT_FALSE(bad.ok()) << c.field;
    EXPECT_NE(bad.status().message().find(path), std::string::npos) << bad.status();
    EXPECT_NE(bad.status().message().find(c.field), std::string::npos) << bad.status();
  }
  WriteBytes(path, "{not json");
  EXPECT_FALSE(LoadManifest(dir.path()).ok());
  EXPECT_EQ(LoadManifest(dir.Sub("nowhere")).status().code(), absl::StatusCode::kNotFound);
}

// Found by fuzzing (tests/fuzz/corpus/manifest/regress-rows-sum-overflow):
// shard rows that add up past 2^63 overflowed the sum (undefined behaviour).
TEST(ManifestTest, RowsAddingUpPastInt64AreAnError) {
  ScratchDir dir;
  nlohmann::json j = GoodManifest();
  j["rows"] = 0;
  const nlohmann::json shard = j["shards"][0];
  j["shards"] = nlohmann::json::array();
  for (int i = 0; i < 4; ++i) {
    nlohmann::json s = shard;
    s["file"] = "s" + std::to_string(i);
    s["rows"] = int64_t{1} << 62;
    j["shards"].push_back(s);
  }
  WriteBytes(dir.Sub("manifest.json"), j.dump());
  auto bad = LoadManifest(dir.path());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("2^63"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("shards[1]"), std::string::npos) << bad.status();
}

TEST(ManifestTest, SaveLoadRoundTrip) {
  ScratchDir dir;
  Manifest m;
  m.d_in = 16;
  m.dtype = DType::kF16;
  m.rows = 5;
  m.shards.push_back({"a.safetensors", 2, std::string(64, 'a')});
  m.shards.push_back({"sub/b.safetensors", 3, std::string(64, 'b')});
  m.source.corpus = "c";
  ASSERT_TRUE(SaveManifest(dir.path(), m).ok());
  auto back = LoadManifest(dir.path());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->dtype, DType::kF16);
  EXPECT_EQ(back->shards[1].file, "sub/b.safetensors");
  EXPECT_EQ(back->source.layer, -1);
  m.rows = 6;
  EXPECT_FALSE(SaveManifest(dir.path(), m).ok());
}

// .npy bytes: magic, version, header length, a header padded so the data
// starts at a multiple of 64, then the data.
std::string Npy(int major, const std::string& dict, const std::string& data) {
  const size_t pre = major == 1 ? 10 : 12;
  std::string header = dict;
  while ((pre + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  const uint32_t len = static_cast<uint32_t>(header.size());
  out += static_cast<char>(len & 0xff);
  out += static_cast<char>((len >> 8) & 0xff);
  if (major != 1) {
    out += static_cast<char>((len >> 16) & 0xff);
    out += static_cast<char>((len >> 24) & 0xff);
  }
  return out + header + data;
}

template <typename T>
std::string AsBytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

TEST(ImportNpyTest, ImportsF4F8F2) {
  ScratchDir dir;
  std::vector<float> f = Ramp(5, 3);
  std::vector<double> d(f.begin(), f.end());
  std::vector<uint16_t> h;
  for (float x : f) h.push_back(FloatToF16(x));

  struct Case {
    int major;
    std::string descr, bytes;
    double tol;
  };
  std::vector<Case> cases = {{1, "<f4", AsBytes(f), 0}, {2, "<f8", AsBytes(d), 0}, {3, "<f2", AsBytes(h), 1e-3}};
  for (const Case& c : cases) {
    const std::string npy = dir.Sub("in" + c.descr.substr(1) + ".npy");
    WriteBytes(npy, Npy(c.major, "{'descr': '" + c.descr + "', 'fortran_order': False, 'shape': (5, 3), }", c.bytes));
    const std::string out = dir.Sub("out" + c.descr.substr(1));
    auto m = ImportNpy(npy, out, DType::kF32, 2);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->d_in, 3);
    EXPECT_EQ(m->rows, 5);
    EXPECT_EQ(m->shards.size(), 3u);
    std::vector<float> back;
    for (size_t s = 0; s < m->shards.size(); ++s) {
      auto file = OpenShard(out, *m, s);
      ASSERT_TRUE(file.ok());
      auto v = file->ReadFloat("activations");
      ASSERT_TRUE(v.ok());
      back.insert(back.end(), v->begin(), v->end());
    }
    ASSERT_EQ(back.size(), f.size());
    for (size_t i = 0; i < f.size(); ++i) EXPECT_NEAR(back[i], f[i], c.tol * (1 + std::fabs(f[i]))) << c.descr;
  }
}

TEST(ImportNpyTest, RejectsUnsupportedFilesNamingTheField) {
  ScratchDir dir;
  const std::string data = AsBytes(std::vector<float>(6, 1.0f));
  struct Case {
    const char* name;
    std::string bytes;
    const char* expect;
  };
  std::vector<Case> cases = {
      {"fortran", Npy(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", data), "fortran_order"},
      {"three_d", Npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }", data), "shape"},
      {"one_d", Npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", data), "shape"},
      {"big_endian", Npy(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", data), "big-endian"},
      {"int", Npy(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", data), "descr"},
      {"truncated", Npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }", data), "truncated"},
      {"bad_magic", "\x93NUMPX" + std::string(60, ' '), "magic"},
      {"no_shape", Npy(1, "{'descr': '<f4', 'fortran_order': False, }", data), "shape"},
  };
  for (const Case& c : cases) {
    const std::string npy = dir.Sub(std::string(c.name) + ".npy");
    WriteBytes(npy, c.bytes);
    auto m = ImportNpy(npy, dir.Sub(std::string("out_") + c.name), DType::kF32, 100);
    ASSERT_FALSE(m.ok()) << c.name;
    EXPECT_NE(m.status().message().find(npy), std::string::npos) << m.status();
    EXPECT_NE(m.status().message().find(c.expect), std::string::npos) << m.status();
    EXPECT_FALSE(PathExists(dir.Sub(std::string("out_") + c.name + "/manifest.json")));
  }
}

}  // namespace
}  // namespace sae
