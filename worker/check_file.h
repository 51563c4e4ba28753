#pragma once
// `shardtune-worker check-file FILE`: an uploaded training file checked on its own, before any job
// names it (the Files API, purpose fine-tune). Without a model there is no tokenizer, so the check
// is structural: every line is valid JSON of one of the formats docs/data.md knows (the first
// record's keys say which, unless `format` is given), with every problem as file:line and the
// data check's code, exactly as validate-data would report it. Token counts need the job's
// tokenizer and are left to the job's own data check.

#include <optional>
#include <ostream>
#include <string>

#include "common/job_spec.h"

namespace shardtune {

// The format the first JSON record of `path` looks like (its keys); nullopt when none parses.
std::optional<DataFormat> GuessDataFormat(const std::string& path);

// Prints "FORMAT: N examples, B bytes" to `out`; throws DataError (every problem with file:line)
// or Error (the file cannot be read, or no format fits).
void CheckDataFile(const std::string& path, std::optional<DataFormat> format, std::ostream& out);

}  // namespace shardtune
