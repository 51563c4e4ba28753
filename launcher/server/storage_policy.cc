#include "launcher/server/storage_policy.h"

#include <arpa/inet.h>

#include "common/error.h"
#include "common/worker_contract.h"
#include "launcher/server/job_manager.h"

namespace shardtune::server {

namespace fs = std::filesystem;

namespace {

void RequirePlainRoot(const std::string& key, const std::string& root) {
  if (!fs::path(root).is_absolute()) Fail(ErrorCode::kInvalidArgument, "{}: {} is not an absolute path", key, root);
  for (const unsigned char c : root) {
    if (c == ':' || c < 0x20 || c == 0x7f)
      Fail(ErrorCode::kInvalidArgument, "{}: {} holds ':' or a control character; name another directory", key, root);
  }
}

void RequireExisting(const std::string& key, const std::string& root) {
  RequirePlainRoot(key, root);
  if (!fs::is_directory(root)) Fail(ErrorCode::kNotFound, "{}: {} is not an existing directory", key, root);
}

}  // namespace

bool ListensOnLoopbackOnly(const std::string& listen) {
  if (listen.rfind("unix:", 0) == 0) return true;
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "localhost" || host == "::1") return true;
  in_addr address{};
  return ::inet_pton(AF_INET, host.c_str(), &address) == 1 && (ntohl(address.s_addr) >> 24) == 127;
}

std::vector<std::string> ExposureWarnings(const ServerConfig& config, bool running_as_root) {
  std::vector<std::string> warnings;
  // The gRPC and the HTTP listener take the same requests (jobs, files): the same rule for both.
  std::string listens = config.listen;
  if (!config.http.listen.empty()) listens += " and " + config.http.listen;
  auto require_loopback = [&](const std::string& why, const std::string& fix) {
    for (const std::string& listen : {config.listen, config.http.listen})
      if (!listen.empty() && !ListensOnLoopbackOnly(listen))
        Fail(ErrorCode::kFailedPrecondition, "refusing to listen on {}: {}; {}", listen, why, fix);
    warnings.push_back(fmt::format("{}: serving on loopback ({}) only; {}", why, listens, fix));
  };
  if (!config.metrics_listen.empty() && !ListensOnLoopbackOnly(config.metrics_listen)) {
    warnings.push_back(
        fmt::format("metrics_listen {} is not loopback: its GET /metrics asks for no key and names "
                    "every tenant and running job; keep it on a network only Prometheus reaches",
                    config.metrics_listen));
  }
  if (!config.storage.enabled) {
    require_loopback("no `storage:` in the configuration, so jobs may read and write any path this server can",
                     "give each tenant a root under `storage:` before listening on another address (docs/server.md, "
                     "\"Storage and tenants\")");
  }
  if (running_as_root && config.run_as.empty()) {
    require_loopback("the server runs as root and `run_as` names no user, so jobs run as root",
                     "set `run_as` to an unprivileged user before listening on another address");
  }
  if (!running_as_root && !config.run_as.empty()) {
    warnings.push_back(
        fmt::format("run_as '{}' is ignored: the server does not run as root, and its jobs run as its "
                    "own user",
                    config.run_as));
  }
  return warnings;
}

StoragePolicy::StoragePolicy(const StorageConfig& config, const std::vector<ApiKey>& api_keys) : config_(config) {
  for (const ApiKey& key : api_keys)
    if (key.role == "admin") admin_tenants_.insert(key.tenant);
  if (!config_.enabled) return;
  for (const auto& [tenant, storage] : config_.tenants) {
    const std::string at = "storage.tenants." + tenant;
    RequirePlainRoot(at + ".root", storage.root);
    fs::create_directories(storage.root);
    for (const std::string& root : storage.read_only) RequireExisting(at + ".read_only", root);
  }
  for (const std::string& root : config_.read_only) RequireExisting("storage.read_only", root);
  for (const std::string& root : config_.admin_read_only) RequireExisting("storage.admin_read_only", root);
}

StorageRoots StoragePolicy::RootsFor(const std::string& tenant, bool admin) const {
  const auto own = config_.tenants.find(tenant);
  if (own == config_.tenants.end()) {
    throw RequestError(RequestError::Kind::kPermissionDenied,
                       fmt::format("tenant '{}' has no storage on this server (no entry under storage.tenants in its "
                                   "configuration): it may not run jobs; ask the server's administrator",
                                   tenant));
  }
  StorageRoots roots;
  roots.write = {own->second.root};
  roots.read.assign(own->second.read_only.begin(), own->second.read_only.end());
  roots.read.insert(roots.read.end(), config_.read_only.begin(), config_.read_only.end());
  roots.tenant_owned = roots.write;
  if (admin) {
    roots.read.insert(roots.read.end(), config_.admin_read_only.begin(), config_.admin_read_only.end());
    for (const auto& [other, storage] : config_.tenants) {
      roots.read.push_back(storage.root);
      roots.tenant_owned.push_back(storage.root);
    }
  }
  try {
    return ResolvedRoots(roots);
  } catch (const Error& e) {  // a root removed since the server started
    throw RequestError(RequestError::Kind::kFailedPrecondition, e.what());
  }
}

void StoragePolicy::Require(const std::string& tenant, bool admin, const JobSpec& spec) const {
  if (!config_.enabled) return;
  const std::vector<std::string> problems = SpecPathProblems(spec, RootsFor(tenant, admin));
  if (problems.empty()) return;
  std::string message = fmt::format("tenant '{}' may not use these paths:", tenant);
  for (const std::string& problem : problems) message += "\n" + problem;
  throw RequestError(RequestError::Kind::kPermissionDenied, message);
}

std::map<std::string, std::string> StoragePolicy::Environment(const std::string& tenant) const {
  if (!config_.enabled) return {};
  const StorageRoots roots = RootsFor(tenant, admin_tenants_.count(tenant) > 0);
  return {{std::string(contract::kEnvWriteRoots), JoinRoots(roots.write)},
          {std::string(contract::kEnvReadRoots), JoinRoots(roots.read)},
          {std::string(contract::kEnvTenantRoots), JoinRoots(roots.tenant_owned)}};
}

}  // namespace shardtune::server
