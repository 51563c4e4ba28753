#pragma once
// What the CLI's client commands share (client.cc: jobs; files_client.cc: files): the server and
// key they talk to, and how they print messages and refusals.

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>

namespace shardtune {

// A message as one line of JSON (proto field names).
std::string Json(const google::protobuf::Message& message);
// Local time of a Unix time in milliseconds; "-" for 0.
std::string Time(int64_t ms);
// Prints why the server refused and returns the exit code: 2 for a refused request, 1 otherwise.
int Refused(const grpc::Status& status);
// Defaults of --server and --token: the flag, then the environment ($SHARDTUNE_SERVER,
// $SHARDTUNE_TOKEN), then ~/.config/shardtune/client.yaml, then the built-in one.
void ResolveServerAndToken(std::string& server, std::string& token);
// A channel to `server`: TLS when `tls_ca` (a CA certificate file) is given.
std::shared_ptr<grpc::Channel> OpenChannel(const std::string& server, const std::string& tls_ca);

}  // namespace shardtune
