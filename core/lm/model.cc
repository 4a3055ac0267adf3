#include "core/lm/model.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
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

absl::Status Check(const ModelConfig& c, const at::Tensor& t, const std::string& name, std::vector<int64_t> shape) {
  bool ok = t.defined() && t.dim() == static_cast<int64_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = t.size(i) == shape[i];
  if (ok) return absl::OkStatus();
  std::string want = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&want, i ? "x" : "", shape[i]);
  return absl::InvalidArgumentError(
      absl::StrCat(c.source, ": tensor ", name, " has shape ", ShapeStr(t), ", expected ", want, "]"));
}

// Hugging Face's RMSNorm: x·rsqrt(mean(x²) + eps)·w, or ·(1 + w) for Gemma.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, float eps, bool plus_one = false) {
  at::Tensor n = x * at::rsqrt(x.pow(2).mean({-1}, /*keepdim=*/true) + eps);
  return plus_one ? n * (w.to(x.scalar_type()) + 1.0) : n * w.to(x.scalar_type());
}

at::Tensor GeluTanh(const at::Tensor& x) {
  const double c = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + at::tanh(c * (x + 0.044715 * x.pow(3))));
}

}  // namespace

absl::StatusOr<HookPoint> HookPointFromString(const std::string& s) {
  if (s == "resid_post" || s == "resid") return HookPoint::kResidPost;
  if (s == "mlp_out" || s == "mlp") return HookPoint::kMlpOut;
  return absl::InvalidArgumentError(absl::StrCat("hook '", s, "' is not resid_post or mlp_out"));
}

const char* HookPointName(HookPoint h) {
  switch (h) {
    case HookPoint::kResidPost: return "resid_post";
    case HookPoint::kMlpOut: return "mlp_out";
    case HookPoint::kFinalNorm: return "final_norm";
  }
  return "?";
}

std::vector<float> RopeInvFreq(const ModelConfig& c, bool long_factors) {
  const int64_t hd = c.head_dim(), half = hd / 2;
  const ModelConfig::RopeScaling& r = c.rope_scaling;
  std::vector<float> f(half);
  for (int64_t i = 0; i < half; ++i) {
    // float32 as transformers computes it (and llama2.c: powf).
    const float base_pow = std::pow(c.rope_theta, static_cast<float>(2 * i) / static_cast<float>(hd));
    float inv = 1.0f / base_pow;
    if (r.type == "linear") {
      inv = static_cast<float>(inv / r.factor);
    } else if (r.type == "llama3") {
      const double old_len = static_cast<double>(r.original_max_position);
      const double low_wavelen = old_len / r.low_freq_factor, high_wavelen = old_len / r.high_freq_factor;
      const double wavelen = 2.0 * M_PI / inv;
      double v = wavelen > low_wavelen ? inv / r.factor : inv;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
        const double smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        v = (1.0 - smooth) * v / r.factor + smooth * v;
      }
      inv = static_cast<float>(v);
    } else if (r.type == "longrope") {
      const std::vector<double>& ext = long_factors ? r.long_factor : r.short_factor;
      inv = 1.0f / (static_cast<float>(ext[i]) * base_pow);
    }
    // "dynamic" changes the base only past max_position_embeddings, which Forward refuses.
    f[i] = inv;
  }
  return f;
}

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

namespace {

// The config's dimensions and rope scaling, which the weights and the rotary
// tables are then checked and built against. Fills n_kv_heads when unset.
absl::Status CheckTransformerConfig(ModelConfig& c) {
  SAE_RETURN_IF_ERROR(CheckModelDims(c));
  if (c.dim <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.vocab_size <= 0 || c.max_seq_len <= 0)
    return absl::InvalidArgumentError(absl::StrCat(c.source, ": invalid model dimensions (dim ", c.dim, ", layers ",
                                                   c.n_layers, ", heads ", c.n_heads, ", vocab ", c.vocab_size,
                                                   ", seq_len ", c.max_seq_len, ")"));
  if (c.n_kv_heads <= 0) c.n_kv_heads = c.n_heads;
  if ((c.explicit_head_dim <= 0 && c.dim % c.n_heads != 0) || c.n_heads % c.n_kv_heads != 0 || c.head_dim() % 2 != 0)
    return absl::InvalidArgumentError(absl::StrCat(c.source, ": dim ", c.dim, " / heads ", c.n_heads, " / kv heads ",
                                                   c.n_kv_heads, " do not divide"));
  if (!c.sliding_window.empty() && static_cast<int64_t>(c.sliding_window.size()) != c.n_layers)
    return absl::InvalidArgumentError(
        absl::StrCat(c.source, ": ", c.sliding_window.size(), " sliding-window entries for ", c.n_layers, " layers"));
  const std::string& rt = c.rope_scaling.type;
  if (rt != "default" && rt != "linear" && rt != "dynamic" && rt != "llama3" && rt != "longrope")
    return absl::UnimplementedError(absl::StrCat(c.source, ": rope scaling \"", rt, "\" is not supported"));
  if (rt == "longrope" && (static_cast<int64_t>(c.rope_scaling.short_factor.size()) != c.head_dim() / 2 ||
                           static_cast<int64_t>(c.rope_scaling.long_factor.size()) != c.head_dim() / 2))
    return absl::InvalidArgumentError(absl::StrCat(c.source, ": longrope short_factor/long_factor need ",
                                                   c.head_dim() / 2, " values each (head_dim / 2)"));
  if ((rt == "llama3" || rt == "longrope") && c.rope_scaling.original_max_position <= 0)
    return absl::InvalidArgumentError(
        absl::StrCat(c.source, ": rope scaling \"", rt, "\" needs original_max_position_embeddings > 0"));
  if (rt == "llama3" && !(c.rope_scaling.high_freq_factor > c.rope_scaling.low_freq_factor))
    return absl::InvalidArgumentError(
        absl::StrCat(c.source, ": llama3 rope scaling needs high_freq_factor > low_freq_factor"));
  if ((rt == "linear" || rt == "llama3") && !(c.rope_scaling.factor > 0))
    return absl::InvalidArgumentError(absl::StrCat(c.source, ": rope scaling factor must be > 0"));
  return absl::OkStatus();
}

// Every tensor the architecture reads is there with the config's shape.
absl::Status CheckWeightShapes(const ModelConfig& c, const ModelWeights& w) {
  const int64_t d = c.dim, hd = c.head_dim(), kv = c.n_kv_heads * hd, qd = c.n_heads * hd, h = c.hidden_dim,
                V = c.vocab_size;
  SAE_RETURN_IF_ERROR(Check(c, w.tok_emb, "token embedding", {V, d}));
  SAE_RETURN_IF_ERROR(Check(c, w.lm_head, "lm head", {V, d}));
  SAE_RETURN_IF_ERROR(Check(c, w.final_norm, "final norm", {d}));
  if (static_cast<int64_t>(w.blocks.size()) != c.n_layers)
    return absl::InvalidArgumentError(
        absl::StrCat(c.source, ": ", w.blocks.size(), " blocks, config says ", c.n_layers));
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
    SAE_RETURN_IF_ERROR(Check(c, b.wq, p + "wq", {qd, d}));
    SAE_RETURN_IF_ERROR(Check(c, b.wk, p + "wk", {kv, d}));
    SAE_RETURN_IF_ERROR(Check(c, b.wv, p + "wv", {kv, d}));
    SAE_RETURN_IF_ERROR(Check(c, b.wo, p + "wo", {d, qd}));
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
      if (b.bq.defined()) SAE_RETURN_IF_ERROR(Check(c, b.bq, p + "bq", {qd}));
      if (b.bk.defined()) SAE_RETURN_IF_ERROR(Check(c, b.bk, p + "bk", {kv}));
      if (b.bv.defined()) SAE_RETURN_IF_ERROR(Check(c, b.bv, p + "bv", {kv}));
    }
    if (c.arch == Arch::kGemma2) {
      SAE_RETURN_IF_ERROR(Check(c, b.post_attn_norm, p + "post-attention norm", {d}));
      SAE_RETURN_IF_ERROR(Check(c, b.post_ffn_norm, p + "post-feedforward norm", {d}));
    }
  }
  return absl::OkStatus();
}

// The rotary cos/sin tables [max_seq_len, head_dim/2] (longrope: scaled by
// its attention factor; `long_factors` picks its long-context factors).
void RopeTables(const ModelConfig& c, bool long_factors, at::Tensor* cos_t, at::Tensor* sin_t) {
  const int64_t half = c.head_dim() / 2;
  *cos_t = at::empty({c.max_seq_len, half}, at::kFloat);
  *sin_t = at::empty({c.max_seq_len, half}, at::kFloat);
  float* pc = cos_t->data_ptr<float>();
  float* ps = sin_t->data_ptr<float>();
  const std::vector<float> inv = RopeInvFreq(c, long_factors);
  const float scale = c.rope_scaling.type == "longrope" ? static_cast<float>(c.rope_scaling.attention_factor) : 1.0f;
  for (int64_t pos = 0; pos < c.max_seq_len; ++pos)
    for (int64_t i = 0; i < half; ++i) {
      // Unscaled, these are the tables llama2.c computes (float32
      // powf/cosf/sinf); Hugging Face's float32 inv_freq is the same number.
      const float val = static_cast<float>(pos) * inv[i];
      pc[pos * half + i] = std::cos(val) * scale;
      ps[pos * half + i] = std::sin(val) * scale;
    }
}

}  // namespace

absl::StatusOr<Transformer> Transformer::Create(ModelConfig c, ModelWeights w) {
  SAE_RETURN_IF_ERROR(CheckTransformerConfig(c));
  SAE_RETURN_IF_ERROR(CheckWeightShapes(c, w));
  Transformer t;
  t.cfg_ = std::move(c);
  t.w_ = std::move(w);
  if (t.cfg_.arch != Arch::kGpt2) {
    RopeTables(t.cfg_, /*long_factors=*/false, &t.rope_cos_, &t.rope_sin_);
    if (t.cfg_.rope_scaling.type == "longrope")
      RopeTables(t.cfg_, /*long_factors=*/true, &t.rope_cos_long_, &t.rope_sin_long_);
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
  if (tied)
    w_.lm_head = w_.tok_emb;
  else
    mv(w_.lm_head);
  for (BlockWeights& b : w_.blocks)
    for (at::Tensor* t : {&b.attn_norm, &b.attn_norm_b, &b.ffn_norm, &b.ffn_norm_b, &b.post_attn_norm, &b.post_ffn_norm,
                          &b.wq, &b.wk, &b.wv, &b.wo, &b.bq, &b.bk, &b.bv, &b.bo, &b.w1, &b.w2, &b.w3, &b.b1, &b.b2})
      mv(*t);
  mv(rope_cos_);
  mv(rope_sin_);
  mv(rope_cos_long_);
  mv(rope_sin_long_);
}

KvCache Transformer::NewCache(int64_t batch, int64_t capacity) const {
  KvCache c;
  const auto opts = w_.tok_emb.options().dtype(cfg_.compute_dtype);
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    c.k.push_back(at::zeros({batch, cfg_.n_kv_heads, cfg_.head_dim(), capacity}, opts));
    c.v.push_back(at::zeros({batch, cfg_.n_kv_heads, cfg_.head_dim(), capacity}, opts));
  }
  return c;
}

at::Tensor Transformer::ApplyRope(const at::Tensor& x, int64_t pos0, bool long_rope) const {
  const int64_t T = x.size(2), hd = x.size(3), half = hd / 2;
  const at::Tensor& ct = long_rope ? rope_cos_long_ : rope_cos_;
  const at::Tensor& st = long_rope ? rope_sin_long_ : rope_sin_;
  at::Tensor cos = ct.narrow(0, pos0, T).to(x.scalar_type()),
             sin = st.narrow(0, pos0, T).to(x.scalar_type());  // [T, half]
  if (cfg_.rope == RopeStyle::kInterleaved) {
    at::Tensor xp = x.reshape({x.size(0), x.size(1), T, half, 2});
    at::Tensor x0 = xp.select(-1, 0), x1 = xp.select(-1, 1);
    return at::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1).reshape(x.sizes());
  }
  at::Tensor x0 = x.narrow(-1, 0, half), x1 = x.narrow(-1, half, half);
  return at::cat({x0 * cos - x1 * sin, x1 * cos + x0 * sin}, -1);
}

namespace {
// A weight (or bias) in the compute dtype; undefined stays undefined.
at::Tensor W(const at::Tensor& t, at::ScalarType dt) { return !t.defined() || t.scalar_type() == dt ? t : t.to(dt); }
}  // namespace

at::Tensor Transformer::Attention(const BlockWeights& b, const at::Tensor& h, int64_t layer, int64_t pos0,
                                  KvCache* cache) const {
  const int64_t B = h.size(0), T = h.size(1), H = cfg_.n_heads, KV = cfg_.n_kv_heads, hd = cfg_.head_dim();
  const at::ScalarType dt = cfg_.compute_dtype;
  at::Tensor q = at::linear(h, W(b.wq, dt), W(b.bq, dt)).view({B, T, H, hd}).transpose(1, 2);
  at::Tensor k = at::linear(h, W(b.wk, dt), W(b.bk, dt)).view({B, T, KV, hd}).transpose(1, 2);
  at::Tensor v = at::linear(h, W(b.wv, dt), W(b.bv, dt)).view({B, T, KV, hd}).transpose(1, 2);
  if (cfg_.arch != Arch::kGpt2) {
    // longrope: transformers switches to the long factors once the sequence
    // seen so far is longer than original_max_position_embeddings.
    const bool long_rope = rope_cos_long_.defined() && pos0 + T > cfg_.rope_scaling.original_max_position;
    q = ApplyRope(q, pos0, long_rope);
    k = ApplyRope(k, pos0, long_rope);
  }
  const int64_t window = cfg_.window(layer);
  int64_t start = 0;  // absolute position of the first key
  if (cache != nullptr) {
    // The cache holds [B, KV, hd, capacity]: seen as [B, KV, capacity, hd].
    const at::Tensor ck = cache->k[layer].transpose(2, 3), cv = cache->v[layer].transpose(2, 3);
    ck.narrow(2, pos0, T).copy_(k);
    cv.narrow(2, pos0, T).copy_(v);
    // A sliding window reads only the keys the first query can still see.
    if (window > 0) start = std::max<int64_t>(0, pos0 - window + 1);
    k = ck.narrow(2, start, pos0 + T - start);
    v = cv.narrow(2, start, pos0 + T - start);
  } else if (pos0 != 0) {
    start = pos0;
  }
  if (KV != H) {
    k = k.repeat_interleave(H / KV, 1);
    v = v.repeat_interleave(H / KV, 1);
  }
  const int64_t S = k.size(2);
  const double scale = cfg_.attn_scale > 0 ? cfg_.attn_scale : 1.0 / std::sqrt(static_cast<double>(hd));
  at::Tensor scores = at::matmul(q, k.transpose(2, 3)) * scale;
  if (cfg_.attn_softcap > 0) scores = at::tanh(scores / cfg_.attn_softcap) * cfg_.attn_softcap;
  if (T > 1 || window > 0) {
    // Key s is visible to query p iff s <= p and p − s < window.
    const auto iopt = scores.options().dtype(at::kLong);
    at::Tensor qp = at::arange(pos0, pos0 + T, iopt).unsqueeze(1), kp = at::arange(start, start + S, iopt).unsqueeze(0);
    at::Tensor mask = kp > qp;
    if (window > 0) mask = mask.logical_or(qp - kp >= window);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  at::Tensor out = at::matmul(at::softmax(scores, -1, at::kFloat).to(v.scalar_type()), v);  // [B, H, T, hd]
  out = out.transpose(1, 2).reshape({B, T, H * hd});
  return at::linear(out, W(b.wo, dt), W(b.bo, dt));
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
  const at::ScalarType dt = cfg_.compute_dtype;
  const bool gpt2 = cfg_.arch == Arch::kGpt2, gemma = cfg_.arch == Arch::kGemma2;
  auto norm = [&](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
    return gpt2 ? at::layer_norm(x, {cfg_.dim}, W(w, dt), W(b, dt), cfg_.norm_eps)
                : RmsNorm(x, w, cfg_.norm_eps, gemma);
  };
  at::Tensor x = at::embedding(w_.tok_emb, tokens.to(w_.tok_emb.device(), at::kLong)).to(dt);
  if (gpt2) x = x + W(w_.pos_emb.narrow(0, pos0, T), dt).unsqueeze(0);
  // Gemma multiplies by √dim rounded to the activations' dtype.
  if (cfg_.embed_scale > 0) x = x * at::scalar_tensor(cfg_.embed_scale, x.options());
  run_hooks(-1, HookPoint::kResidPost, x);
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    const BlockWeights& b = w_.blocks[l];
    at::Tensor a = Attention(b, norm(x, b.attn_norm, b.attn_norm_b), l, pos0, cache);
    if (b.post_attn_norm.defined()) a = norm(a, b.post_attn_norm, at::Tensor());
    x = x + a;
    at::Tensor h = norm(x, b.ffn_norm, b.ffn_norm_b);
    at::Tensor m;
    if (gpt2) {
      m = at::linear(GeluTanh(at::linear(h, W(b.w1, dt), W(b.b1, dt))), W(b.w2, dt), W(b.b2, dt));
    } else {
      at::Tensor g = at::linear(h, W(b.w1, dt));
      g = cfg_.gelu_mlp ? GeluTanh(g) : at::silu(g);
      m = at::linear(g * at::linear(h, W(b.w3, dt)), W(b.w2, dt));
    }
    if (b.post_ffn_norm.defined()) m = norm(m, b.post_ffn_norm, at::Tensor());
    run_hooks(l, HookPoint::kMlpOut, m);
    x = x + m;
    run_hooks(l, HookPoint::kResidPost, x);
    if (opts.stop_after_layer == l) {
      if (cache) cache->len += T;
      return at::Tensor();
    }
  }
  x = norm(x, w_.final_norm, w_.final_norm_b);
  run_hooks(-1, HookPoint::kFinalNorm, x);
  if (cache) cache->len += T;
  return LmHead(x);
}

at::Tensor Transformer::LmHead(const at::Tensor& x) const {
  const at::ScalarType dt = cfg_.compute_dtype;
  at::Tensor logits;
  if (w_.lm_head.scalar_type() == dt) {
    logits = at::linear(x, w_.lm_head);
  } else {  // cast the head a slice at a time (a 128k × 4096 head is 2 GB in float32)
    std::vector<at::Tensor> parts;
    const int64_t V = w_.lm_head.size(0), chunk = 16384;
    for (int64_t r = 0; r < V; r += chunk)
      parts.push_back(at::linear(x, w_.lm_head.narrow(0, r, std::min(chunk, V - r)).to(dt)));
    logits = at::cat(parts, -1);
  }
  if (cfg_.final_softcap > 0) logits = at::tanh(logits / cfg_.final_softcap) * cfg_.final_softcap;
  return logits.to(at::kFloat);
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
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: token id ", lo < 0 ? lo : hi, " outside the vocabulary (", cfg_.vocab_size, ")"));
  }
  try {
    at::NoGradGuard no_grad;
    if (CanUseFused(cache, opts)) return ForwardFused(tokens, cache, opts);
    return ForwardImpl(tokens, cache, opts);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("Forward: ", e.what_without_backtrace()));
  }
}

int PreferredThreads(const ModelConfig& c) { return c.dim <= 1024 ? 1 : 0; }

namespace {
// OpenBLAS (pthreads build) keeps a thread pool of its own that
// at::set_num_threads does not size; its idle workers spin in sched_yield.
// Looked up at run time: absent with another BLAS.
struct OpenBlasThreads {
  int (*get)() = nullptr;
  void (*set)(int) = nullptr;
  OpenBlasThreads() {
    get = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    set = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    if (get == nullptr || set == nullptr) get = nullptr, set = nullptr;
  }
};
const OpenBlasThreads& Blas() {
  static const OpenBlasThreads b;
  return b;
}
}  // namespace

int CoresAvailable() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

ScopedThreads::ScopedThreads(int n) : ScopedThreads(n, n) {}

ScopedThreads::ScopedThreads(int n, int blas) {
  if (n > 0 && n != at::get_num_threads()) {
    saved_ = at::get_num_threads();
    at::set_num_threads(n);
  }
  if (blas > 0 && Blas().get != nullptr && Blas().get() != blas) {
    saved_blas_ = Blas().get();
    Blas().set(blas);
  }
}

ScopedThreads::~ScopedThreads() {
  if (saved_ > 0) at::set_num_threads(saved_);
  if (saved_blas_ > 0) Blas().set(saved_blas_);
}

}  // namespace sae
