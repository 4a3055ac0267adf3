#include "cli/flags.h"

#include <CLI/CLI.hpp>

#include <utility>

namespace sae::flags {

Option Option::Required() { return Option(option_->required()); }
Option Option::Env(const std::string& variable) { return Option(option_->envname(variable)); }
Option Option::ShowDefault() { return Option(option_->capture_default_str()); }
Option Option::Positive() { return Option(option_->check(CLI::PositiveNumber)); }
Option Option::OneOf(std::vector<std::string> allowed) {
  return Option(option_->check(CLI::IsMember(std::move(allowed))));
}

Command::Command(const std::string& description)
    : owned_(std::make_unique<CLI::App>(description)), app_(owned_.get()) {}
Command::Command(CLI::App* subcommand) : app_(subcommand) {}
Command::~Command() = default;

Option Command::AddOption(const std::string& name, std::string& value, const std::string& help) {
  return Option(app_->add_option(name, value, help));
}
Option Command::AddOption(const std::string& name, int& value, const std::string& help) {
  return Option(app_->add_option(name, value, help));
}
Option Command::AddOption(const std::string& name, int64_t& value, const std::string& help) {
  return Option(app_->add_option(name, value, help));
}
Option Command::AddOption(const std::string& name, uint64_t& value, const std::string& help) {
  return Option(app_->add_option(name, value, help));
}
Option Command::AddOption(const std::string& name, float& value, const std::string& help) {
  return Option(app_->add_option(name, value, help));
}
Option Command::AddOption(const std::string& name, double& value, const std::string& help) {
  return Option(app_->add_option(name, value, help));
}
Option Command::AddOption(const std::string& name, std::vector<std::string>& value, const std::string& help) {
  return Option(app_->add_option(name, value, help));
}
Option Command::AddOption(const std::string& name, std::vector<int64_t>& value, const std::string& help) {
  return Option(app_->add_option(name, value, help));
}
Option Command::AddOption(const std::string& name, std::vector<double>& value, const std::string& help) {
  return Option(app_->add_option(name, value, help));
}
Option Command::AddFlag(const std::string& name, bool& value, const std::string& help) {
  return Option(app_->add_flag(name, value, help));
}

Command* Command::AddSubcommand(const std::string& name, const std::string& description) {
  subcommands_.push_back(std::unique_ptr<Command>(new Command(app_->add_subcommand(name, description))));
  return subcommands_.back().get();
}
void Command::RequireSubcommand(int n) { app_->require_subcommand(n); }
bool Command::Parsed() const { return app_->parsed(); }

std::optional<int> Command::Parse(int argc, char** argv) {
  try {
    app_->parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app_->exit(e);
  }
  return std::nullopt;
}

std::string Command::Help() const { return app_->help(); }

}  // namespace sae::flags
