// Errors are values at module boundaries: absl::Status / absl::StatusOr<T>,
// plus the two macros abseil's Debian release lacks. Header-only, no state.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define SAE_STATUS_CONCAT_INNER_(a, b) a##b
#define SAE_STATUS_CONCAT_(a, b) SAE_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define SAE_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::absl::Status sae_status_ = (expr);       \
    if (!sae_status_.ok()) return sae_status_; \
  } while (0)

// `lhs = value of expr`, or returns its status from the enclosing function.
#define SAE_ASSIGN_OR_RETURN(lhs, expr) \
  SAE_ASSIGN_OR_RETURN_IMPL_(SAE_STATUS_CONCAT_(sae_statusor_, __LINE__), lhs, expr)
#define SAE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

namespace sae {

// Prefixes `context` to a non-OK status: "reading shard X: <message>".
inline absl::Status Annotate(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

}  // namespace sae
