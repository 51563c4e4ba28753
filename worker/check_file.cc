#include "worker/check_file.h"

#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "worker/data/formats.h"

namespace shardtune {

namespace {

// Bytes as token ids (3 + byte), special tokens unknown: enough for the formats' structural
// checks, which look at records, not at a vocabulary.
class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int64_t> Encode(std::string_view text, bool) const override {
    std::vector<int64_t> ids;
    ids.reserve(text.size());
    for (unsigned char c : text) ids.push_back(3 + c);
    return ids;
  }
  std::string Decode(const std::vector<int64_t>& ids, bool) const override {
    std::string text;
    for (int64_t id : ids) text.push_back(static_cast<char>(id - 3));
    return text;
  }
  int64_t vocab_size() const override { return 259; }
  std::optional<int64_t> TokenToId(const std::string&) const override { return std::nullopt; }
  std::string IdToToken(int64_t id) const override { return std::string(1, static_cast<char>(id - 3)); }
  bool IsSpecial(int64_t) const override { return false; }
};

std::optional<DataFormat> FormatOfRecord(const nlohmann::json& record) {
  if (!record.is_object()) return std::nullopt;
  if (record.contains("messages")) return DataFormat::kChat;
  if (record.contains("conversations")) return DataFormat::kShareGpt;
  if (record.contains("prompt") || record.contains("completion")) return DataFormat::kCompletion;
  if (record.contains("instruction")) return DataFormat::kAlpaca;
  if (record.contains("input_ids")) return DataFormat::kTokens;
  if (record.contains("tags")) return DataFormat::kNer;
  if (record.contains("label")) return DataFormat::kClassification;
  if (record.contains("text")) return DataFormat::kText;
  return std::nullopt;
}

}  // namespace

std::optional<DataFormat> GuessDataFormat(const std::string& path) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_array() && !record.empty()) return FormatOfRecord(record[0]);  // alpaca's JSON array form
    if (const auto format = FormatOfRecord(record)) return format;
  }
  return std::nullopt;
}

void CheckDataFile(const std::string& path, std::optional<DataFormat> format, std::ostream& out) {
  if (!std::filesystem::is_regular_file(path)) Fail(ErrorCode::kInvalidArgument, "{}: not a readable file", path);
  if (!format) format = GuessDataFormat(path);
  // Nothing recognizable: check it as chat, OpenAI's format, so that every line's problem shows.
  ByteTokenizer tokenizer;
  FormatOptions options;
  options.format = format.value_or(DataFormat::kChat);
  options.tokenizer = &tokenizer;
  options.vocab_size = std::numeric_limits<int64_t>::max();  // the job's model checks token ids
  options.label_names = ResolveLabelNames(path, options);
  const SliceReport report = RenderRecords(path, options, RecordSlice{}, [](Example&&) {});
  ThrowIfProblems(path, report.issues, report.total_issues, report.examples);
  out << fmt::format("{}: {} examples, {} bytes\n", ToString(options.format), report.examples,
                     std::filesystem::file_size(path));
}

}  // namespace shardtune
