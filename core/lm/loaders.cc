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
      return absl::InvalidArgumentError(absl::StrCat(path_, ": truncated: tensor ", name, " needs bytes [", off_,
                                                     ", ", off_ + need, ") but the file has ", bytes_.size()));
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
absl::StatusOr<int64_t> OptIntField(const json& j, const std::string& name, int64_t fallback,
                                    const std::string& file) {
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
          return absl::InvalidArgumentError(absl::StrCat(index.string(), ": weight_map[\"", name, "\"] is not a file name"));
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
  // The tensor as float32 with the expected shape.
  absl::StatusOr<at::Tensor> Get(const std::string& name, std::vector<int64_t> shape) const {
    auto it = where_.find(name);
    if (it == where_.end())
      return absl::InvalidArgumentError(absl::StrCat(files_.empty() ? "" : files_[0].path(), ": missing tensor ", name));
    const SafetensorsFile& f = files_[it->second];
    SAE_ASSIGN_OR_RETURN(TensorInfo info, f.Info(name));
    if (info.shape != shape) {
      auto str = [](const std::vector<int64_t>& s) {
        std::string r = "[";
        for (size_t i = 0; i < s.size(); ++i) absl::StrAppend(&r, i ? "x" : "", s[i]);
        return r + "]";
      };
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tensor ", name, " has shape ", str(info.shape),
                                                     ", expected ", str(shape)));
    }
    SAE_ASSIGN_OR_RETURN(std::vector<float> v, f.ReadFloat(name));
    at::Tensor t = at::empty(shape, at::kFloat);
    if (!v.empty()) std::memcpy(t.data_ptr<float>(), v.data(), v.size() * sizeof(float));
    return t;
  }

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;
};

// Rows of each head from interleaved pairs (2i, 2i+1) to halves (i, i+hd/2), and back.
at::Tensor InterleavedToHalves(const at::Tensor& w, int64_t heads) {
  const int64_t out = w.size(0), in = w.size(1), hd = out / heads;
  return w.reshape({heads, hd / 2, 2, in}).transpose(1, 2).reshape({out, in}).contiguous();
}

absl::StatusOr<Transformer> LoadHfLlama(const std::string& dir, const json& cfg, const std::string& cfg_path) {
  ModelConfig c;
  c.arch = Arch::kLlama;
  c.rope = RopeStyle::kRotateHalf;
  c.source = dir;
  c.format = "hf-llama";
  SAE_ASSIGN_OR_RETURN(c.dim, IntField(cfg, "hidden_size", cfg_path));
  SAE_ASSIGN_OR_RETURN(c.hidden_dim, IntField(cfg, "intermediate_size", cfg_path));
  SAE_ASSIGN_OR_RETURN(c.n_layers, IntField(cfg, "num_hidden_layers", cfg_path));
  SAE_ASSIGN_OR_RETURN(c.n_heads, IntField(cfg, "num_attention_heads", cfg_path));
  SAE_ASSIGN_OR_RETURN(c.vocab_size, IntField(cfg, "vocab_size", cfg_path));
  SAE_ASSIGN_OR_RETURN(c.max_seq_len, IntField(cfg, "max_position_embeddings", cfg_path));
  SAE_ASSIGN_OR_RETURN(c.n_kv_heads, OptIntField(cfg, "num_key_value_heads", c.n_heads, cfg_path));
  if (c.n_kv_heads <= 0)
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": num_key_value_heads ", c.n_kv_heads, " is not positive"));
  SAE_RETURN_IF_ERROR(CheckConfigDims(c, cfg_path));
  if (cfg.contains("head_dim") && cfg["head_dim"].is_number_integer() &&
      cfg["head_dim"].get<int64_t>() != c.dim / c.n_heads)
    return absl::UnimplementedError(absl::StrCat(cfg_path, ": head_dim * num_attention_heads != hidden_size is not supported"));
  if (cfg.contains("rms_norm_eps") && cfg["rms_norm_eps"].is_number()) c.norm_eps = cfg["rms_norm_eps"].get<float>();
  if (cfg.contains("rope_theta") && cfg["rope_theta"].is_number()) c.rope_theta = cfg["rope_theta"].get<float>();
  if (cfg.contains("rope_parameters") && cfg["rope_parameters"].is_object()) {
    const json& rp = cfg["rope_parameters"];
    if (rp.contains("rope_theta") && rp["rope_theta"].is_number()) c.rope_theta = rp["rope_theta"].get<float>();
    if (rp.contains("rope_type") && rp["rope_type"] != "default")
      return absl::UnimplementedError(absl::StrCat(cfg_path, ": rope_type ", rp["rope_type"].dump(), " is not supported"));
  }
  if (cfg.contains("rope_scaling") && !cfg["rope_scaling"].is_null())
    return absl::UnimplementedError(absl::StrCat(cfg_path, ": rope_scaling is not supported"));
  if (cfg.contains("bos_token_id") && cfg["bos_token_id"].is_number_integer()) c.bos_id = cfg["bos_token_id"].get<int64_t>();
  if (cfg.contains("eos_token_id") && cfg["eos_token_id"].is_number_integer()) c.eos_id = cfg["eos_token_id"].get<int64_t>();
  const bool tied = cfg.value("tie_word_embeddings", false);
  if (c.dim % c.n_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": hidden_size ", c.dim, " not divisible by num_attention_heads ", c.n_heads));
  SAE_ASSIGN_OR_RETURN(HfTensors t, HfTensors::Open(dir));
  const int64_t d = c.dim, kv = c.n_kv_heads * (d / c.n_heads), h = c.hidden_dim, V = c.vocab_size;
  ModelWeights w;
  SAE_ASSIGN_OR_RETURN(w.tok_emb, t.Get("model.embed_tokens.weight", {V, d}));
  SAE_ASSIGN_OR_RETURN(w.final_norm, t.Get("model.norm.weight", {d}));
  if (tied || !t.Has("lm_head.weight")) {
    w.lm_head = w.tok_emb;
  } else {
    SAE_ASSIGN_OR_RETURN(w.lm_head, t.Get("lm_head.weight", {V, d}));
  }
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    BlockWeights b;
    SAE_ASSIGN_OR_RETURN(b.attn_norm, t.Get(p + "input_layernorm.weight", {d}));
    SAE_ASSIGN_OR_RETURN(b.ffn_norm, t.Get(p + "post_attention_layernorm.weight", {d}));
    SAE_ASSIGN_OR_RETURN(b.wq, t.Get(p + "self_attn.q_proj.weight", {d, d}));
    SAE_ASSIGN_OR_RETURN(b.wk, t.Get(p + "self_attn.k_proj.weight", {kv, d}));
    SAE_ASSIGN_OR_RETURN(b.wv, t.Get(p + "self_attn.v_proj.weight", {kv, d}));
    SAE_ASSIGN_OR_RETURN(b.wo, t.Get(p + "self_attn.o_proj.weight", {d, d}));
    SAE_ASSIGN_OR_RETURN(b.w1, t.Get(p + "mlp.gate_proj.weight", {h, d}));
    SAE_ASSIGN_OR_RETURN(b.w2, t.Get(p + "mlp.down_proj.weight", {d, h}));
    SAE_ASSIGN_OR_RETURN(b.w3, t.Get(p + "mlp.up_proj.weight", {h, d}));
    if (t.Has(p + "self_attn.q_proj.bias")) {  // Qwen-style biases
      SAE_ASSIGN_OR_RETURN(b.bq, t.Get(p + "self_attn.q_proj.bias", {d}));
      SAE_ASSIGN_OR_RETURN(b.bk, t.Get(p + "self_attn.k_proj.bias", {kv}));
      SAE_ASSIGN_OR_RETURN(b.bv, t.Get(p + "self_attn.v_proj.bias", {kv}));
    }
    w.blocks.push_back(std::move(b));
  }
  return Transformer::Create(std::move(c), std::move(w));
}

absl::StatusOr<Transformer> LoadHfGpt2(const std::string& dir, const json& cfg, const std::string& cfg_path) {
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
  return Transformer::Create(std::move(c), std::move(w));
}

void AppendFloats(std::string* out, const at::Tensor& t) {
  at::Tensor c = t.to(at::kCPU, at::kFloat).contiguous();
  out->append(reinterpret_cast<const char*>(c.data_ptr<float>()), c.numel() * sizeof(float));
}

void AppendI32(std::string* out, int32_t v) { out->append(reinterpret_cast<const char*>(&v), 4); }

}  // namespace

absl::StatusOr<Transformer> LoadLlama2c(const std::string& path) {
  SAE_ASSIGN_OR_RETURN(std::string bytes, ReadFileBytes(path));
  auto i32 = [&](size_t off) {
    int32_t v;
    std::memcpy(&v, bytes.data() + off, 4);
    return v;
  };
  ModelConfig c;
  c.arch = Arch::kLlama;
  c.rope = RopeStyle::kInterleaved;
  c.source = path;
  size_t off = 0;
  bool shared = true;
  int version = 0;
  if (bytes.size() >= 8 && static_cast<uint32_t>(i32(0)) == kLlama2cMagic) {
    version = i32(4);
    if (version != 1)
      return absl::UnimplementedError(absl::StrCat(path, ": llama2.c format version ", version,
                                                   " is not supported (float32 legacy and version 1 are)"));
    if (bytes.size() < 256) return absl::InvalidArgumentError(absl::StrCat(path, ": truncated header (", bytes.size(), " bytes)"));
    off = 8;
    c.format = "llama2c-v1";
  } else {
    if (bytes.size() < 28) return absl::InvalidArgumentError(absl::StrCat(path, ": truncated header (", bytes.size(), " bytes)"));
    c.format = "llama2c-legacy";
  }
  c.dim = i32(off);
  c.hidden_dim = i32(off + 4);
  c.n_layers = i32(off + 8);
  c.n_heads = i32(off + 12);
  c.n_kv_heads = i32(off + 16);
  c.vocab_size = i32(off + 20);
  c.max_seq_len = i32(off + 24);
  if (version == 0) {
    shared = c.vocab_size > 0;
    c.vocab_size = std::abs(c.vocab_size);
    off = 28;
  } else {
    shared = bytes[off + 28] != 0;
    off = 256;
  }
  const int64_t d = c.dim, L = c.n_layers, h = c.hidden_dim, V = c.vocab_size;
  const int64_t limit = int64_t{1} << 20;
  if (d <= 0 || h <= 0 || L <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || V <= 0 || c.max_seq_len <= 0 ||
      d > limit || h > 4 * limit || L > 4096 || V > 16 * limit || c.max_seq_len > limit || d % c.n_heads != 0 ||
      c.n_heads % c.n_kv_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a llama2.c checkpoint (header dim ", d, ", hidden ", h,
                                                   ", layers ", L, ", heads ", c.n_heads, "/", c.n_kv_heads,
                                                   ", vocab ", V, ", seq_len ", c.max_seq_len, ")"));
  SAE_RETURN_IF_ERROR(CheckModelDims(c));  // also bounds the rotary tables seq_len x head_dim/2
  const int64_t hd = d / c.n_heads, kv = c.n_kv_heads * hd;
  BinCursor cur(path, bytes, off);
  ModelWeights w;
  w.blocks.resize(L);
  try {
    auto take_layers = [&](const std::string& name, std::vector<int64_t> shape,
                           at::Tensor BlockWeights::*field) -> absl::Status {
      shape.insert(shape.begin(), L);
      SAE_ASSIGN_OR_RETURN(at::Tensor all, cur.Take(name, shape));
      return Unbind(all, &w.blocks, field);
    };
    if (version == 0) {
      SAE_ASSIGN_OR_RETURN(w.tok_emb, cur.Take("token_embedding", {V, d}));
      SAE_RETURN_IF_ERROR(take_layers("rms_att", {d}, &BlockWeights::attn_norm));
      SAE_RETURN_IF_ERROR(take_layers("wq", {d, d}, &BlockWeights::wq));
      SAE_RETURN_IF_ERROR(take_layers("wk", {kv, d}, &BlockWeights::wk));
      SAE_RETURN_IF_ERROR(take_layers("wv", {kv, d}, &BlockWeights::wv));
      SAE_RETURN_IF_ERROR(take_layers("wo", {d, d}, &BlockWeights::wo));
      SAE_RETURN_IF_ERROR(take_layers("rms_ffn", {d}, &BlockWeights::ffn_norm));
      SAE_RETURN_IF_ERROR(take_layers("w1", {h, d}, &BlockWeights::w1));
      SAE_RETURN_IF_ERROR(take_layers("w2", {d, h}, &BlockWeights::w2));
      SAE_RETURN_IF_ERROR(take_layers("w3", {h, d}, &BlockWeights::w3));
      SAE_ASSIGN_OR_RETURN(w.final_norm, cur.Take("rms_final", {d}));
      SAE_RETURN_IF_ERROR(cur.Take("freq_cis_real", {c.max_seq_len, hd / 2}).status());
      SAE_RETURN_IF_ERROR(cur.Take("freq_cis_imag", {c.max_seq_len, hd / 2}).status());
    } else {
      SAE_RETURN_IF_ERROR(take_layers("attention_norm", {d}, &BlockWeights::attn_norm));
      SAE_RETURN_IF_ERROR(take_layers("ffn_norm", {d}, &BlockWeights::ffn_norm));
      SAE_ASSIGN_OR_RETURN(w.final_norm, cur.Take("norm", {d}));
      SAE_ASSIGN_OR_RETURN(w.tok_emb, cur.Take("tok_embeddings", {V, d}));
      SAE_RETURN_IF_ERROR(take_layers("wq", {d, d}, &BlockWeights::wq));
      SAE_RETURN_IF_ERROR(take_layers("wk", {kv, d}, &BlockWeights::wk));
      SAE_RETURN_IF_ERROR(take_layers("wv", {kv, d}, &BlockWeights::wv));
      SAE_RETURN_IF_ERROR(take_layers("wo", {d, d}, &BlockWeights::wo));
      SAE_RETURN_IF_ERROR(take_layers("w1", {h, d}, &BlockWeights::w1));
      SAE_RETURN_IF_ERROR(take_layers("w2", {d, h}, &BlockWeights::w2));
      SAE_RETURN_IF_ERROR(take_layers("w3", {h, d}, &BlockWeights::w3));
    }
    if (shared) {
      w.lm_head = w.tok_emb;
    } else {
      SAE_ASSIGN_OR_RETURN(w.lm_head, cur.Take("wcls", {V, d}));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(path, ": ", e.what_without_backtrace()));
  }
  if (cur.offset() != bytes.size())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", bytes.size() - cur.offset(),
                                                   " bytes after the last tensor (header and size disagree)"));
  return Transformer::Create(std::move(c), std::move(w));
}

absl::StatusOr<Transformer> LoadHfModel(const std::string& dir) {
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  SAE_ASSIGN_OR_RETURN(std::string text, ReadFileBytes(cfg_path));
  json cfg = json::parse(text, nullptr, false);
  if (cfg.is_discarded() || !cfg.is_object()) return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": not a JSON object"));
  SAE_ASSIGN_OR_RETURN(const json* mt, Field(cfg, "model_type", cfg_path));
  const std::string type = mt->is_string() ? mt->get<std::string>() : "";
  try {
    if (type == "llama" || type == "mistral") return LoadHfLlama(dir, cfg, cfg_path);
    if (type == "gpt2") return LoadHfGpt2(dir, cfg, cfg_path);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(dir, ": ", e.what_without_backtrace()));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": ", e.what()));
  }
  return absl::UnimplementedError(absl::StrCat(cfg_path, ": model_type \"", type,
                                               "\" is not supported (llama, mistral, gpt2)"));
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
  return absl::InvalidArgumentError(absl::StrCat(path, ": expected config.json or one llama2.c .bin checkpoint, found ",
                                                 bins.size(), " .bin files"));
}

absl::StatusOr<Transformer> LoadModel(const std::string& path) {
  SAE_ASSIGN_OR_RETURN(std::string p, ResolveModelPath(path));
  if (fs::is_directory(p)) return LoadHfModel(p);
  return LoadLlama2c(p);
}

absl::Status SaveLlama2c(const Transformer& m, const std::string& path, int version) {
  const ModelConfig& c = m.config();
  const ModelWeights& w = m.weights();
  if (c.arch != Arch::kLlama || c.rope != RopeStyle::kInterleaved)
    return absl::InvalidArgumentError("SaveLlama2c: only llama2.c-style (interleaved RoPE) Llama models");
  const bool shared = w.lm_head.is_same(w.tok_emb);
  std::string out;
  const int32_t hdr[7] = {static_cast<int32_t>(c.dim), static_cast<int32_t>(c.hidden_dim),
                          static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_heads),
                          static_cast<int32_t>(c.n_kv_heads), static_cast<int32_t>(c.vocab_size),
                          static_cast<int32_t>(c.max_seq_len)};
  auto layers = [&](at::Tensor BlockWeights::*f) {
    for (const BlockWeights& b : w.blocks) AppendFloats(&out, b.*f);
  };
  if (version == 0) {
    for (int i = 0; i < 7; ++i) AppendI32(&out, i == 5 && !shared ? -hdr[i] : hdr[i]);
    AppendFloats(&out, w.tok_emb);
    layers(&BlockWeights::attn_norm);
    layers(&BlockWeights::wq);
    layers(&BlockWeights::wk);
    layers(&BlockWeights::wv);
    layers(&BlockWeights::wo);
    layers(&BlockWeights::ffn_norm);
    layers(&BlockWeights::w1);
    layers(&BlockWeights::w2);
    layers(&BlockWeights::w3);
    AppendFloats(&out, w.final_norm);
    AppendFloats(&out, at::zeros({2 * c.max_seq_len * c.head_dim() / 2}));  // unused RoPE tables
  } else if (version == 1) {
    AppendI32(&out, static_cast<int32_t>(kLlama2cMagic));
    AppendI32(&out, 1);
    for (int i = 0; i < 7; ++i) AppendI32(&out, hdr[i]);
    out.push_back(shared ? 1 : 0);
    out.resize(256, '\0');
    layers(&BlockWeights::attn_norm);
    layers(&BlockWeights::ffn_norm);
    AppendFloats(&out, w.final_norm);
    AppendFloats(&out, w.tok_emb);
    layers(&BlockWeights::wq);
    layers(&BlockWeights::wk);
    layers(&BlockWeights::wv);
    layers(&BlockWeights::wo);
    layers(&BlockWeights::w1);
    layers(&BlockWeights::w2);
    layers(&BlockWeights::w3);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("SaveLlama2c: version ", version, " (0 or 1)"));
  }
  if (!shared) AppendFloats(&out, w.lm_head);
  return AtomicWriteFile(path, out);
}

absl::Status SaveHfLlama(const Transformer& m, const std::string& dir, int shards) {
  const ModelConfig& c = m.config();
  const ModelWeights& w = m.weights();
  if (c.arch != Arch::kLlama) return absl::InvalidArgumentError("SaveHfLlama: Llama-family models only");
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
  json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", c.dim},
              {"intermediate_size", c.hidden_dim}, {"num_hidden_layers", c.n_layers},
              {"num_attention_heads", c.n_heads}, {"num_key_value_heads", c.n_kv_heads},
              {"vocab_size", c.vocab_size}, {"max_position_embeddings", c.max_seq_len},
              {"rms_norm_eps", c.norm_eps}, {"rope_theta", c.rope_theta}, {"tie_word_embeddings", tied},
              {"bos_token_id", c.bos_id}, {"eos_token_id", c.eos_id}, {"hidden_act", "silu"}};
  return AtomicWriteFile((fs::path(dir) / "config.json").string(), cfg.dump(2));
}

}  // namespace sae
