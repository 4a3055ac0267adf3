// The language-model subcommands of `sae` (generate, harvest, eval), kept
// apart from commands.cc. AddLmCommands registers them on `app` and returns
// their runner (cli/subcommand.h).
#pragma once

#include "cli/subcommand.h"

namespace sae {

CommandRunner AddLmCommands(flags::Command* app);

}  // namespace sae
