#include "worker/batch_source.h"

#include <nlohmann/json.hpp>

#include "core/data/activation_stream.h"
#include "core/data/synthetic.h"
#include "core/lm/harvest.h"
#include "core/lm/loaders.h"
#include "core/lm/tokenizer.h"

namespace sae {
absl::Status BatchSource::NextSlice(int64_t global_rows, int rank, int world, std::vector<float>* out) {
  if (world == 1) return Next(global_rows, out);
  std::vector<float> all;
  SAE_RETURN_IF_ERROR(Next(global_rows, &all));
  const int64_t lo = global_rows * rank / world, hi = global_rows * (rank + 1) / world;
  out->assign(all.begin() + lo * d_in(), all.begin() + hi * d_in());
  return absl::OkStatus();
}

namespace {

using json = nlohmann::json;

class ShardSource : public BatchSource {
 public:
  ShardSource(std::unique_ptr<ActivationStream> s, std::string path, StreamOptions opts)
      : stream_(std::move(s)), path_(std::move(path)), opts_(opts) {}
  int64_t d_in() const override { return stream_->d_in(); }
  absl::Status Next(int64_t rows, std::vector<float>* out) override { return stream_->Next(rows, out); }
  absl::Status NextSlice(int64_t global_rows, int rank, int world, std::vector<float>* out) override {
    if (opts_.world == world && opts_.rank == rank && global_rows == opts_.batch_rows)
      return stream_->Next(global_rows, out);  // the rows of this rank's share only
    if (opts_.world > 1) {
      // A final partial batch: continue with a whole-order stream and slice it.
      StreamOptions o = opts_;
      o.world = 1;
      o.rank = 0;
      o.start_row = stream_->position();
      SAE_ASSIGN_OR_RETURN(stream_, ActivationStream::Open(path_, o));
      opts_ = o;
    }
    return BatchSource::NextSlice(global_rows, rank, world, out);
  }
  int64_t position() const override { return stream_->position(); }
  std::string DescribeJson() const override {
    const Manifest& m = stream_->manifest();
    json j = {
        {"kind", "shards"},        {"path", path_},           {"rows", m.rows},        {"d_in", m.d_in},
        {"model", m.source.model}, {"layer", m.source.layer}, {"hook", m.source.hook}, {"corpus", m.source.corpus}};
    return j.dump();
  }

 private:
  std::unique_ptr<ActivationStream> stream_;
  std::string path_;
  StreamOptions opts_;
};

class SyntheticSource : public BatchSource {
 public:
  SyntheticSource(PlantedDictionary dict, int64_t start) : dict_(std::move(dict)), pos_(start) {}
  int64_t d_in() const override { return dict_.options().d_in; }
  absl::Status Next(int64_t rows, std::vector<float>* out) override {
    out->resize(static_cast<size_t>(rows * d_in()));
    dict_.Rows(pos_, rows, out->data());
    pos_ += rows;
    return absl::OkStatus();
  }
  absl::Status NextSlice(int64_t global_rows, int rank, int world, std::vector<float>* out) override {
    const int64_t lo = global_rows * rank / world, hi = global_rows * (rank + 1) / world;
    out->resize(static_cast<size_t>((hi - lo) * d_in()));
    dict_.Rows(pos_ + lo, hi - lo, out->data());
    pos_ += global_rows;
    return absl::OkStatus();
  }
  int64_t position() const override { return pos_; }
  std::string DescribeJson() const override {
    const SyntheticOptions& o = dict_.options();
    json j = {{"kind", "synthetic"},
              {"d_in", o.d_in},
              {"atoms", o.atoms},
              {"k", o.k},
              {"seed", o.seed},
              {"noise", o.noise},
              {"frequency_decay", o.frequency_decay}};
    return j.dump();
  }

 private:
  PlantedDictionary dict_;
  int64_t pos_;
};

// Activations computed on the fly by a language model (data.kind: lm). Each
// rank runs the model only for the windows its slice of a batch needs.
class LmSource : public BatchSource {
 public:
  static absl::StatusOr<std::unique_ptr<BatchSource>> Open(const JobConfig& job, int64_t start_row) {
    std::unique_ptr<LmSource> s(new LmSource());
    s->job_data_ = job.data;
    SAE_ASSIGN_OR_RETURN(Transformer m, LoadModel(job.data.model));
    s->model_ = std::make_unique<Transformer>(std::move(m));
    if (job.data.corpus != "generate") {
      SAE_ASSIGN_OR_RETURN(s->tok_, LoadTokenizerFor(job.data.model, s->model_->config().vocab_size));
    }
    HarvestOptions o = LmHarvestOptions(job);
    SAE_ASSIGN_OR_RETURN(s->harvester_, Harvester::Create(*s->model_, s->tok_.get(), o));
    s->pos_ = start_row;
    return std::unique_ptr<BatchSource>(std::move(s));
  }
  int64_t d_in() const override { return harvester_->d_in(); }
  absl::Status Next(int64_t rows, std::vector<float>* out) override {
    out->resize(static_cast<size_t>(rows * d_in()));
    SAE_RETURN_IF_ERROR(harvester_->Rows(pos_, rows, out->data(), nullptr));
    pos_ += rows;
    return absl::OkStatus();
  }
  absl::Status NextSlice(int64_t global_rows, int rank, int world, std::vector<float>* out) override {
    const int64_t lo = global_rows * rank / world, hi = global_rows * (rank + 1) / world;
    out->resize(static_cast<size_t>((hi - lo) * d_in()));
    SAE_RETURN_IF_ERROR(harvester_->Rows(pos_ + lo, hi - lo, out->data(), nullptr));
    pos_ += global_rows;
    return absl::OkStatus();
  }
  int64_t position() const override { return pos_; }
  std::string DescribeJson() const override {
    json j = {{"kind", "lm"},         {"model", job_data_.model},   {"layer", job_data_.layer},
              {"hook", "resid_post"}, {"corpus", job_data_.corpus}, {"context", job_data_.context},
              {"d_in", d_in()},       {"seed", job_data_.seed}};
    return j.dump();
  }

 private:
  LmSource() = default;
  DataConfig job_data_;
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<Harvester> harvester_;
  int64_t pos_ = 0;
};

}  // namespace

HarvestOptions LmHarvestOptions(const JobConfig& job) {
  HarvestOptions o;
  o.corpus = job.data.corpus;
  o.layer = job.data.layer;
  o.context = job.data.context;
  o.seed = job.data.seed;
  return o;
}

SyntheticOptions SyntheticOptionsFromJob(const JobConfig& job) {
  SyntheticOptions o;
  o.d_in = job.data.d_in;
  o.atoms = job.data.latents;
  o.k = job.data.k;
  o.seed = job.data.seed;
  o.noise = job.data.noise;
  o.frequency_decay = job.data.frequency_decay;
  return o;
}

absl::StatusOr<std::unique_ptr<BatchSource>> OpenBatchSource(const JobConfig& job, int64_t start_row,
                                                             const DataShare& share) {
  const std::string origin = job.source_path.empty() ? "job" : job.source_path;
  if (job.data.kind == DataKind::kShards) {
    StreamOptions so;
    so.shuffle_window_rows = job.data.shuffle_buffer_rows;
    so.seed = job.train.seed;
    so.start_row = start_row;
    so.verify_checksums = true;  // a corrupt shard fails the job, naming it
    if (share.world > 1) {
      so.rank = share.rank;
      so.world = share.world;
      so.batch_rows = share.batch_rows;
    }
    auto s = ActivationStream::Open(job.data.path, so);
    if (!s.ok()) return Annotate(s.status(), absl::StrCat(origin, ": data.path"));
    return std::unique_ptr<BatchSource>(new ShardSource(std::move(*s), job.data.path, so));
  }
  if (job.data.kind == DataKind::kSynthetic) {
    auto d = PlantedDictionary::Create(SyntheticOptionsFromJob(job));
    if (!d.ok()) return Annotate(d.status(), origin);
    return std::unique_ptr<BatchSource>(new SyntheticSource(std::move(*d), start_row));
  }
  // DataKind::kLm
  auto s = LmSource::Open(job, start_row);
  if (!s.ok()) return Annotate(s.status(), absl::StrCat(origin, ": data (lm)"));
  return s;
}

}  // namespace sae
