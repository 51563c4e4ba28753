#pragma once
// The storage sandbox's one rule (docs/server.md, "Storage and tenants"): every path a job spec
// names resolves (realpath) inside the directories the job is granted: a read path inside a read
// or write root, a write path (output.dir, data.cache_dir) inside a write root. Checked twice:
// by shardtune-server when it admits a spec (launcher/server/storage_policy.h builds the roots of
// the caller's tenant), and by shardtune-worker before it opens anything (the server passes the
// same roots in the job's environment, common/worker_contract.h), because a path can change
// between the two (a file swapped for a symlink after admission).
//
// Refused, each with a message naming the spec key and the path: a path that resolves outside
// its roots (`..`, a symlink pointing out, /etc/passwd), a `..` component as written, a name
// with control characters, a file the job reads that is a regular file under a tenant-writable
// root with more than one hard link (the tenant could have linked another's file; the output
// directory is exempt: shardtune hard-links its own checkpoints there), and inside a directory
// the spec names (a model, an adapter, the output directory with its checkpoints) any entry
// doing the same. Symlinks inside such a directory are checked where they lead, not descended.
// LibTorch-free; no gRPC.

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/job_spec.h"

namespace shardtune {

struct StorageRoots {
  std::vector<std::filesystem::path> write;  // read and write: the tenant's root
  std::vector<std::filesystem::path> read;   // read only: shared models, other roots granted
  // Roots a tenant can write (its own, and for an admin every tenant's): hard links are refused
  // there. Every `write` root is one; list any others here.
  std::vector<std::filesystem::path> tenant_owned;
};

// One path of a spec: its key ("data.tasks[1].train"), the path as resolved by the spec's parser,
// and whether the job writes there.
struct SpecPath {
  std::string key;
  std::string path;
  bool write = false;
};

// Every path `spec` names (empty optional ones left out).
std::vector<SpecPath> SpecPaths(const JobSpec& spec);

// Whether `path` is `root` or lies under it (both already resolved).
bool WithinRoot(const std::filesystem::path& path, const std::filesystem::path& root);

// `roots` with every root resolved (realpath); throws Error(kNotFound) naming a missing root.
StorageRoots ResolvedRoots(const StorageRoots& roots);

// The first problem of `spec_path` under `roots` (resolved, ResolvedRoots), as
// "KEY: PATH ...: why"; nullopt when the path is allowed.
std::optional<std::string> PathProblem(const SpecPath& spec_path, const StorageRoots& roots);

// The problems of every path of `spec`, one line each (empty: all allowed).
std::vector<std::string> SpecPathProblems(const JobSpec& spec, const StorageRoots& roots);

// The roots as the job's environment carries them (worker_contract.h's kEnvWriteRoots and
// kEnvReadRoots): realpaths joined by ':' (a root holding ':' or a control character is refused
// by the server at startup, StoragePolicy).
std::string JoinRoots(const std::vector<std::filesystem::path>& roots);
std::vector<std::filesystem::path> SplitRoots(const std::string& joined);

// The worker's check at use: when the job's environment names roots, every path of `spec` must
// lie inside them; throws Error(kNotFound: the job fails as INVALID_INPUT, not retried) listing
// each path refused with its key. Nothing when the environment names none (no `storage:`).
void RequireSpecPathsWithinGrantedRoots(const JobSpec& spec);

// The worker's way to read its job file: the paths checked against the granted roots first
// (RequireSpecPathsWithinGrantedRoots, on the spec parsed without looking at its files), then
// LoadJobSpec with every check of the files, which only then are looked at.
JobSpec LoadJobSpecWithinGrantedRoots(const std::filesystem::path& job_path);

// A file the worker reads, opened and then checked by its descriptor: where the opened file
// really is (/proc/self/fd/N) must lie inside the granted read roots, so that a path swapped for
// a symlink after RequireSpecPathsWithinGrantedRoots still cannot reach another file. Without
// roots in the environment it only opens. Throws Error(kNotFound) naming `path`.
class GrantedFile {
 public:
  explicit GrantedFile(const std::filesystem::path& path);
  ~GrantedFile();
  GrantedFile(const GrantedFile&) = delete;
  GrantedFile& operator=(const GrantedFile&) = delete;
  int fd() const { return fd_; }
  // A name for exactly the file opened (/proc/self/fd/N), whatever `path` names now: for code
  // that reads through std::ifstream.
  std::filesystem::path Name() const;
  // Gives the descriptor to the caller, who closes it.
  int Release();

 private:
  int fd_ = -1;
};

// The check GrantedFile makes, on a descriptor opened elsewhere (`path` names it in the error).
void RequireOpenedWithinGrantedRoots(int fd, const std::string& path);

}  // namespace shardtune
