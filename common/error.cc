#include "common/error.h"

#include <cerrno>
#include <cstring>

namespace shardtune {

const char* ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case ErrorCode::kNotFound:
      return "NOT_FOUND";
    case ErrorCode::kDataLoss:
      return "DATA_LOSS";
    case ErrorCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case ErrorCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case ErrorCode::kIo:
      return "IO";
    case ErrorCode::kInternal:
      return "INTERNAL";
  }
  return "UNKNOWN";
}

void FailErrno(const std::string& what, const std::string& path) {
  const int err = errno;
  Fail(ErrorCode::kIo, "{}: {} failed: {}", path, what, std::strerror(err));
}

}  // namespace shardtune
