#include "launcher/server/processes.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"

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
  if (g_child > 0) ::kill(g_child, signal);
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

bool SupervisorAlive(int64_t pid, const std::string& job_id) {
  if (pid <= 0 || ::kill(static_cast<pid_t>(pid), 0) != 0) return false;
  std::string cmdline = ReadWhole(fs::path("/proc") / std::to_string(pid) / "cmdline");
  for (char& c : cmdline)
    if (c == '\0') c = ' ';
  // A zombie (exited, not yet reaped) has an empty command line: not alive.
  return cmdline.find(" supervise ") != std::string::npos && cmdline.find(" " + job_id + " ") != std::string::npos;
}

std::optional<int> ReadExitFile(const std::string& path) {
  if (path.empty() || !fs::exists(path)) return std::nullopt;
  try {
    return std::stoi(ReadWhole(path));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::vector<pid_t> JobProcesses(const std::string& job_id) {
  const std::string needle = "SHARDTUNE_JOB_ID=" + job_id;
  std::vector<pid_t> pids;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string environment = ReadWhole(entry.path() / "environ");
    size_t at = 0;
    while ((at = environment.find(needle, at)) != std::string::npos) {
      const size_t end = at + needle.size();
      if ((at == 0 || environment[at - 1] == '\0') && (end == environment.size() || environment[end] == '\0')) {
        pids.push_back(static_cast<pid_t>(std::stol(name)));
        break;
      }
      at = end;
    }
  }
  return pids;
}

int KillJobProcesses(const std::string& job_id) {
  int killed = 0;
  for (pid_t pid : JobProcesses(job_id)) killed += ::kill(pid, SIGKILL) == 0;
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
  char buffer[4096];
  ssize_t n = 0;
  while ((n = ::read(pipe_fds[0], buffer, sizeof buffer)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) result.output.append(buffer, static_cast<size_t>(n));
  }
  ::close(pipe_fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::string ShellQuote(const std::string& word) {
  std::string quoted = "'";
  for (char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

int RunSupervisor(const std::vector<std::string>& argv, const std::string& log, const std::string& exit_file) {
  if (argv.empty()) return 2;
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (fd >= 0) {
    posix_spawn_file_actions_adddup2(&actions, fd, STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, fd, STDERR_FILENO);
  }
  std::vector<std::string> args = argv;
  std::vector<char*> pointers = Pointers(args);
  pid_t child = 0;
  if (posix_spawnp(&child, args[0].c_str(), &actions, nullptr, pointers.data(), environ) != 0) {
    WriteFileAtomic(exit_file, "127\n");
    return 127;
  }
  g_child = child;
  ::signal(SIGTERM, Forward);
  ::signal(SIGINT, Forward);
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  WriteFileAtomic(exit_file, std::to_string(code) + "\n");
  return code;
}

}  // namespace shardtune::server
