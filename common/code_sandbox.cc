#include "common/code_sandbox.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <grp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "common/error.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

constexpr char kBubblewrap[] = "/usr/bin/bwrap";
// Root runs the sandbox as nobody: the kernel never applies RLIMIT_NPROC to a real root user,
// whatever namespaces it is in, and a fork bomb would go unbounded.
constexpr uid_t kNobody = 65534;
constexpr size_t kOutputTail = 4096;

// Processes and threads whose real user is `uid`: RLIMIT_NPROC counts them all, so the sandbox's
// allowance is added to what the user runs already.
int64_t TasksOf(uid_t uid) {
  int64_t tasks = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream status(entry.path() / "status");
    std::string line;
    bool mine = false;
    while (std::getline(status, line)) {
      if (line.rfind("Uid:", 0) == 0) mine = std::stoul(line.substr(4)) == uid;
      if (line.rfind("Threads:", 0) == 0 && mine) tasks += std::stoll(line.substr(8));
    }
  }
  return tasks;
}

// An anonymous in-memory file (not inherited across exec unless `inherit`).
int MemoryFile(const char* name, bool inherit) {
  const int fd = memfd_create(name, inherit ? 0 : MFD_CLOEXEC);
  if (fd < 0) Fail(ErrorCode::kIo, "sandbox: memfd_create: {}", std::strerror(errno));
  return fd;
}

void WriteAll(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) Fail(ErrorCode::kIo, "sandbox: writing the program: {}", std::strerror(errno));
    done += static_cast<size_t>(n);
  }
}

std::string Tail(int fd) {
  const off_t size = lseek(fd, 0, SEEK_END);
  if (size <= 0) return "";
  const off_t from = size > static_cast<off_t>(kOutputTail) ? size - static_cast<off_t>(kOutputTail) : 0;
  std::string out(static_cast<size_t>(size - from), '\0');
  const ssize_t n = pread(fd, out.data(), out.size(), from);
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

void Limit(int resource, rlim_t value) {
  const rlimit limit{value, value};
  setrlimit(resource, &limit);  // in the child: a failure leaves the inherited limit, never a larger one
}

// bubblewrap's command line: the program read from `program_fd`, its start reported on `status_fd`.
// The sandbox: new namespaces of every kind (no network device but loopback), /usr read-only
// and nothing else of the host's file system, a tmpfs as the working directory, no
// environment; bubblewrap's init dies with it, and the kernel kills every process in its PID
// namespace then.
std::vector<std::string> BubblewrapArgs(int program_fd, int status_fd, const SandboxLimits& limits) {
  const std::string fd = std::to_string(program_fd), status = std::to_string(status_fd),
                    scratch_bytes = std::to_string(limits.scratch_bytes);
  return {kBubblewrap,
          "--json-status-fd",
          status,
          "--unshare-all",
          "--die-with-parent",
          "--new-session",
          "--ro-bind",
          "/usr",
          "/usr",
          "--symlink",
          "usr/lib",
          "/lib",
          "--symlink",
          "usr/lib64",
          "/lib64",
          "--symlink",
          "usr/bin",
          "/bin",
          "--proc",
          "/proc",
          "--dev",
          "/dev",
          "--size",
          scratch_bytes,
          "--tmpfs",
          "/scratch",
          "--file",
          fd,
          "/program/main.py",
          "--chdir",
          "/scratch",
          "--clearenv",
          "--setenv",
          "PATH",
          "/usr/bin",
          "--setenv",
          "HOME",
          "/scratch",
          "--",
          kSandboxPython,
          "-I",
          "-B",
          "/program/main.py"};
}

// In the forked child: stdio to `output_fd`, every other descriptor but the two bubblewrap reads
// closed, the limits set, nobody's identity taken when root; then bubblewrap. Only
// async-signal-safe calls.
[[noreturn]] void ExecSandbox(const std::vector<char*>& argv, int output_fd, int program_fd, int status_fd,
                              const SandboxLimits& limits, rlim_t processes, bool root) {
  const int null = open("/dev/null", O_RDONLY);
  dup2(null, STDIN_FILENO);
  dup2(output_fd, STDOUT_FILENO);
  dup2(output_fd, STDERR_FILENO);
  // Nothing else of this process's goes in (a trainer holds sockets, caches, MPI's pipes), and
  // the open-files limit below counts only what the sandbox opens.
  const auto [low, high] = std::minmax(program_fd, status_fd);
  close_range(3, static_cast<unsigned>(low) - 1, 0);
  close_range(static_cast<unsigned>(low) + 1, static_cast<unsigned>(high) - 1, 0);
  close_range(static_cast<unsigned>(high) + 1, ~0U, 0);
  Limit(RLIMIT_CPU, static_cast<rlim_t>(limits.cpu_seconds));
  Limit(RLIMIT_AS, static_cast<rlim_t>(limits.memory_bytes));
  Limit(RLIMIT_NPROC, processes);
  Limit(RLIMIT_NOFILE, 64);
  Limit(RLIMIT_FSIZE, 16 << 20);
  Limit(RLIMIT_CORE, 0);
  if (root && (setgroups(0, nullptr) != 0 || setgid(kNobody) != 0 || setuid(kNobody) != 0)) _exit(126);
  execv(argv[0], argv.data());
  _exit(127);
}

// What the wait saw, as a result; an Error when bubblewrap never started the program.
SandboxResult Outcome(int wait_status, bool timed_out, std::string output, const std::string& started,
                      const SandboxLimits& limits) {
  SandboxResult result;
  result.output = std::move(output);
  if (!timed_out && started.find("child-pid") == std::string::npos) {
    // bubblewrap failed before the program ran (user namespaces refused, say): no sample can be judged.
    Fail(ErrorCode::kFailedPrecondition, "the code sandbox (bubblewrap) could not start: {}", result.output);
  }
  if (timed_out) {
    result.outcome = fmt::format("timed out after {} s", limits.wall_seconds);
  } else if (WIFEXITED(wait_status)) {
    result.passed = WEXITSTATUS(wait_status) == 0;
    result.outcome = result.passed ? "passed" : fmt::format("exit status {}", WEXITSTATUS(wait_status));
  } else {
    result.outcome = fmt::format("killed by signal {}", WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : 0);
  }
  return result;
}

}  // namespace

SandboxResult RunPythonSandboxed(const std::string& program, const SandboxLimits& limits) {
  for (const char* tool : {kBubblewrap, kSandboxPython}) {
    if (access(tool, X_OK) != 0) {
      Fail(ErrorCode::kFailedPrecondition,
           "running generated code needs {} (Debian packages bubblewrap and python3; scripts/install-deps.sh "
           "installs them)",
           tool);
    }
  }
  const int program_fd = MemoryFile("program.py", /*inherit=*/true);
  WriteAll(program_fd, program);
  lseek(program_fd, 0, SEEK_SET);
  const int output_fd = MemoryFile("output", /*inherit=*/true);
  const int status_fd = MemoryFile("status", /*inherit=*/true);  // bubblewrap's: whether the program started

  const bool root = geteuid() == 0;
  const uid_t user = root ? kNobody : getuid();
  const auto processes = static_cast<rlim_t>(TasksOf(user) + limits.processes);
  const std::vector<std::string> args = BubblewrapArgs(program_fd, status_fd, limits);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  const pid_t pid = fork();
  if (pid < 0) Fail(ErrorCode::kIo, "sandbox: fork: {}", std::strerror(errno));
  if (pid == 0) {
    ExecSandbox(argv, output_fd, program_fd, status_fd, limits, processes, root);
  }
  close(program_fd);

  int wait_status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(limits.wall_seconds);
  bool timed_out = false;
  while (waitpid(pid, &wait_status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(pid, SIGKILL);  // bubblewrap; its init and every process under it follow
      waitpid(pid, &wait_status, 0);
      timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::string output = Tail(output_fd);
  close(output_fd);
  const std::string started = Tail(status_fd);
  close(status_fd);
  return Outcome(wait_status, timed_out, std::move(output), started, limits);
}

}  // namespace shardtune
