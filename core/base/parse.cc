#include "core/base/parse.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"

namespace sae {
namespace internal {

std::string Excerpt(absl::string_view text) {
  constexpr size_t kMax = 40;
  if (text.size() <= kMax) return std::string(text);
  return absl::StrCat(text.substr(0, kMax), "...");
}

}  // namespace internal

absl::StatusOr<int64_t> ParseInt64(absl::string_view text, absl::string_view where) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &v))
    return absl::InvalidArgumentError(absl::StrCat(where, ": '", internal::Excerpt(text), "' is not an integer"));
  return v;
}

absl::StatusOr<double> ParseDouble(absl::string_view text, absl::string_view where) {
  double v = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(text), &v))
    return absl::InvalidArgumentError(absl::StrCat(where, ": '", internal::Excerpt(text), "' is not a number"));
  return v;
}

bool ParseHexByte(absl::string_view text, uint8_t* out) {
  if (text.size() != 2) return false;
  int v = 0;
  for (char c : text) {
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      d = c - 'A' + 10;
    else
      return false;
    v = v * 16 + d;
  }
  *out = static_cast<uint8_t>(v);
  return true;
}

absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view where) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Parse again for the parser's message (where it stopped), still without throwing.
    struct Sax : nlohmann::json_sax<nlohmann::json> {
      std::string error;
      bool null() override { return true; }
      bool boolean(bool) override { return true; }
      bool number_integer(number_integer_t) override { return true; }
      bool number_unsigned(number_unsigned_t) override { return true; }
      bool number_float(number_float_t, const string_t&) override { return true; }
      bool string(string_t&) override { return true; }
      bool binary(binary_t&) override { return true; }
      bool start_object(std::size_t) override { return true; }
      bool key(string_t&) override { return true; }
      bool end_object() override { return true; }
      bool start_array(std::size_t) override { return true; }
      bool end_array() override { return true; }
      bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
        error = e.what();
        return false;
      }
    } sax;
    nlohmann::json::sax_parse(text.begin(), text.end(), &sax);
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": not valid JSON", sax.error.empty() ? "" : ": ", sax.error));
  }
  return j;
}

}  // namespace sae
