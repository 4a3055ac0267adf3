// `sae submit | jobs | status | watch | cancel`: the client side of the
// service, added to the `sae` command by AddServiceCommands. Coordinator from
// --coordinator or SAE_COORDINATOR; --json on each.
#pragma once

#include "cli/subcommand.h"

namespace sae {

CommandRunner AddServiceCommands(flags::Command* app);

}  // namespace sae
