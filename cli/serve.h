// `sae serve`: the web visualizer (web/, embedded in the binary) and the JSON
// API of serve_api.h over cpp-httplib. Loopback by default; any other address
// needs --token-file (every /api request then carries "Authorization: Bearer
// TOKEN"). Request bodies are limited; only the embedded files and /api/* are
// served.
#pragma once

#include "cli/subcommand.h"

namespace sae {

CommandRunner AddServeCommand(flags::Command* app);  // cli/subcommand.h

}  // namespace sae
