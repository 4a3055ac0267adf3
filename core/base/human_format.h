// Human-readable numbers, durations and the training progress line, shared
// by `sae train` (worker/training_run) and `sae jobs/status/watch`
// (cli/service_commands), so that both print progress the same way.
#pragma once

#include <cstdint>
#include <string>

namespace sae {

// 1234567 -> "1.23M", 12345 -> "12.3k", 999 -> "999" (G, M, k).
std::string HumanCount(double v);

// Seconds as "1h02m", "3m07s", "42s"; "?" for a negative or non-finite time.
std::string HumanDuration(double seconds);

// `width` characters: "=====>     " for `frac` in [0, 1] (clamped).
std::string ProgressBar(double frac, int width);

// "1.23M/2.00M tok  45.6k tok/s  fvu 0.1234  dead 1.50%  k 32  ETA 3m07s":
// the ETA from the rate (unknown while tok_s is 0).
std::string ProgressStats(double tokens, double total, double tok_s, double fvu, double dead_ratio, int64_t k);

}  // namespace sae
