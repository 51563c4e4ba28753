#include "worker/entry.h"

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/job_spec.h"
#include "common/logging.h"
#include "worker/trainer.h"

namespace shardtune {

int ReportFailure(const std::exception& error) {
  spdlog::error("{}", error.what());
  if (const auto* typed = dynamic_cast<const Error*>(&error)) {
    switch (typed->code()) {
      case ErrorCode::kInvalidArgument:
      case ErrorCode::kNotFound:
      case ErrorCode::kDataLoss:
      case ErrorCode::kUnimplemented:
      case ErrorCode::kFailedPrecondition:
        return kExitInvalidInput;
      default:
        break;
    }
  }
  return kExitFailed;
}

int RunWorker(const std::string& job_path, const std::string& log_level) {
  try {
    InitLogging(log_level, RankFromEnvironment());
    if (const char* size = std::getenv("OMPI_COMM_WORLD_SIZE"); size != nullptr && std::atoi(size) > 1) {
      Fail(ErrorCode::kUnimplemented, "this build trains on one rank; started with {} ranks", size);
    }
    const JobSpec spec = LoadJobSpec(job_path);
    const TrainingSummary summary = RunTraining(spec);
    spdlog::info("job '{}' finished: {} steps, last loss {:.4f}{}", spec.name, summary.steps, summary.last_loss,
                 summary.last_val_loss ? fmt::format(", val_loss {:.4f}", *summary.last_val_loss) : "");
    return kExitOk;
  } catch (const std::exception& e) {
    return ReportFailure(e);
  }
}

}  // namespace shardtune
