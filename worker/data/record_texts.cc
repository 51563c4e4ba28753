#include "worker/data/record_texts.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "worker/data/record_reader.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;
using record_reader::ForEachRecord;
using record_reader::Issues;

namespace {

// The string at record[key], or "" (the records were validated when the token cache was built).
std::string StringAt(const json& record, const char* key) {
  const auto it = record.find(key);
  return it != record.end() && it->is_string() ? it->get<std::string>() : "";
}

}  // namespace

std::string RecordText(const json& record, DataFormat format) {
  if (!record.is_object()) return record.dump();
  std::string text;
  const auto append = [&text](const std::string& part) { text += (text.empty() ? "" : "\n") + part; };
  switch (format) {
    case DataFormat::kChat:
    case DataFormat::kShareGpt: {
      const bool chat = format == DataFormat::kChat;
      const auto turns = record.find(chat ? "messages" : "conversations");
      if (turns == record.end() || !turns->is_array()) break;
      // System messages are left out: a file's conversations often share one long system prompt,
      // which would make every pair look alike.
      for (const json& turn : *turns) {
        if (!turn.is_object()) continue;
        const std::string role = StringAt(turn, chat ? "role" : "from");
        if (role != "system") append(role + ": " + StringAt(turn, chat ? "content" : "value"));
      }
      break;
    }
    case DataFormat::kCompletion:
      append(StringAt(record, "prompt"));
      append(StringAt(record, "completion"));
      break;
    case DataFormat::kAlpaca:
      for (const char* key : {"instruction", "input", "output"}) append(StringAt(record, key));
      break;
    case DataFormat::kText:
      append(StringAt(record, "text"));
      break;
    case DataFormat::kClassification:
      append(StringAt(record, "text"));
      if (record.contains("text_pair")) append(StringAt(record, "text_pair"));
      break;
    case DataFormat::kNer: {
      const auto words = record.find("tokens");
      if (words == record.end() || !words->is_array()) break;
      for (const json& word : *words)
        text += (text.empty() ? "" : " ") + (word.is_string() ? word.get<std::string>() : "");
      break;
    }
    case DataFormat::kTokens: {
      const auto ids = record.find("input_ids");
      if (ids == record.end() || !ids->is_array()) break;
      for (const json& id : *ids) text += (text.empty() ? "" : " ") + id.dump();
      break;
    }
  }
  return text;
}

RecordTexts ReadRecordTexts(const fs::path& path, DataFormat format) {
  RecordTexts records;
  Issues ignored;  // the records were validated when the token cache was built
  int64_t lines = 0;
  ForEachRecord(path, RecordSlice{}, ignored, &lines, [&](const json& record, int64_t line) {
    records.texts.push_back(RecordText(record, format));
    records.lines.push_back(line);
  });
  return records;
}

std::string AugmentedRecords(const fs::path& path, DataFormat format, const std::vector<int64_t>& documents,
                             const AugmentOptions& options, const Synonyms& synonyms) {
  if (format != DataFormat::kClassification && format != DataFormat::kNer) {
    Fail(ErrorCode::kInvalidArgument, "data.augment applies to classification and ner data, not {}", ToString(format));
  }
  std::vector<json> records;
  Issues ignored;  // the records were validated when the token cache was built
  int64_t lines = 0;
  ForEachRecord(path, RecordSlice{}, ignored, &lines, [&](const json& record, int64_t) { records.push_back(record); });
  std::string out;
  for (size_t k = 0; k < documents.size(); ++k) {
    const auto d = static_cast<size_t>(documents[k]);
    ST_CHECK(d < records.size(), "document {} of {} records", d, records.size());
    const json& record = records[d];
    TaggedWords sentence;
    if (format == DataFormat::kClassification) {
      sentence.words = SplitWords(StringAt(record, "text"));
    } else {
      for (const json& w : record.value("tokens", json::array())) sentence.words.push_back(w.get<std::string>());
      for (const json& t : record.value("tags", json::array())) {
        if (!t.is_string()) {
          Fail(ErrorCode::kInvalidArgument,
               "{}: record {}: data.augment keeps BIO tags aligned by name (O, B-X, I-X); "
               "give the tags as names, not indices",
               path.string(), d + 1);
        }
        sentence.tags.push_back(t.get<std::string>());
      }
    }
    for (const TaggedWords& copy : Augment(sentence, options, synonyms, static_cast<uint64_t>(k))) {
      json augmented = record;
      if (format == DataFormat::kClassification) {
        augmented["text"] = JoinWords(copy.words);
      } else {
        augmented["tokens"] = copy.words;
        augmented["tags"] = copy.tags;
      }
      out += augmented.dump() + "\n";
    }
  }
  return out;
}

std::vector<json> ReadRecords(const fs::path& path) {
  std::vector<json> records;
  Issues issues;
  int64_t lines = 0;
  ForEachRecord(path, RecordSlice{}, issues, &lines, [&](const json& record, int64_t) { records.push_back(record); });
  issues.ThrowIfAny();
  return records;
}

std::vector<CodeTests> ReadCodeTests(const fs::path& path) {
  std::vector<CodeTests> out;
  Issues issues;
  int64_t lines = 0;
  ForEachRecord(path, RecordSlice{}, issues, &lines, [&](const json& record, int64_t line) {
    const auto tests = record.is_object() ? record.find("tests") : record.end();
    if (!record.is_object() || tests == record.end()) {
      issues.Add(path.string(), line, "missing_key",
                 "'tests' is missing: pass@k runs each answer against its record's tests");
      return;
    }
    if (!tests->is_string()) {
      issues.Add(path.string(), line, "data_type",
                 fmt::format("'tests' must be a string of Python, got {}", tests->type_name()));
      return;
    }
    CodeTests t{line, StringAt(record, "prompt"), tests->get<std::string>(), ""};
    if (const auto entry = record.find("entry_point"); entry != record.end()) {
      if (!entry->is_string()) {
        issues.Add(path.string(), line, "data_type",
                   fmt::format("'entry_point' must be a string, got {}", entry->type_name()));
        return;
      }
      t.entry_point = entry->get<std::string>();
    }
    out.push_back(std::move(t));
  });
  issues.ThrowIfAny();
  return out;
}

std::string TestProgram(const CodeTests& tests, const std::string& answer) {
  size_t end = answer.size();
  for (const char* stop : {"\nclass", "\ndef", "\n#", "\nif", "\nprint"}) end = std::min(end, answer.find(stop));
  std::string program = tests.prompt + answer.substr(0, end) + "\n\n" + tests.tests + "\n";
  if (!tests.entry_point.empty()) program += "\ncheck(" + tests.entry_point + ")\n";
  return program;
}

}  // namespace shardtune
