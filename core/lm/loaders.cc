#include "core/lm/loaders.h"

#include <c10/util/Exception.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/base/file_util.h"
#include "core/data/safetensors.h"

namespace sae {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr uint32_t kLlama2cMagic = 0x616b3432;  // "ak42"

absl::StatusOr<std::string> ReadFileBytes(const std::string& path) { return ReadFileToString(path); }

// Sequential reader of float32 tensors in a llama2.c file.
class BinCursor {
 public:
  BinCursor(const std::string& path, const std::string& bytes, size_t offset)
      : path_(path), bytes_(bytes), off_(offset) {}
  absl::StatusOr<at::Tensor> Take(const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const size_t need = static_cast<size_t>(n) * 4;
    if (off_ + need > bytes_.size())
      return absl::InvalidArgumentError(absl::StrCat(path_, ": truncated: tensor ", name, " needs bytes [", off_, ", ",
                                                     off_ + need, ") but the file has ", bytes_.size()));
    at::Tensor t = at::empty(shape, at::kFloat);
    if (need > 0) std::memcpy(t.data_ptr<float>(), bytes_.data() + off_, need);  // an empty tensor has no data
    off_ += need;
    return t;
  }
  void Skip(size_t bytes) { off_ += bytes; }
  size_t offset() const { return off_; }

 private:
  const std::string& path_;
  const std::string& bytes_;
  size_t off_;
};

absl::Status Unbind(const at::Tensor& all, std::vector<BlockWeights>* blocks, at::Tensor BlockWeights::*field) {
  for (int64_t l = 0; l < all.size(0); ++l) (*blocks)[l].*field = all[l].clone();
  return absl::OkStatus();
}

absl::StatusOr<const json*> Field(const json& j, const std::string& name, const std::string& file) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null())
    return absl::InvalidArgumentError(absl::StrCat(file, ": missing field \"", name, "\""));
  return &*it;
}

absl::StatusOr<int64_t> IntField(const json& j, const std::string& name, const std::string& file) {
  SAE_ASSIGN_OR_RETURN(const json* v, Field(j, name, file));
  if (!v->is_number_integer())
    return absl::InvalidArgumentError(absl::StrCat(file, ": field \"", name, "\" is not an integer"));
  return v->get<int64_t>();
}

// An optional integer field: `fallback` when absent or null, an error when
// it is not an integer (a float such as 1e300 must not be cast).
absl::StatusOr<int64_t> OptIntField(const json& j, const std::string& name, int64_t fallback, const std::string& file) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number_integer())
    return absl::InvalidArgumentError(absl::StrCat(file, ": field \"", name, "\" is not an integer"));
  return it->get<int64_t>();
}

// CheckModelDims with errors naming config.json.
absl::Status CheckConfigDims(ModelConfig c, const std::string& cfg_path) {
  c.source = cfg_path;
  return CheckModelDims(c);
}

// Tensors of an HF checkpoint (single file or sharded with an index).
class HfTensors {
 public:
  static absl::StatusOr<HfTensors> Open(const std::string& dir) {
    HfTensors t;
    const fs::path index = fs::path(dir) / "model.safetensors.index.json";
    const fs::path single = fs::path(dir) / "model.safetensors";
    if (fs::exists(index)) {
      SAE_ASSIGN_OR_RETURN(std::string text, ReadFileBytes(index.string()));
      json j = json::parse(text, nullptr, false);
      if (j.is_discarded() || !j.contains("weight_map") || !j["weight_map"].is_object())
        return absl::InvalidArgumentError(absl::StrCat(index.string(), ": not JSON with a \"weight_map\" object"));
      std::map<std::string, size_t> file_ix;
      for (auto& [name, file] : j["weight_map"].items()) {
        if (!file.is_string())
          return absl::InvalidArgumentError(
              absl::StrCat(index.string(), ": weight_map[\"", name, "\"] is not a file name"));
        const std::string f = file.get<std::string>();
        if (!file_ix.count(f)) {
          auto st = SafetensorsFile::Open((fs::path(dir) / f).string());
          if (!st.ok()) return Annotate(st.status(), absl::StrCat(index.string(), ": shard of ", name));
          file_ix[f] = t.files_.size();
          t.files_.push_back(std::move(*st));
        }
        t.where_[name] = file_ix[f];
      }
    } else if (fs::exists(single)) {
      SAE_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(single.string()));
      for (const auto& [name, info] : f.tensors()) t.where_[name] = 0;
      t.files_.push_back(std::move(f));
    } else {
      return absl::NotFoundError(absl::StrCat(dir, ": neither model.safetensors nor model.safetensors.index.json"));
    }
    return t;
  }
  bool Has(const std::string& name) const { return where_.count(name) > 0; }
  void MarkUsed(const std::string& name) const { used_.insert(name); }
  // Tensors never read by Get (rotary_emb.inv_freq buffers excepted).
  std::vector<std::string> Unused() const {
    std::vector<std::string> r;
    for (const auto& [name, f] : where_)
      if (!used_.count(name) && name.find("rotary_emb.inv_freq") == std::string::npos) r.push_back(name);
    return r;
  }
  // The tensor with the expected shape, as float32 (`keep_stored`: as
  // stored, F32/BF16/F16; F64 becomes float32).
  absl::StatusOr<at::Tensor> Get(const std::string& name, std::vector<int64_t> shape, bool keep_stored = false) const {
    auto it = where_.find(name);
    if (it == where_.end())
      return absl::InvalidArgumentError(
          absl::StrCat(files_.empty() ? "" : files_[0].path(), ": missing tensor ", name));
    const SafetensorsFile& f = files_[it->second];
    SAE_ASSIGN_OR_RETURN(TensorInfo info, f.Info(name));
    if (info.shape != shape) {
      auto str = [](const std::vector<int64_t>& s) {
        std::string r = "[";
        for (size_t i = 0; i < s.size(); ++i) absl::StrAppend(&r, i ? "x" : "", s[i]);
        return r + "]";
      };
      return absl::InvalidArgumentError(
          absl::StrCat(f.path(), ": tensor ", name, " has shape ", str(info.shape), ", expected ", str(shape)));
    }
    used_.insert(name);
    if (keep_stored && (info.dtype == DType::kBF16 || info.dtype == DType::kF16 || info.dtype == DType::kF32)) {
      at::Tensor t = at::empty(shape, info.dtype == DType::kBF16  ? at::kBFloat16
                                      : info.dtype == DType::kF16 ? at::kHalf
                                                                  : at::kFloat);
      SAE_RETURN_IF_ERROR(f.ReadRaw(name, t.data_ptr(), t.numel() * t.element_size()));
      return t;
    }
    SAE_ASSIGN_OR_RETURN(std::vector<float> v, f.ReadFloat(name));
    at::Tensor t = at::empty(shape, at::kFloat);
    if (!v.empty()) std::memcpy(t.data_ptr<float>(), v.data(), v.size() * sizeof(float));
    return t;
  }

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;
  mutable std::set<std::string> used_;
};

// Rows of each head from interleaved pairs (2i, 2i+1) to halves (i, i+hd/2), and back.
at::Tensor InterleavedToHalves(const at::Tensor& w, int64_t heads) {
  const int64_t out = w.size(0), in = w.size(1), hd = out / heads;
  return w.reshape({heads, hd / 2, 2, in}).transpose(1, 2).reshape({out, in}).contiguous();
}

// --dtype: every weight converted to it and compute in it; none: weights as
// loaded, compute in float32.
absl::Status ApplyDType(const LoadOptions& o, ModelConfig* c, ModelWeights* w) {
  if (o.dtype.empty()) return absl::OkStatus();
  at::ScalarType dt;
  if (o.dtype == "float32" || o.dtype == "f32")
    dt = at::kFloat;
  else if (o.dtype == "bfloat16" || o.dtype == "bf16")
    dt = at::kBFloat16;
  else if (o.dtype == "float16" || o.dtype == "f16")
    dt = at::kHalf;
  else
    return absl::InvalidArgumentError(absl::StrCat("--dtype: '", o.dtype, "' is not float32, bfloat16 or float16"));
  c->compute_dtype = dt;
  auto cv = [&](at::Tensor& t) {
    if (t.defined() && t.scalar_type() != dt) t = t.to(dt);
  };
  const bool tied = w->lm_head.is_same(w->tok_emb);
  cv(w->tok_emb);
  cv(w->pos_emb);
  cv(w->final_norm);
  cv(w->final_norm_b);
  if (tied)
    w->lm_head = w->tok_emb;
  else
    cv(w->lm_head);
  for (BlockWeights& b : w->blocks)
    for (at::Tensor* t : {&b.attn_norm, &b.attn_norm_b, &b.ffn_norm, &b.ffn_norm_b, &b.post_attn_norm, &b.post_ffn_norm,
                          &b.wq, &b.wk, &b.wv, &b.wo, &b.bq, &b.bk, &b.bv, &b.bo, &b.w1, &b.w2, &b.w3, &b.b1, &b.b2})
      cv(*t);
  return absl::OkStatus();
}

absl::StatusOr<double> NumField(const json& j, const std::string& name, const std::string& where) {
  auto it = j.find(name);
  if (it == j.end() || !it->is_number())
    return absl::InvalidArgumentError(absl::StrCat(where, ": field \"", name, "\" missing or not a number"));
  return it->get<double>();
}

// The rope parameters object: rope_parameters (transformers 5) or
// rope_scaling (earlier); null when neither is given. *where names it.
absl::StatusOr<const json*> FindRopeParameters(const json& cfg, const std::string& cfg_path, std::string* where) {
  const json* rp = nullptr;
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!cfg.contains(key) || cfg[key].is_null()) continue;
    if (!cfg[key].is_object())
      return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": field \"", key, "\" is not an object"));
    if (rp != nullptr && std::string(key) == "rope_scaling" && !cfg[key].empty()) {
      // Both given: rope_parameters wins unless it is only the default.
      const std::string t0 = rp->value("rope_type", rp->value("type", std::string("default")));
      if (t0 != "default") continue;
    }
    rp = &cfg[key];
    *where = absl::StrCat(cfg_path, ": ", key);
  }
  return rp;
}

// Refuses a field that a supported rope_type does not read.
absl::Status CheckRopeFieldsKnown(const json& rp, const std::string& type, const std::string& where) {
  std::set<std::string> known = {"rope_type", "type", "rope_theta", "partial_rotary_factor"};
  if (type == "linear" || type == "dynamic") known.insert({"factor", "original_max_position_embeddings"});
  if (type == "llama3")
    known.insert({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"});
  if (type == "longrope")
    known.insert({"short_factor", "long_factor", "factor", "attention_factor", "original_max_position_embeddings"});
  const bool supported =
      type == "default" || type == "linear" || type == "dynamic" || type == "llama3" || type == "longrope";
  for (auto it = rp.begin(); supported && it != rp.end(); ++it)
    if (!known.count(it.key()))
      return absl::UnimplementedError(
          absl::StrCat(where, ": field \"", it.key(), "\" is not supported for rope_type \"", type, "\""));
  return absl::OkStatus();
}

// longrope (Phi-3): the two factor arrays, and factor and attention_factor
// derived from the context lengths where not given.
absl::Status ParseLongRope(const json& rp, const std::string& where, int64_t original_max_position, ModelConfig* c) {
  ModelConfig::RopeScaling& r = c->rope_scaling;
  for (const char* k : {"short_factor", "long_factor"}) {
    if (!rp.contains(k) || !rp[k].is_array())
      return absl::InvalidArgumentError(absl::StrCat(where, ": longrope needs \"", k, "\" (an array)"));
    std::vector<double>& dst = std::string(k) == "short_factor" ? r.short_factor : r.long_factor;
    for (const json& v : rp[k]) {
      if (!v.is_number()) return absl::InvalidArgumentError(absl::StrCat(where, ".", k, ": not all numbers"));
      dst.push_back(v.get<double>());
    }
  }
  r.original_max_position = original_max_position;
  if (r.original_max_position <= 0) r.original_max_position = c->max_seq_len;
  double factor = 0;
  if (rp.contains("factor") && rp["factor"].is_number()) factor = rp["factor"].get<double>();
  if (factor <= 0) factor = static_cast<double>(c->max_seq_len) / static_cast<double>(r.original_max_position);
  r.factor = factor;
  if (rp.contains("attention_factor") && rp["attention_factor"].is_number())
    r.attention_factor = rp["attention_factor"].get<double>();
  else
    r.attention_factor =
        factor <= 1.0 ? 1.0
                      : std::sqrt(1.0 + std::log(factor) / std::log(static_cast<double>(r.original_max_position)));
  return absl::OkStatus();
}

// rope_parameters (transformers 5) or rope_theta + rope_scaling (earlier).
absl::Status ParseRope(const json& cfg, const std::string& cfg_path, ModelConfig* c) {
  if (cfg.contains("rope_theta") && cfg["rope_theta"].is_number()) c->rope_theta = cfg["rope_theta"].get<float>();
  std::string where;
  SAE_ASSIGN_OR_RETURN(const json* rp, FindRopeParameters(cfg, cfg_path, &where));
  if (rp == nullptr) return absl::OkStatus();
  if (rp->contains("rope_theta") && (*rp)["rope_theta"].is_number()) c->rope_theta = (*rp)["rope_theta"].get<float>();
  if (rp->contains("partial_rotary_factor") && (*rp)["partial_rotary_factor"].is_number() &&
      (*rp)["partial_rotary_factor"].get<double>() != 1.0)
    return absl::UnimplementedError(absl::StrCat(
        where, ".partial_rotary_factor ", (*rp)["partial_rotary_factor"].dump(), " is not supported (1.0 only)"));
  std::string type = "default";
  if (rp->contains("rope_type") && (*rp)["rope_type"].is_string())
    type = (*rp)["rope_type"].get<std::string>();
  else if (rp->contains("type") && (*rp)["type"].is_string())
    type = (*rp)["type"].get<std::string>();
  if (type == "su") type = "longrope";  // Phi-3's earlier name for it
  ModelConfig::RopeScaling& r = c->rope_scaling;
  r.type = type;
  SAE_RETURN_IF_ERROR(CheckRopeFieldsKnown(*rp, type, where));
  auto orig = [&]() -> int64_t {
    if (rp->contains("original_max_position_embeddings") &&
        (*rp)["original_max_position_embeddings"].is_number_integer())
      return (*rp)["original_max_position_embeddings"].get<int64_t>();
    if (cfg.contains("original_max_position_embeddings") && cfg["original_max_position_embeddings"].is_number_integer())
      return cfg["original_max_position_embeddings"].get<int64_t>();
    return 0;
  };
  if (type == "default") return absl::OkStatus();
  if (type == "linear" || type == "dynamic") {
    SAE_ASSIGN_OR_RETURN(r.factor, NumField(*rp, "factor", where));
    r.original_max_position = orig();
    return absl::OkStatus();
  }
  if (type == "llama3") {
    SAE_ASSIGN_OR_RETURN(r.factor, NumField(*rp, "factor", where));
    SAE_ASSIGN_OR_RETURN(r.low_freq_factor, NumField(*rp, "low_freq_factor", where));
    SAE_ASSIGN_OR_RETURN(r.high_freq_factor, NumField(*rp, "high_freq_factor", where));
    r.original_max_position = orig();
    if (r.original_max_position <= 0)
      return absl::InvalidArgumentError(absl::StrCat(where, ": llama3 needs original_max_position_embeddings"));
    return absl::OkStatus();
  }
  if (type == "longrope") return ParseLongRope(*rp, where, orig(), c);
  return absl::UnimplementedError(
      absl::StrCat(where, ": rope_type \"", type, "\" is not supported (default, linear, dynamic, llama3, longrope)"));
}

// Which layers use a sliding window: config.layer_types when given, else
// each family's rule (Mistral, Phi-3: all; Qwen2: use_sliding_window from
// max_window_layers on; Gemma 2: even layers).
absl::Status ParseSlidingWindow(const json& cfg, const std::string& cfg_path, const std::string& type, ModelConfig* c) {
  int64_t window = 0;
  if (cfg.contains("sliding_window") && !cfg["sliding_window"].is_null()) {
    if (!cfg["sliding_window"].is_number_integer() || cfg["sliding_window"].get<int64_t>() <= 0)
      return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": field \"sliding_window\" is not a positive integer"));
    window = cfg["sliding_window"].get<int64_t>();
  }
  std::vector<int64_t> w(c->n_layers, 0);
  if (cfg.contains("layer_types") && cfg["layer_types"].is_array()) {
    const json& lt = cfg["layer_types"];
    if (static_cast<int64_t>(lt.size()) != c->n_layers)
      return absl::InvalidArgumentError(
          absl::StrCat(cfg_path, ": layer_types has ", lt.size(), " entries for ", c->n_layers, " layers"));
    for (int64_t l = 0; l < c->n_layers; ++l) {
      const std::string t = lt[l].is_string() ? lt[l].get<std::string>() : lt[l].dump();
      if (t == "sliding_attention") {
        if (window <= 0)
          return absl::InvalidArgumentError(
              absl::StrCat(cfg_path, ": layer_types[", l, "] is sliding_attention but sliding_window is not set"));
        w[l] = window;
      } else if (t != "full_attention") {
        return absl::UnimplementedError(absl::StrCat(cfg_path, ": layer_types[", l, "] \"", t,
                                                     "\" is not supported (full_attention, sliding_attention)"));
      }
    }
  } else if (window > 0) {
    if (type == "mistral" || type == "phi3") {
      std::fill(w.begin(), w.end(), window);
    } else if (type == "qwen2") {
      if (cfg.value("use_sliding_window", false)) {
        const int64_t from = cfg.value("max_window_layers", int64_t{0});
        for (int64_t l = from; l < c->n_layers; ++l) w[l] = window;
      }
    } else if (type == "gemma2") {
      for (int64_t l = 0; l < c->n_layers; l += 2) w[l] = window;
    }
  }
  // A window as long as the context changes nothing.
  bool any = false;
  for (int64_t& x : w) {
    if (x >= c->max_seq_len) x = 0;
    any = any || x > 0;
  }
  if (any) c->sliding_window = std::move(w);
  return absl::OkStatus();
}

// The shape fields of an HF decoder's config.json: widths, layers, heads,
// vocabulary, context, and head_dim where it is given.
absl::Status ParseHfDecoderShape(const json& cfg, const std::string& cfg_path, ModelConfig* c) {
  SAE_ASSIGN_OR_RETURN(c->dim, IntField(cfg, "hidden_size", cfg_path));
  SAE_ASSIGN_OR_RETURN(c->hidden_dim, IntField(cfg, "intermediate_size", cfg_path));
  SAE_ASSIGN_OR_RETURN(c->n_layers, IntField(cfg, "num_hidden_layers", cfg_path));
  SAE_ASSIGN_OR_RETURN(c->n_heads, IntField(cfg, "num_attention_heads", cfg_path));
  SAE_ASSIGN_OR_RETURN(c->vocab_size, IntField(cfg, "vocab_size", cfg_path));
  SAE_ASSIGN_OR_RETURN(c->max_seq_len, IntField(cfg, "max_position_embeddings", cfg_path));
  SAE_ASSIGN_OR_RETURN(c->n_kv_heads, OptIntField(cfg, "num_key_value_heads", c->n_heads, cfg_path));
  if (c->n_heads <= 0 || c->n_kv_heads <= 0 || c->dim <= 0 || c->n_layers <= 0 || c->hidden_dim <= 0)
    return absl::InvalidArgumentError(absl::StrCat(cfg_path,
                                                   ": hidden_size, intermediate_size, num_hidden_layers and "
                                                   "attention heads must be > 0"));
  SAE_RETURN_IF_ERROR(CheckConfigDims(*c, cfg_path));
  if (cfg.contains("head_dim") && !cfg["head_dim"].is_null()) {
    if (!cfg["head_dim"].is_number_integer() || cfg["head_dim"].get<int64_t>() <= 0)
      return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": field \"head_dim\" is not a positive integer"));
    c->explicit_head_dim = cfg["head_dim"].get<int64_t>();
  } else if (c->dim % c->n_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        cfg_path, ": hidden_size ", c->dim, " not divisible by num_attention_heads ", c->n_heads, " and no head_dim"));
  }
  return absl::OkStatus();
}

// The MLP's activation (silu or a tanh GELU); mlp_bias is refused.
absl::Status ParseHfActivation(const json& cfg, const std::string& cfg_path, bool gemma, ModelConfig* c) {
  std::string act = gemma ? "gelu_pytorch_tanh" : "silu";
  for (const char* k : {"hidden_act", "hidden_activation"})
    if (cfg.contains(k) && cfg[k].is_string()) act = cfg[k].get<std::string>();
  if (gemma && cfg.contains("hidden_activation") && cfg["hidden_activation"].is_string())
    act = cfg["hidden_activation"].get<std::string>();
  if (act == "gelu_pytorch_tanh" || act == "gelu_new" || act == "gelu_tanh") {
    c->gelu_mlp = true;
  } else if (act != "silu" && act != "swish") {
    return absl::UnimplementedError(
        absl::StrCat(cfg_path, ": activation \"", act, "\" is not supported (silu, gelu_pytorch_tanh)"));
  }
  if (cfg.value("mlp_bias", false))
    return absl::UnimplementedError(absl::StrCat(cfg_path, ": mlp_bias true is not supported"));
  return absl::OkStatus();
}

// Gemma 2's embedding scale, attention scale and logit soft-caps.
absl::Status ParseGemma2Extras(const json& cfg, const std::string& cfg_path, ModelConfig* c) {
  c->embed_scale = std::sqrt(static_cast<double>(c->dim));
  if (cfg.contains("query_pre_attn_scalar") && cfg["query_pre_attn_scalar"].is_number()) {
    const double s = cfg["query_pre_attn_scalar"].get<double>();
    if (s <= 0) return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": query_pre_attn_scalar must be > 0"));
    c->attn_scale = 1.0 / std::sqrt(s);
  }
  for (auto [k, dst] : {std::pair<const char*, double*>{"attn_logit_softcapping", &c->attn_softcap},
                        {"final_logit_softcapping", &c->final_softcap}})
    if (cfg.contains(k) && !cfg[k].is_null()) {
      if (!cfg[k].is_number())
        return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": field \"", k, "\" is not a number"));
      *dst = cfg[k].get<double>();
    }
  return absl::OkStatus();
}

// bos_token_id and eos_token_id (the first, where eos is a list).
void ParseHfSpecialTokens(const json& cfg, ModelConfig* c) {
  if (cfg.contains("bos_token_id") && cfg["bos_token_id"].is_number_integer())
    c->bos_id = cfg["bos_token_id"].get<int64_t>();
  if (cfg.contains("eos_token_id") && cfg["eos_token_id"].is_number_integer())
    c->eos_id = cfg["eos_token_id"].get<int64_t>();
  if (cfg.contains("eos_token_id") && cfg["eos_token_id"].is_array() && !cfg["eos_token_id"].empty() &&
      cfg["eos_token_id"][0].is_number_integer())
    c->eos_id = cfg["eos_token_id"][0].get<int64_t>();
}

// One decoder block's tensors under `p` ("model.layers.N."), in their stored
// dtype. Phi-3 stores q/k/v and gate/up fused: they become row views.
absl::StatusOr<BlockWeights> LoadHfDecoderBlock(const HfTensors& t, const std::string& p, const ModelConfig& c,
                                                bool gemma, bool phi3) {
  const bool keep = true;
  const int64_t d = c.dim, hd = c.head_dim(), qd = c.n_heads * hd, kv = c.n_kv_heads * hd, h = c.hidden_dim;
  BlockWeights b;
  SAE_ASSIGN_OR_RETURN(b.attn_norm, t.Get(p + "input_layernorm.weight", {d}, keep));
  if (gemma) {
    SAE_ASSIGN_OR_RETURN(b.post_attn_norm, t.Get(p + "post_attention_layernorm.weight", {d}, keep));
    SAE_ASSIGN_OR_RETURN(b.ffn_norm, t.Get(p + "pre_feedforward_layernorm.weight", {d}, keep));
    SAE_ASSIGN_OR_RETURN(b.post_ffn_norm, t.Get(p + "post_feedforward_layernorm.weight", {d}, keep));
  } else {
    SAE_ASSIGN_OR_RETURN(b.ffn_norm, t.Get(p + "post_attention_layernorm.weight", {d}, keep));
  }
  if (phi3) {  // fused: rows q, k, v and gate, up (views, no copy)
    SAE_ASSIGN_OR_RETURN(at::Tensor qkv, t.Get(p + "self_attn.qkv_proj.weight", {qd + 2 * kv, d}, keep));
    b.wq = qkv.narrow(0, 0, qd);
    b.wk = qkv.narrow(0, qd, kv);
    b.wv = qkv.narrow(0, qd + kv, kv);
    SAE_ASSIGN_OR_RETURN(at::Tensor gu, t.Get(p + "mlp.gate_up_proj.weight", {2 * h, d}, keep));
    b.w1 = gu.narrow(0, 0, h);
    b.w3 = gu.narrow(0, h, h);
  } else {
    SAE_ASSIGN_OR_RETURN(b.wq, t.Get(p + "self_attn.q_proj.weight", {qd, d}, keep));
    SAE_ASSIGN_OR_RETURN(b.wk, t.Get(p + "self_attn.k_proj.weight", {kv, d}, keep));
    SAE_ASSIGN_OR_RETURN(b.wv, t.Get(p + "self_attn.v_proj.weight", {kv, d}, keep));
    SAE_ASSIGN_OR_RETURN(b.w1, t.Get(p + "mlp.gate_proj.weight", {h, d}, keep));
    SAE_ASSIGN_OR_RETURN(b.w3, t.Get(p + "mlp.up_proj.weight", {h, d}, keep));
  }
  SAE_ASSIGN_OR_RETURN(b.wo, t.Get(p + "self_attn.o_proj.weight", {d, qd}, keep));
  SAE_ASSIGN_OR_RETURN(b.w2, t.Get(p + "mlp.down_proj.weight", {d, h}, keep));
  if (t.Has(p + "self_attn.q_proj.bias")) {  // Qwen2 (and attention_bias) biases
    SAE_ASSIGN_OR_RETURN(b.bq, t.Get(p + "self_attn.q_proj.bias", {qd}, keep));
    SAE_ASSIGN_OR_RETURN(b.bk, t.Get(p + "self_attn.k_proj.bias", {kv}, keep));
    SAE_ASSIGN_OR_RETURN(b.bv, t.Get(p + "self_attn.v_proj.bias", {kv}, keep));
  }
  if (t.Has(p + "self_attn.o_proj.bias")) {
    SAE_ASSIGN_OR_RETURN(b.bo, t.Get(p + "self_attn.o_proj.bias", {d}, keep));
  }
  return b;
}

// Llama, Mistral, Qwen2, Phi-3 and Gemma 2: RMSNorm decoders in one layout.
absl::StatusOr<Transformer> LoadHfDecoder(const std::string& dir, const json& cfg, const std::string& cfg_path,
                                          const std::string& type, const LoadOptions& opts) {
  ModelConfig c;
  const bool gemma = type == "gemma2", phi3 = type == "phi3";
  c.arch = gemma ? Arch::kGemma2 : Arch::kLlama;
  c.rope = RopeStyle::kRotateHalf;
  c.source = dir;
  c.format = "hf-" + type;
  SAE_RETURN_IF_ERROR(ParseHfDecoderShape(cfg, cfg_path, &c));
  if (cfg.contains("rms_norm_eps") && cfg["rms_norm_eps"].is_number()) c.norm_eps = cfg["rms_norm_eps"].get<float>();
  SAE_RETURN_IF_ERROR(ParseRope(cfg, cfg_path, &c));
  if (cfg.contains("partial_rotary_factor") && cfg["partial_rotary_factor"].is_number() &&
      cfg["partial_rotary_factor"].get<double>() != 1.0)
    return absl::UnimplementedError(absl::StrCat(cfg_path, ": partial_rotary_factor ",
                                                 cfg["partial_rotary_factor"].dump(), " is not supported (1.0 only)"));
  SAE_RETURN_IF_ERROR(ParseSlidingWindow(cfg, cfg_path, type, &c));
  SAE_RETURN_IF_ERROR(ParseHfActivation(cfg, cfg_path, gemma, &c));
  if (gemma) SAE_RETURN_IF_ERROR(ParseGemma2Extras(cfg, cfg_path, &c));
  ParseHfSpecialTokens(cfg, &c);
  const bool tied = cfg.value("tie_word_embeddings", gemma);
  // Weights in their stored dtype unless --dtype converts them.
  const bool keep = true;
  SAE_ASSIGN_OR_RETURN(HfTensors t, HfTensors::Open(dir));
  const int64_t d = c.dim, V = c.vocab_size;
  ModelWeights w;
  SAE_ASSIGN_OR_RETURN(w.tok_emb, t.Get("model.embed_tokens.weight", {V, d}, keep));
  SAE_ASSIGN_OR_RETURN(w.final_norm, t.Get("model.norm.weight", {d}, keep));
  if (tied || !t.Has("lm_head.weight")) {
    w.lm_head = w.tok_emb;
  } else {
    SAE_ASSIGN_OR_RETURN(w.lm_head, t.Get("lm_head.weight", {V, d}, keep));
  }
  for (int64_t l = 0; l < c.n_layers; ++l) {
    SAE_ASSIGN_OR_RETURN(BlockWeights b, LoadHfDecoderBlock(t, absl::StrCat("model.layers.", l, "."), c, gemma, phi3));
    w.blocks.push_back(std::move(b));
  }
  if (tied) t.MarkUsed("lm_head.weight");  // a tied checkpoint may carry a copy of the head
  const std::vector<std::string> unused = t.Unused();
  if (!unused.empty())
    return absl::UnimplementedError(absl::StrCat(dir, ": tensor ", unused[0], " (and ", unused.size() - 1,
                                                 " more) is not used by the ", type,
                                                 " loader; this checkpoint has parts saeforge does not implement"));
  SAE_RETURN_IF_ERROR(ApplyDType(opts, &c, &w));
  return Transformer::Create(std::move(c), std::move(w));
}

absl::StatusOr<Transformer> LoadHfGpt2(const std::string& dir, const json& cfg, const std::string& cfg_path,
                                       const LoadOptions& opts) {
  ModelConfig c;
  c.arch = Arch::kGpt2;
  c.source = dir;
  c.format = "hf-gpt2";
  SAE_ASSIGN_OR_RETURN(c.dim, IntField(cfg, "n_embd", cfg_path));
  SAE_ASSIGN_OR_RETURN(c.n_layers, IntField(cfg, "n_layer", cfg_path));
  SAE_ASSIGN_OR_RETURN(c.n_heads, IntField(cfg, "n_head", cfg_path));
  SAE_ASSIGN_OR_RETURN(c.vocab_size, IntField(cfg, "vocab_size", cfg_path));
  SAE_ASSIGN_OR_RETURN(c.max_seq_len, IntField(cfg, "n_positions", cfg_path));
  c.n_kv_heads = c.n_heads;
  c.hidden_dim = 1;  // n_inner defaults to 4 * n_embd: read once n_embd is known to be in range
  SAE_RETURN_IF_ERROR(CheckConfigDims(c, cfg_path));
  SAE_ASSIGN_OR_RETURN(c.hidden_dim, OptIntField(cfg, "n_inner", 4 * c.dim, cfg_path));
  SAE_RETURN_IF_ERROR(CheckConfigDims(c, cfg_path));
  if (cfg.contains("layer_norm_epsilon") && cfg["layer_norm_epsilon"].is_number())
    c.norm_eps = cfg["layer_norm_epsilon"].get<float>();
  if (cfg.contains("activation_function") && cfg["activation_function"] != "gelu_new" &&
      cfg["activation_function"] != "gelu_pytorch_tanh")
    return absl::UnimplementedError(absl::StrCat(cfg_path, ": activation_function ", cfg["activation_function"].dump(),
                                                 " is not supported (gelu_new only)"));
  SAE_ASSIGN_OR_RETURN(c.bos_id, OptIntField(cfg, "bos_token_id", c.vocab_size - 1, cfg_path));
  c.eos_id = c.bos_id;
  SAE_ASSIGN_OR_RETURN(HfTensors t, HfTensors::Open(dir));
  const std::string pre = t.Has("transformer.wte.weight") ? "transformer." : "";
  const int64_t d = c.dim, h = c.hidden_dim, V = c.vocab_size;
  ModelWeights w;
  SAE_ASSIGN_OR_RETURN(w.tok_emb, t.Get(pre + "wte.weight", {V, d}));
  SAE_ASSIGN_OR_RETURN(w.pos_emb, t.Get(pre + "wpe.weight", {c.max_seq_len, d}));
  SAE_ASSIGN_OR_RETURN(w.final_norm, t.Get(pre + "ln_f.weight", {d}));
  SAE_ASSIGN_OR_RETURN(w.final_norm_b, t.Get(pre + "ln_f.bias", {d}));
  w.lm_head = w.tok_emb;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat(pre, "h.", l, ".");
    BlockWeights b;
    SAE_ASSIGN_OR_RETURN(b.attn_norm, t.Get(p + "ln_1.weight", {d}));
    SAE_ASSIGN_OR_RETURN(b.attn_norm_b, t.Get(p + "ln_1.bias", {d}));
    SAE_ASSIGN_OR_RETURN(b.ffn_norm, t.Get(p + "ln_2.weight", {d}));
    SAE_ASSIGN_OR_RETURN(b.ffn_norm_b, t.Get(p + "ln_2.bias", {d}));
    SAE_ASSIGN_OR_RETURN(at::Tensor qkv, t.Get(p + "attn.c_attn.weight", {d, 3 * d}));  // Conv1D [in, out]
    SAE_ASSIGN_OR_RETURN(at::Tensor qkv_b, t.Get(p + "attn.c_attn.bias", {3 * d}));
    at::Tensor qkv_t = qkv.t().contiguous();
    b.wq = qkv_t.narrow(0, 0, d).contiguous();
    b.wk = qkv_t.narrow(0, d, d).contiguous();
    b.wv = qkv_t.narrow(0, 2 * d, d).contiguous();
    b.bq = qkv_b.narrow(0, 0, d).contiguous();
    b.bk = qkv_b.narrow(0, d, d).contiguous();
    b.bv = qkv_b.narrow(0, 2 * d, d).contiguous();
    SAE_ASSIGN_OR_RETURN(at::Tensor wo, t.Get(p + "attn.c_proj.weight", {d, d}));
    b.wo = wo.t().contiguous();
    SAE_ASSIGN_OR_RETURN(b.bo, t.Get(p + "attn.c_proj.bias", {d}));
    SAE_ASSIGN_OR_RETURN(at::Tensor fc, t.Get(p + "mlp.c_fc.weight", {d, h}));
    b.w1 = fc.t().contiguous();
    SAE_ASSIGN_OR_RETURN(b.b1, t.Get(p + "mlp.c_fc.bias", {h}));
    SAE_ASSIGN_OR_RETURN(at::Tensor proj, t.Get(p + "mlp.c_proj.weight", {h, d}));
    b.w2 = proj.t().contiguous();
    SAE_ASSIGN_OR_RETURN(b.b2, t.Get(p + "mlp.c_proj.bias", {d}));
    w.blocks.push_back(std::move(b));
  }
  SAE_RETURN_IF_ERROR(ApplyDType(opts, &c, &w));
  return Transformer::Create(std::move(c), std::move(w));
}

void AppendFloats(std::string* out, const at::Tensor& t) {
  at::Tensor c = t.to(at::kCPU, at::kFloat).contiguous();
  out->append(reinterpret_cast<const char*>(c.data_ptr<float>()), c.numel() * sizeof(float));
}

void AppendI32(std::string* out, int32_t v) { out->append(reinterpret_cast<const char*>(&v), 4); }

// A llama2.c header: the config, where the tensors start (*offset), the
// format version (0: legacy float32) and whether the classifier is the
// token embedding (*shared).
absl::Status ParseLlama2cHeader(const std::string& path, const std::string& bytes, ModelConfig* c, size_t* offset,
                                int* version, bool* shared) {
  auto i32 = [&](size_t off) {
    int32_t v;
    std::memcpy(&v, bytes.data() + off, 4);
    return v;
  };
  size_t off = 0;
  *version = 0;
  if (bytes.size() >= 8 && static_cast<uint32_t>(i32(0)) == kLlama2cMagic) {
    *version = i32(4);
    if (*version != 1)
      return absl::UnimplementedError(absl::StrCat(path, ": llama2.c format version ", *version,
                                                   " is not supported (float32 legacy and version 1 are)"));
    if (bytes.size() < 256)
      return absl::InvalidArgumentError(absl::StrCat(path, ": truncated header (", bytes.size(), " bytes)"));
    off = 8;
    c->format = "llama2c-v1";
  } else {
    if (bytes.size() < 28)
      return absl::InvalidArgumentError(absl::StrCat(path, ": truncated header (", bytes.size(), " bytes)"));
    c->format = "llama2c-legacy";
  }
  c->dim = i32(off);
  c->hidden_dim = i32(off + 4);
  c->n_layers = i32(off + 8);
  c->n_heads = i32(off + 12);
  c->n_kv_heads = i32(off + 16);
  c->vocab_size = i32(off + 20);
  c->max_seq_len = i32(off + 24);
  if (*version == 0) {
    *shared = c->vocab_size > 0;
    c->vocab_size = std::abs(c->vocab_size);
    *offset = 28;
  } else {
    *shared = bytes[off + 28] != 0;
    *offset = 256;
  }
  const int64_t d = c->dim, L = c->n_layers, h = c->hidden_dim, V = c->vocab_size;
  const int64_t limit = int64_t{1} << 20;
  if (d <= 0 || h <= 0 || L <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || V <= 0 || c->max_seq_len <= 0 ||
      d > limit || h > 4 * limit || L > 4096 || V > 16 * limit || c->max_seq_len > limit || d % c->n_heads != 0 ||
      c->n_heads % c->n_kv_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a llama2.c checkpoint (header dim ", d, ", hidden ", h,
                                                   ", layers ", L, ", heads ", c->n_heads, "/", c->n_kv_heads,
                                                   ", vocab ", V, ", seq_len ", c->max_seq_len, ")"));
  return CheckModelDims(*c);  // also bounds the rotary tables seq_len x head_dim/2
}

// One tensor of a llama2.c file after its header, in file order: a
// model-wide weight (`model`), one weight of every block stored for all
// layers at once (`layer`; `shape` without the layer dimension), or neither:
// the legacy format's rotary tables, which the reader skips (the model
// computes its own) and the writer fills with zeros.
struct Llama2cTensor {
  const char* name;
  std::vector<int64_t> shape;
  at::Tensor ModelWeights::*model = nullptr;
  at::Tensor BlockWeights::*layer = nullptr;
};

// The layout of format `version` (0: legacy float32, 1), read by
// ReadLlama2cWeights and written by SaveLlama2c; the classifier (wcls, only
// when not shared with the embedding) follows it.
std::vector<Llama2cTensor> Llama2cLayout(const ModelConfig& c, int version) {
  using B = BlockWeights;
  using M = ModelWeights;
  const int64_t d = c.dim, h = c.hidden_dim, V = c.vocab_size;
  const int64_t hd = d / c.n_heads, kv = c.n_kv_heads * hd;
  if (version == 0) {
    return {{"token_embedding", {V, d}, &M::tok_emb},  {"rms_att", {d}, nullptr, &B::attn_norm},
            {"wq", {d, d}, nullptr, &B::wq},           {"wk", {kv, d}, nullptr, &B::wk},
            {"wv", {kv, d}, nullptr, &B::wv},          {"wo", {d, d}, nullptr, &B::wo},
            {"rms_ffn", {d}, nullptr, &B::ffn_norm},   {"w1", {h, d}, nullptr, &B::w1},
            {"w2", {d, h}, nullptr, &B::w2},           {"w3", {h, d}, nullptr, &B::w3},
            {"rms_final", {d}, &M::final_norm},        {"freq_cis_real", {c.max_seq_len, hd / 2}},
            {"freq_cis_imag", {c.max_seq_len, hd / 2}}};
  }
  return {{"attention_norm", {d}, nullptr, &B::attn_norm},
          {"ffn_norm", {d}, nullptr, &B::ffn_norm},
          {"norm", {d}, &M::final_norm},
          {"tok_embeddings", {V, d}, &M::tok_emb},
          {"wq", {d, d}, nullptr, &B::wq},
          {"wk", {kv, d}, nullptr, &B::wk},
          {"wv", {kv, d}, nullptr, &B::wv},
          {"wo", {d, d}, nullptr, &B::wo},
          {"w1", {h, d}, nullptr, &B::w1},
          {"w2", {d, h}, nullptr, &B::w2},
          {"w3", {h, d}, nullptr, &B::w3}};
}

// The tensors after a llama2.c header (Llama2cLayout), each weight of the
// blocks split into them.
absl::Status ReadLlama2cWeights(BinCursor& cur, const ModelConfig& c, int version, bool shared, ModelWeights* w) {
  w->blocks.resize(c.n_layers);
  for (const Llama2cTensor& t : Llama2cLayout(c, version)) {
    if (t.layer != nullptr) {
      std::vector<int64_t> shape = t.shape;
      shape.insert(shape.begin(), c.n_layers);
      SAE_ASSIGN_OR_RETURN(at::Tensor all, cur.Take(t.name, shape));
      SAE_RETURN_IF_ERROR(Unbind(all, &w->blocks, t.layer));
    } else if (t.model != nullptr) {
      SAE_ASSIGN_OR_RETURN(w->*t.model, cur.Take(t.name, t.shape));
    } else {
      SAE_RETURN_IF_ERROR(cur.Take(t.name, t.shape).status());
    }
  }
  if (shared) {
    w->lm_head = w->tok_emb;
  } else {
    SAE_ASSIGN_OR_RETURN(w->lm_head, cur.Take("wcls", {c.vocab_size, c.dim}));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Transformer> LoadLlama2c(const std::string& path, const LoadOptions& opts) {
  SAE_ASSIGN_OR_RETURN(std::string bytes, ReadFileBytes(path));
  ModelConfig c;
  c.arch = Arch::kLlama;
  c.rope = RopeStyle::kInterleaved;
  c.source = path;
  size_t off = 0;
  bool shared = true;
  int version = 0;
  SAE_RETURN_IF_ERROR(ParseLlama2cHeader(path, bytes, &c, &off, &version, &shared));
  BinCursor cur(path, bytes, off);
  ModelWeights w;
  try {
    SAE_RETURN_IF_ERROR(ReadLlama2cWeights(cur, c, version, shared, &w));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(path, ": ", e.what_without_backtrace()));
  }
  if (cur.offset() != bytes.size())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", bytes.size() - cur.offset(),
                                                   " bytes after the last tensor (header and size disagree)"));
  SAE_RETURN_IF_ERROR(ApplyDType(opts, &c, &w));
  return Transformer::Create(std::move(c), std::move(w));
}

absl::StatusOr<Transformer> LoadHfModel(const std::string& dir, const LoadOptions& opts) {
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  SAE_ASSIGN_OR_RETURN(std::string text, ReadFileBytes(cfg_path));
  json cfg = json::parse(text, nullptr, false);
  if (cfg.is_discarded() || !cfg.is_object())
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": not a JSON object"));
  SAE_ASSIGN_OR_RETURN(const json* mt, Field(cfg, "model_type", cfg_path));
  const std::string type = mt->is_string() ? mt->get<std::string>() : "";
  try {
    if (type == "llama" || type == "mistral" || type == "qwen2" || type == "phi3" || type == "gemma2")
      return LoadHfDecoder(dir, cfg, cfg_path, type, opts);
    if (type == "gpt2") return LoadHfGpt2(dir, cfg, cfg_path, opts);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(dir, ": ", e.what_without_backtrace()));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": ", e.what()));
  }
  return absl::UnimplementedError(absl::StrCat(cfg_path, ": model_type \"", type,
                                               "\" is not supported (llama, mistral, qwen2, phi3, gemma2, gpt2)"));
}

absl::StatusOr<std::string> ResolveModelPath(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
  if (!fs::is_directory(path, ec)) return path;
  if (fs::exists(fs::path(path) / "config.json", ec)) return path;
  std::vector<std::string> bins;
  for (const auto& e : fs::directory_iterator(path, ec)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".bin" && name.rfind("tok", 0) != 0) bins.push_back(e.path().string());
  }
  if (bins.size() == 1) return bins[0];
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": expected config.json or one llama2.c .bin checkpoint, found ", bins.size(), " .bin files"));
}

absl::StatusOr<Transformer> LoadModel(const std::string& path, const LoadOptions& opts) {
  SAE_ASSIGN_OR_RETURN(std::string p, ResolveModelPath(path));
  if (fs::is_directory(p)) return LoadHfModel(p, opts);
  return LoadLlama2c(p, opts);
}

absl::Status SaveLlama2c(const Transformer& m, const std::string& path, int version) {
  const ModelConfig& c = m.config();
  const ModelWeights& w = m.weights();
  if (c.arch != Arch::kLlama || c.rope != RopeStyle::kInterleaved)
    return absl::InvalidArgumentError("SaveLlama2c: only llama2.c-style (interleaved RoPE) Llama models");
  const bool shared = w.lm_head.is_same(w.tok_emb);
  std::string out;
  const int32_t hdr[7] = {static_cast<int32_t>(c.dim),        static_cast<int32_t>(c.hidden_dim),
                          static_cast<int32_t>(c.n_layers),   static_cast<int32_t>(c.n_heads),
                          static_cast<int32_t>(c.n_kv_heads), static_cast<int32_t>(c.vocab_size),
                          static_cast<int32_t>(c.max_seq_len)};
  if (version == 0) {
    for (int i = 0; i < 7; ++i) AppendI32(&out, i == 5 && !shared ? -hdr[i] : hdr[i]);
  } else if (version == 1) {
    AppendI32(&out, static_cast<int32_t>(kLlama2cMagic));
    AppendI32(&out, 1);
    for (int i = 0; i < 7; ++i) AppendI32(&out, hdr[i]);
    out.push_back(shared ? 1 : 0);
    out.resize(256, '\0');
  } else {
    return absl::InvalidArgumentError(absl::StrCat("SaveLlama2c: version ", version, " (0 or 1)"));
  }
  for (const Llama2cTensor& t : Llama2cLayout(c, version)) {
    if (t.layer != nullptr) {
      for (const BlockWeights& b : w.blocks) AppendFloats(&out, b.*t.layer);
    } else if (t.model != nullptr) {
      AppendFloats(&out, w.*t.model);
    } else {
      AppendFloats(&out, at::zeros(t.shape));  // the rotary tables: not read back
    }
  }
  if (!shared) AppendFloats(&out, w.lm_head);
  return AtomicWriteFile(path, out);
}

absl::Status SaveHfLlama(const Transformer& m, const std::string& dir, int shards) {
  const ModelConfig& c = m.config();
  const ModelWeights& w = m.weights();
  if (c.arch != Arch::kLlama) return absl::InvalidArgumentError("SaveHfLlama: Llama-family models only");
  if (!c.sliding_window.empty())
    return absl::UnimplementedError("SaveHfLlama: sliding-window models are not written (Llama layout has no window)");
  std::error_code ec;
  fs::create_directories(dir, ec);
  const bool to_halves = c.rope == RopeStyle::kInterleaved;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  tensors.emplace_back("model.embed_tokens.weight", w.tok_emb);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const BlockWeights& b = w.blocks[l];
    const std::string p = absl::StrCat("model.layers.", l, ".");
    tensors.emplace_back(p + "input_layernorm.weight", b.attn_norm);
    tensors.emplace_back(p + "post_attention_layernorm.weight", b.ffn_norm);
    tensors.emplace_back(p + "self_attn.q_proj.weight", to_halves ? InterleavedToHalves(b.wq, c.n_heads) : b.wq);
    tensors.emplace_back(p + "self_attn.k_proj.weight", to_halves ? InterleavedToHalves(b.wk, c.n_kv_heads) : b.wk);
    tensors.emplace_back(p + "self_attn.v_proj.weight", b.wv);
    tensors.emplace_back(p + "self_attn.o_proj.weight", b.wo);
    tensors.emplace_back(p + "mlp.gate_proj.weight", b.w1);
    tensors.emplace_back(p + "mlp.down_proj.weight", b.w2);
    tensors.emplace_back(p + "mlp.up_proj.weight", b.w3);
    if (b.bq.defined()) tensors.emplace_back(p + "self_attn.q_proj.bias", b.bq);
    if (b.bk.defined()) tensors.emplace_back(p + "self_attn.k_proj.bias", b.bk);
    if (b.bv.defined()) tensors.emplace_back(p + "self_attn.v_proj.bias", b.bv);
    if (b.bo.defined()) tensors.emplace_back(p + "self_attn.o_proj.bias", b.bo);
  }
  tensors.emplace_back("model.norm.weight", w.final_norm);
  const bool tied = w.lm_head.is_same(w.tok_emb);
  if (!tied) tensors.emplace_back("lm_head.weight", w.lm_head);
  shards = std::max(1, shards);
  std::vector<SafetensorsWriter> writers(shards);
  json weight_map = json::object();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int s = static_cast<int>(i * shards / tensors.size());
    at::Tensor t = tensors[i].second.to(at::kCPU, at::kFloat).contiguous();
    SAE_RETURN_IF_ERROR(writers[s].AddFloat(tensors[i].first, DType::kF32, t.sizes().vec(), t.data_ptr<float>()));
    weight_map[tensors[i].first] = shards == 1 ? std::string("model.safetensors")
                                               : absl::StrCat("model-0000", s + 1, "-of-0000", shards, ".safetensors");
  }
  for (int s = 0; s < shards; ++s) {
    writers[s].SetMetadata("format", "pt");
    const std::string name = shards == 1 ? std::string("model.safetensors")
                                         : absl::StrCat("model-0000", s + 1, "-of-0000", shards, ".safetensors");
    SAE_RETURN_IF_ERROR(writers[s].Write((fs::path(dir) / name).string()));
  }
  if (shards > 1) {
    json idx = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
    SAE_RETURN_IF_ERROR(AtomicWriteFile((fs::path(dir) / "model.safetensors.index.json").string(), idx.dump(2)));
  }
  json cfg = {{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", c.dim},
              {"intermediate_size", c.hidden_dim},
              {"num_hidden_layers", c.n_layers},
              {"num_attention_heads", c.n_heads},
              {"num_key_value_heads", c.n_kv_heads},
              {"vocab_size", c.vocab_size},
              {"max_position_embeddings", c.max_seq_len},
              {"rms_norm_eps", c.norm_eps},
              {"rope_theta", c.rope_theta},
              {"tie_word_embeddings", tied},
              {"bos_token_id", c.bos_id},
              {"eos_token_id", c.eos_id},
              {"hidden_act", "silu"}};
  if (c.explicit_head_dim > 0) cfg["head_dim"] = c.explicit_head_dim;
  const ModelConfig::RopeScaling& r = c.rope_scaling;
  if (r.type != "default") {
    json rs = {{"rope_type", r.type}};
    if (r.type == "linear" || r.type == "dynamic" || r.type == "llama3") rs["factor"] = r.factor;
    if (r.type == "llama3") {
      rs["low_freq_factor"] = r.low_freq_factor;
      rs["high_freq_factor"] = r.high_freq_factor;
    }
    if (r.type == "longrope") {
      rs["short_factor"] = r.short_factor;
      rs["long_factor"] = r.long_factor;
      rs["factor"] = r.factor;
      rs["attention_factor"] = r.attention_factor;
    }
    if (r.original_max_position > 0) rs["original_max_position_embeddings"] = r.original_max_position;
    cfg["rope_scaling"] = rs;
  }
  // Biases (Qwen2-style) are written too.
  return AtomicWriteFile((fs::path(dir) / "config.json").string(), cfg.dump(2));
}

}  // namespace sae
