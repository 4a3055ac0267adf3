// How `sae` registers its subcommands, the one way for all of them: an
// Add...Command(s)(app) function adds its subcommands and flags to `app` and
// returns a CommandRunner. After parsing, SaeMain calls each runner in turn:
// a runner runs whichever of its subcommands was parsed and returns its exit
// code (0 ok, 1 error, 2 usage), or kNotParsed when none of them was.
#pragma once

#include <functional>

namespace sae::flags {
class Command;  // cli/flags.h
}

namespace sae {

using CommandRunner = std::function<int()>;
inline constexpr int kNotParsed = -1;

}  // namespace sae
