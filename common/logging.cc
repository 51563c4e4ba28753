#include "common/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <memory>

#include "common/error.h"

namespace shardtune {

namespace {

std::shared_ptr<spdlog::sinks::dist_sink_mt> g_sinks;
std::string g_pattern;

}  // namespace

int RankFromEnvironment() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"}) {
    if (const char* value = std::getenv(name); value != nullptr && *value != '\0') return std::atoi(value);
  }
  return 0;
}

void InitLogging(const std::string& level, int rank) {
  const auto parsed = spdlog::level::from_str(level);
  // from_str maps anything it does not know to "off"; only the word "off" may mean that.
  if (parsed == spdlog::level::off && level != "off") {
    Fail(ErrorCode::kInvalidArgument,
         "--log-level '{}' is not a level; expected one of trace, debug, info, warn, error, critical, off", level);
  }
  g_sinks = std::make_shared<spdlog::sinks::dist_sink_mt>();
  g_sinks->add_sink(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  auto logger = std::make_shared<spdlog::logger>("shardtune", g_sinks);
  g_pattern = fmt::format("[%Y-%m-%d %H:%M:%S.%e] [rank {}] [%^%l%$] %v", rank);
  logger->set_pattern(g_pattern);
  logger->set_level(parsed);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

void AddLogFile(const std::filesystem::path& path) {
  if (!g_sinks) InitLogging("info", RankFromEnvironment());
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path.string(), /*truncate=*/false);
  sink->set_pattern(g_pattern);
  g_sinks->add_sink(sink);
}

}  // namespace shardtune
