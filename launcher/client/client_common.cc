#include "launcher/client/client_common.h"

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>

namespace shardtune {

std::string Json(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

std::string Time(const google::protobuf::Timestamp& time) {
  if (time.seconds() <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(time.seconds());
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%d %H:%M:%S", std::localtime(&t));
  return buffer;
}

namespace {

// The status code's name, as gRPC spells it, for the codes a request of the user's making gets.
const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    default:
      return nullptr;
  }
}

}  // namespace

int Refused(const grpc::Status& status) {
  const char* code = CodeName(status.error_code());
  std::fprintf(stderr, "error: %s%s%s: %s\n",
               grpc::StatusCode(status.error_code()) == grpc::UNAVAILABLE ? "UNAVAILABLE" : "refused", code ? " " : "",
               code ? code : "", status.error_message().c_str());
  return code ? 2 : 1;  // the user's to fix: 2
}

void ResolveServerAndToken(std::string& server, std::string& token) {
  YAML::Node file;
  if (const char* home = std::getenv("HOME")) {
    const std::string path = std::string(home) + "/.config/shardtune/client.yaml";
    if (std::filesystem::exists(path)) file = YAML::LoadFile(path);
  }
  auto pick = [&](std::string& value, const char* env, const char* key, const std::string& fallback) {
    if (value.empty() && std::getenv(env)) value = std::getenv(env);
    if (value.empty() && file && file[key]) value = file[key].as<std::string>();
    if (value.empty()) value = fallback;
  };
  pick(server, "SHARDTUNE_SERVER", "server", "127.0.0.1:50551");
  pick(token, "SHARDTUNE_TOKEN", "token", "");
}

std::shared_ptr<grpc::Channel> OpenChannel(const std::string& server, const std::string& tls_ca) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!tls_ca.empty()) {
    grpc::SslCredentialsOptions options;
    std::ifstream in(tls_ca);
    options.pem_root_certs.assign(std::istreambuf_iterator<char>(in), {});
    credentials = grpc::SslCredentials(options);
  }
  return grpc::CreateChannel(server, credentials);
}

std::unique_ptr<grpc::ClientContext> ContextWithKey(const std::string& token) {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
  return context;
}

}  // namespace shardtune
