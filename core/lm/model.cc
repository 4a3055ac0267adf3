#include "core/lm/model.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

namespace sae {
namespace {

std::string ShapeStr(const at::Tensor& t) {
  if (!t.defined()) return "missing";
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) absl::StrAppend(&s, i ? "x" : "", t.size(i));
  return s + "]";
}

absl::Status Check(const ModelConfig& c, const at::Tensor& t, const std::string& name,
                   std::vector<int64_t> shape) {
  bool ok = t.defined() && t.dim() == static_cast<int64_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = t.size(i) == shape[i];
  if (ok) return absl::OkStatus();
  std::string want = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&want, i ? "x" : "", shape[i]);
  return absl::InvalidArgumentError(absl::StrCat(c.source, ": tensor ", name, " has shape ", ShapeStr(t),
                                                 ", expected ", want, "]"));
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, float eps) {
  return x * at::rsqrt(x.pow(2).mean({-1}, /*keepdim=*/true) + eps) * w;
}

at::Tensor GeluTanh(const at::Tensor& x) {
  const double c = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + at::tanh(c * (x + 0.044715 * x.pow(3))));
}

}  // namespace

absl::Status CheckModelDims(const ModelConfig& c) {
  constexpr int64_t kMaxDim = int64_t{1} << 20, kMaxHidden = int64_t{1} << 22, kMaxLayers = 4096,
                    kMaxVocab = int64_t{1} << 24, kMaxSeq = int64_t{1} << 20, kMaxRope = int64_t{1} << 26;
  auto bad = [&](const char* field, int64_t v, const std::string& rule) {
    return absl::InvalidArgumentError(absl::StrCat(c.source, ": ", field, " ", v, " ", rule));
  };
  auto range = [&](const char* field, int64_t v, int64_t hi) -> absl::Status {
    if (v < 1 || v > hi) return bad(field, v, absl::StrCat("is outside [1, ", hi, "]"));
    return absl::OkStatus();
  };
  SAE_RETURN_IF_ERROR(range("dim", c.dim, kMaxDim));
  SAE_RETURN_IF_ERROR(range("hidden_dim", c.hidden_dim, kMaxHidden));
  SAE_RETURN_IF_ERROR(range("n_layers", c.n_layers, kMaxLayers));
  SAE_RETURN_IF_ERROR(range("n_heads", c.n_heads, c.dim));
  if (c.n_kv_heads != 0) SAE_RETURN_IF_ERROR(range("n_kv_heads", c.n_kv_heads, c.n_heads));
  SAE_RETURN_IF_ERROR(range("vocab_size", c.vocab_size, kMaxVocab));
  SAE_RETURN_IF_ERROR(range("max_seq_len", c.max_seq_len, kMaxSeq));
  if (c.arch != Arch::kGpt2 && c.max_seq_len * (c.head_dim() / 2) > kMaxRope)
    return bad("max_seq_len", c.max_seq_len,
               absl::StrCat("x head_dim/2 (", c.head_dim() / 2, ") exceeds 2^26 rotary table entries"));
  return absl::OkStatus();
}

absl::StatusOr<Transformer> Transformer::Create(ModelConfig c, ModelWeights w) {
  SAE_RETURN_IF_ERROR(CheckModelDims(c));
  if (c.dim <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.vocab_size <= 0 || c.max_seq_len <= 0)
    return absl::InvalidArgumentError(absl::StrCat(c.source, ": invalid model dimensions (dim ", c.dim,
                                                   ", layers ", c.n_layers, ", heads ", c.n_heads,
                                                   ", vocab ", c.vocab_size, ", seq_len ", c.max_seq_len, ")"));
  if (c.n_kv_heads <= 0) c.n_kv_heads = c.n_heads;
  if (c.dim % c.n_heads != 0 || c.n_heads % c.n_kv_heads != 0 || c.head_dim() % 2 != 0)
    return absl::InvalidArgumentError(absl::StrCat(c.source, ": dim ", c.dim, " / heads ", c.n_heads,
                                                   " / kv heads ", c.n_kv_heads, " do not divide"));
  const int64_t d = c.dim, hd = c.head_dim(), kv = c.n_kv_heads * hd, h = c.hidden_dim, V = c.vocab_size;
  SAE_RETURN_IF_ERROR(Check(c, w.tok_emb, "token embedding", {V, d}));
  SAE_RETURN_IF_ERROR(Check(c, w.lm_head, "lm head", {V, d}));
  SAE_RETURN_IF_ERROR(Check(c, w.final_norm, "final norm", {d}));
  if (static_cast<int64_t>(w.blocks.size()) != c.n_layers)
    return absl::InvalidArgumentError(absl::StrCat(c.source, ": ", w.blocks.size(), " blocks, config says ", c.n_layers));
  const bool gpt2 = c.arch == Arch::kGpt2;
  if (gpt2) {
    SAE_RETURN_IF_ERROR(Check(c, w.pos_emb, "position embedding", {c.max_seq_len, d}));
    SAE_RETURN_IF_ERROR(Check(c, w.final_norm_b, "final norm bias", {d}));
  }
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const BlockWeights& b = w.blocks[l];
    const std::string p = absl::StrCat("layer ", l, " ");
    SAE_RETURN_IF_ERROR(Check(c, b.attn_norm, p + "attention norm", {d}));
    SAE_RETURN_IF_ERROR(Check(c, b.ffn_norm, p + "ffn norm", {d}));
    SAE_RETURN_IF_ERROR(Check(c, b.wq, p + "wq", {d, d}));
    SAE_RETURN_IF_ERROR(Check(c, b.wk, p + "wk", {kv, d}));
    SAE_RETURN_IF_ERROR(Check(c, b.wv, p + "wv", {kv, d}));
    SAE_RETURN_IF_ERROR(Check(c, b.wo, p + "wo", {d, d}));
    SAE_RETURN_IF_ERROR(Check(c, b.w1, p + "w1", {h, d}));
    SAE_RETURN_IF_ERROR(Check(c, b.w2, p + "w2", {d, h}));
    if (gpt2) {
      SAE_RETURN_IF_ERROR(Check(c, b.attn_norm_b, p + "attention norm bias", {d}));
      SAE_RETURN_IF_ERROR(Check(c, b.ffn_norm_b, p + "ffn norm bias", {d}));
      SAE_RETURN_IF_ERROR(Check(c, b.bq, p + "bq", {d}));
      SAE_RETURN_IF_ERROR(Check(c, b.bk, p + "bk", {d}));
      SAE_RETURN_IF_ERROR(Check(c, b.bv, p + "bv", {d}));
      SAE_RETURN_IF_ERROR(Check(c, b.bo, p + "bo", {d}));
      SAE_RETURN_IF_ERROR(Check(c, b.b1, p + "b1", {h}));
      SAE_RETURN_IF_ERROR(Check(c, b.b2, p + "b2", {d}));
    } else {
      SAE_RETURN_IF_ERROR(Check(c, b.w3, p + "w3", {h, d}));
    }
  }
  Transformer t;
  t.cfg_ = std::move(c);
  t.w_ = std::move(w);
  if (!gpt2) {
    // The rotation tables as llama2.c computes them (float32 powf/cosf/sinf);
    // Hugging Face's inv_freq = 1/theta^(2i/hd) is the same number.
    const int64_t half = hd / 2;
    t.rope_cos_ = at::empty({t.cfg_.max_seq_len, half}, at::kFloat);
    t.rope_sin_ = at::empty({t.cfg_.max_seq_len, half}, at::kFloat);
    float* pc = t.rope_cos_.data_ptr<float>();
    float* ps = t.rope_sin_.data_ptr<float>();
    for (int64_t pos = 0; pos < t.cfg_.max_seq_len; ++pos)
      for (int64_t i = 0; i < half; ++i) {
        const float freq = 1.0f / std::pow(t.cfg_.rope_theta, static_cast<float>(2 * i) / static_cast<float>(hd));
        const float val = static_cast<float>(pos) * freq;
        pc[pos * half + i] = std::cos(val);
        ps[pos * half + i] = std::sin(val);
      }
  }
  return t;
}

void Transformer::To(const at::Device& device) {
  auto mv = [&](at::Tensor& t) {
    if (t.defined()) t = t.to(device);
  };
  const bool tied = w_.lm_head.is_same(w_.tok_emb);
  mv(w_.tok_emb);
  mv(w_.pos_emb);
  mv(w_.final_norm);
  mv(w_.final_norm_b);
  if (tied) w_.lm_head = w_.tok_emb; else mv(w_.lm_head);
  for (BlockWeights& b : w_.blocks)
    for (at::Tensor* t : {&b.attn_norm, &b.attn_norm_b, &b.ffn_norm, &b.ffn_norm_b, &b.wq, &b.wk, &b.wv, &b.wo,
                          &b.bq, &b.bk, &b.bv, &b.bo, &b.w1, &b.w2, &b.w3, &b.b1, &b.b2})
      mv(*t);
  mv(rope_cos_);
  mv(rope_sin_);
}

KvCache Transformer::NewCache(int64_t batch, int64_t capacity) const {
  KvCache c;
  const auto opts = w_.tok_emb.options();
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    c.k.push_back(at::zeros({batch, cfg_.n_kv_heads, capacity, cfg_.head_dim()}, opts));
    c.v.push_back(at::zeros({batch, cfg_.n_kv_heads, capacity, cfg_.head_dim()}, opts));
  }
  return c;
}

at::Tensor Transformer::ApplyRope(const at::Tensor& x, int64_t pos0) const {
  const int64_t T = x.size(2), hd = x.size(3), half = hd / 2;
  at::Tensor cos = rope_cos_.narrow(0, pos0, T), sin = rope_sin_.narrow(0, pos0, T);  // [T, half]
  if (cfg_.rope == RopeStyle::kInterleaved) {
    at::Tensor xp = x.reshape({x.size(0), x.size(1), T, half, 2});
    at::Tensor x0 = xp.select(-1, 0), x1 = xp.select(-1, 1);
    return at::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1).reshape(x.sizes());
  }
  at::Tensor x0 = x.narrow(-1, 0, half), x1 = x.narrow(-1, half, half);
  return at::cat({x0 * cos - x1 * sin, x1 * cos + x0 * sin}, -1);
}

at::Tensor Transformer::Attention(const BlockWeights& b, const at::Tensor& h, int64_t layer, int64_t pos0,
                                  KvCache* cache) const {
  const int64_t B = h.size(0), T = h.size(1), H = cfg_.n_heads, KV = cfg_.n_kv_heads, hd = cfg_.head_dim();
  at::Tensor q = at::linear(h, b.wq, b.bq).view({B, T, H, hd}).transpose(1, 2);
  at::Tensor k = at::linear(h, b.wk, b.bk).view({B, T, KV, hd}).transpose(1, 2);
  at::Tensor v = at::linear(h, b.wv, b.bv).view({B, T, KV, hd}).transpose(1, 2);
  if (cfg_.arch == Arch::kLlama) {
    q = ApplyRope(q, pos0);
    k = ApplyRope(k, pos0);
  }
  if (cache != nullptr) {
    cache->k[layer].narrow(2, pos0, T).copy_(k);
    cache->v[layer].narrow(2, pos0, T).copy_(v);
    k = cache->k[layer].narrow(2, 0, pos0 + T);
    v = cache->v[layer].narrow(2, 0, pos0 + T);
  }
  if (KV != H) {
    k = k.repeat_interleave(H / KV, 1);
    v = v.repeat_interleave(H / KV, 1);
  }
  const int64_t S = k.size(2);
  at::Tensor scores = at::matmul(q, k.transpose(2, 3)) * (1.0 / std::sqrt(static_cast<double>(hd)));
  if (T > 1) {
    at::Tensor mask = at::ones({T, S}, scores.options().dtype(at::kBool)).triu(pos0 + 1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  at::Tensor out = at::matmul(at::softmax(scores, -1), v);  // [B, H, T, hd]
  out = out.transpose(1, 2).reshape({B, T, H * hd});
  return at::linear(out, b.wo, b.bo);
}

at::Tensor Transformer::ForwardImpl(const at::Tensor& tokens, KvCache* cache, const ForwardOptions& opts) const {
  const int64_t T = tokens.size(1);
  const int64_t pos0 = cache ? cache->len : 0;
  auto run_hooks = [&](int64_t layer, HookPoint point, at::Tensor& x) {
    for (const Hook& hk : opts.hooks)
      if (hk.point == point && (point == HookPoint::kFinalNorm || hk.layer == layer)) {
        const auto sizes = x.sizes().vec();
        hk.fn(x);
        TORCH_CHECK(x.sizes().vec() == sizes, "a hook changed the activation's shape");
      }
  };
  const bool gpt2 = cfg_.arch == Arch::kGpt2;
  at::Tensor x = at::embedding(w_.tok_emb, tokens.to(w_.tok_emb.device(), at::kLong));
  if (gpt2) x = x + w_.pos_emb.narrow(0, pos0, T).unsqueeze(0);
  run_hooks(-1, HookPoint::kResidPost, x);
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    const BlockWeights& b = w_.blocks[l];
    at::Tensor h = gpt2 ? at::layer_norm(x, {cfg_.dim}, b.attn_norm, b.attn_norm_b, cfg_.norm_eps)
                        : RmsNorm(x, b.attn_norm, cfg_.norm_eps);
    x = x + Attention(b, h, l, pos0, cache);
    h = gpt2 ? at::layer_norm(x, {cfg_.dim}, b.ffn_norm, b.ffn_norm_b, cfg_.norm_eps)
             : RmsNorm(x, b.ffn_norm, cfg_.norm_eps);
    at::Tensor m = gpt2 ? at::linear(GeluTanh(at::linear(h, b.w1, b.b1)), b.w2, b.b2)
                        : at::linear(at::silu(at::linear(h, b.w1)) * at::linear(h, b.w3), b.w2);
    run_hooks(l, HookPoint::kMlpOut, m);
    x = x + m;
    run_hooks(l, HookPoint::kResidPost, x);
    if (opts.stop_after_layer == l) {
      if (cache) cache->len += T;
      return at::Tensor();
    }
  }
  x = gpt2 ? at::layer_norm(x, {cfg_.dim}, w_.final_norm, w_.final_norm_b, cfg_.norm_eps)
           : RmsNorm(x, w_.final_norm, cfg_.norm_eps);
  run_hooks(-1, HookPoint::kFinalNorm, x);
  if (cache) cache->len += T;
  return at::linear(x, w_.lm_head);
}

absl::StatusOr<at::Tensor> Transformer::Forward(const at::Tensor& tokens, KvCache* cache,
                                                const ForwardOptions& opts) const {
  if (tokens.dim() != 2 || tokens.size(1) < 1)
    return absl::InvalidArgumentError("Forward: tokens must be [batch, time] with time >= 1");
  const int64_t pos0 = cache ? cache->len : 0;
  const int64_t limit = cache ? cache->capacity() : cfg_.max_seq_len;
  if (pos0 + tokens.size(1) > std::min(limit, cfg_.max_seq_len))
    return absl::OutOfRangeError(absl::StrCat("Forward: positions up to ", pos0 + tokens.size(1),
                                              " exceed the context (", std::min(limit, cfg_.max_seq_len), ")"));
  if (cache && cache->k.size() && cache->k[0].size(0) != tokens.size(0))
    return absl::InvalidArgumentError("Forward: cache batch differs from the tokens' batch");
  if (tokens.numel() > 0) {
    const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
    if (lo < 0 || hi >= cfg_.vocab_size)
      return absl::InvalidArgumentError(absl::StrCat("Forward: token id ", lo < 0 ? lo : hi,
                                                     " outside the vocabulary (", cfg_.vocab_size, ")"));
  }
  try {
    at::NoGradGuard no_grad;
    return ForwardImpl(tokens, cache, opts);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("Forward: ", e.what_without_backtrace()));
  }
}

int PreferredThreads(const ModelConfig& c) { return c.dim <= 1024 ? 1 : 0; }

ScopedThreads::ScopedThreads(int n) {
  if (n > 0 && n != at::get_num_threads()) {
    saved_ = at::get_num_threads();
    at::set_num_threads(n);
  }
}

ScopedThreads::~ScopedThreads() {
  if (saved_ > 0) at::set_num_threads(saved_);
}

}  // namespace sae
