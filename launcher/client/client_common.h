#pragma once
// What the CLI's client commands share (client.cc: jobs; files_client.cc: files): the server and
// key they talk to, and how they print messages and refusals.

#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace shardtune {

// A message as one line of JSON (proto field names).
std::string Json(const google::protobuf::Message& message);
// Local time of a Timestamp; "-" for an unset one.
std::string Time(const google::protobuf::Timestamp& time);
// Prints why the server refused and returns the exit code: 2 for a refused request, 1 otherwise.
int Refused(const grpc::Status& status);
// Defaults of --server and --token: the flag, then the environment ($SHARDTUNE_SERVER,
// $SHARDTUNE_TOKEN), then ~/.config/shardtune/client.yaml, then the built-in one.
void ResolveServerAndToken(std::string& server, std::string& token);
// A channel to `server`: TLS when `tls_ca` (a CA certificate file) is given.
std::shared_ptr<grpc::Channel> OpenChannel(const std::string& server, const std::string& tls_ca);
// A context for one RPC, carrying the API key (`authorization: Bearer TOKEN`) when there is one.
std::unique_ptr<grpc::ClientContext> ContextWithKey(const std::string& token);
// What an RPC answered: `message` as one line of JSON when `json`, else as `print` shows it; or
// why the server refused. Returns the exit code.
template <class Message>
int ShowReply(const grpc::Status& status, const Message& message, bool json, void (*print)(const Message&)) {
  if (!status.ok()) return Refused(status);
  if (json) {
    std::printf("%s\n", Json(message).c_str());
  } else {
    print(message);
  }
  return 0;
}

// One family of client commands (jobs, files, sweeps): each command a subcommand of `parent` with
// --server, --token, --tls-ca and --output besides its own options, all written into one Flags
// (which has those four members), and run with a Call made from the flags (its stub and key).
template <typename Flags, typename Call>
class ClientCommandSet {
 public:
  struct Command {
    const char* name;
    const char* help;
    void (*options)(CLI::App*, Flags&);
    int (*run)(Call&);
  };

  ClientCommandSet(CLI::App& parent, const std::vector<Command>& commands) {
    for (const Command& command : commands) {
      CLI::App* c = parent.add_subcommand(command.name, command.help);
      c->add_option("--server", flags_.server, "shardtune-server address (default: $SHARDTUNE_SERVER)");
      c->add_option("--token", flags_.token, "API key (default: $SHARDTUNE_TOKEN)");
      c->add_option("--tls-ca", flags_.tls_ca, "CA certificate: connect with TLS");
      c->add_option("--output", flags_.output, "table or json")->check(CLI::IsMember({"table", "json"}));
      command.options(c, flags_);
      commands_.emplace_back(&command, c);
    }
  }

  bool parsed() const {
    for (const auto& [command, app] : commands_)
      if (app->parsed()) return true;
    return false;
  }

  // Runs the parsed command; 2 when none was parsed, or when it threw (a local file it could not
  // read, a message it could not write), after saying why.
  int Run() {
    for (const auto& [command, app] : commands_) {
      if (!app->parsed()) continue;
      ResolveServerAndToken(flags_.server, flags_.token);
      Call call(flags_);
      try {
        return command->run(call);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
      }
    }
    return 2;
  }

 private:
  Flags flags_;
  std::vector<std::pair<const Command*, CLI::App*>> commands_;  // in the order given
};

}  // namespace shardtune
