#pragma once
// The error policy of the training side (common, sharding, worker): failures throw `Error`, a
// typed exception whose message names the file, line, key or tensor and what was expected. The
// worker's main turns an Error into a failed job with that message and a non-zero exit. (The
// control plane, in launcher/, maps the same codes onto gRPC status codes.)

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace shardtune {

enum class ErrorCode {
  kInvalidArgument,     // the user's input is wrong: a spec key, a data line, a CLI flag
  kNotFound,            // a file or tensor the input names does not exist
  kDataLoss,            // a file exists but its contents are malformed or truncated
  kFailedPrecondition,  // the input is valid but cannot be used in this state (e.g. resume mismatch)
  kUnimplemented,       // a valid request this build does not support yet
  kIo,                  // the operating system refused a read or write
  kInternal,            // a broken invariant: a bug in shardtune
};

const char* ErrorCodeName(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

// Throws Error(code, formatted message).
template <typename... Args>
[[noreturn]] void Fail(ErrorCode code, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(code, fmt::format(format, std::forward<Args>(args)...));
}

// Throws Error(kIo) with the failed statement's description, the path and strerror(errno).
[[noreturn]] void FailErrno(const std::string& what, const std::string& path);

}  // namespace shardtune

// Checks a POSIX call that returns -1 on failure, naming the call, the path and errno's message.
#define ST_SYSCALL_CHECK(stmt, path)                                                                        \
  do {                                                                                                      \
    if ((stmt) == -1) ::shardtune::FailErrno(fmt::format("{} ({}:{})", #stmt, __FILE__, __LINE__), (path)); \
  } while (0)

// Checks an internal invariant; a failure is a shardtune bug, reported with file:line.
#define ST_CHECK(cond, ...)                                                                                    \
  do {                                                                                                         \
    if (!(cond))                                                                                               \
      ::shardtune::Fail(::shardtune::ErrorCode::kInternal, "internal check failed at {}:{}: {}: {}", __FILE__, \
                        __LINE__, #cond, fmt::format(__VA_ARGS__));                                            \
  } while (0)
