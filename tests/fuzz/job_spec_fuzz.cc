// The job spec (YAML) as `shardtune train`, `validate` and the server read it; a spec that parses
// must emit (JobSpecToYaml: the resolved spec the server stores and the worker reads) and parse
// back, or the server would accept a job its worker then refuses.

#include <cstdio>
#include <cstdlib>

#include "common/error.h"
#include "common/job_spec.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  shardtune::SpecOptions options;
  options.check_files = false;  // what the bytes say, not what this machine holds
  shardtune::JobSpec spec;
  try {
    spec = shardtune::ParseJobSpec(std::string(shardtune::fuzz::AsText(data, size)), "job.yaml", "/fuzz", options);
  } catch (const shardtune::Error&) {
    return 0;
  }
  const std::string resolved = shardtune::JobSpecToYaml(spec);
  try {
    shardtune::ParseJobSpec(resolved, "resolved.yaml", "/fuzz", options);
  } catch (const shardtune::Error& e) {
    std::fprintf(stderr, "the resolved spec does not parse back: %s\n--- resolved:\n%s\n", e.what(), resolved.c_str());
    std::abort();
  }
  return 0;
}
