#include "launcher/server/processes.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/worker_contract.h"

extern char** environ;

namespace shardtune::server {

namespace fs = std::filesystem;

namespace {

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (auto& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

std::string ReadWhole(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

volatile sig_atomic_t g_child = 0;
void Forward(int signal) {
  if (g_child > 0) ::kill(g_child, signal == kSignalKillAttempt ? SIGKILL : signal);
}

// The state (R, S, Z, ...) and start time of `pid` from /proc/PID/stat; nullopt when it is gone.
// The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
struct ProcStat {
  char state = '?';
  uint64_t start_time = 0;
};
std::optional<ProcStat> ReadProcStat(int64_t pid) {
  const std::string stat = ReadWhole(fs::path("/proc") / std::to_string(pid) / "stat");
  const size_t name_end = stat.rfind(')');
  if (name_end == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(name_end + 1));
  ProcStat result;
  fields >> result.state;
  std::string skipped;
  for (int field = 4; field < 22; ++field) fields >> skipped;  // ppid ... itrealvalue
  if (!(fields >> result.start_time)) return std::nullopt;
  return result;
}

// This process's descendants, from the kernel's per-thread child lists (every thread's: a child
// belongs to the thread that forked it).
std::vector<pid_t> Descendants() {
  std::vector<pid_t> found, frontier = {::getpid()};
  while (!frontier.empty()) {
    const pid_t parent = frontier.back();
    frontier.pop_back();
    std::error_code error;
    for (const auto& task : fs::directory_iterator(fs::path("/proc") / std::to_string(parent) / "task", error)) {
      std::istringstream children(ReadWhole(task.path() / "children"));
      for (pid_t child = 0; children >> child;) {
        found.push_back(child);
        frontier.push_back(child);
      }
    }
  }
  return found;
}

// SIGKILL to every descendant, until none is left (one forked meanwhile is found in the next
// round); reaps them. Orphans are reparented to this process, a child subreaper, so nothing the
// attempt started escapes. The kernel's child lists can miss a child while it is being reparented,
// so only two empty rounds in a row end it. Bounded: a process stuck in the kernel (D state)
// cannot be waited for.
void KillDescendants() {
  for (int round = 0, empty_rounds = 0; round < 100 && empty_rounds < 2; ++round) {
    const std::vector<pid_t> left = Descendants();
    empty_rounds = left.empty() ? empty_rounds + 1 : 0;
    for (pid_t pid : left) ::kill(pid, SIGKILL);
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Whether the NUL-separated `environment` holds the entry `entry` exactly.
bool HasEntry(const std::string& environment, const std::string& entry) {
  for (size_t at = environment.find(entry); at != std::string::npos; at = environment.find(entry, at + 1)) {
    const size_t end = at + entry.size();
    if ((at == 0 || environment[at - 1] == '\0') && (end == environment.size() || environment[end] == '\0'))
      return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> Environment(const std::map<std::string, std::string>& env);

pid_t SpawnInNewSession(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env) {
  std::vector<std::string> args = argv;
  std::vector<std::string> environment = Environment(env);
  std::vector<char*> arg_pointers = Pointers(args), env_pointers = Pointers(environment);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, args[0].c_str(), nullptr, &attributes, arg_pointers.data(), env_pointers.data());
  posix_spawnattr_destroy(&attributes);
  if (rc != 0) Fail(ErrorCode::kInternal, "cannot start {}: {}", args[0], std::strerror(rc));
  return pid;
}

std::optional<ProcessIdentity> LiveProcess(int64_t pid) {
  if (pid <= 0) return std::nullopt;
  const auto stat = ReadProcStat(pid);
  if (!stat || stat->state == 'Z' || stat->state == 'X') return std::nullopt;
  return ProcessIdentity{pid, stat->start_time};
}

bool StillRuns(const ProcessIdentity& id) {
  const auto now = LiveProcess(id.pid);
  return now && now->start_time == id.start_time;
}

void WritePidFile(const std::string& path, const ProcessIdentity& id) {
  WriteFileAtomic(path, fmt::format("{} {}\n", id.pid, id.start_time));
}

std::optional<ProcessIdentity> ReadPidFile(const std::string& path) {
  std::istringstream in(ReadWhole(path));
  ProcessIdentity id;
  if (!(in >> id.pid >> id.start_time) || id.pid <= 0) return std::nullopt;
  return id;
}

bool LegacySupervisorAlive(int64_t pid, const std::string& job_id) {
  if (pid <= 0 || ::kill(static_cast<pid_t>(pid), 0) != 0) return false;
  std::string cmdline = ReadWhole(fs::path("/proc") / std::to_string(pid) / "cmdline");
  for (char& c : cmdline)
    if (c == '\0') c = ' ';
  // A zombie (exited, not yet reaped) has an empty command line: not alive.
  return cmdline.find(" supervise ") != std::string::npos && cmdline.find(" " + job_id + " ") != std::string::npos;
}

std::optional<int> ReadExitFile(const std::string& path) {
  // Empty or partly written (a Slurm job's script writes it in place): not written yet.
  const std::optional<std::string> text = path.empty() ? std::nullopt : ReadJobWrittenFile(path, 0, 64);
  if (!text || text->empty() || text->back() != '\n') return std::nullopt;
  try {
    return std::stoi(*text);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::optional<std::string> ReadJobWrittenFile(const std::string& path, int64_t offset, size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  std::optional<std::string> text;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    text.emplace(max_bytes, '\0');
    const ssize_t n = ::pread(fd, text->data(), max_bytes, offset);
    text->resize(n > 0 ? static_cast<size_t>(n) : 0);
  }
  ::close(fd);
  return text;
}

void CreateForJobUser(const std::string& path, const JobUser& user) {
  fs::remove(path);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) FailErrno("create", path);
  const bool owned = user.name.empty() || ::fchown(fd, user.uid, user.gid) == 0;
  const bool moded = owned && ::fchmod(fd, 0666 & ~user.umask) == 0;
  const int error = errno;
  ::close(fd);
  errno = error;
  if (!owned) FailErrno(fmt::format("chown to run_as '{}'", user.name), path);
  if (!moded) FailErrno("chmod", path);
}

int KillAttemptProcesses(const std::string& job_id, int attempt) {
  const std::string id_entry = fmt::format("{}={}", contract::kEnvJobId, job_id);
  const std::string attempt_entry = fmt::format("{}={}", contract::kEnvJobAttempt, attempt);
  int killed = 0;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator("/proc", error)) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string environment = ReadWhole(entry.path() / "environ");
    if (HasEntry(environment, id_entry) && HasEntry(environment, attempt_entry))
      killed += ::kill(static_cast<pid_t>(std::stol(name)), SIGKILL) == 0;
  }
  return killed;
}

fs::path SelfDirectory() { return fs::read_symlink("/proc/self/exe").parent_path(); }

std::vector<std::string> Environment(const std::map<std::string, std::string>& env) {
  std::vector<std::string> environment;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    if (!env.count(entry.substr(0, entry.find('=')))) environment.push_back(entry);
  }
  for (const auto& [k, v] : env) environment.push_back(k + "=" + v);
  return environment;
}

namespace {

// What the child `pid` writes to `read_fd` until it exits, and its exit status.
CommandResult Collect(const std::string& program, pid_t pid, int read_fd) {
  CommandResult result;
  char buffer[4096];
  ssize_t n = 0;
  while ((n = ::read(read_fd, buffer, sizeof buffer)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) result.output.append(buffer, static_cast<size_t>(n));
  }
  ::close(read_fd);
  int status = 0;
  pid_t waited = 0;
  while ((waited = ::waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
  }
  if (waited != pid) {  // reaped by someone else: its status is unknown, never a success
    result.output += fmt::format("\n(the exit status of {} was lost: {})", program, std::strerror(errno));
    return result;
  }
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// The exit status of a job's child that could not take its identity or start its program.
constexpr int kCannotStart = 127;

}  // namespace

JobUser ResolveJobUser(const std::string& run_as, int umask) {
  JobUser user;
  user.umask = static_cast<mode_t>(umask);
  if (run_as.empty()) return user;
  const struct passwd* entry = ::getpwnam(run_as.c_str());
  if (entry == nullptr) Fail(ErrorCode::kInvalidArgument, "run_as: no user '{}' on this machine", run_as);
  if (entry->pw_uid == 0) Fail(ErrorCode::kInvalidArgument, "run_as: '{}' is root; jobs never run as root", run_as);
  user.name = run_as;
  user.uid = entry->pw_uid;
  user.gid = entry->pw_gid;
  int count = 64;
  user.groups.resize(static_cast<size_t>(count));
  while (::getgrouplist(run_as.c_str(), user.gid, user.groups.data(), &count) < 0)
    user.groups.resize(static_cast<size_t>(count));
  user.groups.resize(static_cast<size_t>(count));
  return user;
}

bool BecomeJobUser(const JobUser& user) {
  ::umask(user.umask);
  if (user.name.empty()) return true;
  // Groups before the user: once the uid is dropped they can no longer be set.
  return ::setgroups(user.groups.size(), user.groups.data()) == 0 && ::setgid(user.gid) == 0 &&
         ::setuid(user.uid) == 0 && ::setuid(0) != 0;  // and root cannot be regained
}

CommandResult RunCommand(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env) {
  CommandResult result;
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return result;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDERR_FILENO);
  std::vector<std::string> args = argv, environment = Environment(env);
  std::vector<char*> arg_pointers = Pointers(args), env_pointers = Pointers(environment);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, args[0].c_str(), &actions, nullptr, arg_pointers.data(), env_pointers.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipe_fds[1]);
  if (rc != 0) {
    ::close(pipe_fds[0]);
    result.output = fmt::format("cannot run {}: {}", args[0], std::strerror(rc));
    return result;
  }
  return Collect(args[0], pid, pipe_fds[0]);
}

CommandResult RunJobCommand(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                            const JobUser& user) {
  // fork, not posix_spawn, which can take neither a user nor a umask. Everything the child needs
  // is built before the fork: between fork and exec it makes system calls only.
  CommandResult result;
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return result;
  std::vector<std::string> args = argv, environment = Environment(env);
  std::vector<char*> arg_pointers = Pointers(args), env_pointers = Pointers(environment);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipe_fds[1], STDOUT_FILENO);
    ::dup2(pipe_fds[1], STDERR_FILENO);
    if (BecomeJobUser(user)) ::execve(arg_pointers[0], arg_pointers.data(), env_pointers.data());
    ::_exit(kCannotStart);
  }
  ::close(pipe_fds[1]);
  if (pid < 0) {
    ::close(pipe_fds[0]);
    result.output = fmt::format("cannot run {}: fork: {}", args[0], std::strerror(errno));
    return result;
  }
  return Collect(args[0], pid, pipe_fds[0]);
}

int RunSupervisor(const std::vector<std::string>& argv, const std::string& log, const std::string& exit_file,
                  const JobUser& user) {
  if (argv.empty()) return 2;
  // The log is the server's (read by it, never by other users); the job writes it through the fd.
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  std::vector<std::string> args = argv;
  std::vector<char*> pointers = Pointers(args);
  // Before the first fork: every process of the attempt is to stay this one's descendant.
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
    std::fprintf(stderr,
                 "shardtune-server supervise: prctl(PR_SET_CHILD_SUBREAPER): %s; processes of the attempt "
                 "whose parent exits escape it\n",
                 std::strerror(errno));
  // Handlers first: the default action of kSignalKillAttempt would end this process alone. The
  // signals stay blocked until g_child is set (one arriving in between is forwarded then, not
  // lost); the child starts with none blocked (exec resets the handlers).
  ::signal(SIGTERM, Forward);
  ::signal(SIGINT, Forward);
  ::signal(kSignalKillAttempt, Forward);
  sigset_t forwarded, previous;
  sigemptyset(&forwarded);
  for (int signal : {SIGTERM, SIGINT, kSignalKillAttempt}) sigaddset(&forwarded, signal);
  ::sigprocmask(SIG_BLOCK, &forwarded, &previous);
  // fork, not posix_spawn: the child takes the job's user and umask before it execs mpirun.
  const pid_t child = ::fork();
  if (child == 0) {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (fd >= 0) {
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
    }
    if (!BecomeJobUser(user)) {
      std::fprintf(stderr, "shardtune-server supervise: cannot run the job as user '%s': %s\n", user.name.c_str(),
                   std::strerror(errno));
      ::_exit(kCannotStart);
    }
    ::execvp(pointers[0], pointers.data());
    std::fprintf(stderr, "shardtune-server supervise: cannot run %s: %s\n", pointers[0], std::strerror(errno));
    ::_exit(kCannotStart);
  }
  if (child < 0) {
    WriteFileAtomic(exit_file, fmt::format("{}\n", kCannotStart));
    return kCannotStart;
  }
  g_child = child;
  ::sigprocmask(SIG_SETMASK, &previous, nullptr);
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  g_child = 0;
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  KillDescendants();  // nothing of an ended attempt outlives it
  WriteFileAtomic(exit_file, std::to_string(code) + "\n");
  return code;
}

}  // namespace shardtune::server
