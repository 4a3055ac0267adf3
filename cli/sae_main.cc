#include <cstdio>
#include <exception>

#include "cli/commands.h"

// Whatever escapes a command (an allocation that fails, a library that
// throws) ends it with a message and exit status 1, never an abort.
int main(int argc, char** argv) {
  try {
    return sae::SaeMain(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
