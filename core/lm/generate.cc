#include "core/lm/generate.h"

#include <cctype>
#include <chrono>

#include "core/lm/sampler.h"

namespace sae {

absl::StatusOr<GenerateResult> Generate(const Transformer& model, const Tokenizer& tok, const GenerateOptions& o,
                                        const std::function<void(const std::string&)>& emit) {
  const ModelConfig& c = model.config();
  int64_t steps = o.steps;
  if (steps <= 0 || steps > c.max_seq_len) steps = c.max_seq_len;
  GenerateResult res;
  std::vector<int32_t> prompt = tok.Encode(o.prompt, /*bos=*/true, /*eos=*/false);
  if (prompt.empty()) return absl::InvalidArgumentError("generate: the prompt encodes to no tokens");
  if (static_cast<int64_t>(prompt.size()) > steps)
    return absl::InvalidArgumentError(
        absl::StrCat("generate: the prompt has ", prompt.size(), " tokens, more than --steps ", steps));
  Llama2cSampler sampler(c.vocab_size, o.temperature, o.top_p, o.seed);
  KvCache cache = model.NewCache(1, steps);
  const auto t0 = std::chrono::steady_clock::now();
  int32_t token = prompt[0];
  res.tokens.push_back(token);
  for (int64_t pos = 0; pos < steps;) {
    at::Tensor in = at::full({1, 1}, static_cast<int64_t>(token), at::kLong);
    ForwardOptions fo;
    for (const PositionHook& h : o.hooks)
      fo.hooks.push_back({h.layer, h.point, [&h, pos](at::Tensor& x) { h.fn(pos, x); }});
    SAE_ASSIGN_OR_RETURN(at::Tensor logits, model.Forward(in, &cache, fo));
    int32_t next;
    if (pos < static_cast<int64_t>(prompt.size()) - 1) {
      next = prompt[pos + 1];
    } else {
      at::Tensor l = logits.reshape({-1}).to(at::kCPU).contiguous();
      next = sampler.Sample(l.data_ptr<float>());
      ++res.generated;
    }
    ++pos;
    if (next == 1 && tok.bos_id() == 1) break;  // llama2.c stops at BOS
    if (next == tok.bos_id()) break;
    const std::string piece = tok.DecodePiece(token, next);
    // safe_printf: skip empty pieces and unprintable single bytes.
    bool print = !piece.empty();
    if (piece.size() == 1) {
      const unsigned char b = static_cast<unsigned char>(piece[0]);
      print = std::isprint(b) || std::isspace(b);
    }
    if (print) emit(piece);
    res.tokens.push_back(next);
    token = next;
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

absl::StatusOr<std::vector<int32_t>> SampleBatch(const Transformer& model, int64_t n, int64_t length, float temperature,
                                                 float top_p, uint64_t seed, bool reference) {
  const ModelConfig& c = model.config();
  if (length > c.max_seq_len || length < 1)
    return absl::InvalidArgumentError(absl::StrCat("sample: length ", length, " outside [1, ", c.max_seq_len, "]"));
  std::vector<Llama2cSampler> samplers;
  for (int64_t i = 0; i < n; ++i)
    samplers.emplace_back(c.vocab_size, temperature, top_p, seed + static_cast<uint64_t>(i));
  std::vector<int32_t> out(static_cast<size_t>(n * length));
  KvCache cache = model.NewCache(n, length);
  std::vector<int64_t> cur(n, c.bos_id);
  for (int64_t t = 0; t < length; ++t) {
    for (int64_t i = 0; i < n; ++i) out[i * length + t] = static_cast<int32_t>(cur[i]);
    if (t + 1 == length) break;
    at::Tensor in = at::from_blob(cur.data(), {n, 1}, at::kLong).clone();
    ForwardOptions fo;
    fo.reference = reference;
    SAE_ASSIGN_OR_RETURN(at::Tensor logits, model.Forward(in, &cache, fo));
    at::Tensor l = logits.reshape({n, -1}).to(at::kCPU).contiguous();
    for (int64_t i = 0; i < n; ++i) {
      cur[i] = samplers[i].Sample(l.data_ptr<float>() + i * c.vocab_size);
      if (cur[i] == c.eos_id) cur[i] = c.bos_id;
    }
  }
  return out;
}

}  // namespace sae
