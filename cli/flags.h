// Command-line flags for saeforge's mains and benchmarks: a thin layer over
// CLI11, which stays the parser (parsing, --help and error messages are
// CLI11's), compiled once in flags.cc. Debian's CLI11 2.1 is header-only and
// compiles its App, Option and Formatter code into every file that includes
// it (5-7 CPU-s each, docs/performance.md "Build time"); a file that includes
// this header compiles a few calls instead.
//
// A Command owns its subcommands; the Command* and Option handles it returns
// live as long as it does. Not thread-safe (one thread builds and parses).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace sae::flags {

// An option or flag of a Command; each setter returns the option again.
class Option {
 public:
  Option Required();                               // the command line must give it
  Option Env(const std::string& variable);         // taken from `variable` when not given
  Option ShowDefault();                            // --help shows its value before parsing
  Option OneOf(std::vector<std::string> allowed);  // the value must be one of these
  Option Positive();                               // the value must be a number > 0

 private:
  friend class Command;
  explicit Option(CLI::Option* option) : option_(option) {}
  CLI::Option* option_;
};

// A command and its flags. The top-level one (made with a description) parses
// argv; AddSubcommand adds the commands below it.
class Command {
 public:
  explicit Command(const std::string& description);
  ~Command();
  Command(const Command&) = delete;
  Command& operator=(const Command&) = delete;

  // `name`: "--long", "--long,-l" or a positional "name". Parsing writes the
  // value into `value`, which must outlive the parse.
  Option AddOption(const std::string& name, std::string& value, const std::string& help = "");
  Option AddOption(const std::string& name, int& value, const std::string& help = "");
  Option AddOption(const std::string& name, int64_t& value, const std::string& help = "");
  Option AddOption(const std::string& name, uint64_t& value, const std::string& help = "");
  Option AddOption(const std::string& name, float& value, const std::string& help = "");
  Option AddOption(const std::string& name, double& value, const std::string& help = "");
  Option AddOption(const std::string& name, std::vector<std::string>& value, const std::string& help = "");
  Option AddOption(const std::string& name, std::vector<int64_t>& value, const std::string& help = "");
  Option AddOption(const std::string& name, std::vector<double>& value, const std::string& help = "");
  // A flag without a value: `value` becomes true when given.
  Option AddFlag(const std::string& name, bool& value, const std::string& help = "");

  Command* AddSubcommand(const std::string& name, const std::string& description);
  void RequireSubcommand(int n);  // exactly n subcommands must be given
  bool Parsed() const;            // a subcommand: it was given on the command line

  // Top level only: parses argv. nullopt when argv is a valid command line;
  // otherwise CLI11 has printed the help (--help) or the error, and this is
  // CLI11's exit code for it (0 after --help).
  std::optional<int> Parse(int argc, char** argv);
  std::string Help() const;  // what --help prints

 private:
  explicit Command(CLI::App* subcommand);

  std::unique_ptr<CLI::App> owned_;  // the top-level command's CLI11 app
  CLI::App* app_;
  std::vector<std::unique_ptr<Command>> subcommands_;
};

}  // namespace sae::flags
