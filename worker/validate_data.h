#pragma once
// `shardtune validate-data JOB.yaml`: every data file of a job (each task's, for a multi-task job)
// read, tokenized and checked the way training will, without touching the model's weights. Each
// file's token cache is built (or reused) where the job keeps it (data.cache_dir, else
// OUTPUT_DIR/cache), so the job reuses it.

#include <nlohmann/json.hpp>
#include <string>

namespace shardtune {

// The report: {"job", "template_note"?, "files": [{"role", "task"?, "path", "examples", "tokens",
// "target_tokens", "longest", "truncated", "without_targets", "token_cache": {"path", "built"},
// "labels"?: [{"name", "count"}], "warnings": [...]; training files also "duplicates": {"exact",
// "near", "pairs": [{"line", "duplicate_of_line", "kind", "similarity"}]}, "leaked", "leaks":
// [{"line", "validation_file", "validation_line", "kind", "similarity"}], "dedup_removes"}],
// the training data's totals "examples", "tokens", "labels", "duplicates": {"exact", "near"},
// "leaked", "problems": [] (DataError's come as FailureJson's), "dedup": {"mode", "threshold",
// "shingle", "ngram", "removes"}, "per_epoch": {"tokens", "steps", "global_batch"}, "ok": true}.
// Throws Error (DataError, SpecError, ...) when anything is wrong.
nlohmann::json ValidateData(const std::string& job_path);

// The report as `validate-data --output table` prints it: a line per file and its warnings, "ok".
std::string ValidationText(const nlohmann::json& report);

}  // namespace shardtune
