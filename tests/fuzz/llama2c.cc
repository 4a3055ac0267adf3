// Fuzzes the llama2.c checkpoint loader (core/lm/loaders LoadLlama2c): the
// input is a .bin file (legacy 7-int header or version 1 "ak42"). A file
// that loads must give a model whose forward pass over a short prompt runs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <string>

#include "core/lm/loaders.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sae;
  static const bool once = [] {
    at::set_num_threads(1);
    return true;
  }();
  (void)once;
  const std::string path =
      fuzz::WriteFile(fuzz::ScratchDir() + "/model.bin", std::string(reinterpret_cast<const char*>(data), size));
  auto m = LoadLlama2c(path);
  if (!m.ok()) return 0;
  const ModelConfig& c = m->config();
  SAE_FUZZ_CHECK(c.dim > 0 && c.n_layers > 0 && c.vocab_size > 0 && c.max_seq_len > 0, "dimensions");
  const int64_t t = std::min<int64_t>(2, c.max_seq_len);
  at::Tensor tokens = at::zeros({1, t}, at::kLong);
  tokens.index_put_({0, t - 1}, c.vocab_size - 1);
  auto logits = m->Forward(tokens);
  SAE_FUZZ_CHECK(logits.ok(), logits.status().ToString());
  SAE_FUZZ_CHECK(logits->size(2) == c.vocab_size, "logits width");
  return 0;
}
