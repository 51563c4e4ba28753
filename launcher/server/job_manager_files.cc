// JobManager's part of the Files API (job_manager.h): uploaded files checked as training data,
// named by job specs (file:ID), and deleted only when no unfinished job names them.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/job_spec.h"
#include "launcher/server/job_manager.h"

namespace shardtune::server {

namespace {

void RequireFileWrite(const Caller& caller) {
  if (caller.read_only) {
    throw RequestError(
        RequestError::Kind::kPermissionDenied,
        fmt::format("this key of tenant '{}' is a viewer's: it may list, get and download files, not upload or "
                    "delete them",
                    caller.tenant));
  }
}

// Every occurrence of `from` in `text` replaced by `to`.
std::string ReplaceAll(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); !from.empty() && at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

}  // namespace

FileCheck JobManager::CheckUploadedFile(const std::filesystem::path& path, const std::string& filename) const {
  // As the job's user, like validate-data: the server's own privileges never parse a tenant's bytes.
  const CommandResult run =
      RunJobCommand({WorkerPath(), "check-file", path.string(), "--log-level", "error"}, {}, job_user_);
  // The worker names the file by the path it read: the upload's temporary name, which the
  // tenant never sees.
  std::string report = ReplaceAll(run.output, path.string(), filename);
  while (!report.empty() && report.back() == '\n') report.pop_back();
  return {run.status == 0, report.substr(0, 16000)};
}

std::unique_ptr<FileStore::Upload> JobManager::BeginUpload(const Caller& caller,
                                                           const v1::UploadFileRequest::Metadata& metadata) {
  RequireFileWrite(caller);
  return files_->BeginUpload(caller.tenant, metadata);
}

void JobManager::DeleteFile(const Caller& caller, const std::string& id) {
  RequireFileWrite(caller);
  std::lock_guard<std::mutex> lock(mutex_);  // no job is admitted naming it meanwhile
  const auto file = files_->Get(caller.visible_tenant(), id);
  if (!file) throw RequestError(RequestError::Kind::kNotFound, fmt::format("no file '{}'", id));
  if (const auto jobs = files_->JobsUsing(id); !jobs.empty()) {
    throw RequestError(RequestError::Kind::kFailedPrecondition,
                       fmt::format("file {} is in use by unfinished job(s) {}: delete it once they end, or cancel "
                                   "them",
                                   id, fmt::join(jobs, ", ")));
  }
  files_->Delete(*file);
}

SpecOptions JobManager::UploadedFilesOf(const Caller& caller, std::set<std::string>* used) {
  SpecOptions options;
  // Only the caller's own tenant's files: another tenant's id is as unknown as a made-up one.
  options.resolve_file = [this, tenant = caller.tenant, used](const std::string& id) -> std::optional<std::string> {
    const auto file = files_->Get(tenant, id);
    if (!file) return std::nullopt;
    used->insert(id);
    return files_->PathOf(*file).string();
  };
  return options;
}

}  // namespace shardtune::server
