// The `sae` command-line tool: each subcommand is a function over parsed
// arguments so the thin mains stay testable. Returns the process exit code
// (0 ok, 1 error, 2 usage); errors are printed to stderr.
#pragma once

namespace sae {

int SaeMain(int argc, char** argv);
int WorkerMain(int argc, char** argv);

}  // namespace sae
