#include "launcher/server/server_config.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <yaml-cpp/yaml.h>

#include <cctype>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/job_spec.h"       // TimeLimitProblem, SchedulerNameProblem
#include "common/storage_roots.h"  // WithinRoot

namespace shardtune::server {

namespace fs = std::filesystem;

namespace {

std::string Hex(const unsigned char* bytes, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += digits[bytes[i] >> 4];
    out += digits[bytes[i] & 15];
  }
  return out;
}

// Reads a YAML mapping's keys, collecting problems with their line numbers.
class Reader {
 public:
  Reader(std::vector<std::string>& problems, std::string path) : problems_(problems), path_(std::move(path)) {}
  void Problem(const YAML::Node& at, const std::string& key, const std::string& message) {
    problems_.push_back(fmt::format("{} (line {}): {}", key, at.Mark().line + 1, message));
  }
  template <typename T>
  void Get(const YAML::Node& map, const char* key, const std::string& path, T* out) {
    if (!map.IsMap()) return;  // a scalar or a list where a mapping goes: Known() reports it
    const YAML::Node value = map[key];
    if (!value || value.IsNull()) return;
    try {
      *out = value.as<T>();
    } catch (const YAML::Exception&) {
      Problem(value, path, "has the wrong type");
    }
  }
  void Known(const YAML::Node& map, const std::string& path, const std::set<std::string>& keys) {
    if (!map.IsMap()) {
      if (map.IsDefined() && !map.IsNull()) Problem(map, path.empty() ? "(top level)" : path, "expected a mapping");
      return;
    }
    for (const auto& entry : map) {
      const std::string key = entry.first.Scalar();
      if (!keys.count(key)) Problem(entry.first, (path.empty() ? "" : path + ".") + key, "unknown key");
    }
  }

 private:
  std::vector<std::string>& problems_;
  std::string path_;
};

// `storage: {tenants: {NAME: {root, read_only: [...]}}, read_only: [...], admin_read_only: [...]}`;
// every directory absolute (relative ones are taken from the config file's directory).
template <typename Resolve>
void ReadStorage(Reader& r, const YAML::Node& node, Resolve resolve, StorageConfig& storage) {
  if (!node || node.IsNull()) return;
  storage.enabled = true;
  r.Known(node, "storage", {"tenants", "read_only", "admin_read_only"});
  r.Get(node, "read_only", "storage.read_only", &storage.read_only);
  r.Get(node, "admin_read_only", "storage.admin_read_only", &storage.admin_read_only);
  const YAML::Node tenants = node["tenants"];
  if (tenants && !tenants.IsMap())
    r.Problem(tenants, "storage.tenants", "expected a mapping of tenant: {root, read_only}");
  for (const auto& entry : tenants&& tenants.IsMap() ? tenants : YAML::Node()) {
    const std::string at = "storage.tenants." + entry.first.Scalar();
    r.Known(entry.second, at, {"root", "read_only"});
    TenantStorage t;
    r.Get(entry.second, "root", at + ".root", &t.root);
    r.Get(entry.second, "read_only", at + ".read_only", &t.read_only);
    if (t.root.empty()) r.Problem(entry.second, at + ".root", "is required");
    t.root = resolve(t.root);
    for (auto& p : t.read_only) p = resolve(p);
    storage.tenants[entry.first.Scalar()] = t;
  }
  for (auto& p : storage.read_only) p = resolve(p);
  for (auto& p : storage.admin_read_only) p = resolve(p);
}

// `tls: {cert, key}` at `at` (both or neither), relative paths from the config file's directory.
template <typename Resolve>
void ReadTls(Reader& r, const YAML::Node& node, const std::string& at, Resolve resolve, std::string* cert,
             std::string* key) {
  if (!node) return;
  r.Known(node, at, {"cert", "key"});
  r.Get(node, "cert", at + ".cert", cert);
  r.Get(node, "key", at + ".key", key);
  if (cert->empty() != key->empty()) r.Problem(node, at, "give both cert and key");
  *cert = resolve(*cert);
  *key = resolve(*key);
}

// `http: {listen, tls}` and `metrics_listen`, each a HOST:PORT.
template <typename Resolve>
void ReadHttp(Reader& r, const YAML::Node& root, Resolve resolve, ServerConfig& c) {
  auto read_address = [&](const YAML::Node& map, const char* key, const std::string& at, std::string* out) {
    r.Get(map, key, at, out);
    if (!out->empty() && !SplitHostPort(*out))
      r.Problem(map[key], at, fmt::format("'{}' is not HOST:PORT (PORT 0..65535; [HOST]:PORT for IPv6)", *out));
  };
  if (const YAML::Node http = root["http"]) {
    r.Known(http, "http", {"listen", "tls"});
    read_address(http, "listen", "http.listen", &c.http.listen);
    if (http.IsMap() && c.http.listen.empty()) r.Problem(http, "http.listen", "is required");
    if (http.IsMap()) ReadTls(r, http["tls"], "http.tls", resolve, &c.http.tls_cert, &c.http.tls_key);
  }
  read_address(root, "metrics_listen", "metrics_listen", &c.metrics_listen);
}

// A catalog name: what `model` says in a fine-tuning request, and BASE in `ft:BASE:SUFFIX:ID`
// (so no ':').
bool ValidModelName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (const char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  return true;
}

// `models: {NAME: DIR, ...}`: each DIR an existing directory; under `storage:`, inside a root every
// tenant may read (storage.read_only), since every tenant's jobs read it.
template <typename Resolve>
void ReadModels(Reader& r, const YAML::Node& node, Resolve resolve, ServerConfig& c) {
  if (!node || node.IsNull()) return;
  if (!node.IsMap()) return r.Problem(node, "models", "expected a mapping of NAME: base model directory");
  for (const auto& entry : node) {
    const std::string name = entry.first.Scalar();
    const std::string at = "models." + name;
    if (!ValidModelName(name)) {
      r.Problem(entry.first, at, "a model name is 1 to 64 letters, digits, '.', '_' or '-'");
      continue;
    }
    std::string dir;
    r.Get(node, name.c_str(), at, &dir);
    if (dir.empty()) {
      r.Problem(entry.second, at, "expected a base model directory");
      continue;
    }
    dir = resolve(dir);
    std::error_code error;
    if (!fs::is_directory(dir, error)) {
      r.Problem(entry.second, at, fmt::format("'{}' is not a directory", dir));
      continue;
    }
    if (c.storage.enabled) {
      bool granted = false;
      const fs::path real = fs::weakly_canonical(dir, error);
      for (const std::string& root : c.storage.read_only)
        granted = granted || WithinRoot(real, fs::weakly_canonical(root, error));
      if (!granted)
        r.Problem(entry.second, at,
                  fmt::format("'{}' is not inside storage.read_only (every tenant's jobs read a catalog model)", dir));
    }
    c.models[name] = dir;
  }
}

}  // namespace

std::optional<HostPort> SplitHostPort(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size() || listen.size() - colon > 6)
    return std::nullopt;
  HostPort out;
  out.host = listen.substr(0, colon);
  if (out.host.front() == '[' && out.host.back() == ']' && out.host.size() > 2)
    out.host = out.host.substr(1, out.host.size() - 2);
  else if (out.host.find(':') != std::string::npos)
    return std::nullopt;  // an IPv6 address without brackets: where its port starts is ambiguous
  for (size_t i = colon + 1; i < listen.size(); ++i) {
    if (listen[i] < '0' || listen[i] > '9') return std::nullopt;
    out.port = out.port * 10 + (listen[i] - '0');
  }
  if (out.port > 65535) return std::nullopt;
  return out;
}

fs::path ServerConfig::TenantRoot(const std::string& tenant) const {
  if (const auto it = storage.tenants.find(tenant); it != storage.tenants.end()) return it->second.root;
  return fs::path(data_dir) / "tenants" / tenant;
}

int ServerConfig::total_slots() const {
  int n = 0;
  for (const auto& h : hosts) n += h.slots;
  return n;
}

std::string Sha256Hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha256(), nullptr);
  return Hex(digest, length);
}

std::string RandomToken() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof bytes) != 1) Fail(ErrorCode::kInternal, "no random bytes for a token");
  return Hex(bytes, sizeof bytes);
}

namespace {
ServerConfig ReadServerConfig(const fs::path& path);
}  // namespace

ServerConfig LoadServerConfig(const fs::path& path) {
  // The reading below indexes sections with yaml-cpp's operator[], which throws on a section of
  // the wrong kind (a scalar where a mapping goes): that is a bad file, said with its line.
  try {
    return ReadServerConfig(path);
  } catch (const YAML::Exception& e) {
    Fail(ErrorCode::kInvalidArgument, "{} (line {}): {}", path.string(), e.mark.line + 1, e.msg);
  }
}

namespace {

// `slurm: {template, partition, account, qos, time_limit, gpus_per_node, cpus_per_rank, gpu_request,
// launcher, mpi, allow_run_as_root, oversubscribe}`.
template <typename Resolve>
void ReadSlurm(Reader& r, const YAML::Node& node, Resolve resolve, SlurmConfig& slurm) {
  if (!node || node.IsNull()) return;
  r.Known(node, "slurm",
          {"template", "partition", "account", "qos", "time_limit", "gpus_per_node", "cpus_per_rank", "gpu_request",
           "launcher", "mpi", "allow_run_as_root", "oversubscribe"});
  r.Get(node, "template", "slurm.template", &slurm.template_path);
  slurm.template_path = resolve(slurm.template_path);
  for (const auto& [key, out] : {std::pair<const char*, std::string*>{"partition", &slurm.partition},
                                 {"account", &slurm.account},
                                 {"qos", &slurm.qos},
                                 {"time_limit", &slurm.time_limit}}) {
    r.Get(node, key, std::string("slurm.") + key, out);
    const std::string problem = out->empty()                       ? ""
                                : key == std::string("time_limit") ? TimeLimitProblem(*out)
                                                                   : SchedulerNameProblem(*out);
    if (!problem.empty()) r.Problem(node[key], std::string("slurm.") + key, problem);
  }
  r.Get(node, "gpus_per_node", "slurm.gpus_per_node", &slurm.gpus_per_node);
  if (slurm.gpus_per_node < 0) r.Problem(node["gpus_per_node"], "slurm.gpus_per_node", "must be >= 0");
  r.Get(node, "cpus_per_rank", "slurm.cpus_per_rank", &slurm.cpus_per_rank);
  if (slurm.cpus_per_rank < 0) r.Problem(node["cpus_per_rank"], "slurm.cpus_per_rank", "must be >= 0");
  std::string gpu_request = "gpus-per-node";
  r.Get(node, "gpu_request", "slurm.gpu_request", &gpu_request);
  if (gpu_request != "gpus-per-node" && gpu_request != "gres")
    r.Problem(node["gpu_request"], "slurm.gpu_request", "must be gpus-per-node or gres");
  slurm.gres = gpu_request == "gres";
  r.Get(node, "launcher", "slurm.launcher", &slurm.launcher);
  if (slurm.launcher != "mpirun" && slurm.launcher != "srun")
    r.Problem(node["launcher"], "slurm.launcher", "must be mpirun or srun");
  r.Get(node, "mpi", "slurm.mpi", &slurm.mpi);
  if (const std::string problem = SchedulerNameProblem(slurm.mpi); !problem.empty())
    r.Problem(node["mpi"], "slurm.mpi", problem + "; `srun --mpi=list` names the plugins");
  r.Get(node, "allow_run_as_root", "slurm.allow_run_as_root", &slurm.allow_run_as_root);
  r.Get(node, "oversubscribe", "slurm.oversubscribe", &slurm.oversubscribe);
}

ServerConfig ReadServerConfig(const fs::path& path) {
  YAML::Node root;
  try {
    root = YAML::Load(ReadFile(path));
  } catch (const YAML::ParserException& e) {
    Fail(ErrorCode::kInvalidArgument, "{} (line {}): not valid YAML: {}", path.string(), e.mark.line + 1, e.msg);
  }
  ServerConfig c;
  std::vector<std::string> problems;
  Reader r(problems, path.string());
  r.Known(root, "",
          {"listen", "tls", "http", "metrics_listen", "database", "data_dir", "api_keys", "backend", "local", "slurm",
           "retry", "quotas", "worker", "cancel_grace_s", "storage", "run_as", "job_umask", "heartbeat_timeout_s",
           "models"});
  // Everything below reads keys of the top-level mapping (yaml-cpp throws on a key of a scalar).
  if (!root.IsMap() && !root.IsNull()) {
    Fail(ErrorCode::kInvalidArgument, "{} (line {}): expected a mapping of keys at the top level", path.string(),
         root.Mark().line + 1);
  }
  const fs::path base = fs::absolute(path).parent_path();
  auto resolve = [&](std::string p) { return p.empty() || fs::path(p).is_absolute() ? p : (base / p).string(); };
  r.Get(root, "listen", "listen", &c.listen);
  ReadTls(r, root["tls"], "tls", resolve, &c.tls_cert, &c.tls_key);
  ReadHttp(r, root, resolve, c);
  r.Get(root, "database", "database", &c.database);
  c.database = resolve(c.database);
  r.Get(root, "data_dir", "data_dir", &c.data_dir);
  c.data_dir = c.data_dir.empty() ? (fs::path(c.database).parent_path() / "jobs").string() : resolve(c.data_dir);
  r.Get(root, "worker", "worker", &c.worker);
  c.worker = resolve(c.worker);
  r.Get(root, "cancel_grace_s", "cancel_grace_s", &c.cancel_grace_s);
  r.Get(root, "run_as", "run_as", &c.run_as);
  r.Get(root, "job_umask", "job_umask", &c.job_umask);
  if (c.job_umask < 0 || c.job_umask > 0777) r.Problem(root["job_umask"], "job_umask", "must be an octal mode 0..0777");
  r.Get(root, "heartbeat_timeout_s", "heartbeat_timeout_s", &c.heartbeat_timeout_s);
  if (c.heartbeat_timeout_s < 0) r.Problem(root["heartbeat_timeout_s"], "heartbeat_timeout_s", "must be >= 0");
  ReadStorage(r, root["storage"], resolve, c.storage);
  ReadModels(r, root["models"], resolve, c);
  const YAML::Node keys = root["api_keys"];
  if (keys && !keys.IsSequence()) r.Problem(keys, "api_keys", "expected a list of {key or sha256, tenant, role}");
  for (size_t i = 0; keys && keys.IsSequence() && i < keys.size(); ++i) {
    const std::string at = fmt::format("api_keys[{}]", i);
    r.Known(keys[i], at, {"key", "sha256", "tenant", "role"});
    ApiKey key;
    std::string plain;
    r.Get(keys[i], "key", at + ".key", &plain);
    r.Get(keys[i], "sha256", at + ".sha256", &key.sha256);
    r.Get(keys[i], "tenant", at + ".tenant", &key.tenant);
    r.Get(keys[i], "role", at + ".role", &key.role);
    if (plain.empty() == key.sha256.empty()) r.Problem(keys[i], at, "give the key or its sha256 (one of them)");
    if (!plain.empty()) key.sha256 = Sha256Hex(plain);
    if (key.tenant.empty()) r.Problem(keys[i], at + ".tenant", "is required");
    if (key.role != "user" && key.role != "admin" && key.role != "viewer")
      r.Problem(keys[i], at + ".role", "must be user, admin or viewer");
    c.api_keys.push_back(key);
  }
  r.Get(root, "backend", "backend", &c.backend);
  if (c.backend != "local" && c.backend != "slurm") r.Problem(root["backend"], "backend", "must be local or slurm");
  if (const YAML::Node local = root["local"]) {
    r.Known(local, "local", {"hosts", "mpirun", "extra_args", "memory_per_slot_gib", "gpus"});
    r.Get(local, "memory_per_slot_gib", "local.memory_per_slot_gib", &c.memory_per_slot_gib);
    r.Get(local, "gpus", "local.gpus", &c.gpus);
    r.Get(local, "mpirun", "local.mpirun", &c.mpirun);
    r.Get(local, "extra_args", "local.extra_args", &c.mpirun_extra_args);
    if (const YAML::Node hosts = local["hosts"]) {
      c.hosts.clear();
      for (size_t i = 0; hosts.IsSequence() && i < hosts.size(); ++i) {
        const std::string at = fmt::format("local.hosts[{}]", i);
        r.Known(hosts[i], at, {"host", "slots"});
        HostSlots h;
        r.Get(hosts[i], "host", at + ".host", &h.host);
        r.Get(hosts[i], "slots", at + ".slots", &h.slots);
        if (h.host.empty() || h.host.find_first_of(" \t\n:;$`'\"\\") != std::string::npos)
          r.Problem(hosts[i], at + ".host", "must be a plain host name");
        if (h.slots < 1) r.Problem(hosts[i], at + ".slots", "must be >= 1");
        c.hosts.push_back(h);
      }
    }
  }
  ReadSlurm(r, root["slurm"], resolve, c.slurm);
  std::error_code missing;  // a name too long for the file system is "does not exist", not an exception
  if (c.backend == "slurm" && (c.slurm.template_path.empty() || !fs::exists(c.slurm.template_path, missing))) {
    r.Problem(
        root["slurm"] ? root["slurm"] : root, "slurm.template",
        fmt::format("backend slurm needs an sbatch template ({}); deploy/slurm/job.sbatch.in is one",
                    c.slurm.template_path.empty() ? "none given" : "'" + c.slurm.template_path + "' does not exist"));
  }
  if (const YAML::Node retry = root["retry"]) {
    r.Known(retry, "retry", {"max_attempts"});
    r.Get(retry, "max_attempts", "retry.max_attempts", &c.max_attempts);
    if (c.max_attempts < 1) r.Problem(retry, "retry.max_attempts", "must be >= 1");
  }
  if (const YAML::Node quotas = root["quotas"]) {
    for (const auto& entry : quotas) {
      const std::string at = "quotas." + entry.first.Scalar();
      r.Known(entry.second, at, {"max_running_jobs", "max_ranks", "max_file_bytes", "max_files"});
      TenantQuota q;
      r.Get(entry.second, "max_running_jobs", at + ".max_running_jobs", &q.max_running_jobs);
      r.Get(entry.second, "max_ranks", at + ".max_ranks", &q.max_ranks);
      r.Get(entry.second, "max_file_bytes", at + ".max_file_bytes", &q.max_file_bytes);
      r.Get(entry.second, "max_files", at + ".max_files", &q.max_files);
      c.quotas[entry.first.Scalar()] = q;
    }
  }
  if (!problems.empty()) {
    std::string all;
    for (const auto& p : problems) all += "\n  " + p;
    Fail(ErrorCode::kInvalidArgument, "{}: {} problem(s):{}", path.string(), problems.size(), all);
  }
  return c;
}

}  // namespace

}  // namespace shardtune::server
