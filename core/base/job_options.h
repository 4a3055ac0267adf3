// The option values of the job file (ARCHITECTURE.md "Job file") as enums,
// each with its one list of names: the job reader parses them, the writer and
// cfg.json print them, every other user compares enums. Adding a value is one
// line in its table. Pure functions, thread-safe.
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "core/base/status.h"

namespace sae {

enum class DataKind { kShards, kLm, kSynthetic };
// kConstant is the schedule without annealing (no k_schedule section); it is
// not a value of sae.k_schedule.shape.
enum class KShape { kConstant, kLinear, kCosine, kExponential };
enum class Remedy { kNone, kAuxK, kGhostGrads };
enum class Normalize { kNone, kLayerNorm, kUnitMeanNorm };
enum class InitBDec { kMean, kGeometricMedian, kZero };
enum class AuxKScale { kFit, kNone };
enum class InitEncoderScale { kAuto, kMatchNorm, kNone };
enum class KScheduleLoss { kMultiTopK, kCurrentK };
enum class LrDecay { kNone, kLinear, kCosine };
enum class Precision { kFp32, kBf16 };
// train.encoder: kDense (the encoder GEMM in train.precision) or
// kInt8Screened (core/sae/int8_screen.h: an int8 GEMM screens candidates,
// the fp32 top-k is certified exact; CPU, fp32).
enum class Encoder { kDense, kInt8Screened };
enum class Device { kAuto, kCpu, kCuda };
enum class Backend { kAuto, kLocal, kGloo, kMpi, kNccl };

template <class E>
struct OptionValue {
  E value;
  const char* name;
};

// OptionTable<E>::kValues: the values a job file may give, in the order
// error messages list them.
template <class E>
struct OptionTable;

#define SAE_OPTION_TABLE(E, ...)                               \
  template <>                                                  \
  struct OptionTable<E> {                                      \
    static constexpr OptionValue<E> kValues[] = {__VA_ARGS__}; \
  }

SAE_OPTION_TABLE(DataKind, {DataKind::kShards, "shards"}, {DataKind::kLm, "lm"}, {DataKind::kSynthetic, "synthetic"});
SAE_OPTION_TABLE(KShape, {KShape::kLinear, "linear"}, {KShape::kCosine, "cosine"},
                 {KShape::kExponential, "exponential"});
SAE_OPTION_TABLE(Remedy, {Remedy::kNone, "none"}, {Remedy::kGhostGrads, "ghost_grads"}, {Remedy::kAuxK, "auxk"});
SAE_OPTION_TABLE(Normalize, {Normalize::kNone, "none"}, {Normalize::kLayerNorm, "layer_norm"},
                 {Normalize::kUnitMeanNorm, "unit_mean_norm"});
SAE_OPTION_TABLE(InitBDec, {InitBDec::kMean, "mean"}, {InitBDec::kGeometricMedian, "geometric_median"},
                 {InitBDec::kZero, "zero"});
SAE_OPTION_TABLE(AuxKScale, {AuxKScale::kFit, "fit"}, {AuxKScale::kNone, "none"});
SAE_OPTION_TABLE(InitEncoderScale, {InitEncoderScale::kAuto, "auto"}, {InitEncoderScale::kMatchNorm, "match_norm"},
                 {InitEncoderScale::kNone, "none"});
SAE_OPTION_TABLE(KScheduleLoss, {KScheduleLoss::kMultiTopK, "multi_topk"}, {KScheduleLoss::kCurrentK, "current_k"});
SAE_OPTION_TABLE(LrDecay, {LrDecay::kNone, "none"}, {LrDecay::kLinear, "linear"}, {LrDecay::kCosine, "cosine"});
SAE_OPTION_TABLE(Precision, {Precision::kFp32, "fp32"}, {Precision::kBf16, "bf16"});
SAE_OPTION_TABLE(Encoder, {Encoder::kDense, "dense"}, {Encoder::kInt8Screened, "int8_screened"});
SAE_OPTION_TABLE(Device, {Device::kAuto, "auto"}, {Device::kCpu, "cpu"}, {Device::kCuda, "cuda"});
SAE_OPTION_TABLE(Backend, {Backend::kAuto, "auto"}, {Backend::kLocal, "local"}, {Backend::kGloo, "gloo"},
                 {Backend::kMpi, "mpi"}, {Backend::kNccl, "nccl"});
#undef SAE_OPTION_TABLE

// The name of a value ("constant" for KShape::kConstant, "?" for a value
// outside the table).
template <class E>
const char* OptionName(E v) {
  if constexpr (std::is_same_v<E, KShape>) {
    if (v == KShape::kConstant) return "constant";
  }
  for (const auto& o : OptionTable<E>::kValues)
    if (o.value == v) return o.name;
  return "?";
}

// "a, b, c": the names a file may give.
template <class E>
std::string OptionChoices() {
  std::string out;
  for (const auto& o : OptionTable<E>::kValues) absl::StrAppend(&out, out.empty() ? "" : ", ", o.name);
  return out;
}

// The value named `s`; InvalidArgument "'s' is not one of a, b, c" (the
// caller prefixes the file and field).
template <class E>
absl::StatusOr<E> ParseOption(const std::string& s) {
  for (const auto& o : OptionTable<E>::kValues)
    if (s == o.name) return o.value;
  return absl::InvalidArgumentError(absl::StrCat("'", s, "' is not one of ", OptionChoices<E>()));
}

}  // namespace sae
