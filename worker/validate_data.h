#pragma once
// `shardtune validate-data JOB.yaml`: every data file of a job read, tokenized and checked the way
// training will, without touching the model's weights. Each file's token cache is built (or
// reused) where the job keeps it (data.cache_dir, else OUTPUT_DIR/cache), so the job reuses it.

#include <ostream>
#include <string>

namespace shardtune {

// Prints the summary to `out`; throws Error (DataError, SpecError, ...) when anything is wrong.
void ValidateData(const std::string& job_path, std::ostream& out);

}  // namespace shardtune
