// The flags of every `sae` command that loads a language model: --model
// (required) and --tokenizer, and --dtype where the command can convert the
// weights. Header-only: cli/ is built as one translation unit.
#pragma once

#include <string>

#include "cli/flags.h"

namespace sae {

inline void AddModelFlags(flags::Command* cmd, std::string* model, std::string* tokenizer,
                          const std::string& model_help = "checkpoint file or directory") {
  cmd->AddOption("--model", *model, model_help).Required();
  cmd->AddOption("--tokenizer", *tokenizer, "tokenizer file (default: found beside the model)");
}

inline void AddDTypeFlag(flags::Command* cmd, std::string* dtype) {
  cmd->AddOption("--dtype", *dtype,
                 "weights and compute dtype: float32|bfloat16|float16 (default: weights as stored, float32 compute)");
}

}  // namespace sae
