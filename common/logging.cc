#include "common/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <time.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace shardtune {

namespace {

std::shared_ptr<spdlog::sinks::dist_sink_mt> g_sinks;
std::string g_pattern;
LogFormat g_format = LogFormat::kText;
int g_rank = -1;
std::mutex g_job_mutex;
std::string g_job;               // SetLogJob's
thread_local std::string t_job;  // LogJobScope's; over g_job when set

std::string CurrentJob() {
  if (!t_job.empty()) return t_job;
  std::lock_guard<std::mutex> lock(g_job_mutex);
  return g_job;
}

// One JSON object per line: time (UTC, milliseconds), level, rank (a rank's), job (when known), message.
class JsonFormatter final : public spdlog::formatter {
 public:
  explicit JsonFormatter(int rank) : rank_(rank) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const auto since_epoch = msg.time.time_since_epoch();
    const time_t seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch).count();
    const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch).count() % 1000;
    tm utc{};
    gmtime_r(&seconds, &utc);
    nlohmann::ordered_json line;
    line["time"] = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", utc.tm_year + 1900, utc.tm_mon + 1,
                               utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, millis);
    const auto level = spdlog::level::to_string_view(msg.level);
    line["level"] = std::string(level.data(), level.size());
    if (rank_ >= 0) line["rank"] = rank_;
    if (std::string job = CurrentJob(); !job.empty()) line["job"] = std::move(job);
    line["message"] = std::string(msg.payload.data(), msg.payload.size());
    // A message with bytes that are not UTF-8 (a path, a data line) still makes one valid line.
    const std::string text = line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
    dest.append(text.data(), text.data() + text.size());
  }

  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(rank_); }

 private:
  int rank_;
};

void SetFormatterOf(spdlog::sinks::sink& sink) {
  if (g_format == LogFormat::kJson)
    sink.set_formatter(std::make_unique<JsonFormatter>(g_rank));
  else
    sink.set_pattern(g_pattern);
}

}  // namespace

LogFormat ParseLogFormat(const std::string& name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  Fail(ErrorCode::kInvalidArgument, "--log-format '{}' is not a format; expected text or json", name);
}

int RankFromEnvironment() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"}) {
    if (const char* value = std::getenv(name); value != nullptr && *value != '\0') return std::atoi(value);
  }
  return 0;
}

void InitLogging(const std::string& level, int rank, LogFormat format) {
  const auto parsed = spdlog::level::from_str(level);
  // from_str maps anything it does not know to "off"; only the word "off" may mean that.
  if (parsed == spdlog::level::off && level != "off") {
    Fail(ErrorCode::kInvalidArgument,
         "--log-level '{}' is not a level; expected one of trace, debug, info, warn, error, critical, off", level);
  }
  g_format = format;
  g_rank = rank;
  g_pattern = fmt::format("[%Y-%m-%d %H:%M:%S.%e] [rank {}] [%^%l%$] %v", std::max(rank, 0));
  g_sinks = std::make_shared<spdlog::sinks::dist_sink_mt>();
  std::shared_ptr<spdlog::sinks::sink> console;
  if (format == LogFormat::kJson)
    console = std::make_shared<spdlog::sinks::stderr_sink_mt>();  // no color codes inside the JSON
  else
    console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  SetFormatterOf(*console);
  g_sinks->add_sink(console);
  auto logger = std::make_shared<spdlog::logger>("shardtune", g_sinks);
  logger->set_level(parsed);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

LogFormat CurrentLogFormat() { return g_format; }

std::vector<std::string> LogFormatArgs() {
  if (g_format == LogFormat::kJson) return {"--log-format", "json"};
  return {};
}

void AddLogFile(const std::filesystem::path& path) {
  if (!g_sinks) InitLogging("info", RankFromEnvironment());
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path.string(), /*truncate=*/false);
  SetFormatterOf(*sink);
  g_sinks->add_sink(sink);
}

void SetLogJob(const std::string& job) {
  std::lock_guard<std::mutex> lock(g_job_mutex);
  g_job = job;
}

LogJobScope::LogJobScope(std::string job) : previous_(std::move(t_job)) { t_job = std::move(job); }

LogJobScope::~LogJobScope() { t_job = std::move(previous_); }

}  // namespace shardtune
