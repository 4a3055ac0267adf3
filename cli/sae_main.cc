#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/base/blas_kernel.h"

// Whatever escapes a command (an allocation that fails, a library that
// throws) ends it with a message and exit status 1, never an abort.
int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  try {
    return sae::SaeMain(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
