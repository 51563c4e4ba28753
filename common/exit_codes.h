#pragma once
// Exit codes of every shardtune executable, and of the jobs the server runs: the server tells a
// user error (not retried) from a failure (retried) by them.

namespace shardtune {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;        // the job failed while running
inline constexpr int kExitInvalidInput = 2;  // the spec, data, model files or flags are wrong
inline constexpr int kExitTimeout = 3;       // a collective did not complete within its timeout

}  // namespace shardtune
