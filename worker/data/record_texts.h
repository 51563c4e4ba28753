#pragma once
// The records of a data file as text rather than tokens: what deduplication compares, what
// data.augment rewrites, and the tests pass@k runs generated code against.

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/text_augmentation.h"

namespace shardtune {

// Every record's text as deduplication compares records (near_duplicates.h), in file order: the
// values its format reads, joined by newlines (chat and sharegpt: "role: content" a message; ner:
// the words joined by spaces; tokens: the ids), without labels or weights. For a file that
// renders without problems, texts[i] is the record of the token cache's document i.
struct RecordTexts {
  std::vector<std::string> texts;
  std::vector<int64_t> lines;  // each record's line (JSONL) or element (JSON array), from 1
};
RecordTexts ReadRecordTexts(const std::filesystem::path& path, DataFormat format);
// Every record of a file (JSONL lines or one JSON array's elements), as parsed; a line that does
// not parse is a DataError naming it.
std::vector<nlohmann::json> ReadRecords(const std::filesystem::path& path);
// One record's text, as ReadRecordTexts reads it.
std::string RecordText(const nlohmann::json& record, DataFormat format);
// data.augment: `options.copies` new records (JSONL) for each of `documents` (indices of the
// file's records, repeats allowed), in that order; the k-th entry's copies are seeded by k.
// classification: the text's words changed (text_pair and label kept); ner: tokens and tags
// changed together (common/text_augmentation.h). Other formats: Error.
std::string AugmentedRecords(const std::filesystem::path& path, DataFormat format,
                             const std::vector<int64_t>& documents, const AugmentOptions& options,
                             const Synonyms& synonyms);

// A completion record's code tests (pass@k, common/generation_metrics.h): "tests", Python run
// after the prompt and a generated completion, and "entry_point", the function the tests'
// check(candidate) is called with (HumanEval's records), if given.
struct CodeTests {
  int64_t line = 0;
  std::string prompt, tests, entry_point;
};
// Every record's tests, in file order; a record without "tests" is an Error naming its line.
std::vector<CodeTests> ReadCodeTests(const std::filesystem::path& path);
// The program an answer is judged by: the prompt, the answer cut where Codex's sampler stopped
// (Chen et al. 2021: at the first "\nclass", "\ndef", "\n#", "\nif" or "\nprint", a new
// top-level statement, so that what follows the function neither runs nor breaks it), the tests,
// and check(entry_point) when the record names one.
std::string TestProgram(const CodeTests& tests, const std::string& answer);

}  // namespace shardtune
