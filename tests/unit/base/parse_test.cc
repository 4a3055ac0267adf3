// core/base/parse.h: numbers and JSON fields as values, never exceptions.
#include "core/base/parse.h"

#include <gtest/gtest.h>

namespace sae {
namespace {

std::string Message(const absl::Status& s) { return std::string(s.message()); }

TEST(Parse, Numbers) {
  EXPECT_EQ(ParseInt64(" 42\n", "f: n").value(), 42);
  EXPECT_EQ(ParseInt64("-7", "f: n").value(), -7);
  EXPECT_DOUBLE_EQ(ParseDouble("2.5e-3", "f: x").value(), 2.5e-3);
  for (const char* bad : {"", "4 2", "12x", "0x10", "99999999999999999999", "1.5"}) {
    auto r = ParseInt64(bad, "state.safetensors: step");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Message(r.status()), std::string("state.safetensors: step: '") + bad + "' is not an integer");
  }
  EXPECT_FALSE(ParseDouble("fast", "f: x").ok());
  EXPECT_FALSE(ParseDouble("", "f: x").ok());
  // Long values are cut in messages.
  EXPECT_LT(Message(ParseInt64(std::string(1000, 'z'), "f").status()).size(), 80u);
}

TEST(Parse, JsonText) {
  EXPECT_TRUE(ParseJson(R"({"a": 1})", "x.json").ok());
  for (const char* bad : {"", "{\"a\": ", "{\"a\" 1}", "nul", "[1, 2"}) {
    auto r = ParseJson(bad, "x.json");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(Message(r.status()).rfind("x.json: not valid JSON", 0), 0u) << r.status();
  }
}

TEST(Parse, JsonFields) {
  const nlohmann::json j = nlohmann::json::parse(
      R"({"i": 3, "big": 18446744073709551615, "f": 0.5, "s": "x", "b": true, "n": null, "neg": -1})");
  EXPECT_EQ(JsonField<int64_t>(j, "i", "c.json").value(), 3);
  EXPECT_DOUBLE_EQ(JsonField<double>(j, "i", "c.json").value(), 3.0);
  EXPECT_DOUBLE_EQ(JsonField<double>(j, "f", "c.json").value(), 0.5);
  EXPECT_EQ(JsonField<std::string>(j, "s", "c.json").value(), "x");
  EXPECT_TRUE(JsonField<bool>(j, "b", "c.json").value());
  EXPECT_EQ(Message(JsonField<int64_t>(j, "f", "c.json").status()), "c.json: f: 0.5 is not an integer");
  EXPECT_EQ(Message(JsonField<int64_t>(j, "s", "c.json").status()), "c.json: s: \"x\" is not an integer");
  EXPECT_EQ(Message(JsonField<double>(j, "s", "c.json").status()), "c.json: s: \"x\" is not a number");
  EXPECT_EQ(Message(JsonField<std::string>(j, "i", "c.json").status()), "c.json: i: 3 is not a string");
  EXPECT_EQ(Message(JsonField<int64_t>(j, "zz", "c.json").status()), "c.json: zz: missing");
  EXPECT_FALSE(JsonField<int64_t>(j, "big", "c.json").ok());  // does not fit
  EXPECT_FALSE(JsonField<int32_t>(nlohmann::json{{"v", int64_t{1} << 40}}, "v", "c.json").ok());
  EXPECT_FALSE(JsonField<uint64_t>(j, "neg", "c.json").ok());
  EXPECT_EQ(Message(JsonField<int64_t>(nlohmann::json::array(), "i", "c.json").status()), "c.json: not a JSON object");
  EXPECT_EQ(JsonFieldOr<int64_t>(j, "zz", 9, "c.json").value(), 9);
  EXPECT_EQ(JsonFieldOr<int64_t>(j, "n", 9, "c.json").value(), 9);
  EXPECT_FALSE(JsonFieldOr<int64_t>(j, "s", 9, "c.json").ok());
}

}  // namespace
}  // namespace sae
