#include <cstdio>
#include <cstring>
#include <exception>

#include "cli/commands.h"
#include "core/base/blas_kernel.h"

namespace {

bool Is(int argc, char** argv, int i, const char* name) { return argc > i && std::strcmp(argv[i], name) == 0; }

// The coordinator's client commands run no GEMM: no re-exec for the BLAS
// kernel at all.
bool RunsNoGemm(int argc, char** argv) {
  if (argc < 2) return true;
  for (const char* c : {"submit", "jobs", "status", "watch", "cancel"})
    if (Is(argc, argv, 1, c)) return true;
  return false;
}

// The long, throughput-bound commands say which BLAS kernel they run on;
// the short ones (generate, features show, concepts, ...) print results
// that users and scripts read together with stderr, so they re-execute
// without a word, as does a long one given --quiet.
bool Announces(int argc, char** argv) {
  for (int i = 2; i < argc; ++i)
    if (std::strcmp(argv[i], "--quiet") == 0) return false;
  for (const char* c : {"train", "harvest", "eval", "serve"})
    if (Is(argc, argv, 1, c)) return true;
  return Is(argc, argv, 1, "features") && Is(argc, argv, 2, "build");
}

}  // namespace

// Whatever escapes a command (an allocation that fails, a library that
// throws) ends it with a message and exit status 1, never an abort.
int main(int argc, char** argv) {
  // First: it may re-exec (core/base/blas_kernel.h).
  if (!RunsNoGemm(argc, argv)) sae::ChooseBlasKernel(argc, argv, Announces(argc, argv));
  try {
    return sae::SaeMain(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
