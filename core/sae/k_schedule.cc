#include "core/sae/k_schedule.h"

#include <algorithm>
#include <cmath>

namespace sae {

KSchedule KSchedule::Constant(int64_t k) {
  KSchedule s;
  s.start_ = s.end_ = k;
  return s;
}

absl::StatusOr<KSchedule> KSchedule::Create(KShape shape, int64_t start, int64_t end, double fraction,
                                            int64_t total_tokens) {
  if (end < 1) return absl::InvalidArgumentError("k_schedule.end: must be >= 1");
  if (start < end)
    return absl::InvalidArgumentError(absl::StrCat("k_schedule.start (", start, ") must be >= end (", end, ")"));
  if (!(fraction > 0 && fraction <= 1)) return absl::InvalidArgumentError("k_schedule.fraction: must be in (0, 1]");
  if (total_tokens <= 0) return absl::InvalidArgumentError("train.tokens: must be > 0");
  KSchedule s;
  s.shape_ = shape;
  s.start_ = start;
  s.end_ = end;
  s.fraction_ = fraction;
  s.total_tokens_ = total_tokens;
  return s;
}

int64_t KSchedule::KAt(int64_t tokens_seen) const {
  if (shape_ == KShape::kConstant || start_ == end_) return end_;
  const double p = std::min(1.0, static_cast<double>(tokens_seen) / (fraction_ * static_cast<double>(total_tokens_)));
  const double ks = static_cast<double>(start_), ke = static_cast<double>(end_);
  double k = ke;
  switch (shape_) {
    case KShape::kLinear: k = ks + (ke - ks) * p; break;
    case KShape::kCosine: k = ke + (ks - ke) * (1 + std::cos(M_PI * p)) / 2; break;
    case KShape::kExponential: k = ks * std::pow(ke / ks, p); break;
    case KShape::kConstant: break;
  }
  return std::clamp<int64_t>(std::llround(k), end_, start_);
}

}  // namespace sae
