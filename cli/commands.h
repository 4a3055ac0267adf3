// The `sae` command-line tool: each subcommand is a function over parsed
// arguments so the thin main stays testable. Returns the process exit code
// (0 ok, 1 error, 2 usage); errors are printed to stderr. (sae-worker has
// its own main: worker/worker_main.cc.)
#pragma once

namespace sae {

int SaeMain(int argc, char** argv);

}  // namespace sae
