#include "core/data/safetensors.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "tests/unit/data/test_util.h"

namespace sae {
namespace {

using testing_util::ReadBytes;
using testing_util::ScratchDir;
using testing_util::WriteBytes;

float Bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// An 8-byte little-endian length, the header text and the data, as is.
std::string RawFile(const std::string& header, const std::string& data, uint64_t len_override = 0) {
  uint64_t len = len_override ? len_override : header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(len >> (8 * i));
  return out + header + data;
}

TEST(BF16Test, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBF16(1.0f), 0x3f80);
  // 1 + 2^-8 lies exactly between 0x3f80 (even) and 0x3f81: ties to even.
  EXPECT_EQ(FloatToBF16(1.00390625f), 0x3f80);
  // 1 + 3 * 2^-8 lies between 0x3f81 (odd) and 0x3f82 (even).
  EXPECT_EQ(FloatToBF16(1.01171875f), 0x3f82);
  // Just above the tie rounds up.
  EXPECT_EQ(FloatToBF16(Bits(0x3f808001)), 0x3f81);
  EXPECT_EQ(FloatToBF16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToBF16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(FloatToBF16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to inf
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(std::nanf("")))));
  // A NaN whose payload lives only in the low bits must not become inf.
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(Bits(0x7f800001)))));
  EXPECT_EQ(BF16ToFloat(0x4049), 3.140625f);
}

TEST(BF16Test, EveryValueRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = BF16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBF16(f), h) << std::hex << h;
  }
}

TEST(F16Test, KnownValues) {
  EXPECT_EQ(FloatToF16(1.0f), 0x3c00);
  EXPECT_EQ(FloatToF16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToF16(0.1f), 0x2e66);
  EXPECT_EQ(FloatToF16(1.0f / 3.0f), 0x3555);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToF16(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);  // the tie above the max rounds to inf
  EXPECT_EQ(FloatToF16(1e10f), 0x7c00);
  EXPECT_EQ(FloatToF16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToF16(std::ldexp(3.0f, -24)), 0x0003);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even: zero
  EXPECT_EQ(FloatToF16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(FloatToF16(std::ldexp(2.5f, -24)), 0x0002);  // tie to even
  EXPECT_EQ(FloatToF16(-0.0f), 0x8000);
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToFloat(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(F16ToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16ToFloat(0x7e00)));
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::nanf("")))));
  EXPECT_TRUE(std::signbit(F16ToFloat(0x8000)));
}

TEST(F16Test, EveryValueRoundTripsAndMidpointsTieToEven) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = F16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      ASSERT_EQ(h & 0x7c00, 0x7c00u);
      ASSERT_TRUE(std::isnan(F16ToFloat(FloatToF16(f))));
      continue;
    }
    ASSERT_EQ(FloatToF16(f), h) << std::hex << h;
    // Independent decode: sign * 2^(e-15) * 1.m, or 2^-24 * m for subnormals.
    const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e != 31) {
      double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
      ASSERT_EQ(static_cast<double>(std::fabs(f)), v) << std::hex << h;
    }
    // The midpoint to the next magnitude rounds to whichever code is even.
    const uint32_t mag = h & 0x7fff;
    if (mag < 0x7bff) {
      double lo = F16ToFloat(static_cast<uint16_t>(mag));
      double hi = F16ToFloat(static_cast<uint16_t>(mag + 1));
      float mid = static_cast<float>((lo + hi) / 2);  // exact in float
      uint16_t even = (mag & 1) ? static_cast<uint16_t>(mag + 1) : static_cast<uint16_t>(mag);
      ASSERT_EQ(FloatToF16(mid), even) << std::hex << h;
      float above = std::nextafter(mid, 1e9f);
      ASSERT_EQ(FloatToF16(above), mag + 1) << std::hex << h;
    }
  }
}

TEST(SafetensorsTest, RoundTripsEveryDtype) {
  ScratchDir dir;
  const std::string path = dir.Sub("t.safetensors");
  std::vector<float> f(24);
  for (size_t i = 0; i < f.size(); ++i) f[i] = 0.37f * static_cast<float>(i) - 3.1f;
  std::vector<int32_t> ints = {1, -2, 3, 2147483647};
  SafetensorsWriter w;
  ASSERT_TRUE(w.AddFloat("f32", DType::kF32, {4, 6}, f.data()).ok());
  ASSERT_TRUE(w.AddFloat("bf16", DType::kBF16, {4, 6}, f.data()).ok());
  ASSERT_TRUE(w.AddFloat("f16", DType::kF16, {4, 6}, f.data()).ok());
  ASSERT_TRUE(w.AddFloat("f64", DType::kF64, {24}, f.data()).ok());
  ASSERT_TRUE(w.Add("ints", DType::kI32, {4}, ints.data()).ok());
  w.SetMetadata("purpose", "test");
  ASSERT_TRUE(w.Write(path).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tensors().size(), 5u);
  EXPECT_EQ(file->metadata().at("purpose"), "test");
  auto info = file->Info("bf16");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->dtype, DType::kBF16);
  EXPECT_EQ(info->shape, (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(info->numel(), 24);

  for (const char* name : {"f32", "bf16", "f16", "f64"}) {
    auto got = file->ReadFloat(name);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), f.size());
    const double tol = std::string(name) == "bf16" ? 1.0 / 256 : std::string(name) == "f16" ? 1.0 / 2048 : 0;
    for (size_t i = 0; i < f.size(); ++i) {
      EXPECT_LE(std::fabs((*got)[i] - f[i]), tol * std::fabs(f[i]) + 1e-7) << name << " " << i;
    }
  }
  // Stored halves are exactly the documented conversions.
  std::vector<uint16_t> raw(24);
  ASSERT_TRUE(file->ReadRaw("bf16", raw.data(), raw.size() * 2).ok());
  for (size_t i = 0; i < f.size(); ++i) EXPECT_EQ(raw[i], FloatToBF16(f[i]));
  ASSERT_TRUE(file->ReadRaw("f16", raw.data(), raw.size() * 2).ok());
  for (size_t i = 0; i < f.size(); ++i) EXPECT_EQ(raw[i], FloatToF16(f[i]));

  std::vector<int32_t> ints_back(4);
  ASSERT_TRUE(file->ReadRaw("ints", ints_back.data(), 16).ok());
  EXPECT_EQ(ints_back, ints);

  // Rows [1, 3) of a 2-D tensor.
  std::vector<float> rows(12);
  ASSERT_TRUE(file->ReadRowsAsFloat("f32", 1, 3, rows.data()).ok());
  for (int i = 0; i < 12; ++i) EXPECT_EQ(rows[i], f[6 + i]);
  EXPECT_FALSE(file->ReadRowsAsFloat("f32", 3, 5, rows.data()).ok());
  EXPECT_FALSE(file->ReadRowsAsFloat("ints", 0, 1, rows.data()).ok());
  EXPECT_EQ(file->Info("missing").status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, ByteLayoutMatchesTheFormat) {
  ScratchDir dir;
  const std::string path = dir.Sub("layout.safetensors");
  const float b[3] = {1.0f, 2.0f, 3.0f};
  const int32_t a[2] = {7, 9};
  SafetensorsWriter w;
  ASSERT_TRUE(w.Add("b", DType::kF32, {3}, b).ok());
  ASSERT_TRUE(w.Add("a", DType::kI32, {1, 2}, a).ok());
  ASSERT_TRUE(w.Write(path).ok());

  const std::string bytes = ReadBytes(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(len % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + len + 8 + 12);  // header, 2 * I32, 3 * F32
  const std::string header = bytes.substr(8, len);
  nlohmann::json j = nlohmann::json::parse(header);  // trailing spaces are JSON whitespace
  EXPECT_FALSE(j.contains("__metadata__"));          // only written when non-empty
  EXPECT_EQ(j["a"]["dtype"], "I32");
  EXPECT_EQ(j["a"]["shape"], nlohmann::json({1, 2}));
  EXPECT_EQ(j["a"]["data_offsets"], nlohmann::json({0, 8}));  // name order: "a" first
  EXPECT_EQ(j["b"]["dtype"], "F32");
  EXPECT_EQ(j["b"]["data_offsets"], nlohmann::json({8, 20}));
  const size_t pad_begin = header.find_last_not_of(' ') + 1;
  EXPECT_EQ(header[pad_begin - 1], '}');
  EXPECT_LT(header.size() - pad_begin, 8u);
  int32_t a_back[2];
  float b_back[3];
  std::memcpy(a_back, bytes.data() + 8 + len, 8);
  std::memcpy(b_back, bytes.data() + 8 + len + 8, 12);
  EXPECT_EQ(a_back[0], 7);
  EXPECT_EQ(a_back[1], 9);
  EXPECT_EQ(b_back[2], 3.0f);

  // Metadata appears when set.
  w.SetMetadata("k", "v");
  ASSERT_TRUE(w.Write(path).ok());
  const std::string bytes2 = ReadBytes(path);
  uint64_t len2 = 0;
  for (int i = 7; i >= 0; --i) len2 = (len2 << 8) | static_cast<unsigned char>(bytes2[i]);
  EXPECT_EQ(nlohmann::json::parse(bytes2.substr(8, len2))["__metadata__"]["k"], "v");
}

TEST(SafetensorsTest, ReadsAHandWrittenFile) {
  ScratchDir dir;
  const std::string path = dir.Sub("hand.safetensors");
  float data[2] = {0.5f, -4.0f};
  WriteBytes(path, RawFile(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                           std::string(reinterpret_cast<char*>(data), 8)));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto x = file->ReadFloat("x");
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(*x, (std::vector<float>{0.5f, -4.0f}));
}

struct BadCase {
  const char* name;
  std::string bytes;
  const char* expect;  // substring of the error message
};

TEST(SafetensorsTest, RejectsMalformedFiles) {
  ScratchDir dir;
  const std::string eight(8, '\0');
  const std::string ok_entry = R"("x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::vector<BadCase> cases = {
      {"short", std::string(5, '\0'), "too short"},
      {"len_beyond", RawFile("{}", "", 9000000000000000000ull), "header length"},
      {"len_beyond_small", RawFile("{}", "", 100), "header length"},
      {"not_json", RawFile("{\"x\": nope}", eight), "not a valid JSON"},
      {"offsets_out_of_range", RawFile(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", eight),
       "out of range"},
      {"offsets_reversed", RawFile(R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight), "out of range"},
      {"size_mismatch", RawFile(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight), "byte size"},
      {"unknown_dtype", RawFile(R"({"x":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", eight),
       "unknown dtype"},
      {"negative_dim", RawFile(R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight), "shape"},
      {"overlap",
       RawFile(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
               R"("y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
               eight),
       "overlap"},
      {"truncated_data", RawFile("{" + ok_entry + "}", std::string(4, '\0')), "out of range"},
  };
  for (const BadCase& c : cases) {
    const std::string path = dir.Sub(std::string(c.name) + ".safetensors");
    WriteBytes(path, c.bytes);
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << c.name;
    EXPECT_NE(file.status().message().find(path), std::string::npos) << c.name << ": " << file.status();
    EXPECT_NE(file.status().message().find(c.expect), std::string::npos) << c.name << ": " << file.status();
  }
  auto missing = SafetensorsFile::Open(dir.Sub("absent.safetensors"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, WriterRejectsBadInput) {
  SafetensorsWriter w;
  float x = 1;
  EXPECT_FALSE(w.Add("", DType::kF32, {1}, &x).ok());
  EXPECT_FALSE(w.Add("__metadata__", DType::kF32, {1}, &x).ok());
  EXPECT_FALSE(w.Add("neg", DType::kF32, {-1}, &x).ok());
  EXPECT_FALSE(w.AddFloat("i", DType::kI32, {1}, &x).ok());
  EXPECT_FALSE(w.Write("/nonexistent-dir/x.safetensors").ok());
}

TEST(SafetensorsTest, DTypeNames) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64, DType::kI32, DType::kI64, DType::kU8}) {
    auto back = DTypeFromString(DTypeName(d));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, d);
  }
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF64), 8u);
  EXPECT_FALSE(DTypeFromString("float32").ok());
}

}  // namespace
}  // namespace sae
