#pragma once
// shardtune-server's configuration file (docs/server.md): where it listens, its database, who
// may call it, where jobs run and how they are retried. Parsed with every problem reported at
// once, like a job spec.

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace shardtune::server {

struct ApiKey {
  std::string sha256;  // hex digest of the key; the key itself is never kept
  std::string tenant;
  std::string role = "user";  // user | admin (every tenant's jobs) | viewer (read only)
};

struct HostSlots {
  std::string host;
  int slots = 1;
};

struct TenantQuota {
  int max_running_jobs = 0;  // 0: no limit
  int max_ranks = 0;
};

struct ServerConfig {
  std::string listen = "127.0.0.1:50551";
  std::string tls_cert, tls_key;  // both or neither
  std::string database = "/var/lib/shardtune/jobs.db";
  std::string data_dir;  // where the server keeps per-job files; default: beside the database
  std::vector<ApiKey> api_keys;
  std::string backend = "local";  // local | slurm
  std::vector<HostSlots> hosts = {{"localhost", 2}};
  double memory_per_slot_gib = 0;  // a slot's device memory (or host memory per rank, CPU training); 0: no check
  bool gpus = false;               // slots are GPUs (else ranks train on CPUs)
  std::string mpirun = "mpirun";
  std::vector<std::string> mpirun_extra_args;
  std::string worker;  // shardtune-worker; default: beside shardtune-server
  std::string slurm_partition;
  std::string slurm_template;
  int max_attempts = 3;
  double cancel_grace_s = 10;
  std::map<std::string, TenantQuota> quotas;

  int total_slots() const;
};

// Throws SpecError-like Error listing every problem with its key and line.
ServerConfig LoadServerConfig(const std::filesystem::path& path);

std::string Sha256Hex(const std::string& data);
std::string RandomToken();  // 32 random bytes, hex

}  // namespace shardtune::server
