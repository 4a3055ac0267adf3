// The language-model subcommands of `sae` (generate, harvest, eval), kept
// apart from commands.cc. AddLmCommands registers them on `app` and returns
// a function that runs whichever was parsed: its exit code, or −1 if none was.
#pragma once

#include <functional>

namespace CLI {
class App;
}

namespace sae {

std::function<int()> AddLmCommands(CLI::App* app);

}  // namespace sae
