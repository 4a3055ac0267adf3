// bench_harvest: activation-harvest throughput (tokens/s).
//
// Small model (--model, e.g. stories260K), modes measured interleaved (one
// repetition of each in turn, so load on a shared machine hits them alike):
//   single   one token per forward through the whole model with a KV cache,
//            greedy (what llama2.c's run does, on this runtime);
//   text     `sae harvest` on a text corpus: Harvester over batched windows,
//            forward stopped after the harvest layer (fused CPU path);
//   text-ref the same windows through the op-by-op ATen path
//            (ForwardOptions::reference: the runtime before the fused path);
//   generate `sae harvest --corpus generate`: windows sampled by the model
//            (batched, KV cache, llama2.c's sampler), then harvested.
// Per-block rates are tokens/s × blocks run (layer + 1 for a harvest, all
// blocks for single stream and sampling); run.c's reference rate is the
// issue's 11,000 tokens/s through stories260K's 5 blocks (--runc-tokens-per-s).
//
// Large model (--large): a randomly initialised Llama of about 300M block
// parameters built here; harvest at its last layer against the fp32 GEMM rate
// of one of its projections ([batch·context, dim] × [dim, hidden]) measured in
// the same run: efficiency = tokens/s × 2 × block parameters / GEMM FLOP/s.
//
// Prints machine, load, build and configuration first, then medians.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <absl/strings/str_split.h>
#include <dlfcn.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/bench_util.h"
#include "cli/flags.h"
#include "core/base/blas_kernel.h"
#include "core/lm/generate.h"
#include "core/lm/harvest.h"
#include "core/lm/loaders.h"

namespace {

using sae::bench::Commit;
using sae::bench::CpuModel;
using sae::bench::Median;
using sae::bench::SteadyNow;

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::string BlasCore() {
  using Fn = char* (*)();
  if (auto f = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"))) return f();
  return "unknown";
}

double CpuSeconds() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return r.ru_utime.tv_sec + r.ru_stime.tv_sec + 1e-6 * (r.ru_utime.tv_usec + r.ru_stime.tv_usec);
}

void Header(const std::string& config) {
  utsname u{};
  uname(&u);
  std::printf("machine: %s, %u hardware threads, %s %s; BLAS core %s; load average %s\n", CpuModel().c_str(),
              std::thread::hardware_concurrency(), u.sysname, u.release, BlasCore().c_str(), LoadAverage().c_str());
  std::printf("build: %s, commit %s; LibTorch threads %d\n", SAE_BUILD_TYPE, Commit().c_str(), at::get_num_threads());
  std::printf("%s\n\n", config.c_str());
}

int Die(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  return 1;
}

// One timed run: rows made, wall seconds, CPU seconds (user + system).
struct Sample {
  double rows = 0, wall = 0, cpu = 0;
};

struct Series {
  std::vector<double> rate, cpu_rate;
  void Add(const Sample& s) {
    rate.push_back(s.rows / s.wall);
    cpu_rate.push_back(s.rows / std::max(s.cpu, 1e-9));
  }
};

template <typename F>
Sample Time(F&& f) {
  const double w0 = SteadyNow(), c0 = CpuSeconds();
  const double rows = f();
  return {rows, SteadyNow() - w0, CpuSeconds() - c0};
}

// A randomly initialised Llama (normal(0, 0.02) weights, unit norms).
absl::StatusOr<sae::Transformer> RandomLlama(int64_t dim, int64_t layers, int64_t heads, int64_t kv_heads,
                                             int64_t hidden, int64_t vocab, int64_t seq) {
  sae::ModelConfig c;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.vocab_size = vocab;
  c.max_seq_len = seq;
  c.rope = sae::RopeStyle::kRotateHalf;
  c.source = "random-llama";
  c.format = "random";
  const int64_t hd = dim / heads;
  at::manual_seed(1);
  auto rnd = [](std::vector<int64_t> s) { return at::randn(s, at::kFloat) * 0.02; };
  sae::ModelWeights w;
  w.tok_emb = rnd({vocab, dim});
  w.lm_head = rnd({vocab, dim});
  w.final_norm = at::ones({dim});
  for (int64_t l = 0; l < layers; ++l) {
    sae::BlockWeights b;
    b.attn_norm = at::ones({dim});
    b.ffn_norm = at::ones({dim});
    b.wq = rnd({heads * hd, dim});
    b.wk = rnd({kv_heads * hd, dim});
    b.wv = rnd({kv_heads * hd, dim});
    b.wo = rnd({dim, heads * hd});
    b.w1 = rnd({hidden, dim});
    b.w3 = rnd({hidden, dim});
    b.w2 = rnd({dim, hidden});
    w.blocks.push_back(std::move(b));
  }
  return sae::Transformer::Create(std::move(c), std::move(w));
}

int64_t BlockParams(const sae::Transformer& m, int64_t blocks) {
  int64_t n = 0;
  for (int64_t l = 0; l < blocks; ++l) {
    const sae::BlockWeights& b = m.weights().blocks[l];
    for (const at::Tensor* t :
         {&b.attn_norm, &b.ffn_norm, &b.wq, &b.wk, &b.wv, &b.wo, &b.w1, &b.w2, &b.w3, &b.bq, &b.bk, &b.bv})
      if (t->defined()) n += t->numel();
  }
  return n;
}

// Harvests `rows` rows with `h` (rows made).
double HarvestRows(sae::Harvester* h, int64_t first_row, int64_t rows) {
  std::vector<float> acts(static_cast<size_t>(rows * h->d_in()));
  std::vector<int32_t> toks(static_cast<size_t>(rows));
  const absl::Status s = h->Rows(first_row, rows, acts.data(), toks.data());
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    std::exit(1);
  }
  return static_cast<double>(rows);
}

int RunLarge(int64_t dim, int64_t layers, int64_t heads, int64_t kv_heads, int64_t hidden, int64_t context,
             int64_t batch, int64_t reps, int threads) {
  sae::ScopedThreads scoped(threads);
  auto m = RandomLlama(dim, layers, heads, kv_heads, hidden, 32000, std::max<int64_t>(context, 128));
  if (!m.ok()) return Die(m.status());
  const int64_t params = BlockParams(*m, layers);
  char cfg[512];
  std::snprintf(cfg, sizeof(cfg),
                "large: random Llama, dim %ld, %ld layers, %ld heads / %ld kv, hidden %ld, vocab 32000: %.1fM block "
                "parameters; harvest after the last block, context %ld, batch %ld windows, %ld reps (interleaved "
                "with the GEMM)",
                dim, layers, heads, kv_heads, hidden, params / 1e6, context, batch, reps);
  Header(cfg);
  // The harvest: fixed random token windows (throughput does not depend on the ids).
  at::manual_seed(2);
  at::Tensor toks = at::randint(3, 32000, {batch, context}, at::kLong);
  toks.select(1, 0).fill_(1);
  const int64_t N = batch * context;
  at::Tensor a = at::randn({N, dim}), wt = at::randn({hidden, dim});
  at::Tensor out = at::empty({N, hidden});
  std::vector<double> harvest, gemm;
  for (int64_t r = 0; r <= reps; ++r) {  // r = 0: warm-up
    const double t0 = SteadyNow();
    sae::ForwardOptions fo;
    fo.stop_after_layer = layers - 1;
    at::Tensor acts;
    fo.hooks.push_back({layers - 1, sae::HookPoint::kResidPost, [&acts](at::Tensor& x) { acts = x; }});
    auto st = m->Forward(toks, nullptr, fo);
    if (!st.ok()) return Die(st.status());
    const double t1 = SteadyNow();
    const int gemm_reps = 3;
    for (int i = 0; i < gemm_reps; ++i) at::mm_out(out, a, wt.t());
    const double t2 = SteadyNow();
    if (r == 0) continue;
    harvest.push_back((t1 - t0));
    gemm.push_back((t2 - t1) / gemm_reps);
  }
  const double th = Median(harvest), tg = Median(gemm);
  const double tok_s = (N - batch) / th;  // BOS rows are not harvested
  const double gemm_flops = 2.0 * N * dim * hidden / tg;
  const double model_flops = (N - batch) / th * 2.0 * static_cast<double>(params);
  std::printf("%-52s %14s\n", "measure", "median");
  std::printf("%-52s %14.1f\n", "harvest tokens/s (all blocks)", tok_s);
  std::printf("%-52s %14.1f\n", "harvest GFLOP/s (tokens/s x 2 x block params)", model_flops / 1e9);
  std::printf("%-52s %14.1f\n", "fp32 GEMM GFLOP/s ([N,dim] x [dim,hidden])", gemm_flops / 1e9);
  std::printf("%-52s %14.3f   (goal >= 0.70)\n", "efficiency (harvest / GEMM)", model_flops / gemm_flops);
  return 0;
}

// The command line.
struct Flags {
  std::string model_path, corpus, dtype;
  int64_t layer = 2, context = 128, batch = 32, rows = 65536, gen_rows = 16384, single_tokens = 512, reps = 5;
  double runc = 11000;
  int threads = 0, streams = 0;
  std::string modes = "single,text,text-ref,generate";
  bool large = false;
  int64_t l_dim = 1024, l_layers = 24, l_heads = 16, l_kv = 16, l_hidden = 2816, l_context = 128, l_batch = 4;
};

void AddFlags(sae::flags::Command& app, Flags& f) {
  app.AddOption("--model", f.model_path, "checkpoint (e.g. ../shared/data/stories260K)");
  app.AddOption("--corpus", f.corpus, "text corpus (default: tinystories_sample.txt beside the model)");
  app.AddOption("--dtype", f.dtype,
                "float32|bfloat16|float16: weights and compute (default: as stored, float32 compute)");
  app.AddOption("--layer", f.layer, "harvest layer");
  app.AddOption("--context", f.context, "tokens per window");
  app.AddOption("--batch", f.batch, "windows per forward pass");
  app.AddOption("--rows", f.rows, "rows per text harvest run");
  app.AddOption("--gen-rows", f.gen_rows, "rows per generate harvest run");
  app.AddOption("--single-tokens", f.single_tokens, "tokens per single-stream run");
  app.AddOption("--reps", f.reps, "repetitions (median reported)");
  app.AddOption("--threads", f.threads, "intra-op threads (0: the runtime's rule, 1 for small models)");
  app.AddOption("--modes", f.modes, "comma-separated subset of single,text,text-ref,generate");
  app.AddOption("--streams", f.streams, "harvest: windows as this many streams, one core each (0: the harvest's rule)");
  app.AddOption("--runc-tokens-per-s", f.runc,
                "llama2.c run.c's single-stream tokens/s through all blocks (the issue's: 11000)");
  app.AddFlag("--large", f.large, "the ~300M-parameter random Llama against the GEMM rate instead");
  app.AddOption("--large-dim", f.l_dim, "large: dim");
  app.AddOption("--large-layers", f.l_layers, "large: layers");
  app.AddOption("--large-heads", f.l_heads, "large: heads");
  app.AddOption("--large-kv-heads", f.l_kv, "large: key/value heads");
  app.AddOption("--large-hidden", f.l_hidden, "large: MLP hidden size");
  app.AddOption("--large-context", f.l_context, "large: tokens per window");
  app.AddOption("--large-batch", f.l_batch, "large: windows per forward pass");
}

void PrintSmallHeader(const Flags& f, const sae::Transformer& model) {
  const sae::ModelConfig& c = model.config();
  sae::HarvestOptions ho;
  ho.batch = f.batch;
  ho.streams = f.streams;
  ho.corpus = f.corpus;
  const int64_t text_streams = sae::HarvestStreams(c, ho);
  ho.corpus = "generate";
  const std::string streams =
      std::to_string(text_streams) + " text / " + std::to_string(sae::HarvestStreams(c, ho)) + " generate";
  char cfg[768];
  std::snprintf(cfg, sizeof(cfg),
                "model: %s (%s; dim %ld, %ld layers, %ld heads / %ld kv, vocab %ld; weights %s, compute %s)\n"
                "config: layer %ld (%ld blocks run), context %ld, batch %ld windows, streams %s; %ld text rows, %ld "
                "generate rows, "
                "%ld single-stream tokens per run; %ld reps, modes interleaved; corpus %s",
                c.source.c_str(), c.format.c_str(), c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
                c10::toString(model.weights().blocks[0].wq.scalar_type()), c10::toString(c.compute_dtype), f.layer,
                f.layer + 1, f.context, f.batch, streams.c_str(), f.rows, f.gen_rows, f.single_tokens, f.reps,
                f.corpus.c_str());
  Header(cfg);
}

// Greedy single-stream decoding, one token per forward with a KV cache.
double SingleStream(const sae::Transformer& model, int64_t tokens, int threads) {
  sae::ScopedThreads scoped(threads > 0 ? threads : sae::PreferredThreads(model.config()));
  sae::KvCache cache = model.NewCache(1, tokens);
  int64_t t = model.config().bos_id;
  for (int64_t p = 0; p < tokens; ++p) {
    auto l = model.Forward(at::full({1, 1}, t, at::kLong), &cache);
    if (!l.ok()) std::exit(Die(l.status()));
    t = l->reshape({-1}).argmax().item<int64_t>();
  }
  return static_cast<double>(tokens);
}

// The text harvest's windows from first_row on, one forward pass of `batch`
// windows each, op by op (the reference path); rows made.
double ReferenceHarvest(const sae::Transformer& model, sae::WindowSource& src, const Flags& f, int64_t first_row) {
  sae::ScopedThreads scoped(f.threads > 0 ? f.threads : sae::PreferredThreads(model.config()));
  const int64_t per = (f.context - 1) * f.batch;
  double done = 0;
  for (int64_t b = first_row / per; done < f.rows; ++b) {
    auto w = src.Windows(b * f.batch, f.batch);
    sae::ForwardOptions fo;
    fo.reference = true;
    fo.stop_after_layer = f.layer;
    at::Tensor acts;
    fo.hooks.push_back({f.layer, sae::HookPoint::kResidPost, [&acts](at::Tensor& x) { acts = x; }});
    if (!model.Forward(*w, nullptr, fo).ok()) std::exit(1);
    at::Tensor out = acts.narrow(1, 1, f.context - 1).reshape({-1, model.config().dim}).contiguous();
    done += static_cast<double>(out.size(0));
  }
  return done;
}

bool Wanted(const Flags& f, const std::string& mode) {
  return ("," + f.modes + ",").find("," + mode + ",") != std::string::npos;
}

// The four modes' rates, one repetition of each in turn (the first a warm-up).
absl::StatusOr<std::map<std::string, Series>> MeasureModes(const sae::Transformer& model, const sae::Tokenizer* tok,
                                                           const Flags& f) {
  sae::HarvestOptions ho;
  ho.layer = f.layer;
  ho.context = f.context;
  ho.batch = f.batch;
  ho.streams = f.streams;
  ho.corpus = f.corpus;
  SAE_ASSIGN_OR_RETURN(std::unique_ptr<sae::Harvester> text, sae::Harvester::Create(model, tok, ho));
  ho.corpus = "generate";
  SAE_ASSIGN_OR_RETURN(std::unique_ptr<sae::Harvester> gen, sae::Harvester::Create(model, nullptr, ho));
  sae::HarvestOptions ro = ho;
  ro.corpus = f.corpus;
  SAE_ASSIGN_OR_RETURN(std::unique_ptr<sae::WindowSource> src, sae::WindowSource::Create(model, tok, ro));
  std::map<std::string, Series> series;
  int64_t next_row = 0, next_gen = 0;
  for (int64_t r = 0; r <= f.reps; ++r) {  // r = 0: warm-up
    std::map<std::string, Sample> s;
    if (Wanted(f, "single")) s["single"] = Time([&] { return SingleStream(model, f.single_tokens, f.threads); });
    if (Wanted(f, "text")) s["text"] = Time([&] { return HarvestRows(text.get(), next_row, f.rows); });
    if (Wanted(f, "text-ref")) s["text-ref"] = Time([&] { return ReferenceHarvest(model, *src, f, next_row); });
    if (Wanted(f, "generate")) s["generate"] = Time([&] { return HarvestRows(gen.get(), next_gen, f.gen_rows); });
    next_row += f.rows;
    next_gen += f.gen_rows;
    if (r == 0) continue;
    for (auto& [name, smp] : s) series[name].Add(smp);
  }
  return series;
}

void PrintModes(const Flags& f, const sae::ModelConfig& c, std::map<std::string, Series>& series) {
  const std::vector<std::string> order = {"single", "text", "text-ref", "generate"};
  const int64_t blocks = f.layer + 1;
  auto blocks_of = [&](const std::string& m) { return m == "single" ? c.n_layers : blocks; };
  const double runc_block = f.runc * 5;  // run.c: tokens/s through stories260K's 5 blocks
  std::printf("%-58s %11s %11s %13s %10s %10s\n", "mode", "tokens/s", "cpu tok/s", "block-tok/s", "vs run.c", "(cpu)");
  const std::map<std::string, std::string> label = {
      {"single", "single stream (1 token/forward, KV cache, all blocks)"},
      {"text", "harvest, text corpus (batched, fused path)"},
      {"text-ref", "harvest, text corpus, op-by-op ATen path (before)"},
      {"generate", "harvest, --corpus generate (batched sampling + harvest)"}};
  for (const std::string& m : order) {
    if (!Wanted(f, m)) continue;
    const double t = Median(series[m].rate), cpu = Median(series[m].cpu_rate);
    // generate: the sampling pass runs every block and the harvest pass `blocks` more.
    const double per_block = m == "generate" ? t : t * blocks_of(m);
    const double cpu_block = m == "generate" ? cpu : cpu * blocks_of(m);
    std::printf("%-58s %11.0f %11.0f %13.0f %9.2fx %9.2fx\n", label.at(m).c_str(), t, cpu, per_block,
                m == "generate" ? t / f.runc : per_block / runc_block,
                m == "generate" ? cpu / f.runc : cpu_block / runc_block);
  }
  std::printf(
      "\nrun.c reference: %.0f tokens/s through all 5 blocks = %.0f block-tokens/s (issue 14; "
      "--runc-tokens-per-s). 'vs run.c': block-tokens/s over run.c's (generate: tokens/s over run.c's "
      "tokens/s). cpu tok/s: rows over this process's user+system seconds, and (cpu) the same ratio on them: "
      "on a loaded machine the wall rate is this process's share of the cores.\n",
      f.runc, runc_block);
}

}  // namespace

int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  sae::flags::Command app{"bench_harvest: harvest tokens/s against single stream, run.c and the GEMM"};
  Flags f;
  AddFlags(app, f);
  if (auto rc = app.Parse(argc, argv)) return *rc;
  for (const std::string& m : std::vector<std::string>(absl::StrSplit(f.modes, ','))) {
    if (m != "single" && m != "text" && m != "text-ref" && m != "generate") {
      std::fprintf(stderr, "error: --modes: '%s' is not one of single, text, text-ref, generate\n", m.c_str());
      return 2;
    }
  }
  if (f.large)
    return RunLarge(f.l_dim, f.l_layers, f.l_heads, f.l_kv, f.l_hidden, f.l_context, f.l_batch, f.reps, f.threads);
  if (f.model_path.empty()) {
    std::fprintf(stderr, "error: --model is required (or --large)\n");
    return 1;
  }
  auto model = sae::LoadModel(f.model_path, sae::LoadOptions{f.dtype});
  if (!model.ok()) return Die(model.status());
  const sae::ModelConfig& c = model->config();
  if (f.corpus.empty()) f.corpus = f.model_path + "/tinystories_sample.txt";
  auto tok = sae::LoadTokenizerFor(f.model_path, c.vocab_size, "");
  if (!tok.ok()) return Die(tok.status());
  // The harvest modes choose their own threads (HarvestOptions::streams);
  // the single stream runs on PreferredThreads (SingleStream).
  sae::ScopedThreads scoped(f.threads);
  PrintSmallHeader(f, *model);
  auto series = MeasureModes(*model, tok->get(), f);
  if (!series.ok()) return Die(series.status());
  PrintModes(f, c, *series);
  return 0;
}
