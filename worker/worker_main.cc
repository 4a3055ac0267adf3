#include <cstdio>
#include <exception>

#include "cli/commands.h"

// As in sae_main.cc: an escaped exception ends the worker with a message
// and exit status 1 (jobs from a coordinator are caught per attempt).
int main(int argc, char** argv) {
  try {
    return sae::WorkerMain(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
