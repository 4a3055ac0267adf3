// `sae submit | jobs | status | watch | cancel`: the client side of the
// service, added to the `sae` command by AddServiceCommands. Coordinator from
// --coordinator or SAE_COORDINATOR; --json on each.
#pragma once

#include <memory>

namespace CLI {
class App;
}

namespace sae {

struct ServiceCli;

std::shared_ptr<ServiceCli> AddServiceCommands(CLI::App* app);
// True when one of the service subcommands was parsed; *rc is its exit code.
bool RunServiceCommand(const ServiceCli& cli, int* rc);

}  // namespace sae
