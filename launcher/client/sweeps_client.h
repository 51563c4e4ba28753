#pragma once
// `shardtune sweep submit|get|list|watch|cancel` (docs/cli.md, docs/sweeps.md "Through the
// server"): sweeps run by a shardtune-server. Server and key as for the job commands (client.h).
// `shardtune sweep SWEEP.yaml` without one of these words runs the sweep here (sweep_command.h).

#include <CLI/CLI.hpp>
#include <memory>

namespace shardtune {

class SweepCommands {
 public:
  explicit SweepCommands(CLI::App& sweep);  // adds the commands to `shardtune sweep`
  ~SweepCommands();
  bool parsed() const;
  // Runs the parsed command: 0 on success (watch: the sweep succeeded), 2 when the server refused
  // the request (a bad spec, an unknown sweep, no access), 1 otherwise.
  int Run();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace shardtune
