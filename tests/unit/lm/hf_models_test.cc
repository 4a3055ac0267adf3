// The Hugging Face architectures beyond Llama/GPT-2 (Llama 3.x rope scaling
// and head_dim, Mistral sliding windows, Phi-3 fused weights and longrope,
// Gemma 2, Qwen2), checked without downloading models: checkpoints built in
// the test from llama-tiny's weights must reproduce transformers' reference
// outputs, and the others must equal a float64 reimplementation, written
// here from the formulas of the model cards and transformers' code, with
// brute-force masked attention.
#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "core/data/safetensors.h"
#include "core/lm/harvest.h"
#include "core/lm/loaders.h"
#include "core/lm/model.h"
#include "gtest/gtest.h"
#include "tests/integration/interp_test_util.h"  // Sh, Bin, ByteTokenizerJson, WriteTiedSae
#include "tests/unit/lm/lm_tensor_util.h"
#include "tests/unit/lm/lm_test_util.h"

namespace sae {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using lm_test::DataDir;
using lm_test::MaxRelErr;
using lm_test::TempDir;
using lm_test::WriteFile;
using Tensors = std::map<std::string, at::Tensor>;

Tensors ReadAll(const std::string& path) {
  Tensors out;
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  if (!f.ok()) return out;
  for (const auto& [name, info] : f->tensors()) {
    if (info.dtype == DType::kI64) {
      at::Tensor t = at::empty(info.shape, at::kLong);
      EXPECT_TRUE(f->ReadRaw(name, t.data_ptr(), t.numel() * 8).ok());
      out[name] = t;
      continue;
    }
    auto v = f->ReadFloat(name);
    EXPECT_TRUE(v.ok()) << name;
    out[name] = at::from_blob(v->data(), info.shape, at::kFloat).clone();
  }
  return out;
}

// config.json + safetensors (`shards` files with an index when > 1).
void WriteCheckpoint(const std::string& dir, const json& cfg, const Tensors& t, DType dt = DType::kF32,
                     int shards = 1) {
  fs::create_directories(dir);
  WriteFile(dir + "/config.json", cfg.dump(2));
  std::vector<SafetensorsWriter> w(shards);
  json map = json::object();
  size_t i = 0;
  for (const auto& [name, x] : t) {
    const int s = static_cast<int>(i++ * shards / t.size());
    at::Tensor c = x.to(at::kFloat).contiguous();
    ASSERT_TRUE(w[s].AddFloat(name, dt, c.sizes().vec(), c.data_ptr<float>()).ok());
    map[name] =
        shards == 1 ? "model.safetensors" : absl::StrCat("model-0000", s + 1, "-of-0000", shards, ".safetensors");
  }
  for (int s = 0; s < shards; ++s)
    ASSERT_TRUE(w[s].Write(dir + "/" +
                           (shards == 1 ? std::string("model.safetensors")
                                        : absl::StrCat("model-0000", s + 1, "-of-0000", shards, ".safetensors")))
                    .ok());
  if (shards > 1)
    WriteFile(dir + "/model.safetensors.index.json", json({{"metadata", json::object()}, {"weight_map", map}}).dump());
}

at::Tensor Rand(std::vector<int64_t> shape, double scale, double mean, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> n(0.0, 1.0);
  at::Tensor t = at::empty(shape, at::kFloat);
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(mean + scale * n(g));
  return t;
}

at::Tensor Ids(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  std::mt19937_64 g(seed);
  at::Tensor t = at::empty({B, T}, at::kLong);
  for (int64_t i = 0; i < B * T; ++i) t.data_ptr<int64_t>()[i] = static_cast<int64_t>(g() % V);
  return t;
}

// ---------- the float64 reference ----------

struct RefLayer {
  at::Tensor attn_norm, post_attn_norm, ffn_norm, post_ffn_norm, wq, wk, wv, wo, bq, bk, bv, w1, w2, w3;
  int64_t window = 0;
};

struct RefModel {
  int64_t H = 0, KV = 0, hd = 0;
  double eps = 1e-5;
  bool gemma = false;  // (1 + w) norms, post norms, GeGLU
  double embed_scale = 0, attn_scale = 0, attn_cap = 0, final_cap = 0;
  // inverse frequencies and the cos/sin multiplier for a sequence of length T
  std::function<std::pair<std::vector<double>, double>(int64_t T)> rope;
  at::Tensor emb, lm_head, final_norm;
  std::vector<RefLayer> layers;
};

struct RefOut {
  at::Tensor logits;
  std::vector<at::Tensor> resid, mlp;  // resid[0] = embeddings, resid[l + 1] after block l
};

at::Tensor D(const at::Tensor& t) { return t.defined() ? t.to(at::kDouble) : t; }

at::Tensor RefNorm(const at::Tensor& x, const at::Tensor& w, double eps, bool plus_one) {
  return x / at::sqrt(x.pow(2).mean({-1}, true) + eps) * (plus_one ? D(w) + 1.0 : D(w));
}

at::Tensor RefGeluTanh(const at::Tensor& x) {
  return 0.5 * x * (1.0 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x.pow(3))));
}

// Rotate-half RoPE at positions 0..T−1, element by element.
at::Tensor RefRope(const at::Tensor& x, const std::vector<double>& inv, double mult) {  // [B, T, h, hd]
  at::Tensor y = x.clone();
  const int64_t B = x.size(0), T = x.size(1), Hh = x.size(2), half = x.size(3) / 2;
  auto xa = x.accessor<double, 4>();
  auto ya = y.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < Hh; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double c = std::cos(t * inv[i]) * mult, s = std::sin(t * inv[i]) * mult;
          const double a = xa[b][t][h][i], e = xa[b][t][h][i + half];
          ya[b][t][h][i] = a * c - e * s;
          ya[b][t][h][i + half] = e * c + a * s;
        }
  return y;
}

// Brute force: every (query, key) pair, masked unless key <= query and query − key < window.
at::Tensor RefAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window, double scale,
                        double cap) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), hd = q.size(3), rep = H / k.size(2);
  at::Tensor o = at::zeros_like(q);
  auto qa = q.accessor<double, 4>();
  auto ka = k.accessor<double, 4>();
  auto va = v.accessor<double, 4>();
  auto oa = o.accessor<double, 4>();
  std::vector<double> sc(T);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        double mx = -1e300;
        for (int64_t s = 0; s < T; ++s) {
          const bool visible = s <= t && (window <= 0 || t - s < window);
          if (!visible) {
            sc[s] = -INFINITY;
            continue;
          }
          double dot = 0;
          for (int64_t i = 0; i < hd; ++i) dot += qa[b][t][h][i] * ka[b][s][h / rep][i];
          dot *= scale;
          if (cap > 0) dot = cap * std::tanh(dot / cap);
          sc[s] = dot;
          mx = std::max(mx, dot);
        }
        double z = 0;
        for (int64_t s = 0; s < T; ++s) z += sc[s] == -INFINITY ? 0 : std::exp(sc[s] - mx);
        for (int64_t s = 0; s < T; ++s) {
          if (sc[s] == -INFINITY) continue;
          const double p = std::exp(sc[s] - mx) / z;
          for (int64_t i = 0; i < hd; ++i) oa[b][t][h][i] += p * va[b][s][h / rep][i];
        }
      }
  return o;
}

RefOut RefForward(const RefModel& m, const at::Tensor& ids) {
  RefOut r;
  const int64_t B = ids.size(0), T = ids.size(1), d = m.emb.size(1);
  at::Tensor x = D(m.emb).index_select(0, ids.flatten()).view({B, T, d});
  if (m.embed_scale > 0) x = x * m.embed_scale;
  r.resid.push_back(x);
  const auto [inv, mult] = m.rope(T);
  const double scale = m.attn_scale > 0 ? m.attn_scale : 1.0 / std::sqrt(static_cast<double>(m.hd));
  auto lin = [](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
    at::Tensor y = at::matmul(x, D(w).t());
    return b.defined() ? y + D(b) : y;
  };
  for (const RefLayer& L : m.layers) {
    at::Tensor h = RefNorm(x, L.attn_norm, m.eps, m.gemma);
    at::Tensor q = RefRope(lin(h, L.wq, L.bq).view({B, T, m.H, m.hd}).contiguous(), inv, mult);
    at::Tensor k = RefRope(lin(h, L.wk, L.bk).view({B, T, m.KV, m.hd}).contiguous(), inv, mult);
    at::Tensor v = lin(h, L.wv, L.bv).view({B, T, m.KV, m.hd}).contiguous();
    at::Tensor a = lin(RefAttention(q, k, v, L.window, scale, m.attn_cap).view({B, T, m.H * m.hd}), L.wo, at::Tensor());
    if (m.gemma) a = RefNorm(a, L.post_attn_norm, m.eps, true);
    x = x + a;
    h = RefNorm(x, L.ffn_norm, m.eps, m.gemma);
    at::Tensor g = lin(h, L.w1, at::Tensor());
    g = m.gemma ? RefGeluTanh(g) : g * at::sigmoid(g);
    at::Tensor mo = lin(g * lin(h, L.w3, at::Tensor()), L.w2, at::Tensor());
    if (m.gemma) mo = RefNorm(mo, L.post_ffn_norm, m.eps, true);
    r.mlp.push_back(mo);
    x = x + mo;
    r.resid.push_back(x);
  }
  x = RefNorm(x, m.final_norm, m.eps, m.gemma);
  r.logits = lin(x, m.lm_head, at::Tensor());
  if (m.final_cap > 0) r.logits = m.final_cap * at::tanh(r.logits / m.final_cap);
  return r;
}

std::vector<double> DefaultInvFreq(double theta, int64_t hd) {
  std::vector<double> f(hd / 2);
  for (int64_t i = 0; i < hd / 2; ++i) f[i] = std::pow(theta, -2.0 * i / hd);
  return f;
}

// ---------- random checkpoints in Hugging Face layout ----------

struct Spec {
  std::string type = "llama";
  int64_t d = 64, H = 8, KV = 4, hd = 8, h = 96, L = 2, V = 512, max_pos = 64;
  bool biases = false, tied = false, fused = false;
  uint64_t seed = 7;
};

// Weights for `s` as HF names, and the matching reference model.
std::pair<Tensors, RefModel> RandomModel(const Spec& s) {
  Tensors t;
  RefModel m;
  m.H = s.H;
  m.KV = s.KV;
  m.hd = s.hd;
  m.gemma = s.type == "gemma2";
  uint64_t seed = s.seed;
  const double nm = m.gemma ? 0.0 : 1.0;  // Gemma norms are 1 + w
  auto add = [&](const std::string& n, std::vector<int64_t> shape, double scale, double mean = 0) {
    t[n] = Rand(shape, scale, mean, ++seed);
    return t[n];
  };
  m.emb = add("model.embed_tokens.weight", {s.V, s.d}, m.gemma ? 0.1 : 1.0);
  m.final_norm = add("model.norm.weight", {s.d}, 0.2, nm);
  m.lm_head = s.tied ? m.emb : add("lm_head.weight", {s.V, s.d}, 0.1);
  const int64_t qd = s.H * s.hd, kv = s.KV * s.hd;
  for (int64_t l = 0; l < s.L; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    RefLayer r;
    r.attn_norm = add(p + "input_layernorm.weight", {s.d}, 0.2, nm);
    if (m.gemma) {
      r.post_attn_norm = add(p + "post_attention_layernorm.weight", {s.d}, 0.2);
      r.ffn_norm = add(p + "pre_feedforward_layernorm.weight", {s.d}, 0.2);
      r.post_ffn_norm = add(p + "post_feedforward_layernorm.weight", {s.d}, 0.2);
    } else {
      r.ffn_norm = add(p + "post_attention_layernorm.weight", {s.d}, 0.2, nm);
    }
    r.wq = Rand({qd, s.d}, 0.25, 0, ++seed);
    r.wk = Rand({kv, s.d}, 0.25, 0, ++seed);
    r.wv = Rand({kv, s.d}, 0.25, 0, ++seed);
    r.w1 = Rand({s.h, s.d}, 0.2, 0, ++seed);
    r.w3 = Rand({s.h, s.d}, 0.2, 0, ++seed);
    if (s.fused) {
      t[p + "self_attn.qkv_proj.weight"] = at::cat({r.wq, r.wk, r.wv}, 0);
      t[p + "mlp.gate_up_proj.weight"] = at::cat({r.w1, r.w3}, 0);
    } else {
      t[p + "self_attn.q_proj.weight"] = r.wq;
      t[p + "self_attn.k_proj.weight"] = r.wk;
      t[p + "self_attn.v_proj.weight"] = r.wv;
      t[p + "mlp.gate_proj.weight"] = r.w1;
      t[p + "mlp.up_proj.weight"] = r.w3;
    }
    r.wo = add(p + "self_attn.o_proj.weight", {s.d, qd}, 0.15);
    r.w2 = add(p + "mlp.down_proj.weight", {s.d, s.h}, 0.15);
    if (s.biases) {
      r.bq = add(p + "self_attn.q_proj.bias", {qd}, 0.5);
      r.bk = add(p + "self_attn.k_proj.bias", {kv}, 0.5);
      r.bv = add(p + "self_attn.v_proj.bias", {kv}, 0.5);
    }
    m.layers.push_back(r);
  }
  return {t, m};
}

json BaseConfig(const Spec& s) {
  return {{"model_type", s.type},
          {"hidden_size", s.d},
          {"intermediate_size", s.h},
          {"num_hidden_layers", s.L},
          {"num_attention_heads", s.H},
          {"num_key_value_heads", s.KV},
          {"head_dim", s.hd},
          {"vocab_size", s.V},
          {"max_position_embeddings", s.max_pos},
          {"rms_norm_eps", 1e-5},
          {"tie_word_embeddings", s.tied},
          {"rope_theta", 10000.0},
          {"bos_token_id", 1},
          {"eos_token_id", 2}};
}

// Our model vs the reference: logits, every residual stream and MLP output.
void ExpectMatchesReference(const Transformer& model, const RefModel& ref, const at::Tensor& ids, double tol = 1e-4) {
  const int64_t L = model.config().n_layers;
  std::vector<at::Tensor> resid(L + 1), mlp(L);
  ForwardOptions o;
  for (int64_t l = -1; l < L; ++l)
    o.hooks.push_back({l, HookPoint::kResidPost, [&resid, l](at::Tensor& x) { resid[l + 1] = x.clone(); }});
  for (int64_t l = 0; l < L; ++l)
    o.hooks.push_back({l, HookPoint::kMlpOut, [&mlp, l](at::Tensor& x) { mlp[l] = x.clone(); }});
  auto logits = model.Forward(ids, nullptr, o);
  ASSERT_TRUE(logits.ok()) << logits.status();
  RefOut r = RefForward(ref, ids);
  EXPECT_LE(MaxRelErr(*logits, r.logits), tol) << "logits";
  for (int64_t i = 0; i <= L; ++i) EXPECT_LE(MaxRelErr(resid[i], r.resid[i]), tol) << "resid " << i - 1;
  for (int64_t l = 0; l < L; ++l) EXPECT_LE(MaxRelErr(mlp[l], r.mlp[l]), tol) << "mlp_out " << l;
}

// Token-by-token with a KV cache (and a prefill of `prefill` tokens) = one pass.
void ExpectCacheMatchesFullPass(const Transformer& model, const at::Tensor& ids, int64_t prefill = 1) {
  auto full = model.Forward(ids);
  ASSERT_TRUE(full.ok()) << full.status();
  KvCache cache = model.NewCache(ids.size(0), ids.size(1));
  std::vector<at::Tensor> steps;
  for (int64_t t = 0; t < ids.size(1);) {
    const int64_t n = t == 0 ? prefill : 1;
    auto s = model.Forward(ids.narrow(1, t, n), &cache);
    ASSERT_TRUE(s.ok()) << s.status();
    steps.push_back(*s);
    t += n;
  }
  EXPECT_LE(MaxRelErr(at::cat(steps, 1), *full), 1e-5);
}

// ---------- by construction from llama-tiny: transformers' own outputs ----------

std::string LlamaTiny() { return DataDir() + "/hf-tiny/llama-tiny"; }

void ExpectTransformersReference(const Transformer& m) {
  const Tensors ref = ReadAll(LlamaTiny() + "/reference.safetensors");
  const at::Tensor ids = ref.at("input_ids");
  std::vector<at::Tensor> hidden(3);
  ForwardOptions o;
  for (int64_t l = -1; l < 1; ++l)
    o.hooks.push_back({l, HookPoint::kResidPost, [&hidden, l](at::Tensor& x) { hidden[l + 1] = x.clone(); }});
  auto logits = m.Forward(ids, nullptr, o);
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_LE(MaxRelErr(*logits, ref.at("logits")), 1e-4);
  for (int i = 0; i < 2; ++i) EXPECT_LE(MaxRelErr(hidden[i], ref.at("hidden_states." + std::to_string(i))), 1e-4);
}

TEST(HfPhi3, FusedCheckpointFromLlamaTinyMatchesTransformers) {
  SAE_REQUIRE_FILE(LlamaTiny() + "/reference.safetensors");
  Tensors w = ReadAll(LlamaTiny() + "/model.safetensors"), fused;
  for (const auto& [n, t] : w) {
    if (n.find("q_proj") != std::string::npos || n.find("k_proj") != std::string::npos ||
        n.find("v_proj") != std::string::npos || n.find("gate_proj") != std::string::npos ||
        n.find("up_proj") != std::string::npos)
      continue;
    fused[n] = t;
  }
  for (int l = 0; l < 2; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    fused[p + "self_attn.qkv_proj.weight"] = at::cat(
        {w[p + "self_attn.q_proj.weight"], w[p + "self_attn.k_proj.weight"], w[p + "self_attn.v_proj.weight"]}, 0);
    fused[p + "mlp.gate_up_proj.weight"] = at::cat({w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]}, 0);
  }
  json cfg = json::parse(lm_test::ReadFile(LlamaTiny() + "/config.json"));
  cfg["model_type"] = "phi3";
  cfg["architectures"] = {"Phi3ForCausalLM"};
  cfg["original_max_position_embeddings"] = 64;
  cfg["sliding_window"] = nullptr;
  TempDir tmp;
  WriteCheckpoint(tmp.Sub("phi3"), cfg, fused, DType::kF32, /*shards=*/2);
  auto m = LoadModel(tmp.Sub("phi3"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config().format, "hf-phi3");
  ExpectTransformersReference(*m);
  ExpectCacheMatchesFullPass(*m, ReadAll(LlamaTiny() + "/reference.safetensors").at("input_ids"));
}

TEST(HfMistral, WindowNotSmallerThanTheSequenceMatchesTransformers) {
  SAE_REQUIRE_FILE(LlamaTiny() + "/reference.safetensors");
  for (int64_t window : {24, 4096}) {
    json cfg = json::parse(lm_test::ReadFile(LlamaTiny() + "/config.json"));
    cfg["model_type"] = "mistral";
    cfg["sliding_window"] = window;
    TempDir tmp;
    WriteCheckpoint(tmp.Sub("m"), cfg, ReadAll(LlamaTiny() + "/model.safetensors"));
    auto m = LoadModel(tmp.Sub("m"));
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->config().window(0), window < 64 ? window : 0);
    ExpectTransformersReference(*m);
  }
}

// llama-tiny's weights as a reference model (rotate-half, theta 10000).
RefModel LlamaTinyRef(const Tensors& w) {
  RefModel r;
  r.H = 8;
  r.KV = 4;
  r.hd = 8;
  r.rope = [](int64_t) { return std::make_pair(DefaultInvFreq(10000.0, 8), 1.0); };
  r.emb = w.at("model.embed_tokens.weight");
  r.lm_head = w.at("lm_head.weight");
  r.final_norm = w.at("model.norm.weight");
  for (int l = 0; l < 2; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    RefLayer L;
    L.attn_norm = w.at(p + "input_layernorm.weight");
    L.ffn_norm = w.at(p + "post_attention_layernorm.weight");
    L.wq = w.at(p + "self_attn.q_proj.weight");
    L.wk = w.at(p + "self_attn.k_proj.weight");
    L.wv = w.at(p + "self_attn.v_proj.weight");
    L.wo = w.at(p + "self_attn.o_proj.weight");
    L.w1 = w.at(p + "mlp.gate_proj.weight");
    L.w2 = w.at(p + "mlp.down_proj.weight");
    L.w3 = w.at(p + "mlp.up_proj.weight");
    r.layers.push_back(L);
  }
  return r;
}

TEST(HfMistral, SmallWindowEqualsBruteForceMaskedAttention) {
  SAE_REQUIRE_FILE(LlamaTiny() + "/reference.safetensors");
  const Tensors w = ReadAll(LlamaTiny() + "/model.safetensors");
  const at::Tensor ids = ReadAll(LlamaTiny() + "/reference.safetensors").at("input_ids");
  RefModel ref = LlamaTinyRef(w);
  // The reference model itself reproduces transformers (full attention).
  EXPECT_LE(MaxRelErr(RefForward(ref, ids).logits, ReadAll(LlamaTiny() + "/reference.safetensors").at("logits")), 1e-4);
  json cfg = json::parse(lm_test::ReadFile(LlamaTiny() + "/config.json"));
  cfg["model_type"] = "mistral";
  cfg["sliding_window"] = 5;
  TempDir tmp;
  WriteCheckpoint(tmp.Sub("m"), cfg, w);
  auto m = LoadModel(tmp.Sub("m"));
  ASSERT_TRUE(m.ok()) << m.status();
  for (RefLayer& L : ref.layers) L.window = 5;
  ExpectMatchesReference(*m, ref, ids);
  // The window changes the result.
  auto logits = m->Forward(ids);
  ASSERT_TRUE(logits.ok());
  EXPECT_GT(MaxRelErr(*logits, ReadAll(LlamaTiny() + "/reference.safetensors").at("logits")), 1e-2);
  // Generation through the KV cache sees the same window: one token at a time and after a prefill.
  ExpectCacheMatchesFullPass(*m, ids, 1);
  ExpectCacheMatchesFullPass(*m, ids, 9);
}

// ---------- random models against the float64 reference ----------

TEST(HfLlama3, RopeScalingLlama3AndOwnHeadDim) {
  Spec s;
  s.d = 64, s.H = 4, s.KV = 2, s.hd = 32;  // head_dim 32 != 64 / 4
  auto [w, ref] = RandomModel(s);
  json cfg = BaseConfig(s);
  const double theta = 500000.0, factor = 8, lo = 1, hi = 4, orig = 16;
  cfg["rope_parameters"] = {{"rope_type", "llama3"},  {"rope_theta", theta},
                            {"factor", factor},       {"low_freq_factor", lo},
                            {"high_freq_factor", hi}, {"original_max_position_embeddings", 16}};
  // Llama 3.1's formula (transformers' _compute_llama3_parameters, Meta's model card code).
  ref.rope = [&](int64_t) {
    std::vector<double> f = DefaultInvFreq(theta, 32);
    for (double& x : f) {
      const double wl = 2 * M_PI / x;
      if (wl < orig / hi) continue;  // high frequency: kept
      if (wl > orig / lo) {
        x /= factor;
        continue;
      }                                                    // low frequency: divided
      const double smooth = (orig / wl - lo) / (hi - lo);  // in between: interpolated
      x = (1 - smooth) * x / factor + smooth * x;
    }
    return std::make_pair(f, 1.0);
  };
  TempDir tmp;
  WriteCheckpoint(tmp.Sub("m"), cfg, w);
  auto m = LoadModel(tmp.Sub("m"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config().head_dim(), 32);
  const at::Tensor ids = Ids(2, 24, s.V, 3);
  ExpectMatchesReference(*m, ref, ids);
  ExpectCacheMatchesFullPass(*m, ids);
  // The scaling matters: unscaled frequencies give other logits.
  RefModel plain = ref;
  plain.rope = [&](int64_t) { return std::make_pair(DefaultInvFreq(theta, 32), 1.0); };
  EXPECT_GT(MaxRelErr(RefForward(plain, ids).logits, RefForward(ref, ids).logits), 1e-3);
  // The same scaling in the pre-transformers-5 spelling.
  json old = BaseConfig(s);
  old["rope_theta"] = theta;
  old["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", factor},
                         {"low_freq_factor", lo},
                         {"high_freq_factor", hi},
                         {"original_max_position_embeddings", 16}};
  WriteCheckpoint(tmp.Sub("old"), old, w);
  auto m2 = LoadModel(tmp.Sub("old"));
  ASSERT_TRUE(m2.ok()) << m2.status();
  ExpectMatchesReference(*m2, ref, ids);
}

TEST(HfLlama3, ResavedKeepsHeadDimRopeScalingAndBiases) {
  Spec s;
  s.d = 64, s.H = 4, s.KV = 2, s.hd = 32, s.biases = true;
  auto [w, ref] = RandomModel(s);
  json cfg = BaseConfig(s);
  cfg["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", 8.0},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 16}};
  TempDir tmp;
  WriteCheckpoint(tmp.Sub("a"), cfg, w);
  auto a = LoadModel(tmp.Sub("a"));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(SaveHfLlama(*a, tmp.Sub("b"), 2).ok());
  auto b = LoadModel(tmp.Sub("b"));
  ASSERT_TRUE(b.ok()) << b.status();
  const at::Tensor ids = Ids(2, 20, s.V, 11);
  EXPECT_TRUE(at::equal(*a->Forward(ids), *b->Forward(ids)));
  // A sliding-window model is refused rather than written without its window.
  json mc = BaseConfig(s);
  mc["model_type"] = "mistral";
  mc["sliding_window"] = 4;
  WriteCheckpoint(tmp.Sub("m"), mc, w);
  auto m = LoadModel(tmp.Sub("m"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FALSE(SaveHfLlama(*m, tmp.Sub("m2")).ok());
}

TEST(HfLlama3, LinearAndDynamicScaling) {
  Spec s;
  auto [w, ref] = RandomModel(s);
  const at::Tensor ids = Ids(2, 20, s.V, 4);
  TempDir tmp;
  json cfg = BaseConfig(s);
  cfg["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  WriteCheckpoint(tmp.Sub("lin"), cfg, w);
  auto lin = LoadModel(tmp.Sub("lin"));
  ASSERT_TRUE(lin.ok()) << lin.status();
  RefModel r = ref;
  r.rope = [](int64_t) {
    std::vector<double> f = DefaultInvFreq(10000.0, 8);
    for (double& x : f) x /= 4.0;
    return std::make_pair(f, 1.0);
  };
  ExpectMatchesReference(*lin, r, ids);
  // dynamic NTK changes nothing within max_position_embeddings.
  cfg["rope_scaling"] = {{"type", "dynamic"}, {"factor", 4.0}};
  WriteCheckpoint(tmp.Sub("dyn"), cfg, w);
  auto dyn = LoadModel(tmp.Sub("dyn"));
  ASSERT_TRUE(dyn.ok()) << dyn.status();
  r.rope = [](int64_t) { return std::make_pair(DefaultInvFreq(10000.0, 8), 1.0); };
  ExpectMatchesReference(*dyn, r, ids);
  // Others are refused by name.
  cfg["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  WriteCheckpoint(tmp.Sub("yarn"), cfg, w);
  auto yarn = LoadModel(tmp.Sub("yarn"));
  ASSERT_FALSE(yarn.ok());
  EXPECT_NE(std::string(yarn.status().message()).find("yarn"), std::string::npos) << yarn.status();
}

TEST(HfPhi3, LongRopeShortAndLongFactorsWithAttentionScaling) {
  Spec s;
  s.type = "phi3";
  s.KV = 8;
  s.fused = true;
  s.max_pos = 128;
  auto [w, ref] = RandomModel(s);
  std::vector<double> shortf, longf;
  for (int i = 0; i < 4; ++i) {
    shortf.push_back(1.0 + 0.1 * i);
    longf.push_back(1.0 + 2.5 * i);
  }
  json cfg = BaseConfig(s);
  cfg["original_max_position_embeddings"] = 16;
  cfg["rope_scaling"] = {{"type", "longrope"}, {"short_factor", shortf}, {"long_factor", longf}};
  // transformers' _compute_longrope_parameters: factor = max_pos / original,
  // attention factor √(1 + ln factor / ln original), long factors past original.
  const double attn = std::sqrt(1 + std::log(128.0 / 16.0) / std::log(16.0));
  ref.rope = [&](int64_t T) {
    std::vector<double> f = DefaultInvFreq(10000.0, 8);
    const std::vector<double>& ext = T > 16 ? longf : shortf;
    for (int i = 0; i < 4; ++i) f[i] /= ext[i];
    return std::make_pair(f, attn);
  };
  TempDir tmp;
  WriteCheckpoint(tmp.Sub("m"), cfg, w);
  auto m = LoadModel(tmp.Sub("m"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_NEAR(m->config().rope_scaling.attention_factor, attn, 1e-12);
  ExpectMatchesReference(*m, ref, Ids(2, 24, s.V, 5));  // long (24 > 16)
  ExpectMatchesReference(*m, ref, Ids(2, 12, s.V, 6));  // short
  ExpectCacheMatchesFullPass(*m, Ids(1, 16, s.V, 7));   // short all the way
  // The 4k configuration: no rope_scaling.
  json c4k = BaseConfig(s);
  c4k["sliding_window"] = 2047;  // Phi-3-mini-4k's; not reached here
  WriteCheckpoint(tmp.Sub("4k"), c4k, w);
  auto m4k = LoadModel(tmp.Sub("4k"));
  ASSERT_TRUE(m4k.ok()) << m4k.status();
  ref.rope = [](int64_t) { return std::make_pair(DefaultInvFreq(10000.0, 8), 1.0); };
  ExpectMatchesReference(*m4k, ref, Ids(2, 24, s.V, 5));
  // Phi-3's older name "su" is longrope; a field longrope does not know is refused by name.
  cfg["rope_scaling"]["type"] = "su";
  WriteCheckpoint(tmp.Sub("su"), cfg, w);
  auto su = LoadModel(tmp.Sub("su"));
  ASSERT_TRUE(su.ok()) << su.status();
  ref.rope = [&](int64_t T) {
    std::vector<double> f = DefaultInvFreq(10000.0, 8);
    const std::vector<double>& ext = T > 16 ? longf : shortf;
    for (int i = 0; i < 4; ++i) f[i] /= ext[i];
    return std::make_pair(f, attn);
  };
  ExpectMatchesReference(*su, ref, Ids(2, 24, s.V, 5));
  cfg["rope_scaling"]["long_mscale"] = 1.2;
  WriteCheckpoint(tmp.Sub("mscale"), cfg, w);
  auto ms = LoadModel(tmp.Sub("mscale"));
  ASSERT_FALSE(ms.ok());
  EXPECT_NE(std::string(ms.status().message()).find("long_mscale"), std::string::npos) << ms.status();
  cfg["rope_scaling"].erase("long_mscale");
  // Wrong factor count: refused naming the fields.
  cfg["rope_scaling"]["short_factor"] = {1.0, 1.0};
  WriteCheckpoint(tmp.Sub("bad"), cfg, w);
  auto bad = LoadModel(tmp.Sub("bad"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("short_factor"), std::string::npos) << bad.status();
}

json GemmaConfig(const Spec& s) {
  json cfg = BaseConfig(s);
  cfg["query_pre_attn_scalar"] = 12;
  cfg["attn_logit_softcapping"] = 3.0;
  cfg["final_logit_softcapping"] = 2.0;
  cfg["sliding_window"] = 6;
  cfg["hidden_activation"] = "gelu_pytorch_tanh";
  cfg["tie_word_embeddings"] = true;
  return cfg;
}

void GemmaRefSettings(const Spec& s, RefModel* ref) {
  ref->gemma = true;
  ref->embed_scale = std::sqrt(static_cast<double>(s.d));
  ref->attn_scale = 1.0 / std::sqrt(12.0);
  ref->attn_cap = 3.0;
  ref->final_cap = 2.0;
  ref->rope = [hd = s.hd](int64_t) { return std::make_pair(DefaultInvFreq(10000.0, hd), 1.0); };
  for (size_t l = 0; l < ref->layers.size(); ++l) ref->layers[l].window = l % 2 == 0 ? 6 : 0;  // even layers slide
}

TEST(HfGemma2, MatchesFloat64Reference) {
  Spec s;
  s.type = "gemma2";
  s.d = 48, s.H = 4, s.KV = 2, s.hd = 16, s.L = 3, s.tied = true;
  auto [w, ref] = RandomModel(s);
  GemmaRefSettings(s, &ref);
  TempDir tmp;
  WriteCheckpoint(tmp.Sub("g"), GemmaConfig(s), w, DType::kF32, /*shards=*/3);
  auto m = LoadModel(tmp.Sub("g"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config().arch, Arch::kGemma2);
  EXPECT_TRUE(m->weights().lm_head.is_same(m->weights().tok_emb));
  const at::Tensor ids = Ids(2, 20, s.V, 8);
  ExpectMatchesReference(*m, ref, ids);
  ExpectCacheMatchesFullPass(*m, ids, 7);
  // Each Gemma-specific piece matters: dropping it moves the reference away.
  const at::Tensor base = RefForward(ref, ids).logits;
  for (int which = 0; which < 4; ++which) {
    RefModel alt = ref;
    if (which == 0) alt.attn_cap = 0;
    if (which == 1) alt.embed_scale = 0;
    if (which == 2) alt.attn_scale = 0;
    if (which == 3)
      for (RefLayer& L : alt.layers) L.window = 0;
    EXPECT_GT(MaxRelErr(RefForward(alt, ids).logits, base), 1e-3) << which;
  }
}

TEST(HfGemma2, Bf16WeightsStayBf16AndComputeInFloat32) {
  Spec s;
  s.type = "gemma2";
  s.d = 48, s.H = 4, s.KV = 2, s.hd = 16, s.L = 2, s.tied = true;
  auto [w, ref] = RandomModel(s);
  GemmaRefSettings(s, &ref);
  // The reference sees the weights as stored: rounded to bf16.
  auto round = [](at::Tensor& t) {
    if (t.defined()) t = t.to(at::kBFloat16).to(at::kFloat);
  };
  round(ref.emb);
  round(ref.final_norm);
  ref.lm_head = ref.emb;
  for (RefLayer& L : ref.layers)
    for (at::Tensor* t : {&L.attn_norm, &L.post_attn_norm, &L.ffn_norm, &L.post_ffn_norm, &L.wq, &L.wk, &L.wv, &L.wo,
                          &L.w1, &L.w2, &L.w3})
      round(*t);
  TempDir tmp;
  WriteCheckpoint(tmp.Sub("g"), GemmaConfig(s), w, DType::kBF16);
  auto m = LoadModel(tmp.Sub("g"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->weights().blocks[0].wq.scalar_type(), at::kBFloat16);
  EXPECT_EQ(m->weights().tok_emb.scalar_type(), at::kBFloat16);
  EXPECT_EQ(m->config().compute_dtype, at::kFloat);
  const at::Tensor ids = Ids(2, 16, s.V, 9);
  ExpectMatchesReference(*m, ref, ids);
  // --dtype float32 converts the weights; bfloat16 computes in bf16 (close, not equal).
  auto f32 = LoadModel(tmp.Sub("g"), LoadOptions{"float32"});
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_EQ(f32->weights().blocks[0].wq.scalar_type(), at::kFloat);
  ExpectMatchesReference(*f32, ref, ids);
  auto bf = LoadModel(tmp.Sub("g"), LoadOptions{"bfloat16"});
  ASSERT_TRUE(bf.ok()) << bf.status();
  auto lb = bf->Forward(ids);
  ASSERT_TRUE(lb.ok()) << lb.status();
  EXPECT_EQ(lb->scalar_type(), at::kFloat);
  EXPECT_LE(MaxRelErr(*lb, RefForward(ref, ids).logits), 0.1);
  auto nope = LoadModel(tmp.Sub("g"), LoadOptions{"int8"});
  ASSERT_FALSE(nope.ok());
  EXPECT_NE(std::string(nope.status().message()).find("int8"), std::string::npos);
}

TEST(HfQwen2, BiasesTiedEmbeddingsHooksAndHarvest) {
  Spec s;
  s.type = "qwen2";
  s.biases = true;
  s.tied = true;
  auto [w, ref] = RandomModel(s);
  ref.rope = [](int64_t) { return std::make_pair(DefaultInvFreq(10000.0, 8), 1.0); };
  json cfg = BaseConfig(s);
  cfg.erase("head_dim");
  cfg["sliding_window"] = 4;
  cfg["use_sliding_window"] = false;  // Qwen2's default: the window is off
  TempDir tmp;
  WriteCheckpoint(tmp.Sub("q"), cfg, w);
  auto m = LoadModel(tmp.Sub("q"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config().window(0), 0);
  const at::Tensor ids = Ids(2, 24, s.V, 10);
  ExpectMatchesReference(*m, ref, ids);
  // Harvest rows at layer 1, mlp_out: the hook's activations at positions 1.. of each window.
  HarvestOptions ho;
  ho.layer = 1;
  ho.hook = HookPoint::kMlpOut;
  ho.context = 12;
  ho.batch = 2;
  auto h = Harvester::Create(*m, nullptr, ho);
  ASSERT_TRUE(h.ok()) << h.status();
  const int64_t rows = 2 * 11;
  std::vector<float> acts(rows * s.d);
  std::vector<int32_t> toks(rows);
  ASSERT_TRUE((*h)->Rows(0, rows, acts.data(), toks.data()).ok());
  at::Tensor win = at::empty({2, 12}, at::kLong);
  for (int64_t b = 0; b < 2; ++b) {
    win[b][0] = m->config().bos_id;
    for (int64_t t = 1; t < 12; ++t) win[b][t] = toks[b * 11 + t - 1];
  }
  RefOut r = RefForward(ref, win);
  at::Tensor got = at::from_blob(acts.data(), {2, 11, s.d}, at::kFloat);
  EXPECT_LE(MaxRelErr(got, r.mlp[1].narrow(1, 1, 11)), 1e-4);
  // With use_sliding_window and max_window_layers 1, layer 1 slides.
  cfg["use_sliding_window"] = true;
  cfg["max_window_layers"] = 1;
  WriteCheckpoint(tmp.Sub("qs"), cfg, w);
  auto ms = LoadModel(tmp.Sub("qs"));
  ASSERT_TRUE(ms.ok()) << ms.status();
  ref.layers[1].window = 4;
  ExpectMatchesReference(*ms, ref, ids);
}

TEST(HfLoaderErrors, UnknownTensorsAndSettingsAreNamed) {
  Spec s;
  auto [w, ref] = RandomModel(s);
  TempDir tmp;
  Tensors extra = w;
  extra["model.layers.0.self_attn.q_norm.weight"] = at::ones({8});
  WriteCheckpoint(tmp.Sub("a"), BaseConfig(s), extra);
  auto a = LoadModel(tmp.Sub("a"));
  ASSERT_FALSE(a.ok());
  EXPECT_NE(std::string(a.status().message()).find("q_norm"), std::string::npos) << a.status();
  json cfg = BaseConfig(s);
  cfg["model_type"] = "mistral";
  cfg["sliding_window"] = 4;
  cfg["layer_types"] = {"sliding_attention", "chunked_attention"};
  WriteCheckpoint(tmp.Sub("b"), cfg, w);
  auto b = LoadModel(tmp.Sub("b"));
  ASSERT_FALSE(b.ok());
  EXPECT_NE(std::string(b.status().message()).find("chunked_attention"), std::string::npos) << b.status();
  cfg = BaseConfig(s);
  cfg["hidden_act"] = "relu";
  WriteCheckpoint(tmp.Sub("c"), cfg, w);
  auto c = LoadModel(tmp.Sub("c"));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string(c.status().message()).find("relu"), std::string::npos) << c.status();
  cfg = BaseConfig(s);
  cfg["model_type"] = "qwen3";
  WriteCheckpoint(tmp.Sub("d"), cfg, w);
  auto d = LoadModel(tmp.Sub("d"));
  ASSERT_FALSE(d.ok());
  EXPECT_NE(std::string(d.status().message()).find("qwen3"), std::string::npos) << d.status();
}

// ---------- transformers' own fixtures, where a machine with transformers made them ----------
// `python3 ../shared/tools/make_hf_fixtures.py tests/data/hf-tiny` (needs torch +
// transformers, e.g. on a GPU machine) writes NAME/{config.json,
// model.safetensors, reference.safetensors}; each test skips until its files exist.

std::string FixtureDir(const std::string& name) {
  const char* src = std::getenv("SAE_SOURCE_DIR");
#ifdef SAE_TEST_SOURCE_DIR
  if (src == nullptr) src = SAE_TEST_SOURCE_DIR;
#endif
  const std::string in_repo = std::string(src ? src : ".") + "/tests/data/hf-tiny/" + name;
  return fs::exists(in_repo) ? in_repo : DataDir() + "/hf-tiny/" + name;
}

void CheckFixture(const std::string& name, bool cached_steps) {
  const std::string dir = FixtureDir(name);
  SAE_REQUIRE_FILE(dir + "/reference.safetensors");
  auto m = LoadModel(dir);
  ASSERT_TRUE(m.ok()) << m.status();
  const Tensors ref = ReadAll(dir + "/reference.safetensors");
  const at::Tensor ids = ref.at("input_ids");
  const int64_t L = m->config().n_layers;
  std::vector<at::Tensor> hidden(L + 1);
  ForwardOptions o;
  for (int64_t l = -1; l < L - 1; ++l)
    o.hooks.push_back({l, HookPoint::kResidPost, [&hidden, l](at::Tensor& x) { hidden[l + 1] = x.clone(); }});
  o.hooks.push_back({0, HookPoint::kFinalNorm, [&hidden, L](at::Tensor& x) { hidden[L] = x.clone(); }});
  auto logits = m->Forward(ids, nullptr, o);
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_LE(MaxRelErr(*logits, ref.at("logits")), 1e-4) << name;
  for (int64_t i = 0; i <= L; ++i)
    EXPECT_LE(MaxRelErr(hidden[i], ref.at("hidden_states." + std::to_string(i))), 1e-4)
        << name << " hidden_states." << i;
  if (cached_steps) ExpectCacheMatchesFullPass(*m, ids);
}

TEST(HfTransformersFixtures, Llama3Tiny) { CheckFixture("llama3-tiny", true); }
TEST(HfTransformersFixtures, MistralSlidingWindowTiny) { CheckFixture("mistral-sw-tiny", true); }
TEST(HfTransformersFixtures, Phi3Tiny) { CheckFixture("phi3-tiny", true); }
// (longrope switches tables with the sequence length, as transformers does,
// so a token-by-token run differs from one pass once past the original length.)
TEST(HfTransformersFixtures, Phi3LongRopeTiny) { CheckFixture("phi3-longrope-tiny", false); }
TEST(HfTransformersFixtures, Gemma2Tiny) { CheckFixture("gemma2-tiny", true); }
TEST(HfTransformersFixtures, Qwen2Tiny) { CheckFixture("qwen2-tiny", true); }

}  // namespace
}  // namespace sae

namespace sae {
namespace {

// `sae features build` and `sae generate --steer` on Phi-3 (fused weights),
// Gemma 2 and Qwen2 directories, as a user runs them: the dashboards are
// written, steering at scale 0 reproduces the unsteered text and a large
// scale changes it.
TEST(HfArchitecturesCli, DashboardsAndSteeringRunOnPhi3Gemma2AndQwen2) {
  const std::string sae_bin = Bin("sae");
  if (!fs::exists(sae_bin)) GTEST_SKIP() << sae_bin << " not built";
  TempDir tmp;
  for (const std::string type : {"phi3", "gemma2", "qwen2"}) {
    Spec s;
    s.type = type;
    s.V = 257;  // the tokenizer's 256 bytes and <|endoftext|>: every sampled id decodes to text
    if (type == "gemma2") s.d = 48, s.H = 4, s.KV = 2, s.hd = 16, s.L = 3, s.tied = true;
    if (type == "qwen2") s.biases = true;
    if (type == "phi3") s.fused = true;
    auto [w, ref] = RandomModel(s);
    json cfg = type == "gemma2" ? GemmaConfig(s) : BaseConfig(s);
    if (type == "qwen2") cfg.erase("head_dim");
    if (type == "phi3") cfg["original_max_position_embeddings"] = s.max_pos;
    cfg["bos_token_id"] = 256;
    cfg["eos_token_id"] = 256;
    const std::string dir = tmp.Sub(type);
    WriteCheckpoint(dir, cfg, w);
    std::ofstream(dir + "/tokenizer.json") << ByteTokenizerJson();
    ASSERT_TRUE(LoadModel(dir).ok()) << type << ": " << LoadModel(dir).status();
    const std::string sae = tmp.Sub("sae_" + type);
    WriteTiedSae(sae, 2 * s.d, s.d, 4, 1);
    Result built = Sh(sae_bin + " features build --model " + dir + " --sae " + sae +
                      " --corpus generate --tokens 400 --context 24 --batch 4 --quiet --json");
    ASSERT_EQ(built.code, 0) << type << ": " << built.out;
    EXPECT_EQ(json::parse(built.out)["latents"], 2 * s.d) << type;
    EXPECT_TRUE(fs::exists(sae + "/features.safetensors")) << type;
    const std::string base = sae_bin + " generate --model " + dir + " --prompt 'Once upon' --steps 16 -s 3";
    auto first = [](const std::string& t) { return t.substr(0, std::min(t.find('\n'), t.find("achieved tok/s"))); };
    auto plain = Sh(base + " 2>/dev/null");
    ASSERT_EQ(plain.code, 0) << type << ": " << plain.out;
    auto zero = Sh(base + " --sae " + sae + " --steer 3:0 2>/dev/null");
    ASSERT_EQ(zero.code, 0) << type << ": " << zero.out;
    EXPECT_EQ(first(zero.out), first(plain.out)) << type << ": scale 0 must reproduce the unsteered text";
    auto big = Sh(base + " --sae " + sae + " --steer 3:60 2>/dev/null");
    ASSERT_EQ(big.code, 0) << type << ": " << big.out;
    EXPECT_NE(first(big.out), first(plain.out)) << type;
    auto clamp = Sh(base + " --sae " + sae + " --steer 3:1 --steer-mode clamp 2>/dev/null");
    EXPECT_EQ(clamp.code, 0) << type << ": " << clamp.out;
  }
}

}  // namespace
}  // namespace sae
