#pragma once
// shardtune-server's configuration file (docs/server.md): where it listens, its database, who
// may call it, where jobs run and how they are retried. Parsed with every problem reported at
// once, like a job spec.

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
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
  int64_t max_file_bytes = 0;  // uploaded files (Files API), all together; 0: no limit
  int max_files = 0;
};

// Where one tenant's jobs may read and write (docs/server.md, "Storage").
struct TenantStorage {
  std::string root;                    // read and write: outputs, uploaded files
  std::vector<std::string> read_only;  // granted besides the shared read-only roots
};

// `storage:`. Without it (`enabled` false) jobs may name any path; the server then only runs on loopback.
struct StorageConfig {
  bool enabled = false;
  std::map<std::string, TenantStorage> tenants;
  std::vector<std::string> read_only;        // every tenant may read these (base models)
  std::vector<std::string> admin_read_only;  // admins may also read these
};

// `slurm:` (docs/server.md, "Slurm"): how the slurm backend submits a job. The resource fields are
// defaults for what a job spec's `resources:` leaves out (launcher/server/slurm_script.h).
struct SlurmConfig {
  std::string template_path;  // the batch script template (deploy/slurm/job.sbatch.in is one)
  std::string partition, account, qos, time_limit;
  int gpus_per_node = 0;
  int cpus_per_rank = 0;
  bool gres = false;                // GPUs asked for as --gres=gpu:N (else --gpus-per-node=N)
  std::string launcher = "mpirun";  // mpirun (local.mpirun) | srun
  std::string mpi = "pmix";         // srun --mpi=PLUGIN (one `srun --mpi=list` names)
  bool allow_run_as_root = false;   // the script exports OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)
  bool oversubscribe = false;       // mpirun --oversubscribe (more ranks than the allocation's slots)
};

// `http:`: the HTTP listener (launcher/server/http_server.h): GET /metrics today, the REST API's home.
struct HttpConfig {
  std::string listen;             // HOST:PORT; empty: no HTTP listener
  std::string tls_cert, tls_key;  // both or neither, as for gRPC
};

struct ServerConfig {
  std::string listen = "127.0.0.1:50551";
  std::string tls_cert, tls_key;  // both or neither
  HttpConfig http;
  std::string metrics_listen;  // HOST:PORT of a plain-HTTP listener serving only GET /metrics, no key; empty: none
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
  SlurmConfig slurm;
  int max_attempts = 3;
  double cancel_grace_s = 10;
  std::map<std::string, TenantQuota> quotas;
  StorageConfig storage;
  std::string run_as;                // when the server runs as root, jobs run as this user (never root)
  int job_umask = 077;               // every process of a job starts with it
  double heartbeat_timeout_s = 120;  // a running attempt silent this long is killed and retried (0: never)
  // `models:`: the catalog the OpenAI-compatible API's `model` names (docs/openai-api.md): a name
  // (letters, digits, '.', '_', '-') -> a base model directory (absolute; its tokenizer inside).
  std::map<std::string, std::string> models;

  int total_slots() const;
  // The directory a tenant's own files live under: its storage root, else DATA_DIR/tenants/TENANT.
  std::filesystem::path TenantRoot(const std::string& tenant) const;
};

// Throws SpecError-like Error listing every problem with its key and line.
ServerConfig LoadServerConfig(const std::filesystem::path& path);

// HOST:PORT or [HOST]:PORT (IPv6) split, the brackets dropped; nullopt unless PORT is 0..65535
// and HOST is not empty.
struct HostPort {
  std::string host;
  int port = 0;
};
std::optional<HostPort> SplitHostPort(const std::string& listen);

std::string Sha256Hex(const std::string& data);
std::string RandomToken();  // 32 random bytes, hex

}  // namespace shardtune::server
