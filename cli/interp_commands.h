// The interpretability subcommands of `sae`: `features build|show|search`,
// `concepts`, `serve`, and the steering flags of `generate`. Kept apart from
// commands.cc like lm_commands.h.
#pragma once

#include <cstdint>
#include <string>

#include "cli/subcommand.h"

namespace sae {

struct GenerateOptions;  // core/lm/generate.h (this header stays torch-free)

CommandRunner AddInterpCommands(flags::Command* app);

// `sae generate --sae RUN --steer J:S ...`.
struct SteerArgs {
  std::string sae, steer, mode = "add", on = "all", units = "max";
  int64_t layer = -1;
  bool compare = false;
  int width = 0;  // --compare column width (0: from the terminal, else 38)
  bool active() const { return !sae.empty() || !steer.empty(); }
};
void AddSteerFlags(flags::Command* gen, SteerArgs* a);
int RunSteeredGenerate(const std::string& model, const std::string& tokenizer, const GenerateOptions& opts,
                       const SteerArgs& a);

}  // namespace sae
