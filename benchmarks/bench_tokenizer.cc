// bench_tokenizer: encoding throughput (MB/s of UTF-8 input, tokens/s) of a
// tokenizer file (tokenizer.json, .model, llama2.c .bin) on a text file, as
// harvest uses it (one Encode per document). Prints machine, build and the
// median of repeated runs.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/bench_util.h"
#include "cli/flags.h"
#include "core/lm/tokenizer.h"

int main(int argc, char** argv) {
  sae::flags::Command app{"bench_tokenizer: Encode throughput on a text file"};
  std::string tok_path, text_path;
  int64_t vocab = 1 << 30, reps = 5;
  app.AddOption("--tokenizer", tok_path, "tokenizer.json, .model or llama2.c .bin").Required();
  app.AddOption("--text", text_path, "UTF-8 text; documents split at blank lines").Required();
  app.AddOption("--vocab", vocab, "model vocabulary size (llama2.c .bin needs the exact one)");
  app.AddOption("--reps", reps, "repetitions (median reported)");
  if (auto rc = app.Parse(argc, argv)) return *rc;
  auto tok = sae::LoadTokenizerFor(tok_path, vocab, tok_path);
  if (!tok.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  std::ifstream in(text_path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::string> docs;
  for (size_t pos = 0; pos < text.size();) {
    size_t e = text.find("\n\n", pos);
    if (e == std::string::npos) e = text.size();
    if (e > pos) docs.push_back(text.substr(pos, e - pos));
    pos = e + 2;
  }
  std::printf("machine: %s, %u hardware threads; build %s, commit %s\n", sae::bench::CpuModel().c_str(),
              std::thread::hardware_concurrency(), SAE_BUILD_TYPE, sae::bench::Commit().c_str());
  std::printf("tokenizer: %s (vocab %ld); text: %s (%zu bytes, %zu documents)\n", tok_path.c_str(),
              (*tok)->vocab_size(), text_path.c_str(), text.size(), docs.size());
  std::vector<double> secs;
  size_t tokens = 0;
  for (int64_t r = 0; r < reps; ++r) {
    const double t0 = sae::bench::SteadyNow();
    tokens = 0;
    for (const std::string& d : docs) tokens += (*tok)->Encode(d, true, false).size();
    secs.push_back(sae::bench::SteadyNow() - t0);
  }
  const double s = sae::bench::Median(secs);
  std::printf("encode: %.3f ms per pass, %.2f MB/s, %.0f tokens/s (%zu tokens)\n", s * 1e3, text.size() / s / 1e6,
              tokens / s, tokens);
  return 0;
}
