// Parsing that returns errors as values: numbers in text (safetensors
// metadata, state files) and fields of JSON objects (cfg.json, summary.json,
// metrics.jsonl). Use these instead of std::stoll/std::stod or nlohmann's
// get<T>() in code that returns a status: those throw on corrupt input.
// Every error names `where` (the file, or "file: field") and the bad value.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/base/status.h"

namespace sae {

// The whole of `text` (surrounding ASCII whitespace allowed) as a number;
// InvalidArgument "WHERE: 'TEXT' is not an integer/a number" otherwise.
absl::StatusOr<int64_t> ParseInt64(absl::string_view text, absl::string_view where);
absl::StatusOr<double> ParseDouble(absl::string_view text, absl::string_view where);

// Two hex digits ("3F", "a0") as a byte; false for anything else.
bool ParseHexByte(absl::string_view text, uint8_t* out);

// JSON text as a value; InvalidArgument naming `where` and the parser's
// message (truncated or malformed text). Never throws.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view where);

namespace internal {
// At most 40 characters of `text` (with "..." when cut), for messages.
std::string Excerpt(absl::string_view text);
template <typename T>
bool JsonHolds(const nlohmann::json& v) {
  if constexpr (std::is_same_v<T, bool>)
    return v.is_boolean();
  else if constexpr (std::is_same_v<T, std::string>)
    return v.is_string();
  else if constexpr (std::is_integral_v<T> && std::is_unsigned_v<T>)
    return v.is_number_unsigned();
  else if constexpr (std::is_integral_v<T>)
    return v.is_number_integer();
  else if constexpr (std::is_floating_point_v<T>)
    return v.is_number();
  else
    static_assert(sizeof(T) == 0, "JsonField: unsupported type");
}
template <typename T>
const char* JsonTypeName() {
  if constexpr (std::is_same_v<T, bool>)
    return "a boolean";
  else if constexpr (std::is_same_v<T, std::string>)
    return "a string";
  else if constexpr (std::is_integral_v<T>)
    return "an integer";
  else
    return "a number";
}
}  // namespace internal

// A JSON value as T; InvalidArgument "WHERE: VALUE is not an integer" (also
// when an integer does not fit T).
template <typename T>
absl::StatusOr<T> JsonAs(const nlohmann::json& v, absl::string_view where) {
  if (!internal::JsonHolds<T>(v))
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", internal::Excerpt(v.dump()), " is not ", internal::JsonTypeName<T>()));
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if constexpr (std::is_unsigned_v<T>) {
      const uint64_t u = v.get<uint64_t>();
      if (u > std::numeric_limits<T>::max())
        return absl::InvalidArgumentError(absl::StrCat(where, ": ", u, " is out of range"));
    } else {
      if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<T>::max()))
        return absl::InvalidArgumentError(absl::StrCat(where, ": ", v.dump(), " is out of range"));
      const int64_t i = v.get<int64_t>();
      if (i < std::numeric_limits<T>::min() || i > std::numeric_limits<T>::max())
        return absl::InvalidArgumentError(absl::StrCat(where, ": ", i, " is out of range"));
    }
  }
  return v.get<T>();
}

// obj[key] as T; InvalidArgument "WHERE: KEY: missing" / "WHERE: KEY: VALUE
// is not an integer" (also when `obj` is not an object, or an integer does
// not fit T).
template <typename T>
absl::StatusOr<T> JsonField(const nlohmann::json& obj, absl::string_view key, absl::string_view where) {
  if (!obj.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
  const auto it = obj.find(std::string(key));
  if (it == obj.end()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", key, ": missing"));
  return JsonAs<T>(*it, absl::StrCat(where, ": ", key));
}

// The same for an optional field: `fallback` when absent (or null).
template <typename T>
absl::StatusOr<T> JsonFieldOr(const nlohmann::json& obj, absl::string_view key, T fallback, absl::string_view where) {
  if (obj.is_object()) {
    const auto it = obj.find(std::string(key));
    if (it == obj.end() || it->is_null()) return fallback;
  }
  return JsonField<T>(obj, key, where);
}
}  // namespace sae
