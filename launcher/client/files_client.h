#pragma once
// `shardtune files upload|list|get|delete|download` (docs/cli.md): the Files API of a
// shardtune-server. Server and key as for the job commands (client.h). Uploads and downloads show
// a progress bar on stderr when it is a terminal, and nothing otherwise; a download is written to
// a temporary name beside -o PATH, fsynced and renamed, so PATH is whole or absent.

#include <CLI/CLI.hpp>
#include <memory>

namespace shardtune {

class FileCommands {
 public:
  explicit FileCommands(CLI::App& app);  // adds `files` and its commands to `app`
  ~FileCommands();
  bool parsed() const;
  // Runs the parsed command: 0 on success, 2 when the server refused the request, 1 otherwise.
  int Run();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace shardtune
