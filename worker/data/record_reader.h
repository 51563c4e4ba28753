#pragma once
// How the data readers walk a file's records (formats.cc renders them, record_texts.cc reads their
// texts): JSONL lines or the elements of one JSON array, each parsed record handed on with its
// line, and the problems of lines that do not parse collected with file:line. Internal to
// worker/data.

#include <fmt/format.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/storage_roots.h"
#include "worker/data/formats.h"
#include "worker/data/tokenizer/unicode.h"

namespace shardtune::record_reader {

namespace fs = std::filesystem;
using nlohmann::json;

inline constexpr size_t kMaxReportedIssues = 50;

// Collects issues; stops reading details of a record after its first.
class Issues {
 public:
  void Add(const std::string& file, int64_t line, const std::string& code, const std::string& message) {
    ++total_;
    if (issues_.size() < kMaxReportedIssues) issues_.push_back({file, line, code, message});
  }
  bool empty() const { return total_ == 0; }
  const std::vector<DataIssue>& issues() const { return issues_; }
  size_t total() const { return total_; }
  void ThrowIfAny() {
    if (total_ > 0) throw DataError(issues_, total_);
  }

 private:
  std::vector<DataIssue> issues_;
  size_t total_ = 0;
};

// Whether the file's first non-blank character opens a JSON array (alpaca's usual form).
bool IsJsonArrayFile(const fs::path& path);

// Records of a slice of a file: its JSONL lines, or the elements of one JSON array (the first
// slice only: an array is not cut). `lines` gets the newlines the slice holds; `progress` (when
// set) the bytes of the slice read so far, after each line.
template <typename Visit>
void ForEachRecord(const fs::path& path, const RecordSlice& slice, Issues& issues, int64_t* lines, Visit visit,
                   const std::function<void(uint64_t)>& progress = {}) {
  const std::string file = path.string();
  const GrantedFile opened(path);  // read by descriptor: whatever the path names now
  if (IsJsonArrayFile(opened.Name())) {
    if (slice.begin > 0) return;
    json array;
    try {
      array = json::parse(ReadFile(opened.Name()));
    } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e500
      issues.Add(file, 1, "invalid_json", fmt::format("the JSON array does not parse: {}", e.what()));
      return;
    }
    for (size_t i = 0; i < array.size(); ++i) visit(array[i], static_cast<int64_t>(i + 1));
    return;
  }
  std::ifstream in(opened.Name(), std::ios::binary);
  if (!in) Fail(ErrorCode::kNotFound, "{}: cannot open the data file", file);
  in.seekg(static_cast<std::streamoff>(slice.begin));
  uint64_t at = slice.begin;
  std::string line;
  // Lines as std::getline splits the whole text: a last line without a newline counts.
  for (int64_t number = 1; at < slice.end && std::getline(in, line); ++number) {
    at += line.size() + 1;
    if (!in.eof()) ++*lines;
    if (progress) progress(at - slice.begin);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (!IsValidUtf8(line)) {
      issues.Add(file, number, "invalid_utf8", "the line is not valid UTF-8");
      continue;
    }
    json record;
    try {
      record = json::parse(line);
    } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e500
      issues.Add(file, number, "invalid_json", e.what());
      continue;
    }
    visit(record, number);
  }
}

}  // namespace shardtune::record_reader
