// A decoder-only transformer on LibTorch (CPU or CUDA tensors): the Llama
// family (RMSNorm, RoPE in llama2.c's interleaved-pair or Hugging Face's
// rotate-half convention, grouped-query attention, SwiGLU; with RoPE scaling
// (llama3, linear, dynamic, longrope), a head_dim of its own, sliding-window
// layers and q/k/v biases it covers Llama 3.x, Mistral, Qwen2 and Phi-3),
// Gemma 2 ((1 + w) RMSNorm before and after each sublayer, GeGLU, scaled
// embeddings, soft-capped attention and logits, alternating sliding windows)
// and GPT-2 (LayerNorm, learned positions, GELU-tanh MLP). Weights stay in
// the dtype they were loaded in (e.g. bf16); compute runs in
// ModelConfig::compute_dtype (float32 unless asked otherwise). Forward runs a batch of
// equal-length sequences with an optional KV cache; hooks read or replace the
// residual stream. A Transformer is immutable after loading and Forward is
// safe from several threads with separate caches. Loaders: see loaders.h.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/base/status.h"

namespace sae {

enum class Arch { kLlama, kGpt2, kGemma2 };
enum class RopeStyle { kInterleaved, kRotateHalf };

struct ModelConfig {
  Arch arch = Arch::kLlama;
  int64_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0;
  int64_t vocab_size = 0, max_seq_len = 0;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeStyle rope = RopeStyle::kInterleaved;
  int64_t bos_id = 1, eos_id = 2;
  std::string source;  // file or directory it was loaded from
  std::string format;  // "llama2c-legacy", "llama2c-v1", "hf-llama", "hf-mistral", "hf-qwen2", "hf-phi3", "hf-gemma2",
                       // "hf-gpt2"
  // Per-head width; 0: dim / n_heads (Gemma, Qwen3, Mistral-Nemo set their own).
  int64_t explicit_head_dim = 0;
  // RoPE frequency scaling (Hugging Face rope_scaling / rope_parameters).
  struct RopeScaling {
    std::string type = "default";  // default, linear, dynamic, llama3, longrope
    double factor = 1.0;
    double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
    int64_t original_max_position = 0;                     // llama3, longrope, dynamic
    std::vector<double> short_factor, long_factor;         // longrope, head_dim/2 each
    double attention_factor = 1.0;                         // longrope: cos/sin scale
  } rope_scaling;
  // Per layer: attend to the last `window` positions only (query − key <
  // window); 0 or an empty vector: full causal attention.
  std::vector<int64_t> sliding_window;
  bool gelu_mlp = false;       // gated MLP with tanh-GELU (GeGLU) instead of SiLU
  double embed_scale = 0.0;    // > 0: embeddings multiplied by it (Gemma: √dim)
  double attn_scale = 0.0;     // > 0: score scale (Gemma: query_pre_attn_scalar^−½); else 1/√head_dim
  double attn_softcap = 0.0;   // > 0: scores = cap·tanh(scores/cap)
  double final_softcap = 0.0;  // > 0: logits = cap·tanh(logits/cap)
  at::ScalarType compute_dtype = at::kFloat;  // activations; weights are cast to it per use
  int64_t head_dim() const { return explicit_head_dim > 0 ? explicit_head_dim : (n_heads ? dim / n_heads : 0); }
  int64_t window(int64_t layer) const {
    return layer >= 0 && layer < static_cast<int64_t>(sliding_window.size()) ? sliding_window[layer] : 0;
  }
};

// Bounds on a model's dimensions, beyond any released model, checked before
// any size is computed from them (a header or config.json could otherwise
// overflow sizes or ask for terabytes): dim <= 2^20, hidden <= 2^22,
// layers <= 4096, vocab <= 2^24, max_seq_len <= 2^20, heads <= dim, kv heads
// <= heads, and the rotary tables (max_seq_len x head_dim/2) <= 2^26 entries.
// InvalidArgument naming `cfg.source` and the field; Transformer::Create and
// the loaders call it.
absl::Status CheckModelDims(const ModelConfig& cfg);

// Weights of one block. GPT-2 uses the *_b biases and w1/w2 only; Gemma 2
// adds the norms after attention and after the MLP. wq is [heads·head_dim,
// dim], wo [dim, heads·head_dim].
struct BlockWeights {
  at::Tensor attn_norm, attn_norm_b, ffn_norm, ffn_norm_b;
  at::Tensor post_attn_norm, post_ffn_norm;   // Gemma 2
  at::Tensor wq, wk, wv, wo, bq, bk, bv, bo;  // [out, in] (at::linear layout)
  at::Tensor w1, w2, w3, b1, b2;              // w1 gate/fc, w3 up, w2 down/proj
};

struct ModelWeights {
  at::Tensor tok_emb;  // [vocab, dim]
  at::Tensor pos_emb;  // GPT-2 only [max_seq_len, dim]
  std::vector<BlockWeights> blocks;
  at::Tensor final_norm, final_norm_b;
  at::Tensor lm_head;  // [vocab, dim] (may alias tok_emb)
};

// Where a hook sits. kResidPost: residual stream after block `layer` (layer
// −1: the embeddings); kMlpOut: the MLP's output of block `layer` before it
// is added (Gemma 2: after its post-MLP norm); kFinalNorm: after the final norm (layer ignored).
enum class HookPoint { kResidPost, kMlpOut, kFinalNorm };
absl::StatusOr<HookPoint> HookPointFromString(const std::string& s);  // resid_post | mlp_out
const char* HookPointName(HookPoint h);                               // resid_post | mlp_out | final_norm

// A hook sees the activation [B, T, dim] and may replace it (assign a tensor
// of the same shape) to steer or splice; leaving it untouched only reads.
struct Hook {
  int64_t layer = 0;
  HookPoint point = HookPoint::kResidPost;
  std::function<void(at::Tensor& x)> fn;
};

// Per-sequence keys and values of every layer for positions [0, len),
// positions along the last axis (decoding reads them as rows of
// consecutive positions).
struct KvCache {
  std::vector<at::Tensor> k, v;  // [B, n_kv_heads, head_dim, capacity] per layer
  int64_t len = 0;
  int64_t capacity() const { return k.empty() ? 0 : k[0].size(3); }
};

struct ForwardOptions {
  std::vector<Hook> hooks;
  // ≥ 0: stop after this block (hooks up to it run) and return no logits.
  int64_t stop_after_layer = -1;
  // Run the op-by-op ATen path even where the fused CPU path applies (the
  // reference the fused path is tested against).
  bool reference = false;
};

class Transformer {
 public:
  // Checks every tensor's shape against `cfg`; errors name `cfg.source` and the tensor.
  static absl::StatusOr<Transformer> Create(ModelConfig cfg, ModelWeights w);

  const ModelConfig& config() const { return cfg_; }
  const ModelWeights& weights() const { return w_; }

  KvCache NewCache(int64_t batch, int64_t capacity) const;

  // tokens: int64 [B, T] ids. Positions start at cache->len (0 without a
  // cache); the cache grows by T. Returns float32 logits [B, T, vocab].
  absl::StatusOr<at::Tensor> Forward(const at::Tensor& tokens, KvCache* cache = nullptr,
                                     const ForwardOptions& opts = {}) const;

  // Moves the weights (e.g. to CUDA); the model is then used there.
  void To(const at::Device& device);

 private:
  Transformer() = default;
  at::Tensor ForwardImpl(const at::Tensor& tokens, KvCache* cache, const ForwardOptions& opts) const;
  // The fused CPU path (fused_forward.cc): Llama-family blocks in float32 on
  // the CPU, one GEMM per projection over all B·T positions into a reused
  // per-thread workspace and hand-written loops for norms, RoPE and
  // attention. Same results as ForwardImpl to float rounding.
  bool CanUseFused(const KvCache* cache, const ForwardOptions& opts) const;
  at::Tensor ForwardFused(const at::Tensor& tokens, KvCache* cache, const ForwardOptions& opts) const;
  at::Tensor LmHead(const at::Tensor& x) const;  // x [B, T, dim] after the final norm -> float32 logits
  at::Tensor Attention(const BlockWeights& b, const at::Tensor& h, int64_t layer, int64_t pos0, KvCache* cache) const;
  at::Tensor ApplyRope(const at::Tensor& x, int64_t pos0, bool long_rope) const;  // x [B, H, T, hd]
  ModelConfig cfg_;
  ModelWeights w_;
  at::Tensor rope_cos_, rope_sin_;            // [max_seq_len, head_dim/2]
  at::Tensor rope_cos_long_, rope_sin_long_;  // longrope's tables past original_max_position
};

// RoPE inverse frequencies (head_dim/2 values) of `c` as Hugging Face
// computes them; `long_factors` picks longrope's long table.
std::vector<float> RopeInvFreq(const ModelConfig& c, bool long_factors = false);

// Intra-op threads for a model's forward passes: small models (dim ≤ 1024)
// run single-threaded, since their kernels are too small to share and
// threads that spin on a busy machine cost 10–20× (measured with
// stories260K). 0 = leave LibTorch's setting.
int PreferredThreads(const ModelConfig& c);

// The CPUs this process may run on (its affinity mask: under mpirun with
// binding, the rank's own).
int CoresAvailable();

// Sets LibTorch's intra-op thread count, and OpenBLAS's own pool where
// OpenBLAS is the BLAS, for a scope (n ≤ 0: no change; the second form sets
// OpenBLAS's to `blas`). The setting is process-wide: use it where one
// thread drives LibTorch.
class ScopedThreads {
 public:
  explicit ScopedThreads(int n);
  ScopedThreads(int n, int blas);
  ~ScopedThreads();
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;

 private:
  int saved_ = 0, saved_blas_ = 0;
};

}  // namespace sae
