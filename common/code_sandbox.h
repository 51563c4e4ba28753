#pragma once
// Runs generated Python code against its tests where it can harm nothing: bubblewrap (Debian's
// `bubblewrap`) gives the program new user, PID, network, IPC and UTS namespaces, no network at
// all, a read-only view of /usr only (the interpreter and its library), and a small tmpfs as its
// one writable directory; rlimits bound its CPU time, address space, processes, open files and
// file sizes; a wall-clock timeout kills the whole sandbox. Whatever the program does (loop,
// allocate without end, fork repeatedly, open sockets, write elsewhere), only its own run fails.
// Used for pass@k (common/generation_metrics.h). No LibTorch.

#include <cstdint>
#include <string>

namespace shardtune {

struct SandboxLimits {
  double wall_seconds = 10;                   // then the sandbox is killed
  int64_t cpu_seconds = 10;                   // RLIMIT_CPU
  int64_t memory_bytes = int64_t{1} << 30;    // RLIMIT_AS
  int64_t processes = 16;                     // RLIMIT_NPROC, within the sandbox's user namespace
  int64_t scratch_bytes = int64_t{64} << 20;  // the tmpfs the program may write (its working directory)
};

struct SandboxResult {
  bool passed = false;  // exited 0 within the limits
  // "passed", "exit status 1", "killed by signal 9", "timed out after 10 s"; "sandbox unavailable: ..."
  std::string outcome;
  std::string output;  // the last 4 KiB of its stdout and stderr
};

// The Python interpreter run in the sandbox (it must lie under /usr).
inline constexpr char kSandboxPython[] = "/usr/bin/python3";

// Runs `program` (Python source) with kSandboxPython in a fresh sandbox. Throws Error only when no
// sandbox can be made at all (bubblewrap or the interpreter missing); a failing program is a result.
SandboxResult RunPythonSandboxed(const std::string& program, const SandboxLimits& limits = {});

}  // namespace shardtune
