#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/base/blas_kernel.h"

// As in sae_main.cc: an escaped exception ends the worker with a message
// and exit status 1 (jobs from a coordinator are caught per attempt).
int main(int argc, char** argv) {
  sae::ChooseBlasKernel(argc, argv);  // first: it may re-exec (core/base/blas_kernel.h)
  try {
    return sae::WorkerMain(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
