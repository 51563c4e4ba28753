#pragma once
// `shardtune validate-data JOB.yaml`: every data file of a job read, tokenized and checked the way
// training will, without touching the model's weights or any output directory.

#include <ostream>
#include <string>

namespace shardtune {

// Prints the summary to `out`; throws Error (DataError, SpecError, ...) when anything is wrong.
void ValidateData(const std::string& job_path, std::ostream& out);

}  // namespace shardtune
