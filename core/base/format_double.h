// Doubles as text that reads back to the same double (strtod/SimpleAtod).
// The two forms are the two output contracts that need them; stateless.
#pragma once

#include <string>

namespace sae {

// The shortest "%.Ng" (N = 1..17) that reads back exactly: 0.1 -> "0.1",
// 3e-4 -> "0.0003", 1e20 -> "1e+20". Job files written back as YAML
// (JobConfigToYaml) and the values quoted in validation messages.
std::string FormatDouble(double v);

// "%.17g", always 17 significant digits: 0.1 -> "0.10000000000000001".
// Checkpoint metadata (input_scale in state.safetensors), whose bytes stay
// as they were written before this helper existed.
std::string FormatDouble17(double v);

}  // namespace sae
