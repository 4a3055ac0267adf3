// The flags of every `sae` command that loads a language model: --model
// (required) and --tokenizer, and --dtype where the command can convert the
// weights. Header-only: cli/ is built as one translation unit.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace sae {

inline void AddModelFlags(CLI::App* cmd, std::string* model, std::string* tokenizer,
                          const std::string& model_help = "checkpoint file or directory") {
  cmd->add_option("--model", *model, model_help)->required();
  cmd->add_option("--tokenizer", *tokenizer, "tokenizer file (default: found beside the model)");
}

inline void AddDTypeFlag(CLI::App* cmd, std::string* dtype) {
  cmd->add_option("--dtype", *dtype,
                  "weights and compute dtype: float32|bfloat16|float16 (default: weights as stored, float32 compute)");
}

}  // namespace sae
