#pragma once
// The server's side of the storage sandbox (docs/server.md, "Storage and tenants"): which
// directories each caller is granted under `storage:`, and the check of a spec's paths at
// admission (CreateJob, ValidateJob, ResumeJob). The rule itself, and the worker's check at use,
// are in common/storage_roots.h; the roots reach the worker in the job's environment
// (Environment below, common/worker_contract.h).
//
// Grants: a tenant reads and writes under its `root`, reads its own `read_only` roots and
// `storage.read_only`. An admin caller (a key with role admin) also reads
// `storage.admin_read_only` and every tenant's root (so that it can train on a tenant's data),
// but writes only under its own tenant's root. A tenant with no entry under `storage.tenants`
// may not create jobs. At run time a job gets its tenant's grants, an admin's when any key of
// that tenant is an admin's (the store does not keep which key created a job).
//
// Thread-safe after construction (const).

#include <map>
#include <set>
#include <string>

#include "common/job_spec.h"
#include "common/storage_roots.h"
#include "launcher/server/server_config.h"

namespace shardtune::server {

// Whether `listen` (HOST:PORT, [HOST]:PORT) binds a loopback address only: 127.0.0.0/8, ::1 or
// localhost (a unix: socket counts as one too). 0.0.0.0, [::] and any other name do not.
bool ListensOnLoopbackOnly(const std::string& listen);

// The startup rule: a server without `storage:`, or one running as root without `run_as`,
// serves only on loopback (its gRPC `listen` and its `http.listen`), with a warning (returned, for
// the log); on any other address it throws Error(kFailedPrecondition) saying what to configure. A
// `metrics_listen` off loopback gets a warning (it needs no key). `run_as` on a server that is not
// root is ignored, with a warning (its jobs already run as its own, unprivileged, user).
std::vector<std::string> ExposureWarnings(const ServerConfig& config, bool running_as_root);

class StoragePolicy {
 public:
  // Checks every root of `config` (`storage:`): absolute, no ':' or control character, existing
  // (a tenant's root is created when missing). Throws Error naming the key and the path.
  StoragePolicy(const StorageConfig& config, const std::vector<ApiKey>& api_keys);

  bool enabled() const { return config_.enabled; }

  // The resolved roots `tenant` is granted (with the admin's grants when `admin`). Throws
  // RequestError(kPermissionDenied) for a tenant without an entry under storage.tenants.
  StorageRoots RootsFor(const std::string& tenant, bool admin) const;

  // Every path of `spec` inside the caller's roots; else RequestError(kPermissionDenied) listing
  // each path refused as "KEY: PATH why". Nothing when storage is off.
  void Require(const std::string& tenant, bool admin, const JobSpec& spec) const;

  // The job's environment entries that carry its tenant's roots to the worker
  // (contract::kStorageEnvironment); empty when storage is off.
  std::map<std::string, std::string> Environment(const std::string& tenant) const;

 private:
  StorageConfig config_;
  std::set<std::string> admin_tenants_;  // tenants with an admin key
};

}  // namespace shardtune::server
