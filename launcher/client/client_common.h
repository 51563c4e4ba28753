#pragma once
// What the CLI's client commands share (client.cc: jobs; files_client.cc: files): the server and
// key they talk to, and how they print messages and refusals.

#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>
#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

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

}  // namespace shardtune
