// The gRPC requests that carry a job spec into the server, as bytes off the wire: the first byte
// picks CreateJobRequest or ValidateJobRequest, the rest is the serialized message. A message
// that parses goes through the server's spec checks without a store or a running server
// (job_manager.cc's ParseSpec: the spec text or its structured fields, ParseJobSpec as the server
// calls it, the world size's checks, then the memory plan of PlanFor and the stored YAML).

#include "common/error.h"
#include "common/job_checks.h"
#include "common/job_spec.h"
#include "launcher/server/job_manager.h"
#include "sharding/planner.h"
#include "shardtune/v1/jobs.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

std::string RequestSpec(uint8_t kind, const uint8_t* data, size_t size) {
  namespace v1 = shardtune::v1;
  if (kind % 2 == 0) {
    v1::CreateJobRequest request;
    if (!request.ParseFromArray(data, static_cast<int>(size))) return {};
    return shardtune::server::SpecText(request);
  }
  v1::ValidateJobRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return {};
  return request.spec_case() == v1::ValidateJobRequest::kSpecFields
             ? shardtune::server::StructToJson(request.spec_fields())
             : request.spec_yaml();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  try {
    const std::string text = RequestSpec(data[0], data + 1, size - 1);
    if (text.empty()) return 0;
    const shardtune::JobSpec spec = shardtune::ParseJobSpec(text, "spec_yaml", "/");
    const int64_t ranks = spec.resources.world_size();
    shardtune::RequireFitsWorld(spec, ranks);
    (void)shardtune::MakePlan(shardtune::PlanInputForJob(spec, ranks, 80.0 * (1 << 30), /*on_gpu=*/true));
    (void)shardtune::JobSpecToYaml(spec);
  } catch (const shardtune::server::RequestError&) {
  } catch (const shardtune::Error&) {
  }
  return 0;
}
