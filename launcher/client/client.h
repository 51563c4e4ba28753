#pragma once
// The CLI's client commands for a shardtune-server: submit, validate, list, get, watch, cancel,
// pause, resume, events, checkpoints (docs/cli.md). The server is --server, else
// $SHARDTUNE_SERVER, else `server:` in ~/.config/shardtune/client.yaml, else 127.0.0.1:50551;
// the API key likewise (--token, $SHARDTUNE_TOKEN, `token:`).

#include <CLI/CLI.hpp>
#include <memory>

namespace shardtune {

class ClientCommands {
 public:
  explicit ClientCommands(CLI::App& app);
  ~ClientCommands();
  bool parsed() const;
  // Runs the parsed command: 0 on success (watch: the job succeeded), 1 when the job or the
  // server failed, 2 when the request was refused (bad spec, unknown job, no access).
  int Run();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace shardtune
