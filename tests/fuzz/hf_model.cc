// Fuzzes the Hugging Face checkpoint loader (core/lm/loaders LoadHfModel):
// input = config.json, optionally kSplit model.safetensors.index.json. The
// directory holds tiny valid weights for both families: model.safetensors
// (Llama tensors "model.*" and GPT-2 tensors "wte.weight", "h.0.*", ...) and
// the same tensors split over model-00001-of-00002.safetensors and
// model-00002-of-00002.safetensors for index files to name. A model that
// loads must run a forward pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/data/safetensors.h"
#include "core/lm/loaders.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// Llama: hidden 8, 2 heads (1 kv head), intermediate 16, 2 layers, vocab 16.
// GPT-2: n_embd 8, 2 heads, 1 layer, n_inner 32, vocab 16, 16 positions.
std::map<std::string, std::vector<int64_t>> TinyShapes() {
  std::map<std::string, std::vector<int64_t>> s;
  s["model.embed_tokens.weight"] = {16, 8};
  s["model.norm.weight"] = {8};
  s["lm_head.weight"] = {16, 8};
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    s[p + "input_layernorm.weight"] = {8};
    s[p + "post_attention_layernorm.weight"] = {8};
    s[p + "self_attn.q_proj.weight"] = {8, 8};
    s[p + "self_attn.k_proj.weight"] = {4, 8};
    s[p + "self_attn.v_proj.weight"] = {4, 8};
    s[p + "self_attn.o_proj.weight"] = {8, 8};
    s[p + "mlp.gate_proj.weight"] = {16, 8};
    s[p + "mlp.down_proj.weight"] = {8, 16};
    s[p + "mlp.up_proj.weight"] = {16, 8};
  }
  s["wte.weight"] = {16, 8};
  s["wpe.weight"] = {16, 8};
  s["ln_f.weight"] = {8};
  s["ln_f.bias"] = {8};
  const std::string p = "h.0.";
  for (const char* n : {"ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_proj.bias", "mlp.c_proj.bias"})
    s[p + n] = {8};
  s[p + "attn.c_attn.weight"] = {8, 24};
  s[p + "attn.c_attn.bias"] = {24};
  s[p + "attn.c_proj.weight"] = {8, 8};
  s[p + "mlp.c_fc.weight"] = {8, 32};
  s[p + "mlp.c_fc.bias"] = {32};
  s[p + "mlp.c_proj.weight"] = {32, 8};
  return s;
}

const std::string& Dir() {
  static const std::string dir = [] {
    const std::string d = sae::fuzz::FreshDir("hf");
    sae::SafetensorsWriter all, half[2];
    int i = 0;
    for (const auto& [name, shape] : TinyShapes()) {
      int64_t n = 1;
      for (int64_t x : shape) n *= x;
      std::vector<float> v(static_cast<size_t>(n));
      for (int64_t k = 0; k < n; ++k) v[k] = 0.01f * static_cast<float>((k * 7 + i) % 23) - 0.1f;
      if (name.find("norm") != std::string::npos || name.find("ln_") != std::string::npos) v.assign(v.size(), 1.0f);
      if (!all.AddFloat(name, sae::DType::kF32, shape, v.data()).ok() ||
          !half[i % 2].AddFloat(name, sae::DType::kF32, shape, v.data()).ok())
        std::abort();
      ++i;
    }
    if (!all.Write(d + "/model.safetensors").ok() || !half[0].Write(d + "/model-00001-of-00002.safetensors").ok() ||
        !half[1].Write(d + "/model-00002-of-00002.safetensors").ok())
      std::abort();
    at::set_num_threads(1);
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sae;
  const std::string& dir = Dir();
  auto parts = fuzz::Split(data, size, 2);
  fuzz::WriteFile(dir + "/config.json", parts[0]);
  const std::string index = dir + "/model.safetensors.index.json";
  std::error_code ec;
  if (parts[1].empty()) {
    std::filesystem::remove(index, ec);
  } else {
    fuzz::WriteFile(index, parts[1]);
  }
  auto m = LoadHfModel(dir);
  if (!m.ok()) return 0;
  const ModelConfig& c = m->config();
  const int64_t t = std::min<int64_t>(2, c.max_seq_len);
  at::Tensor tokens = at::zeros({1, t}, at::kLong);
  tokens.index_put_({0, t - 1}, c.vocab_size - 1);
  auto logits = m->Forward(tokens);
  SAE_FUZZ_CHECK(logits.ok(), logits.status().ToString());
  return 0;
}
