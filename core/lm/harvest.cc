#include "core/lm/harvest.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/base/file_util.h"
#include "core/base/parse.h"

#include "core/data/safetensors.h"
#include "core/data/shard_writer.h"
#include "core/lm/generate.h"

namespace sae {
namespace {

std::vector<std::string> SplitDocuments(const std::string& text) {
  std::vector<std::string> docs;
  const std::string eot = "<|endoftext|>";
  const bool has_eot = text.find(eot) != std::string::npos;
  const std::string sep = has_eot ? eot : "\n\n";
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t e = text.find(sep, pos);
    if (e == std::string::npos) e = text.size();
    std::string d = text.substr(pos, e - pos);
    const size_t a = d.find_first_not_of(" \t\r\n"), b = d.find_last_not_of(" \t\r\n");
    if (a != std::string::npos) docs.push_back(d.substr(a, b - a + 1));
    pos = e + sep.size();
  }
  return docs;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WindowSource>> WindowSource::Create(const Transformer& model, const Tokenizer* tok,
                                                                   const HarvestOptions& o) {
  const ModelConfig& c = model.config();
  if (o.context < 2 || o.context > c.max_seq_len)
    return absl::InvalidArgumentError(
        absl::StrCat("context ", o.context, " outside [2, ", c.max_seq_len, "] for ", c.source));
  if (o.batch < 1) return absl::InvalidArgumentError("batch must be >= 1");
  std::unique_ptr<WindowSource> w(new WindowSource());
  w->model_ = &model;
  w->opts_ = o;
  if (o.corpus != "generate") {
    if (tok == nullptr) return absl::InvalidArgumentError("a text corpus needs the model's tokenizer");
    auto read = ReadFileToString(o.corpus);
    if (!read.ok()) return Annotate(read.status(), "corpus");
    const std::string text = std::move(*read);
    for (const std::string& d : SplitDocuments(text)) {
      std::vector<int32_t> ids = tok->Encode(d, /*bos=*/true, /*eos=*/false);
      w->stream_.insert(w->stream_.end(), ids.begin(), ids.end());
    }
    if (!w->stream_.empty()) w->stream_.erase(w->stream_.begin());  // window 0 brings its own BOS
    if (static_cast<int64_t>(w->stream_.size()) < o.context - 1)
      return absl::InvalidArgumentError(absl::StrCat(o.corpus, ": corpus has ", w->stream_.size(),
                                                     " tokens, fewer than one window (context ", o.context, ")"));
    for (int32_t id : w->stream_)
      if (id < 0 || id >= c.vocab_size)
        return absl::InvalidArgumentError(absl::StrCat(o.corpus, ": token id ", id, " outside the model's vocabulary"));
  }
  return w;
}

int64_t WindowSource::distinct_windows() const {
  return stream_.empty() ? 0 : static_cast<int64_t>(stream_.size()) / (opts_.context - 1);
}

absl::StatusOr<at::Tensor> WindowSource::Windows(int64_t first, int64_t count) {
  const int64_t ctx = opts_.context;
  at::Tensor out = at::empty({count, ctx}, at::kLong);
  int64_t* p = out.data_ptr<int64_t>();
  if (opts_.corpus == "generate") {
    SAE_ASSIGN_OR_RETURN(std::vector<int32_t> toks, SampleBatch(*model_, count, ctx, opts_.temperature, opts_.top_p,
                                                                opts_.seed + static_cast<uint64_t>(first) + 1));
    for (int64_t i = 0; i < count * ctx; ++i) p[i] = toks[i];
    return out;
  }
  const int64_t n = static_cast<int64_t>(stream_.size()), per = ctx - 1;
  for (int64_t w = 0; w < count; ++w) {
    p[w * ctx] = model_->config().bos_id;
    const int64_t start = ((first + w) * per) % n;
    for (int64_t j = 0; j < per; ++j) p[w * ctx + 1 + j] = stream_[(start + j) % n];
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Harvester>> Harvester::Create(const Transformer& model, const Tokenizer* tok,
                                                             const HarvestOptions& o) {
  if (o.layer < 0 || o.layer >= model.config().n_layers)
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", o.layer, " outside [0, ", model.config().n_layers, ") for ", model.config().source));
  if (o.streams < 0) return absl::InvalidArgumentError(absl::StrCat("streams ", o.streams, " must be >= 0"));
  std::unique_ptr<Harvester> h(new Harvester());
  h->model_ = &model;
  h->opts_ = o;
  SAE_ASSIGN_OR_RETURN(h->windows_, WindowSource::Create(model, tok, o));
  return h;
}

absl::Status Harvester::ComputeWindows(int64_t first, int64_t count, int64_t row) {
  const int64_t per = rows_per_window(), d = d_in();
  SAE_ASSIGN_OR_RETURN(at::Tensor toks, windows_->Windows(first, count));
  at::Tensor acts;
  ForwardOptions fo;
  fo.stop_after_layer = opts_.layer;
  fo.hooks.push_back({opts_.layer, opts_.hook, [&acts](at::Tensor& x) { acts = x; }});
  SAE_RETURN_IF_ERROR(model_->Forward(toks, nullptr, fo).status());
  block_acts_.narrow(0, row, count * per).copy_(acts.narrow(1, 1, per).reshape({count * per, d}));
  block_tokens_.narrow(0, row, count * per).copy_(toks.narrow(1, 1, per).reshape({count * per}));
  return absl::OkStatus();
}

int64_t HarvestStreams(const ModelConfig& model, const HarvestOptions& o) {
  // Auto: several streams only for generated windows (stories260K, 2 cores:
  // 23.7k -> 34.9k tokens/s); a text block on two streams measured slower
  // (114k -> 104k, each half taking twice its share: not understood yet,
  // docs/performance.md).
  const bool auto_many = PreferredThreads(model) == 1 && o.corpus == "generate";
  return std::min<int64_t>(o.batch, o.streams > 0 ? o.streams : auto_many ? CoresAvailable() : 1);
}

absl::Status Harvester::ComputeBlock(int64_t block) {
  const int64_t B = opts_.batch, per = rows_per_window();
  const int64_t streams = HarvestStreams(model_->config(), opts_);
  block_ = -1;
  if (!block_acts_.defined() || block_acts_.size(0) != B * per) {
    block_acts_ = at::empty({B * per, d_in()}, at::kFloat);
    block_tokens_ = at::empty({B * per}, at::kInt);
  }
  if (streams <= 1) {
    ScopedThreads threads(PreferredThreads(model_->config()));
    SAE_RETURN_IF_ERROR(ComputeWindows(block * B, B, 0));
  } else {
    // One LibTorch thread per stream; inside a stream every parallel loop
    // and GEMM runs on that thread (nested regions run inline, OpenBLAS on
    // one thread). LibTorch's count is changed only when it is too small:
    // each change rebuilds its thread pools.
    ScopedThreads threads(at::get_num_threads() < streams ? static_cast<int>(streams) : 0, 1);
    std::vector<absl::Status> st(static_cast<size_t>(streams));
    at::parallel_for(0, streams, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t w0 = B * s / streams, w1 = B * (s + 1) / streams;
        st[s] = ComputeWindows(block * B + w0, w1 - w0, w0 * per);
      }
    });
    for (const absl::Status& e : st) SAE_RETURN_IF_ERROR(e);
  }
  block_ = block;
  return absl::OkStatus();
}

absl::Status Harvester::Rows(int64_t start, int64_t n, float* acts, int32_t* tokens) {
  const int64_t rows_per_block = opts_.batch * rows_per_window(), d = d_in();
  while (n > 0) {
    const int64_t block = start / rows_per_block, off = start % rows_per_block;
    if (block != block_) SAE_RETURN_IF_ERROR(ComputeBlock(block));
    const int64_t take = std::min(n, rows_per_block - off);
    std::memcpy(acts, block_acts_.data_ptr<float>() + off * d, static_cast<size_t>(take * d) * sizeof(float));
    if (tokens)
      std::memcpy(tokens, block_tokens_.data_ptr<int32_t>() + off, static_cast<size_t>(take) * sizeof(int32_t));
    acts += take * d;
    if (tokens) tokens += take;
    start += take;
    n -= take;
  }
  return absl::OkStatus();
}

absl::StatusOr<Manifest> HarvestRankToShards(Harvester* h, int64_t rows, const std::string& out_dir,
                                             const std::string& model_name, int rank, int world, double timeout_seconds,
                                             const HarvestProgress& progress) {
  namespace fs = std::filesystem;
  using json = nlohmann::json;
  if (world < 1 || rank < 0 || rank >= world)
    return absl::InvalidArgumentError(absl::StrCat("harvest: rank ", rank, " outside a world of ", world));
  const std::string manifest_path = out_dir + "/manifest.json";
  if (fs::exists(manifest_path))
    return absl::AlreadyExistsError(absl::StrCat(manifest_path, ": already exists; refusing to overwrite"));
  SAE_RETURN_IF_ERROR(MakeDirs(out_dir));
  const int64_t per_block = h->options().batch * h->rows_per_window(), d = h->d_in();
  const int64_t blocks = (rows + per_block - 1) / per_block;
  json mine = json::array();
  int64_t mine_rows = 0, done = 0;
  for (int64_t b = rank; b < blocks; b += world) mine_rows += std::min(per_block, rows - b * per_block);
  std::vector<float> acts;
  std::vector<int32_t> toks;
  for (int64_t b = rank; b < blocks; b += world) {
    const int64_t n = std::min(per_block, rows - b * per_block);
    acts.resize(static_cast<size_t>(n * d));
    toks.resize(static_cast<size_t>(n));
    SAE_RETURN_IF_ERROR(h->Rows(b * per_block, n, acts.data(), toks.data()));
    done += n;
    if (progress) progress(done, mine_rows);
    SafetensorsWriter w;
    SAE_RETURN_IF_ERROR(w.AddFloat("activations", DType::kF32, {n, d}, acts.data()));
    SAE_RETURN_IF_ERROR(w.Add("tokens", DType::kI32, {n}, toks.data()));
    char name[64];
    std::snprintf(name, sizeof(name), "shard-%05ld.safetensors", static_cast<long>(b));
    const std::string path = out_dir + "/" + name;
    SAE_RETURN_IF_ERROR(w.Write(path));
    SAE_ASSIGN_OR_RETURN(std::string sha, Sha256File(path));
    mine.push_back({{"file", name}, {"rows", n}, {"sha256", sha}});
  }
  SAE_RETURN_IF_ERROR(AtomicWriteFile(absl::StrCat(out_dir, "/.rank-", rank, "-of-", world, ".json"), mine.dump()));
  Manifest m;
  m.d_in = d;
  m.dtype = DType::kF32;
  m.source.model = model_name;
  m.source.layer = h->options().layer;
  m.source.hook = HookPointName(h->options().hook);
  m.source.corpus = h->options().corpus;
  m.source.tokens = rows;
  if (rank != 0) return m;  // rank 0 writes the manifest
  std::vector<ShardEntry> entries;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
  for (int r = 0; r < world; ++r) {
    const std::string part = absl::StrCat(out_dir, "/.rank-", r, "-of-", world, ".json");
    while (!fs::exists(part)) {
      if (std::chrono::steady_clock::now() > deadline)
        return absl::DeadlineExceededError(absl::StrCat("harvest ", out_dir, ": rank ", r, " of ", world,
                                                        " did not finish within ", timeout_seconds, " s"));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::ifstream in(part);
    json j = json::parse(in, nullptr, false);
    if (j.is_discarded() || !j.is_array()) return absl::DataLossError(absl::StrCat(part, ": unreadable rank list"));
    for (const json& e : j) {
      SAE_ASSIGN_OR_RETURN(std::string file, JsonField<std::string>(e, "file", part));
      SAE_ASSIGN_OR_RETURN(int64_t rows, JsonField<int64_t>(e, "rows", part));
      SAE_ASSIGN_OR_RETURN(std::string sha, JsonField<std::string>(e, "sha256", part));
      entries.push_back({file, rows, sha});
    }
  }
  std::sort(entries.begin(), entries.end(), [](const ShardEntry& a, const ShardEntry& b) { return a.file < b.file; });
  for (const ShardEntry& e : entries) m.rows += e.rows;
  if (m.rows != rows)
    return absl::DataLossError(absl::StrCat("harvest ", out_dir, ": ranks wrote ", m.rows, " rows, expected ", rows));
  m.shards = std::move(entries);
  SAE_RETURN_IF_ERROR(SaveManifest(out_dir, m));
  for (int r = 0; r < world; ++r) fs::remove(absl::StrCat(out_dir, "/.rank-", r, "-of-", world, ".json"));
  return m;
}

absl::StatusOr<Manifest> HarvestToShards(Harvester* h, int64_t rows, const std::string& out_dir,
                                         const std::string& model_name, int64_t rows_per_shard,
                                         const HarvestProgress& progress) {
  ShardWriterOptions so;
  so.d_in = h->d_in();
  so.rows_per_shard = rows_per_shard;
  so.source.model = model_name;
  so.source.layer = h->options().layer;
  so.source.hook = HookPointName(h->options().hook);
  so.source.corpus = h->options().corpus;
  so.source.tokens = rows;
  SAE_ASSIGN_OR_RETURN(ShardWriter w, ShardWriter::Create(out_dir, so));
  const int64_t chunk = h->options().batch * h->rows_per_window();
  std::vector<float> acts;
  std::vector<int32_t> toks;
  for (int64_t r = 0; r < rows; r += chunk) {
    const int64_t n = std::min(chunk, rows - r);
    acts.resize(static_cast<size_t>(n * h->d_in()));
    toks.resize(static_cast<size_t>(n));
    SAE_RETURN_IF_ERROR(h->Rows(r, n, acts.data(), toks.data()));
    SAE_RETURN_IF_ERROR(w.Append(acts.data(), n, toks.data()));
    if (progress) progress(r + n, rows);
  }
  return w.Finish();
}

}  // namespace sae
