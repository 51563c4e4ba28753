// shardtune-server: the control plane (docs/server.md). Also `shardtune-server supervise ...`,
// the per-attempt supervisor the server starts (launcher/server/processes.h).
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <iostream>
#include <set>
#include <thread>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/logging.h"
#include "common/version.h"
#include "launcher/server/api_keys.h"
#include "launcher/server/grpc_metrics.h"
#include "launcher/server/http_server.h"
#include "launcher/server/job_manager.h"
#include "launcher/server/openai_routes.h"
#include "launcher/server/processes.h"
#include "launcher/server/services.h"
#include "launcher/server/sweep_manager.h"

namespace {

volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

int Supervise(int argc, char** argv) {
  std::string job, exit_file, log, run_as, umask = "077";
  std::vector<std::string> command;
  int i = 2;
  for (; i < argc && std::string(argv[i]) != "--"; i += 2) {
    const std::string flag = argv[i];
    const std::string value = i + 1 < argc ? argv[i + 1] : "";
    if (flag == "--job") job = value;
    if (flag == "--exit-file") exit_file = value;
    if (flag == "--log") log = value;
    if (flag == "--run-as") run_as = value;
    if (flag == "--umask") umask = value;
  }
  for (++i; i < argc; ++i) command.push_back(argv[i]);
  if (exit_file.empty() || log.empty() || command.empty()) {
    std::fprintf(stderr,
                 "usage: shardtune-server supervise --job ID --exit-file F --log L [--umask OCTAL] [--run-as USER] -- "
                 "COMMAND...\n");
    return 2;
  }
  try {
    const auto user = shardtune::server::ResolveJobUser(run_as, std::stoi(umask, nullptr, 8));
    return shardtune::server::RunSupervisor(command, log, exit_file, user);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shardtune-server supervise: %s\n", e.what());
    return 2;
  }
}

// `--check`: what the server would run with, for an operator to read before starting it.
std::string ConfigSummary(const shardtune::server::ServerConfig& config, const std::string& path) {
  std::set<std::string> tenants;
  for (const auto& key : config.api_keys) tenants.insert(key.tenant);
  std::string hosts;
  for (const auto& host : config.hosts)
    hosts += fmt::format("{}{}:{}", hosts.empty() ? "" : " ", host.host, host.slots);
  std::string text = fmt::format("{}: valid\n", path);
  text += fmt::format("listen: {}{}\n", config.listen, config.tls_cert.empty() ? "" : " (TLS)");
  if (!config.http.listen.empty())
    text += fmt::format("http: {}{}\n", config.http.listen, config.http.tls_cert.empty() ? "" : " (TLS)");
  if (!config.metrics_listen.empty()) text += fmt::format("metrics_listen: {}\n", config.metrics_listen);
  text += fmt::format("database: {}\n", config.database);
  if (config.backend == "slurm") {
    text += fmt::format("backend: slurm (partition {}, launcher {})\n",
                        config.slurm.partition.empty() ? "default" : config.slurm.partition, config.slurm.launcher);
  } else {
    text += fmt::format("backend: local, {} slots ({}) on {}\n", config.total_slots(),
                        config.gpus ? "GPUs" : "CPU ranks", hosts);
  }
  text += fmt::format("api keys: {} for {} tenant(s)\n", config.api_keys.size(), tenants.size());
  text += fmt::format("storage: {}\n", config.storage.enabled
                                           ? fmt::format("{} tenant root(s)", config.storage.tenants.size())
                                           : std::string("not sandboxed (any path)"));
  if (!config.run_as.empty()) text += fmt::format("jobs run as: {}\n", config.run_as);
  if (!config.models.empty())
    text += fmt::format("models: {} in the catalog (the /v1 API's `model`)\n", config.models.size());
  return text;
}

// The HTTP listeners the configuration names, serving: `http:` GET /metrics for admins' keys and
// the OpenAI-compatible API under /v1 (openai_routes.h); `metrics_listen:` GET /metrics for anyone.
std::vector<std::unique_ptr<shardtune::server::HttpServer>> StartHttpListeners(
    const shardtune::server::ServerConfig& config, shardtune::server::JobManager& manager,
    const shardtune::server::ApiKeyTable& keys) {
  using shardtune::server::HttpServer;
  std::vector<std::unique_ptr<HttpServer>> listeners;
  if (!config.http.listen.empty()) {
    auto http = std::make_unique<HttpServer>("http", config.http.listen, config.http.tls_cert, config.http.tls_key,
                                             manager.metrics());
    MountMetrics(*http, manager, &keys);
    // An upload's body is read whole before its handler runs: only from a known key, when large.
    http->SetMaxBodyBytes(shardtune::server::kMaxHttpBodyBytes);
    http->RequireKeyForBodiesOver(keys, size_t{64} << 10);
    MountOpenAi(*http, manager, keys);
    listeners.push_back(std::move(http));
  }
  if (!config.metrics_listen.empty()) {
    auto metrics = std::make_unique<HttpServer>("metrics_listen", config.metrics_listen, "", "", manager.metrics());
    MountMetrics(*metrics, manager, nullptr);
    listeners.push_back(std::move(metrics));
  }
  for (const auto& listener : listeners) listener->Start();
  return listeners;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace shardtune;
  using namespace shardtune::server;
  if (argc > 1 && std::string(argv[1]) == "supervise") return Supervise(argc, argv);

  CLI::App app{"shardtune-server: accepts, schedules, runs and retries fine-tuning jobs"};
  std::string config_path, listen, database, log_level = "info", log_format = "text";
  bool check_only = false;
  app.set_version_flag("--version", VersionText("shardtune-server"), "print the version and the libraries built with");
  app.add_option("--config", config_path, "server.yaml")->required()->check(CLI::ExistingFile);
  app.add_flag("--check", check_only, "load and validate the config, print a summary, and exit (0 valid, 2 not)");
  app.add_option("--listen", listen, "address:port (overrides the config)");
  app.add_option("--database", database, "SQLite file (overrides the config)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off");
  app.add_option("--log-format", log_format, "text, or json: one object a line (also for the workers it starts)")
      ->check(CLI::IsMember({"text", "json"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    InitLogging(log_level, /*rank=*/-1, ParseLogFormat(log_format));
    ServerConfig config = LoadServerConfig(config_path);
    if (!listen.empty()) config.listen = listen;
    if (!database.empty()) {
      config.database = database;
      config.data_dir = (std::filesystem::path(database).parent_path() / "jobs").string();
    }
    for (const std::string& warning : ExposureWarnings(config, ::geteuid() == 0)) spdlog::warn("{}", warning);
    if (check_only) {
      std::cout << ConfigSummary(config, config_path);
      return 0;
    }
    JobManager manager(config, config.listen);
    auto jobs = MakeJobService(manager);
    auto workers = MakeWorkerService(manager);
    auto files = MakeFileService(manager);
    SweepManager sweeps(manager);
    auto sweep_service = MakeSweepService(sweeps, config);
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
    if (!config.tls_cert.empty()) {
      grpc::SslServerCredentialsOptions options;
      options.pem_key_cert_pairs.push_back({ReadFile(config.tls_key), ReadFile(config.tls_cert)});
      credentials = grpc::SslServerCredentials(options);
    }
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(config.listen, credentials, &port);
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(MakeRpcMetricsInterceptorFactory(manager.metrics()));
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
    builder.RegisterService(jobs.get());
    builder.RegisterService(workers.get());
    builder.RegisterService(files.get());
    builder.RegisterService(sweep_service.get());
    // An upload's chunk is at most 4 MiB of bytes, plus the message's framing.
    builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxFileChunkBytes + (64 << 10)));
    sweeps.Load();  // before the first report: an evaluation reported at once finds its sweep
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (!server || port == 0) Fail(ErrorCode::kFailedPrecondition, "cannot listen on {}", config.listen);
    const ApiKeyTable keys(config);
    const std::vector<std::unique_ptr<HttpServer>> http = StartHttpListeners(config, manager, keys);
    manager.Start();
    sweeps.Start();  // after the jobs: a resumed sweep finds its trials' jobs as they are
    spdlog::info("shardtune-server listening on {} (database {}, {} slots)", config.listen, config.database,
                 config.total_slots());
    std::signal(SIGTERM, OnSignal);
    std::signal(SIGINT, OnSignal);
    while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    spdlog::info("shutting down; running jobs keep running and are picked up at the next start");
    for (const auto& listener : http) listener->Stop();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    sweeps.Stop();
    manager.Stop();
    return 0;
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    return e.code() == ErrorCode::kInternal ? 1 : 2;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}
