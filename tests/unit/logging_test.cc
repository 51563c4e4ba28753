// --log-format json (common/logging.h): every line one JSON object with time, level, rank (a
// rank's only), job (where known) and the message, whatever bytes the message holds.
#include "common/logging.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "common/atomic_file.h"
#include "common/error.h"
#include "test_util.h"

namespace shardtune {
namespace {

using testing::ScratchDir;

std::vector<nlohmann::json> JsonLines(const std::filesystem::path& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));  // throws if not JSON
  return lines;
}

TEST(Logging, JsonLinesCarryTimeLevelRankJobAndMessage) {
  ScratchDir dir;
  InitLogging("info", 3, LogFormat::kJson);
  AddLogFile(dir / "rank-3.log");
  spdlog::debug("below the level");
  spdlog::info("plain \"quoted\" \\ line\nsecond line");
  SetLogJob("job-0123456789abcdef");
  spdlog::warn("bytes that are not UTF-8: \xff\xfe");
  {
    const LogJobScope scope("job-scoped");
    spdlog::error("about another job");
    std::thread([] { spdlog::info("another thread: the process's job"); }).join();
  }
  spdlog::info("the process's job again");
  SetLogJob("");
  spdlog::info("no job");

  const auto lines = JsonLines(dir / "rank-3.log");
  ASSERT_EQ(lines.size(), 6u);
  const std::regex utc_millis(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)");
  for (const auto& line : lines) {
    EXPECT_TRUE(std::regex_match(line.at("time").get<std::string>(), utc_millis)) << line;
    EXPECT_EQ(line.at("rank"), 3);
  }
  EXPECT_EQ(lines[0].at("level"), "info");
  EXPECT_EQ(lines[0].at("message"), "plain \"quoted\" \\ line\nsecond line");
  EXPECT_FALSE(lines[0].contains("job"));
  EXPECT_EQ(lines[1].at("level"), "warning");
  EXPECT_EQ(lines[1].at("job"), "job-0123456789abcdef");
  EXPECT_EQ(lines[1].at("message").get<std::string>().rfind("bytes that are not UTF-8: ", 0), 0u);
  EXPECT_EQ(lines[2].at("level"), "error");
  EXPECT_EQ(lines[2].at("job"), "job-scoped");
  EXPECT_EQ(lines[3].at("job"), "job-0123456789abcdef");  // the scope is its thread's only
  EXPECT_EQ(lines[4].at("job"), "job-0123456789abcdef");
  EXPECT_FALSE(lines[5].contains("job"));
  EXPECT_EQ(LogFormatArgs(), (std::vector<std::string>{"--log-format", "json"}));
  InitLogging("info", 0);
}

TEST(Logging, JsonLinesOfAProcessThatIsNoRankHaveNoRank) {
  ScratchDir dir;
  InitLogging("info", -1, LogFormat::kJson);
  AddLogFile(dir / "server.log");
  spdlog::info("from the server");
  const auto lines = JsonLines(dir / "server.log");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_FALSE(lines[0].contains("rank"));
  EXPECT_EQ(lines[0].at("message"), "from the server");
  InitLogging("info", 0);
  EXPECT_TRUE(LogFormatArgs().empty());
}

TEST(Logging, FormatNamesAreTextOrJson) {
  EXPECT_EQ(ParseLogFormat("text"), LogFormat::kText);
  EXPECT_EQ(ParseLogFormat("json"), LogFormat::kJson);
  try {
    ParseLogFormat("yaml");
    FAIL() << "yaml accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--log-format 'yaml'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace shardtune
