// `sae serve`: the web visualizer (web/, embedded in the binary) and the JSON
// API of serve_api.h over cpp-httplib. Loopback by default; any other address
// needs --token-file (every /api request then carries "Authorization: Bearer
// TOKEN"). Request bodies are limited; only the embedded files and /api/* are
// served.
#pragma once

#include <functional>

namespace CLI {
class App;
}

namespace sae {

std::function<int()> AddServeCommand(CLI::App* app);  // returns −1 when `serve` was not parsed

}  // namespace sae
