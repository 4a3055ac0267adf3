#include "core/interp/features.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/base/file_util.h"
#include "core/data/safetensors.h"

namespace sae {
namespace {

using json = nlohmann::json;
constexpr double kFix = 4294967296.0;  // 2^32

inline __int128 Fix(double v) { return static_cast<__int128>(std::llround(v * kFix)); }
inline double Unfix(__int128 v) { return static_cast<double>(static_cast<long double>(v) / kFix); }

inline uint64_t Mix(uint64_t z) {  // splitmix64's finaliser
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// a ranks before b in a latent's top list.
inline bool Better(const FeatureContext& a, const FeatureContext& b) {
  return a.act > b.act || (a.act == b.act && a.token_index < b.token_index);
}
inline bool KeyLess(const FeatureContext& a, const FeatureContext& b) {
  return a.key < b.key || (a.key == b.key && a.token_index < b.token_index);
}

json I128(__int128 v) {
  const unsigned __int128 u = static_cast<unsigned __int128>(v);
  return json::array({static_cast<uint64_t>(u >> 64), static_cast<uint64_t>(u)});
}
__int128 FromI128(const json& j) {
  const unsigned __int128 u = (static_cast<unsigned __int128>(j.at(0).get<uint64_t>()) << 64) | j.at(1).get<uint64_t>();
  return static_cast<__int128>(u);
}
json CtxJson(const FeatureContext& c) {
  return json{{"i", c.token_index}, {"a", c.act}, {"k", c.key}, {"t", c.tokens}, {"v", c.acts}};
}
FeatureContext CtxFrom(const json& j) {
  FeatureContext c;
  c.token_index = j.at("i");
  c.act = j.at("a");
  c.key = j.at("k");
  c.tokens = j.at("t").get<std::vector<int32_t>>();
  c.acts = j.at("v").get<std::vector<float>>();
  return c;
}

void KeepSmallestKeys(std::vector<FeatureContext>* v, size_t cap) {
  std::sort(v->begin(), v->end(), KeyLess);
  if (v->size() > cap) v->resize(cap);
}

}  // namespace

int HistBin(float a) {
  if (!(a > 0)) return 0;
  const int b = static_cast<int>(std::floor(10.0 * std::log10(static_cast<double>(a)))) + 40;
  return std::clamp(b, 0, kHistBins - 1);
}
double HistEdge(int i) { return std::pow(10.0, (i - 40) / 10.0); }

FeatureAccumulator::FeatureAccumulator(int64_t latents, const FeatureOptions& opts)
    : n_(latents), opts_(opts), lat_(static_cast<size_t>(latents)) {
  for (Latent& l : lat_) l.hist.assign(kHistBins, 0);
}

void FeatureAccumulator::Offer(int64_t j, float a, int64_t g, const int32_t* win, int64_t T, int64_t pos,
                               const int64_t* idx, const float* act, int64_t k, int64_t row0) {
  Latent& L = lat_[j];
  FeatureContext probe;
  probe.act = a;
  probe.token_index = g;
  probe.key = Mix(Mix(opts_.sample_seed ^ static_cast<uint64_t>(g)) ^ static_cast<uint64_t>(j));
  const size_t top_cap = static_cast<size_t>(opts_.top_contexts);
  const bool to_top = top_cap > 0 && (L.top.size() < top_cap || Better(probe, L.top.front()));
  std::vector<FeatureContext>& bin = L.samples[HistBin(a)];
  const size_t s_cap = static_cast<size_t>(opts_.interval_samples);
  const bool to_bin = s_cap > 0 && (bin.size() < s_cap || KeyLess(probe, bin.back()));
  if (!to_top && !to_bin) return;
  const int64_t r = opts_.radius, W = 2 * r + 1;
  probe.tokens.assign(static_cast<size_t>(W), -1);
  probe.acts.assign(static_cast<size_t>(W), 0.0f);
  for (int64_t s = 0; s < W; ++s) {
    const int64_t p = pos - r + s;
    if (p < 1 || p > T - 1) continue;
    probe.tokens[s] = win[p];
    const int64_t row = row0 + p - 1;
    for (int64_t i = 0; i < k; ++i)
      if (idx[row * k + i] == j) probe.acts[s] = act[row * k + i];
  }
  if (to_bin) {
    auto it = std::lower_bound(bin.begin(), bin.end(), probe, KeyLess);
    bin.insert(it, probe);
    if (bin.size() > s_cap) bin.pop_back();
  }
  if (to_top) {
    L.top.push_back(std::move(probe));
    std::push_heap(L.top.begin(), L.top.end(), Better);
    if (L.top.size() > top_cap) {
      std::pop_heap(L.top.begin(), L.top.end(), Better);
      L.top.pop_back();
    }
  }
}

absl::Status FeatureAccumulator::Add(int64_t first_window, const at::Tensor& tokens_in, const at::Tensor& indices,
                                     const at::Tensor& acts_in) {
  at::Tensor tokens = tokens_in.to(at::kCPU, at::kInt).contiguous();
  at::Tensor idx_t = indices.to(at::kCPU, at::kLong).contiguous();
  at::Tensor act_t = acts_in.to(at::kCPU, at::kFloat).contiguous();
  const int64_t B = tokens.size(0), T = tokens.size(1), k = idx_t.size(1);
  if (idx_t.size(0) != B * (T - 1) || act_t.sizes() != idx_t.sizes())
    return absl::InvalidArgumentError("features: codes do not match the token block");
  const int32_t* tp = tokens.data_ptr<int32_t>();
  const int64_t* ip = idx_t.data_ptr<int64_t>();
  const float* ap = act_t.data_ptr<float>();
  std::vector<std::pair<int64_t, float>> on;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t row0 = b * (T - 1);
    for (int64_t p = 1; p < T; ++p) {
      const int64_t row = row0 + p - 1;
      const int64_t g = (first_window + b) * (T - 1) + (p - 1);
      on.clear();
      for (int64_t i = 0; i < k; ++i) {
        const float a = ap[row * k + i];
        if (!(a > 0)) continue;
        const int64_t j = ip[row * k + i];
        if (j < 0 || j >= n_) return absl::InvalidArgumentError("features: latent index out of range");
        on.emplace_back(j, a);
        Latent& L = lat_[j];
        ++L.count;
        L.sum += Fix(a);
        L.sumsq += Fix(static_cast<double>(a) * a);
        L.max = std::max(L.max, a);
        ++L.hist[HistBin(a)];
        Offer(j, a, g, tp + b * T, T, p, ip, ap, k, row0);
      }
      if (opts_.cofire > 0)
        for (size_t x = 0; x < on.size(); ++x)
          for (size_t y = 0; y < on.size(); ++y) {
            if (on[x].first >= on[y].first) continue;
            pairs_[static_cast<uint64_t>(on[x].first) * n_ + on[y].first] +=
                Fix(static_cast<double>(on[x].second) * on[y].second);
          }
    }
  }
  total_ += B * (T - 1);
  return absl::OkStatus();
}

absl::Status FeatureAccumulator::Merge(const FeatureAccumulator& o) {
  if (o.n_ != n_ || o.opts_.radius != opts_.radius || o.opts_.top_contexts != opts_.top_contexts ||
      o.opts_.interval_samples != opts_.interval_samples || o.opts_.sample_seed != opts_.sample_seed)
    return absl::InvalidArgumentError("features: merging accumulators built with different options");
  total_ += o.total_;
  for (int64_t j = 0; j < n_; ++j) {
    Latent& L = lat_[j];
    const Latent& M = o.lat_[j];
    L.count += M.count;
    L.sum += M.sum;
    L.sumsq += M.sumsq;
    L.max = std::max(L.max, M.max);
    for (int b = 0; b < kHistBins; ++b) L.hist[b] += M.hist[b];
    std::vector<FeatureContext> top = L.top;
    top.insert(top.end(), M.top.begin(), M.top.end());
    std::sort(top.begin(), top.end(), Better);
    if (top.size() > static_cast<size_t>(opts_.top_contexts)) top.resize(opts_.top_contexts);
    std::make_heap(top.begin(), top.end(), Better);
    L.top = std::move(top);
    for (const auto& [bin, v] : M.samples) {
      std::vector<FeatureContext>& mine = L.samples[bin];
      mine.insert(mine.end(), v.begin(), v.end());
      KeepSmallestKeys(&mine, static_cast<size_t>(opts_.interval_samples));
    }
  }
  for (const auto& [key, v] : o.pairs_) pairs_[key] += v;
  return absl::OkStatus();
}

std::vector<uint8_t> FeatureAccumulator::Serialize() const {
  json j;
  j["format"] = "saeforge.features.partial.v1";
  j["latents"] = n_;
  j["tokens"] = total_;
  j["radius"] = opts_.radius;
  j["top_contexts"] = opts_.top_contexts;
  j["interval_samples"] = opts_.interval_samples;
  j["sample_seed"] = opts_.sample_seed;
  json lats = json::array();
  for (const Latent& L : lat_) {
    json l = {{"count", L.count}, {"sum", I128(L.sum)}, {"sumsq", I128(L.sumsq)}, {"max", L.max}, {"hist", L.hist}};
    json top = json::array();
    for (const auto& c : L.top) top.push_back(CtxJson(c));
    l["top"] = top;
    json s = json::array();
    for (const auto& [bin, v] : L.samples) {
      json cs = json::array();
      for (const auto& c : v) cs.push_back(CtxJson(c));
      s.push_back(json{{"bin", bin}, {"c", cs}});
    }
    l["samples"] = s;
    lats.push_back(std::move(l));
  }
  j["lat"] = std::move(lats);
  std::vector<uint64_t> keys;
  json vals = json::array();
  for (const auto& [k, v] : pairs_) {
    keys.push_back(k);
    vals.push_back(I128(v));
  }
  j["pair_keys"] = keys;
  j["pair_vals"] = vals;
  return json::to_msgpack(j);
}

absl::StatusOr<FeatureAccumulator> FeatureAccumulator::Deserialize(const std::vector<uint8_t>& bytes,
                                                                   const std::string& what) {
  try {
    json j = json::from_msgpack(bytes);
    if (j.value("format", "") != "saeforge.features.partial.v1")
      return absl::InvalidArgumentError(absl::StrCat(what, ": not a saeforge.features.partial.v1 file"));
    FeatureOptions o;
    o.radius = j.at("radius");
    o.top_contexts = j.at("top_contexts");
    o.interval_samples = j.at("interval_samples");
    o.sample_seed = j.at("sample_seed");
    FeatureAccumulator acc(j.at("latents").get<int64_t>(), o);
    acc.total_ = j.at("tokens");
    const json& lats = j.at("lat");
    if (static_cast<int64_t>(lats.size()) != acc.n_) return absl::InvalidArgumentError(what + ": latent count");
    for (int64_t i = 0; i < acc.n_; ++i) {
      const json& l = lats[i];
      Latent& L = acc.lat_[i];
      L.count = l.at("count");
      L.sum = FromI128(l.at("sum"));
      L.sumsq = FromI128(l.at("sumsq"));
      L.max = l.at("max");
      L.hist = l.at("hist").get<std::vector<int64_t>>();
      if (L.hist.size() != static_cast<size_t>(kHistBins)) return absl::InvalidArgumentError(what + ": histogram size");
      for (const json& c : l.at("top")) L.top.push_back(CtxFrom(c));
      for (const json& s : l.at("samples")) {
        auto& v = L.samples[s.at("bin").get<int>()];
        for (const json& c : s.at("c")) v.push_back(CtxFrom(c));
      }
    }
    const auto keys = j.at("pair_keys").get<std::vector<uint64_t>>();
    const json& vals = j.at("pair_vals");
    if (keys.size() != vals.size()) return absl::InvalidArgumentError(what + ": pair sums");
    for (size_t i = 0; i < keys.size(); ++i) acc.pairs_[keys[i]] = FromI128(vals[i]);
    return acc;
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", e.what()));
  }
}

const std::string& FeatureSet::Piece(int32_t id) const {
  static const std::string empty;
  if (id < 0 || id >= static_cast<int32_t>(vocab.size())) return empty;
  return vocab[id];
}

std::vector<float> FeatureSet::MaxActivations() const {
  std::vector<float> m;
  for (const auto& f : features) m.push_back(static_cast<float>(f.max));
  return m;
}

std::vector<std::pair<int64_t, int64_t>> FeatureSet::Search(const std::string& text, int64_t limit) const {
  auto lower = [](std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  const std::string q = lower(text);
  std::vector<std::pair<int64_t, int64_t>> hits;  // (latent, matching contexts)
  if (q.empty()) return hits;
  for (const auto& f : features) {
    int64_t m = 0;
    for (const auto& c : f.top) {
      std::string s;
      for (int32_t t : c.tokens) s += Piece(t);
      if (lower(s).find(q) != std::string::npos) ++m;
    }
    if (m > 0) hits.emplace_back(f.latent, m);
  }
  std::sort(hits.begin(), hits.end(), [&](const auto& a, const auto& b) {
    if (a.second != b.second) return a.second > b.second;
    if (features[a.first].max != features[b.first].max) return features[a.first].max > features[b.first].max;
    return a.first < b.first;
  });
  if (static_cast<int64_t>(hits.size()) > limit) hits.resize(limit);
  return hits;
}

namespace {

// One latent's dashboard from its accumulated statistics: counts, top
// contexts (best first), and the activation range cut into quantile groups.
FeatureDashboard DashboardOf(int64_t j, const FeatureAccumulator::Latent& L, double total_tokens,
                             const FeatureOptions& o) {
  FeatureDashboard d;
  d.latent = j;
  d.count = L.count;
  d.density = total_tokens > 0 ? L.count / total_tokens : 0;
  d.mean = L.count > 0 ? Unfix(L.sum) / L.count : 0;
  d.max = L.max;
  d.hist = L.hist;
  d.top = L.top;
  std::sort(d.top.begin(), d.top.end(), Better);
  // Quantile groups on bin edges: bin b joins group ⌊G·(tokens below b)/count⌋.
  const int64_t G = std::max<int64_t>(1, o.intervals);
  int64_t below = 0, cur = -1;
  for (int b = 0; b < kHistBins; ++b) {
    if (L.hist[b] == 0) continue;
    const int64_t grp = std::min(G - 1, G * below / std::max<int64_t>(1, L.count));
    if (grp != cur) {
      FeatureInterval iv;
      iv.lo = b == 0 ? 0.0 : HistEdge(b);
      d.intervals.push_back(iv);
      cur = grp;
    }
    FeatureInterval& iv = d.intervals.back();
    iv.hi = std::min(HistEdge(b + 1), static_cast<double>(L.max));
    iv.count += L.hist[b];
    auto it = L.samples.find(b);
    if (it != L.samples.end()) iv.samples.insert(iv.samples.end(), it->second.begin(), it->second.end());
    below += L.hist[b];
  }
  for (auto& iv : d.intervals) KeepSmallestKeys(&iv.samples, static_cast<size_t>(o.interval_samples));
  return d;
}

// Logit effect: the unembedding of the decoder row after the final norm's
// gain; the o.logit_tokens most raised and most lowered tokens per latent.
absl::Status AddLogitEffects(const Transformer& model, const SaeRun& run, const FeatureOptions& o, FeatureSet* fs) {
  const int64_t n = fs->latents;
  try {
    at::NoGradGuard ng;
    const ModelWeights& w = model.weights();
    at::Tensor dec = run.sae.params.W_dec.to(at::kCPU, at::kFloat);
    if (w.final_norm.defined()) {
      at::Tensor gain = w.final_norm.to(at::kCPU, at::kFloat).reshape({1, -1});
      if (model.config().arch == Arch::kGemma2) gain = gain + 1;  // Gemma 2's RMSNorm scales by (1 + w)
      dec = dec * gain;
    }
    at::Tensor wu = w.lm_head.to(at::kCPU, at::kFloat);
    const int64_t m = std::min<int64_t>(o.logit_tokens, wu.size(0));
    for (int64_t j0 = 0; j0 < n; j0 += 256) {
      const int64_t cnt = std::min<int64_t>(256, n - j0);
      at::Tensor eff = at::matmul(dec.narrow(0, j0, cnt), wu.t());
      auto top = eff.topk(m, 1, true, true), bot = eff.topk(m, 1, false, true);
      at::Tensor tv = std::get<0>(top).contiguous(), ti = std::get<1>(top).contiguous();
      at::Tensor bv = std::get<0>(bot).contiguous(), bi = std::get<1>(bot).contiguous();
      for (int64_t r = 0; r < cnt; ++r)
        for (int64_t i = 0; i < m; ++i) {
          fs->features[j0 + r].logit_top.emplace_back(static_cast<int32_t>(ti[r][i].item<int64_t>()),
                                                      tv[r][i].item<float>());
          fs->features[j0 + r].logit_bottom.emplace_back(static_cast<int32_t>(bi[r][i].item<int64_t>()),
                                                         bv[r][i].item<float>());
        }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("features: logit effect: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

// Co-firing: Pearson correlation over all tokens (a = 0 where a latent is
// off); the o.cofire most correlated latents per latent.
void AddCofiring(const FeatureAccumulator& acc, const FeatureOptions& o, FeatureSet* fs) {
  const int64_t n = acc.latents();
  const double N = static_cast<double>(acc.tokens());
  std::vector<long double> S(n), V(n);
  for (int64_t j = 0; j < n; ++j) {
    const long double s = static_cast<long double>(acc.latent(j).sum) / kFix;
    const long double ss = static_cast<long double>(acc.latent(j).sumsq) / kFix;
    S[j] = s;
    V[j] = N * ss - s * s;
  }
  std::vector<std::vector<std::pair<float, int32_t>>> cand(n);
  for (const auto& [key, v] : acc.pair_sums()) {
    const int64_t i = static_cast<int64_t>(key / n), j = static_cast<int64_t>(key % n);
    if (V[i] <= 0 || V[j] <= 0) continue;
    const long double sij = static_cast<long double>(v) / kFix;
    const float c = static_cast<float>((N * sij - S[i] * S[j]) / std::sqrt(V[i] * V[j]));
    cand[i].emplace_back(c, static_cast<int32_t>(j));
    cand[j].emplace_back(c, static_cast<int32_t>(i));
  }
  for (int64_t j = 0; j < n; ++j) {
    auto& c = cand[j];
    std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    for (size_t i = 0; i < c.size() && static_cast<int64_t>(i) < o.cofire; ++i)
      fs->features[j].cofire.emplace_back(c[i].second, c[i].first);
  }
}

// features.json's fields, the vocabulary aside.
json FeaturesMeta(const FeatureAccumulator& acc, const Transformer& model, const SaeRun& run) {
  const FeatureOptions& o = acc.options();
  return {
      {"format", "saeforge.features.v1"},
      {"latents", acc.latents()},
      {"tokens", acc.tokens()},
      {"radius", o.radius},
      {"top_contexts", o.top_contexts},
      {"intervals", o.intervals},
      {"interval_samples", o.interval_samples},
      {"sample_seed", o.sample_seed},
      {"cofire", o.cofire},
      {"logit_tokens", o.logit_tokens},
      {"histogram",
       {{"bins", kHistBins}, {"lo", HistEdge(0)}, {"hi", HistEdge(kHistBins)}, {"spacing", "log10, 10 per decade"}}},
      {"logit_effect",
       model.weights().final_norm.defined() ? "lm_head · (final_norm gain ⊙ W_dec[j])" : "lm_head · W_dec[j]"},
      {"sae", run.dir},
      {"layer", run.layer},
      {"hook", HookPointName(run.hook)},
      {"context", o.windows.context},
      {"corpus", o.windows.corpus}};
}

}  // namespace

absl::StatusOr<FeatureSet> FinalizeFeatures(const FeatureAccumulator& acc, const Transformer& model,
                                            const Tokenizer& tok, const SaeRun& run) {
  const FeatureOptions& o = acc.options();
  const int64_t n = acc.latents();
  FeatureSet fs;
  fs.latents = n;
  fs.tokens = acc.tokens();
  fs.radius = o.radius;
  for (int64_t id = 0; id < tok.vocab_size(); ++id) fs.vocab.push_back(tok.DecodePiece(0, static_cast<int32_t>(id)));
  const double N = static_cast<double>(acc.tokens());
  fs.features.reserve(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) fs.features.push_back(DashboardOf(j, acc.latent(j), N, o));
  SAE_RETURN_IF_ERROR(AddLogitEffects(model, run, o, &fs));
  if (o.cofire > 0 && N > 0) AddCofiring(acc, o, &fs);
  fs.meta_json = FeaturesMeta(acc, model, run).dump();
  return fs;
}

absl::StatusOr<FeatureAccumulator> AccumulateFeatures(const Transformer& model, const Tokenizer* tok, const SaeRun& run,
                                                      const FeatureOptions& o,
                                                      const std::function<void(int64_t, int64_t)>& progress) {
  SAE_RETURN_IF_ERROR(CheckSaeFitsModel(run, model));
  if (o.world < 1 || o.rank < 0 || o.rank >= o.world)
    return absl::InvalidArgumentError(absl::StrCat("features: rank ", o.rank, " outside world ", o.world));
  if (o.windows.context < 2 || o.windows.context > model.config().max_seq_len)
    return absl::InvalidArgumentError(
        absl::StrCat("features: --context ", o.windows.context, " outside [2, ", model.config().max_seq_len, "]"));
  if (o.tokens <= 0) return absl::InvalidArgumentError("features: --tokens must be > 0");
  if (o.radius < 0 || o.top_contexts < 0 || o.intervals < 1 || o.interval_samples < 0)
    return absl::InvalidArgumentError("features: radius, contexts and samples must be >= 0, intervals >= 1");
  HarvestOptions h = o.windows;
  h.layer = run.layer;
  h.hook = run.hook;
  SAE_ASSIGN_OR_RETURN(std::unique_ptr<WindowSource> src, WindowSource::Create(model, tok, h));
  const int64_t rpw = h.context - 1;
  int64_t windows = (o.tokens + rpw - 1) / rpw;
  if (src->distinct_windows() > 0) windows = std::min(windows, src->distinct_windows());
  const int64_t blocks = (windows + h.batch - 1) / h.batch;
  int64_t mine = 0;
  for (int64_t b = o.rank; b < blocks; b += o.world) mine += std::min(h.batch, windows - b * h.batch) * rpw;
  FeatureAccumulator acc(run.latents(), o);
  ScopedThreads threads(PreferredThreads(model.config()));
  int64_t done = 0;
  for (int64_t b = o.rank; b < blocks; b += o.world) {
    const int64_t first = b * h.batch, cnt = std::min(h.batch, windows - first);
    SAE_ASSIGN_OR_RETURN(at::Tensor toks, src->Windows(first, cnt));
    SAE_ASSIGN_OR_RETURN(at::Tensor x, HookActivations(model, toks, h.layer, h.hook));
    const int64_t T = toks.size(1);
    at::Tensor rows = x.narrow(1, 1, T - 1).reshape({cnt * (T - 1), x.size(2)});
    SAE_ASSIGN_OR_RETURN(SaeCodes c, EncodeRows(run.sae, rows));
    SAE_RETURN_IF_ERROR(acc.Add(first, toks, c.indices, c.acts));
    done += cnt * rpw;
    if (progress) progress(done, mine);
  }
  return acc;
}

namespace {

template <typename T>
absl::Status AddT(SafetensorsWriter* w, const std::string& name, DType dt, std::vector<int64_t> shape,
                  const std::vector<T>& v) {
  return w->Add(name, dt, std::move(shape), v.data());
}

}  // namespace

absl::Status WriteFeatures(const FeatureSet& fs, const std::string& dir, const std::string& extra_json) {
  SAE_RETURN_IF_ERROR(MakeDirs(dir));
  json meta = json::parse(fs.meta_json);
  if (!extra_json.empty()) {
    json extra = json::parse(extra_json, nullptr, false);
    if (extra.is_object()) meta.update(extra);
  }
  const int64_t n = fs.latents, W = 2 * fs.radius + 1;
  json m = meta;
  const int64_t C = m.at("top_contexts"), G = m.at("intervals"), S = m.at("interval_samples");
  const int64_t L = m.at("logit_tokens"), F = m.at("cofire");
  std::vector<int64_t> count(n), hist(n * kHistBins), top_index(n * C, -1), iv_count(n * G, 0), iv_index(n * G * S, -1);
  std::vector<float> mean(n), mx(n), top_acts(n * C * W, 0), iv_bounds(n * G * 2, 0), iv_acts(n * G * S * W, 0);
  std::vector<double> density(n), edges(kHistBins + 1);
  std::vector<int32_t> top_tokens(n * C * W, -1), iv_tokens(n * G * S * W, -1);
  std::vector<int32_t> lt_id(n * L, -1), lb_id(n * L, -1), cf_id(n * F, -1);
  std::vector<float> lt(n * L, 0), lb(n * L, 0), cf(n * F, 0);
  for (int i = 0; i <= kHistBins; ++i) edges[i] = HistEdge(i);
  for (int64_t j = 0; j < n; ++j) {
    const FeatureDashboard& d = fs.features[j];
    count[j] = d.count;
    density[j] = d.density;
    mean[j] = static_cast<float>(d.mean);
    mx[j] = static_cast<float>(d.max);
    std::copy(d.hist.begin(), d.hist.end(), hist.begin() + j * kHistBins);
    for (size_t c = 0; c < d.top.size() && static_cast<int64_t>(c) < C; ++c) {
      top_index[j * C + c] = d.top[c].token_index;
      std::copy(d.top[c].tokens.begin(), d.top[c].tokens.end(), top_tokens.begin() + (j * C + c) * W);
      std::copy(d.top[c].acts.begin(), d.top[c].acts.end(), top_acts.begin() + (j * C + c) * W);
    }
    for (size_t g = 0; g < d.intervals.size() && static_cast<int64_t>(g) < G; ++g) {
      const auto& iv = d.intervals[g];
      iv_bounds[(j * G + g) * 2] = static_cast<float>(iv.lo);
      iv_bounds[(j * G + g) * 2 + 1] = static_cast<float>(iv.hi);
      iv_count[j * G + g] = iv.count;
      for (size_t s = 0; s < iv.samples.size() && static_cast<int64_t>(s) < S; ++s) {
        const int64_t base = (j * G + g) * S + s;
        iv_index[base] = iv.samples[s].token_index;
        std::copy(iv.samples[s].tokens.begin(), iv.samples[s].tokens.end(), iv_tokens.begin() + base * W);
        std::copy(iv.samples[s].acts.begin(), iv.samples[s].acts.end(), iv_acts.begin() + base * W);
      }
    }
    for (size_t i = 0; i < d.logit_top.size() && static_cast<int64_t>(i) < L; ++i) {
      lt_id[j * L + i] = d.logit_top[i].first;
      lt[j * L + i] = d.logit_top[i].second;
      lb_id[j * L + i] = d.logit_bottom[i].first;
      lb[j * L + i] = d.logit_bottom[i].second;
    }
    for (size_t i = 0; i < d.cofire.size() && static_cast<int64_t>(i) < F; ++i) {
      cf_id[j * F + i] = d.cofire[i].first;
      cf[j * F + i] = d.cofire[i].second;
    }
  }
  SafetensorsWriter w;
  SAE_RETURN_IF_ERROR(AddT(&w, "count", DType::kI64, {n}, count));
  SAE_RETURN_IF_ERROR(AddT(&w, "density", DType::kF64, {n}, density));
  SAE_RETURN_IF_ERROR(AddT(&w, "mean", DType::kF32, {n}, mean));
  SAE_RETURN_IF_ERROR(AddT(&w, "max", DType::kF32, {n}, mx));
  SAE_RETURN_IF_ERROR(AddT(&w, "hist", DType::kI64, {n, kHistBins}, hist));
  SAE_RETURN_IF_ERROR(AddT(&w, "hist_edges", DType::kF64, {kHistBins + 1}, edges));
  SAE_RETURN_IF_ERROR(AddT(&w, "top_index", DType::kI64, {n, C}, top_index));
  SAE_RETURN_IF_ERROR(AddT(&w, "top_tokens", DType::kI32, {n, C, W}, top_tokens));
  SAE_RETURN_IF_ERROR(AddT(&w, "top_acts", DType::kF32, {n, C, W}, top_acts));
  SAE_RETURN_IF_ERROR(AddT(&w, "interval_bounds", DType::kF32, {n, G, 2}, iv_bounds));
  SAE_RETURN_IF_ERROR(AddT(&w, "interval_count", DType::kI64, {n, G}, iv_count));
  SAE_RETURN_IF_ERROR(AddT(&w, "interval_index", DType::kI64, {n, G, S}, iv_index));
  SAE_RETURN_IF_ERROR(AddT(&w, "interval_tokens", DType::kI32, {n, G, S, W}, iv_tokens));
  SAE_RETURN_IF_ERROR(AddT(&w, "interval_acts", DType::kF32, {n, G, S, W}, iv_acts));
  SAE_RETURN_IF_ERROR(AddT(&w, "logit_top_ids", DType::kI32, {n, L}, lt_id));
  SAE_RETURN_IF_ERROR(AddT(&w, "logit_top", DType::kF32, {n, L}, lt));
  SAE_RETURN_IF_ERROR(AddT(&w, "logit_bottom_ids", DType::kI32, {n, L}, lb_id));
  SAE_RETURN_IF_ERROR(AddT(&w, "logit_bottom", DType::kF32, {n, L}, lb));
  SAE_RETURN_IF_ERROR(AddT(&w, "cofire_ids", DType::kI32, {n, F}, cf_id));
  SAE_RETURN_IF_ERROR(AddT(&w, "cofire_corr", DType::kF32, {n, F}, cf));
  SAE_RETURN_IF_ERROR(w.Write(dir + "/features.safetensors"));
  meta["vocab"] = fs.vocab;
  return AtomicWriteFile(dir + "/features.json", meta.dump(1, ' ', false, json::error_handler_t::replace) + "\n");
}

namespace {

// features.safetensors as read: one flat array per tensor, and the sizes
// that shape them (C top contexts, G intervals of S samples, L logit
// tokens, F co-firing latents, windows of W tokens).
struct FeatureArrays {
  int64_t n = 0, W = 0, C = 0, G = 0, S = 0, L = 0, F = 0;
  std::vector<int64_t> count, hist, top_index, iv_count, iv_index;
  std::vector<double> density;
  std::vector<float> mean, mx, top_acts, iv_bounds, iv_acts, lt, lb, cf;
  std::vector<int32_t> top_tokens, iv_tokens, lt_id, lb_id, cf_id;
};

// Reads every tensor of features.safetensors, checking its shape.
absl::Status ReadFeatureArrays(const std::string& spath, FeatureArrays* a) {
  SAE_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(spath));
  auto read = [&](const char* name, std::vector<int64_t> shape, auto* out) -> absl::Status {
    SAE_ASSIGN_OR_RETURN(TensorInfo info, f.Info(name));
    if (info.shape != shape)
      return absl::InvalidArgumentError(absl::StrCat(spath, ": tensor '", name, "' has the wrong shape"));
    int64_t cnt = 1;
    for (int64_t s : shape) cnt *= s;
    out->resize(static_cast<size_t>(cnt));
    return f.ReadRaw(name, out->data(), out->size() * sizeof((*out)[0]));
  };
  const int64_t n = a->n, W = a->W, C = a->C, G = a->G, S = a->S, L = a->L, F = a->F;
  SAE_RETURN_IF_ERROR(read("count", {n}, &a->count));
  SAE_RETURN_IF_ERROR(read("density", {n}, &a->density));
  SAE_RETURN_IF_ERROR(read("mean", {n}, &a->mean));
  SAE_RETURN_IF_ERROR(read("max", {n}, &a->mx));
  SAE_RETURN_IF_ERROR(read("hist", {n, kHistBins}, &a->hist));
  SAE_RETURN_IF_ERROR(read("top_index", {n, C}, &a->top_index));
  SAE_RETURN_IF_ERROR(read("top_tokens", {n, C, W}, &a->top_tokens));
  SAE_RETURN_IF_ERROR(read("top_acts", {n, C, W}, &a->top_acts));
  SAE_RETURN_IF_ERROR(read("interval_bounds", {n, G, 2}, &a->iv_bounds));
  SAE_RETURN_IF_ERROR(read("interval_count", {n, G}, &a->iv_count));
  SAE_RETURN_IF_ERROR(read("interval_index", {n, G, S}, &a->iv_index));
  SAE_RETURN_IF_ERROR(read("interval_tokens", {n, G, S, W}, &a->iv_tokens));
  SAE_RETURN_IF_ERROR(read("interval_acts", {n, G, S, W}, &a->iv_acts));
  SAE_RETURN_IF_ERROR(read("logit_top_ids", {n, L}, &a->lt_id));
  SAE_RETURN_IF_ERROR(read("logit_top", {n, L}, &a->lt));
  SAE_RETURN_IF_ERROR(read("logit_bottom_ids", {n, L}, &a->lb_id));
  SAE_RETURN_IF_ERROR(read("logit_bottom", {n, L}, &a->lb));
  SAE_RETURN_IF_ERROR(read("cofire_ids", {n, F}, &a->cf_id));
  SAE_RETURN_IF_ERROR(read("cofire_corr", {n, F}, &a->cf));
  return absl::OkStatus();
}

// Latent j's dashboard from the arrays (slots marked -1 are empty).
FeatureDashboard DashboardFromArrays(const FeatureArrays& a, int64_t j, int64_t radius) {
  const int64_t W = a.W, C = a.C, G = a.G, S = a.S, L = a.L, F = a.F;
  auto ctx = [&](int64_t index, const int32_t* t, const float* acts) {
    FeatureContext c;
    c.token_index = index;
    c.tokens.assign(t, t + W);
    c.acts.assign(acts, acts + W);
    c.act = c.acts[radius];
    return c;
  };
  FeatureDashboard d;
  d.latent = j;
  d.count = a.count[j];
  d.density = a.density[j];
  d.mean = a.mean[j];
  d.max = a.mx[j];
  d.hist.assign(a.hist.begin() + j * kHistBins, a.hist.begin() + (j + 1) * kHistBins);
  for (int64_t c = 0; c < C; ++c)
    if (a.top_index[j * C + c] >= 0)
      d.top.push_back(ctx(a.top_index[j * C + c], &a.top_tokens[(j * C + c) * W], &a.top_acts[(j * C + c) * W]));
  for (int64_t g = 0; g < G; ++g) {
    if (a.iv_count[j * G + g] == 0) continue;
    FeatureInterval iv;
    iv.lo = a.iv_bounds[(j * G + g) * 2];
    iv.hi = a.iv_bounds[(j * G + g) * 2 + 1];
    iv.count = a.iv_count[j * G + g];
    for (int64_t s = 0; s < S; ++s) {
      const int64_t base = (j * G + g) * S + s;
      if (a.iv_index[base] >= 0)
        iv.samples.push_back(ctx(a.iv_index[base], &a.iv_tokens[base * W], &a.iv_acts[base * W]));
    }
    d.intervals.push_back(std::move(iv));
  }
  for (int64_t i = 0; i < L; ++i) {
    if (a.lt_id[j * L + i] >= 0) d.logit_top.emplace_back(a.lt_id[j * L + i], a.lt[j * L + i]);
    if (a.lb_id[j * L + i] >= 0) d.logit_bottom.emplace_back(a.lb_id[j * L + i], a.lb[j * L + i]);
  }
  for (int64_t i = 0; i < F; ++i)
    if (a.cf_id[j * F + i] >= 0) d.cofire.emplace_back(a.cf_id[j * F + i], a.cf[j * F + i]);
  return d;
}

}  // namespace

absl::StatusOr<FeatureSet> LoadFeatures(const std::string& dir) {
  const std::string jpath = dir + "/features.json", spath = dir + "/features.safetensors";
  SAE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(jpath));
  json meta = json::parse(text, nullptr, false);
  if (meta.is_discarded() || !meta.is_object() || meta.value("format", "") != "saeforge.features.v1")
    return absl::InvalidArgumentError(absl::StrCat(jpath, ": not a saeforge.features.v1 file"));
  FeatureSet fs;
  try {
    fs.latents = meta.at("latents");
    fs.tokens = meta.at("tokens");
    fs.radius = meta.at("radius");
    fs.vocab = meta.at("vocab").get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(jpath, ": ", e.what()));
  }
  meta.erase("vocab");
  fs.meta_json = meta.dump();
  FeatureArrays a;
  a.n = fs.latents;
  a.W = 2 * fs.radius + 1;
  a.C = meta.value("top_contexts", 0);
  a.G = meta.value("intervals", 1);
  a.S = meta.value("interval_samples", 0);
  a.L = meta.value("logit_tokens", 0);
  a.F = meta.value("cofire", 0);
  SAE_RETURN_IF_ERROR(ReadFeatureArrays(spath, &a));
  fs.features.reserve(static_cast<size_t>(a.n));
  for (int64_t j = 0; j < a.n; ++j) fs.features.push_back(DashboardFromArrays(a, j, fs.radius));
  return fs;
}

}  // namespace sae
