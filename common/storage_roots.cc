#include "common/storage_roots.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <utility>

#include "common/worker_contract.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

// A directory the spec names is walked entry by entry; one holding more is refused rather than
// admitted unchecked.
constexpr size_t kMaxEntriesWalked = 100000;

// realpath(3), nullopt with errno set when it fails.
std::optional<fs::path> RealPath(const fs::path& path) {
  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) == nullptr) return std::nullopt;
  return fs::path(resolved);
}

bool HasControlCharacter(const std::string& path) {
  for (const unsigned char c : path)
    if (c < 0x20 || c == 0x7f) return true;
  return false;
}

bool WithinAny(const fs::path& path, const std::vector<fs::path>& roots) {
  for (const fs::path& root : roots)
    if (WithinRoot(path, root)) return true;
  return false;
}

std::string Listed(const std::vector<fs::path>& roots) {
  std::string text;
  for (const fs::path& root : roots) {
    if (!text.empty()) text += ", ";
    text += root.string();
  }
  return text.empty() ? "none" : text;
}

// Where `path` leads: its realpath; for a path that does not exist yet (an output directory),
// the realpath of its nearest existing ancestor with the missing components after it. A
// dangling symlink on the way (it would create its target) is a problem, as is any failure
// other than a missing component.
struct Resolution {
  fs::path real;
  bool exists = false;
  std::string problem;
};
Resolution Resolve(const fs::path& path) {
  fs::path missing;
  for (fs::path at = path;; at = at.parent_path()) {
    if (const auto real = RealPath(at)) return {missing.empty() ? *real : *real / missing, missing.empty(), ""};
    const int error = errno;
    struct stat link {};
    if (::lstat(at.c_str(), &link) == 0 && S_ISLNK(link.st_mode))
      return {{}, false, fmt::format("{} is a symlink to a missing target", at.string())};
    if (error != ENOENT || at == at.parent_path()) return {{}, false, std::strerror(error)};
    missing = missing.empty() ? at.filename() : at.filename() / missing;
  }
}

// The problem with one existing file or directory entry `real` (resolved) reached as `shown`.
// `hard_links`: whether a file with several links under a tenant's root is a problem.
std::optional<std::string> EntryProblem(const fs::path& shown, const fs::path& real, bool write,
                                        const StorageRoots& roots, bool hard_links = true) {
  std::vector<fs::path> allowed = roots.write;
  if (!write) allowed.insert(allowed.end(), roots.read.begin(), roots.read.end());
  if (!WithinAny(real, allowed)) {
    return fmt::format("{}resolves to {}, outside the directories this tenant may {} ({})",
                       shown == real ? "" : shown.string() + " ", real.string(), write ? "write" : "read",
                       Listed(allowed));
  }
  struct stat info {};
  // Only what the job reads: its own outputs hold shardtune's own hard links (checkpoints/best).
  if (hard_links && !write && ::stat(real.c_str(), &info) == 0 && S_ISREG(info.st_mode) && info.st_nlink > 1 &&
      (WithinAny(real, roots.tenant_owned) || WithinAny(real, roots.write))) {
    return fmt::format("{} is a hard link ({} links) in a tenant's directory; copy the file instead", real.string(),
                       info.st_nlink);
  }
  return std::nullopt;
}

// Every entry under the directory `dir` (resolved), symlinks followed (their targets checked).
std::optional<std::string> DirectoryProblem(const fs::path& dir, bool write, const StorageRoots& roots) {
  std::error_code error;
  fs::recursive_directory_iterator it(dir, fs::directory_options::none, error), end;
  for (size_t walked = 0; !error && it != end; it.increment(error)) {
    if (++walked > kMaxEntriesWalked)
      return fmt::format("{} holds more than {} entries; too many to check", dir.string(), kMaxEntriesWalked);
    const fs::path entry = it->path();
    const auto real = RealPath(entry);
    if (!real) return fmt::format("{} cannot be resolved: {}", entry.string(), std::strerror(errno));
    if (auto problem = EntryProblem(entry, *real, write, roots)) return problem;
  }
  if (error) return fmt::format("{} cannot be listed: {}", dir.string(), error.message());
  return std::nullopt;
}

}  // namespace

bool WithinRoot(const fs::path& path, const fs::path& root) {
  auto p = path.begin();
  for (auto r = root.begin(); r != root.end(); ++r, ++p) {
    if (r->empty()) continue;  // a trailing separator
    if (p == path.end() || *p != *r) return false;
  }
  return true;
}

std::vector<SpecPath> SpecPaths(const JobSpec& spec) {
  std::vector<SpecPath> paths = {{"model.path", spec.model.path, false},
                                 {"model.tokenizer", spec.model.tokenizer, false},
                                 {"method.init_from", spec.method.init_from, false},
                                 {"data.train", spec.data.train, false},
                                 {"data.validation", spec.data.validation, false}};
  for (size_t i = 0; i < spec.data.tasks.size(); ++i) {
    paths.push_back({fmt::format("data.tasks[{}].train", i), spec.data.tasks[i].train, false});
    paths.push_back({fmt::format("data.tasks[{}].validation", i), spec.data.tasks[i].validation, false});
  }
  paths.push_back({"data.cache_dir", spec.data.cache_dir, true});
  paths.push_back({"output.dir", spec.output.dir, true});
  std::erase_if(paths, [](const SpecPath& p) { return p.path.empty(); });
  return paths;
}

StorageRoots ResolvedRoots(const StorageRoots& roots) {
  auto resolve = [](std::vector<fs::path> list) {
    for (fs::path& root : list) {
      const auto real = RealPath(root);
      if (!real) Fail(ErrorCode::kNotFound, "storage root {}: {}", root.string(), std::strerror(errno));
      root = *real;
    }
    return list;
  };
  return {resolve(roots.write), resolve(roots.read), resolve(roots.tenant_owned)};
}

std::optional<std::string> PathProblem(const SpecPath& p, const StorageRoots& roots) {
  auto problem = [&](const std::string& why) { return fmt::format("{}: {} {}", p.key, p.path, why); };
  if (HasControlCharacter(p.path)) return problem("holds a control character; such names are refused");
  const fs::path path(p.path);
  for (const fs::path& component : path)
    if (component == "..") return problem("holds '..'; name the directory itself");
  if (!path.is_absolute()) return problem("is not an absolute path");
  const Resolution resolved = Resolve(path);
  if (!resolved.problem.empty()) return problem("cannot be resolved: " + resolved.problem);
  if (auto entry = EntryProblem(path, resolved.real, p.write, roots)) return problem(*entry);
  if (resolved.exists && fs::is_directory(resolved.real)) {
    if (auto inside = DirectoryProblem(resolved.real, p.write, roots)) return problem("holds an entry that " + *inside);
  }
  return std::nullopt;
}

std::vector<std::string> SpecPathProblems(const JobSpec& spec, const StorageRoots& roots) {
  std::vector<std::string> problems;
  for (const SpecPath& p : SpecPaths(spec))
    if (auto problem = PathProblem(p, roots)) problems.push_back(*problem);
  return problems;
}

std::string JoinRoots(const std::vector<fs::path>& roots) {
  std::string joined;
  for (const fs::path& root : roots) {
    if (!joined.empty()) joined += ':';
    joined += root.string();
  }
  return joined;
}

std::vector<fs::path> SplitRoots(const std::string& joined) {
  std::vector<fs::path> roots;
  std::istringstream in(joined);
  for (std::string root; std::getline(in, root, ':');)
    if (!root.empty()) roots.emplace_back(root);
  return roots;
}

namespace {

// The roots the job's environment grants (resolved); nullopt when it names none.
std::optional<StorageRoots> GrantedRoots() {
  auto variable = [](std::string_view name) {
    const char* value = std::getenv(std::string(name).c_str());
    return value == nullptr ? std::string() : std::string(value);
  };
  const std::string write = variable(contract::kEnvWriteRoots);
  if (write.empty()) return std::nullopt;
  return ResolvedRoots({SplitRoots(write), SplitRoots(variable(contract::kEnvReadRoots)),
                        SplitRoots(variable(contract::kEnvTenantRoots))});
}

}  // namespace

GrantedFile::GrantedFile(const fs::path& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
  if (fd_ < 0) Fail(ErrorCode::kNotFound, "{}: cannot open: {}", path.string(), std::strerror(errno));
  try {
    RequireOpenedWithinGrantedRoots(fd_, path.string());
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

GrantedFile::~GrantedFile() {
  if (fd_ >= 0) ::close(fd_);
}

fs::path GrantedFile::Name() const { return fs::path("/proc/self/fd") / std::to_string(fd_); }

int GrantedFile::Release() { return std::exchange(fd_, -1); }

void RequireOpenedWithinGrantedRoots(int fd, const std::string& path) {
  const auto roots = GrantedRoots();
  if (!roots) return;
  std::error_code error;
  const fs::path real = fs::read_symlink(fs::path("/proc/self/fd") / std::to_string(fd), error);
  if (error) Fail(ErrorCode::kNotFound, "{}: cannot tell where the opened file lies: {}", path, error.message());
  // Where it lies only: the spec's paths were checked for hard links, and the files a job reads
  // from its own output (its checkpoints) are hard-linked by shardtune itself.
  if (auto problem = EntryProblem(path, real, /*write=*/false, *roots, /*hard_links=*/false)) {
    // kNotFound: the job fails as INVALID_INPUT (worker_contract.h), a user error never retried.
    Fail(ErrorCode::kNotFound, "{}: refused when opened (it changed since the server admitted it): {}", path, *problem);
  }
}

void RequireSpecPathsWithinGrantedRoots(const JobSpec& spec) {
  const auto granted = GrantedRoots();
  if (!granted) return;
  const StorageRoots& roots = *granted;
  const std::vector<std::string> problems = SpecPathProblems(spec, roots);
  if (problems.empty()) return;
  std::string message = "the job's paths changed since the server admitted them, and are refused:";
  for (const std::string& problem : problems) message += "\n  " + problem;
  // kNotFound: the job fails as INVALID_INPUT (worker_contract.h), a user error never retried.
  throw Error(ErrorCode::kNotFound, message);
}

JobSpec LoadJobSpecWithinGrantedRoots(const fs::path& job_path) {
  RequireSpecPathsWithinGrantedRoots(LoadJobSpec(job_path, SpecOptions{.check_files = false}));
  return LoadJobSpec(job_path);
}

}  // namespace shardtune
