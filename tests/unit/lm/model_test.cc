#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <tuple>

#include "core/data/safetensors.h"
#include "core/lm/loaders.h"
#include "core/lm/model.h"
#include "gtest/gtest.h"
#include "tests/unit/lm/lm_tensor_util.h"
#include "tests/unit/lm/lm_test_util.h"

namespace sae {
namespace {

using lm_test::DataDir;
using lm_test::MaxRelErr;
using lm_test::StoriesBin;
using lm_test::StoriesDir;
using lm_test::StoryTokens;
using lm_test::TempDir;

TEST(Llama2cLoader, ReadsStoriesHeader) {
  SAE_REQUIRE_FILE(StoriesBin());
  auto m = LoadLlama2c(StoriesBin());
  ASSERT_TRUE(m.ok()) << m.status();
  const ModelConfig& c = m->config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_EQ(c.format, "llama2c-legacy");
  EXPECT_TRUE(m->weights().lm_head.is_same(m->weights().tok_emb));
}

TEST(Llama2cLoader, LegacyAndVersion1GiveIdenticalLogits) {
  SAE_REQUIRE_FILE(StoriesBin());
  TempDir tmp;
  auto legacy = LoadLlama2c(StoriesBin());
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  ASSERT_TRUE(SaveLlama2c(*legacy, tmp.Sub("v1.bin"), 1).ok());
  auto v1 = LoadLlama2c(tmp.Sub("v1.bin"));
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(v1->config().format, "llama2c-v1");
  // The legacy writer reproduces the original file's weights byte for byte.
  ASSERT_TRUE(SaveLlama2c(*v1, tmp.Sub("v0.bin"), 0).ok());
  const std::string orig = lm_test::ReadFile(StoriesBin()), again = lm_test::ReadFile(tmp.Sub("v0.bin"));
  ASSERT_EQ(orig.size(), again.size());
  const size_t rope_bytes = 2 * 512 * 4 * 4;
  EXPECT_EQ(orig.substr(0, orig.size() - rope_bytes), again.substr(0, again.size() - rope_bytes));
  at::Tensor toks = StoryTokens(2, 16, 512, 7);
  auto a = legacy->Forward(toks), b = v1->Forward(toks);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::equal(*a, *b));
}

TEST(Transformer, KvCacheStepsMatchFullSequence) {
  SAE_REQUIRE_FILE(StoriesBin());
  auto m = LoadLlama2c(StoriesBin());
  ASSERT_TRUE(m.ok());
  at::Tensor toks = StoryTokens(3, 12, 512, 3);
  auto full = m->Forward(toks);
  ASSERT_TRUE(full.ok()) << full.status();
  KvCache cache = m->NewCache(3, 12);
  auto first = m->Forward(toks.narrow(1, 0, 5), &cache);  // a prefix, then one token at a time
  ASSERT_TRUE(first.ok()) << first.status();
  std::vector<at::Tensor> parts = {*first};
  for (int64_t t = 5; t < 12; ++t) {
    auto step = m->Forward(toks.narrow(1, t, 1), &cache);
    ASSERT_TRUE(step.ok()) << step.status();
    parts.push_back(*step);
  }
  EXPECT_EQ(cache.len, 12);
  EXPECT_LT(MaxRelErr(at::cat(parts, 1), *full), 1e-5);
  // Past the cache's capacity is an error, not a crash.
  EXPECT_FALSE(m->Forward(toks.narrow(1, 0, 1), &cache).ok());
}

TEST(Transformer, HooksReadAndModifyTheResidualStream) {
  SAE_REQUIRE_FILE(StoriesBin());
  auto m = LoadLlama2c(StoriesBin());
  ASSERT_TRUE(m.ok());
  at::Tensor toks = StoryTokens(2, 10, 512, 5);
  auto clean = m->Forward(toks);
  ASSERT_TRUE(clean.ok());
  at::Tensor seen, mlp;
  ForwardOptions read;
  read.hooks.push_back({2, HookPoint::kResidPost, [&](at::Tensor& x) { seen = x.clone(); }});
  read.hooks.push_back({2, HookPoint::kMlpOut, [&](at::Tensor& x) { mlp = x.clone(); }});
  auto r = m->Forward(toks, nullptr, read);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(at::equal(*r, *clean));
  ASSERT_TRUE(seen.defined() && mlp.defined());
  EXPECT_EQ(seen.sizes(), (std::vector<int64_t>{2, 10, 64}));
  // Running only up to layer 2 gives the same activation.
  at::Tensor seen2;
  ForwardOptions stop;
  stop.stop_after_layer = 2;
  stop.hooks.push_back({2, HookPoint::kResidPost, [&](at::Tensor& x) { seen2 = x.clone(); }});
  ASSERT_TRUE(m->Forward(toks, nullptr, stop).ok());
  EXPECT_TRUE(at::equal(seen, seen2));
  // Splicing the activation back in unchanged leaves the logits exactly.
  ForwardOptions splice;
  splice.hooks.push_back({2, HookPoint::kResidPost, [&](at::Tensor& x) { x = seen.clone(); }});
  auto s = m->Forward(toks, nullptr, splice);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(at::equal(*s, *clean));
  // Steering changes them.
  ForwardOptions steer;
  steer.hooks.push_back({2, HookPoint::kResidPost, [&](at::Tensor& x) { x = x + 3.0 * m->weights().tok_emb[42]; }});
  auto st = m->Forward(toks, nullptr, steer);
  ASSERT_TRUE(st.ok());
  EXPECT_GT((*st - *clean).abs().max().item<float>(), 0.1f);
}

TEST(HfLoader, StoriesResavedInHfLayoutGivesSameLogits) {
  SAE_REQUIRE_FILE(StoriesBin());
  TempDir tmp;
  auto m = LoadLlama2c(StoriesBin());
  ASSERT_TRUE(m.ok());
  for (int shards : {1, 3}) {
    const std::string dir = tmp.Sub("hf" + std::to_string(shards));
    ASSERT_TRUE(SaveHfLlama(*m, dir, shards).ok());
    EXPECT_EQ(std::filesystem::exists(dir + "/model.safetensors.index.json"), shards > 1);
    auto hf = LoadModel(dir);
    ASSERT_TRUE(hf.ok()) << hf.status();
    EXPECT_EQ(hf->config().rope, RopeStyle::kRotateHalf);
    EXPECT_FALSE(at::equal(hf->weights().blocks[0].wq, m->weights().blocks[0].wq));  // rows permuted
    at::Tensor toks = StoryTokens(2, 20, 512, 11);
    auto a = m->Forward(toks), b = hf->Forward(toks);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_LT(MaxRelErr(*b, *a), 1e-5) << shards << " shards";
  }
}

struct Reference {
  at::Tensor ids, logits;
  std::vector<at::Tensor> hidden;
};

Reference ReadReference(const std::string& path, int n_hidden) {
  Reference r;
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  if (!f.ok()) return r;
  auto get = [&](const std::string& name) {
    auto info = f->Info(name);
    EXPECT_TRUE(info.ok()) << name;
    if (!info.ok()) return at::Tensor();
    if (info->dtype == DType::kI64) {
      at::Tensor t = at::empty(info->shape, at::kLong);
      EXPECT_TRUE(f->ReadRaw(name, t.data_ptr(), t.numel() * 8).ok());
      return t;
    }
    auto v = f->ReadFloat(name);
    EXPECT_TRUE(v.ok());
    return at::from_blob(v->data(), info->shape, at::kFloat).clone();
  };
  r.ids = get("input_ids");
  r.logits = get("logits");
  for (int i = 0; i < n_hidden; ++i) r.hidden.push_back(get("hidden_states." + std::to_string(i)));
  return r;
}

void CheckAgainstTransformers(const std::string& dir) {
  SAE_REQUIRE_FILE(dir + "/reference.safetensors");
  auto m = LoadModel(dir);
  ASSERT_TRUE(m.ok()) << m.status();
  const int64_t L = m->config().n_layers;
  Reference ref = ReadReference(dir + "/reference.safetensors", static_cast<int>(L) + 1);
  ASSERT_TRUE(ref.ids.defined() && ref.logits.defined());
  std::vector<at::Tensor> hidden(L + 1);
  ForwardOptions o;
  for (int64_t l = -1; l < L - 1; ++l)
    o.hooks.push_back({l, HookPoint::kResidPost, [&hidden, l](at::Tensor& x) { hidden[l + 1] = x.clone(); }});
  o.hooks.push_back({0, HookPoint::kFinalNorm, [&hidden, L](at::Tensor& x) { hidden[L] = x.clone(); }});
  auto logits = m->Forward(ref.ids, nullptr, o);
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_LE(MaxRelErr(*logits, ref.logits), 1e-4);
  for (int64_t i = 0; i <= L; ++i) EXPECT_LE(MaxRelErr(hidden[i], ref.hidden[i]), 1e-4) << "hidden_states." << i;
  // A cached, token-by-token run agrees too.
  KvCache cache = m->NewCache(ref.ids.size(0), ref.ids.size(1));
  std::vector<at::Tensor> steps;
  for (int64_t t = 0; t < ref.ids.size(1); ++t) {
    auto s = m->Forward(ref.ids.narrow(1, t, 1), &cache);
    ASSERT_TRUE(s.ok()) << s.status();
    steps.push_back(*s);
  }
  EXPECT_LE(MaxRelErr(at::cat(steps, 1), ref.logits), 1e-4);
}

TEST(HfLoader, Gpt2TinyMatchesTransformers) { CheckAgainstTransformers(DataDir() + "/hf-tiny/gpt2-tiny"); }
TEST(HfLoader, LlamaTinyMatchesTransformers) { CheckAgainstTransformers(DataDir() + "/hf-tiny/llama-tiny"); }

// --- bad files: clear errors naming the file and the tensor or field ---

TEST(BadModelFiles, TruncatedCheckpointNamesFileAndTensor) {
  SAE_REQUIRE_FILE(StoriesBin());
  TempDir tmp;
  const std::string orig = lm_test::ReadFile(StoriesBin());
  const std::string path = tmp.Sub("cut.bin");
  lm_test::WriteFile(path, orig.substr(0, 28 + 4 * (512 * 64 + 5 * 64 + 100)));  // inside wq
  auto m = LoadLlama2c(path);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find(path), std::string::npos) << m.status();
  EXPECT_NE(m.status().message().find("truncated"), std::string::npos) << m.status();
  EXPECT_NE(m.status().message().find("wq"), std::string::npos) << m.status();
  lm_test::WriteFile(path, orig.substr(0, 10));
  EXPECT_FALSE(LoadLlama2c(path).ok());
  lm_test::WriteFile(path, orig + "xxxx");
  auto extra = LoadLlama2c(path);
  ASSERT_FALSE(extra.ok());
  EXPECT_NE(extra.status().message().find("after the last tensor"), std::string::npos) << extra.status();
  lm_test::WriteFile(path, std::string(4096, '\xff'));
  EXPECT_FALSE(LoadLlama2c(path).ok());
}

std::string CopyHfDir(const std::string& from, const std::string& to) {
  std::filesystem::create_directories(to);
  for (const auto& e : std::filesystem::directory_iterator(from))
    std::filesystem::copy_file(e.path(), to + "/" + e.path().filename().string(),
                               std::filesystem::copy_options::overwrite_existing);
  return to;
}

TEST(BadModelFiles, ConfigMissingFieldNamesConfigAndField) {
  const std::string src = DataDir() + "/hf-tiny/llama-tiny";
  SAE_REQUIRE_FILE(src + "/config.json");
  TempDir tmp;
  const std::string dir = CopyHfDir(src, tmp.Sub("m"));
  std::string cfg = lm_test::ReadFile(dir + "/config.json");
  const size_t at = cfg.find("\"num_hidden_layers\"");
  ASSERT_NE(at, std::string::npos);
  cfg.replace(at, std::string("\"num_hidden_layers\"").size(), "\"num_hidden_layerz\"");
  std::filesystem::permissions(dir + "/config.json", std::filesystem::perms::owner_write,
                               std::filesystem::perm_options::add);
  lm_test::WriteFile(dir + "/config.json", cfg);
  auto m = LoadModel(dir);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find(dir + "/config.json"), std::string::npos) << m.status();
  EXPECT_NE(m.status().message().find("num_hidden_layers"), std::string::npos) << m.status();
}

TEST(BadModelFiles, WrongShapeTensorNamesFileAndTensor) {
  const std::string src = DataDir() + "/hf-tiny/llama-tiny";
  SAE_REQUIRE_FILE(src + "/model.safetensors");
  TempDir tmp;
  const std::string dir = CopyHfDir(src, tmp.Sub("m"));
  auto f = SafetensorsFile::Open(src + "/model.safetensors");
  ASSERT_TRUE(f.ok());
  SafetensorsWriter w;
  const std::string bad = "model.layers.1.self_attn.k_proj.weight";
  for (const auto& [name, info] : f->tensors()) {
    auto v = f->ReadFloat(name);
    ASSERT_TRUE(v.ok());
    std::vector<int64_t> shape = info.shape;
    if (name == bad) shape = {16, 64};  // half the rows
    ASSERT_TRUE(w.AddFloat(name, DType::kF32, shape, v->data()).ok());
  }
  std::filesystem::remove(dir + "/model.safetensors");
  ASSERT_TRUE(w.Write(dir + "/model.safetensors").ok());
  auto m = LoadModel(dir);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find(dir + "/model.safetensors"), std::string::npos) << m.status();
  EXPECT_NE(m.status().message().find(bad), std::string::npos) << m.status();
  EXPECT_NE(m.status().message().find("[16x64]"), std::string::npos) << m.status();
}

// Found by fuzzing (tests/fuzz/corpus/hf_model/regress-*, llama2c/regress-*):
// sizes from a header or config.json were used before any bound: a huge
// max_position_embeddings allocated rotary tables of gigabytes, a huge
// num_key_value_heads overflowed kv * head_dim (undefined behaviour).
TEST(BadModelFiles, HugeDimensionsAreErrorsNamingTheField) {
  const std::string src = DataDir() + "/hf-tiny/llama-tiny";
  SAE_REQUIRE_FILE(src + "/config.json");
  TempDir tmp;
  const std::string dir = CopyHfDir(src, tmp.Sub("m"));
  std::filesystem::permissions(dir + "/config.json", std::filesystem::perms::owner_write,
                               std::filesystem::perm_options::add);
  const nlohmann::json orig = nlohmann::json::parse(lm_test::ReadFile(src + "/config.json"));
  for (const auto& [field, value, says] : std::vector<std::tuple<std::string, int64_t, std::string>>{
           {"max_position_embeddings", 1000000000, "max_seq_len"},
           {"num_key_value_heads", int64_t{1} << 62, "n_kv_heads"},
           {"hidden_size", int64_t{1} << 40, "dim"},
           {"vocab_size", -5, "vocab_size"}}) {
    nlohmann::json cfg = orig;
    cfg[field] = value;
    lm_test::WriteFile(dir + "/config.json", cfg.dump());
    auto m = LoadModel(dir);
    ASSERT_FALSE(m.ok()) << field;
    EXPECT_NE(m.status().message().find(dir + "/config.json"), std::string::npos) << m.status();
    EXPECT_NE(m.status().message().find(says), std::string::npos) << m.status();
  }
  // llama2.c v1 (no rotary tables in the file): 136-wide single-head model
  // with seq_len 2^20 would need 2^20 x 68 table entries; refused by name.
  std::string bin;
  auto i32 = [&](int32_t v) { bin.append(reinterpret_cast<const char*>(&v), 4); };
  i32(0x616b3432);
  i32(1);
  for (int32_t v : {136, 1, 1, 1, 1, 1, 1 << 20}) i32(v);
  bin.push_back(1);
  bin.resize(256, '\0');
  bin.resize(256 + 4 * (2 * 136 + 136 + 136 + 4 * 136 * 136 + 3 * 136), '\0');
  lm_test::WriteFile(tmp.Sub("rope.bin"), bin);
  auto m = LoadLlama2c(tmp.Sub("rope.bin"));
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("rotary"), std::string::npos) << m.status();
  EXPECT_NE(m.status().message().find(tmp.Sub("rope.bin")), std::string::npos) << m.status();
}

// Found by fuzzing (tests/fuzz/corpus/llama2c/regress-empty-tensor-memcpy-null):
// a head size of 1 makes the RoPE tables [seq_len, 0]; copying into an
// empty tensor passed memcpy a null pointer (undefined behaviour; caught by
// the UBSan build). The file is refused: head_dim must be even.
TEST(BadModelFiles, OddHeadSizeWithEmptyTablesIsAnError) {
  TempDir tmp;
  const int32_t dim = 8, hidden = 1, layers = 1, heads = 8, kv = 1, vocab = 1, seq = 1;
  std::string bin;
  for (int32_t v : {dim, hidden, layers, heads, kv, vocab, seq}) bin.append(reinterpret_cast<const char*>(&v), 4);
  const int64_t floats = vocab * dim + layers * (dim + 2 * dim * dim + 2 * kv * dim + dim + 3 * hidden * dim) + dim;
  bin.resize(bin.size() + 4 * floats, '\0');  // then two [seq, 0] tables: no bytes
  lm_test::WriteFile(tmp.Sub("odd.bin"), bin);
  auto m = LoadLlama2c(tmp.Sub("odd.bin"));
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find(tmp.Sub("odd.bin")), std::string::npos) << m.status();
}

TEST(BadModelFiles, MissingPathAndUnknownTypeAreErrors) {
  EXPECT_EQ(LoadModel("/nonexistent/model.bin").status().code(), absl::StatusCode::kNotFound);
  TempDir tmp;
  lm_test::WriteFile(tmp.Sub("config.json"), "{\"model_type\": \"bert\"}");
  auto m = LoadModel(tmp.path());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("bert"), std::string::npos);
}

}  // namespace
}  // namespace sae
