#pragma once
// The configured API keys (server.yaml `api_keys`), looked up by the SHA-256 of the key a request
// carries as `authorization: Bearer KEY`: one lookup for the gRPC services (service_util.h) and
// the HTTP routes (http_server.h). Immutable after construction: safe to share between threads.

#include <map>
#include <optional>
#include <string>

#include "launcher/server/job_manager.h"
#include "launcher/server/server_config.h"

namespace shardtune::server {

class ApiKeyTable {
 public:
  explicit ApiKeyTable(const ServerConfig& config) {
    for (const ApiKey& key : config.api_keys) keys_[key.sha256] = key;
  }

  // Who `key` is: its tenant and role; nullopt for an empty or unknown key.
  std::optional<Caller> Find(const std::string& key) const {
    if (key.empty()) return std::nullopt;
    const auto it = keys_.find(Sha256Hex(key));
    if (it == keys_.end()) return std::nullopt;
    return Caller{it->second.tenant, it->second.role == "admin", it->second.role == "viewer"};
  }

 private:
  std::map<std::string, ApiKey> keys_;
};

// The KEY of an authorization header "Bearer KEY"; "" when it is absent or of another scheme.
inline std::string BearerKey(const std::string& authorization) {
  const std::string prefix = "Bearer ";
  return authorization.rfind(prefix, 0) == 0 ? authorization.substr(prefix.size()) : "";
}

}  // namespace shardtune::server
