// Loading (and re-saving) transformer checkpoints. Every error names the file
// and the tensor or field at fault; nothing here aborts on a bad file.
//   llama2.c: legacy (7 int32 header) and version 1 ("ak42" magic, 256-byte
//             header) float32 .bin files.
//   Hugging Face: a directory with config.json and model.safetensors or a
//             sharded model-0000x-of-0000y.safetensors set with its
//             model.safetensors.index.json. model_type llama (Llama 1-3.x:
//             rope_scaling default/linear/dynamic/llama3, any head_dim),
//             mistral (sliding_window), qwen2 (q/k/v biases, layer_types),
//             phi3 (fused qkv_proj/gate_up_proj, longrope), gemma2 and gpt2
//             (Conv1D [in, out] weights; "transformer." prefix optional).
//             Decoder weights keep their stored dtype (F32, BF16, F16) and
//             compute runs in float32, unless LoadOptions::dtype converts
//             both. Config values and tensors saeforge does not implement
//             are refused by name.
#pragma once

#include <string>

#include "core/base/status.h"
#include "core/lm/model.h"

namespace sae {

struct LoadOptions {
  // "" (weights as stored, float32 compute), "float32", "bfloat16" or
  // "float16": weights converted to it and compute in it.
  std::string dtype;
};

absl::StatusOr<Transformer> LoadLlama2c(const std::string& path, const LoadOptions& opts = {});
absl::StatusOr<Transformer> LoadHfModel(const std::string& dir, const LoadOptions& opts = {});

// PATH is a llama2.c .bin file, an HF directory (with config.json), or a
// directory holding exactly one llama2.c .bin file.
absl::StatusOr<Transformer> LoadModel(const std::string& path, const LoadOptions& opts = {});

// The checkpoint file or directory LoadModel would read for `path`.
absl::StatusOr<std::string> ResolveModelPath(const std::string& path);

// Writers (used by tests and for conversions). `version` 0 = legacy, 1 = v1.
// Only Llama-family models with interleaved RoPE can be written as llama2.c.
absl::Status SaveLlama2c(const Transformer& m, const std::string& path, int version);
// Writes config.json + model.safetensors (or `shards` > 1 files with the
// index) in HF Llama layout: q/k rows permuted from interleaved to rotate-half;
// head_dim, rope scaling and q/k/v/o biases are kept (float32 tensors).
// Sliding-window models are refused.
absl::Status SaveHfLlama(const Transformer& m, const std::string& dir, int shards = 1);

}  // namespace sae
