#pragma once
// Uploaded files (the Files API, docs/server.md "Files"): their bytes under each tenant's root,
// TenantRoot(tenant)/files/ID, their rows in the server's database (job_store.h's connection and
// lock, tables `files` and `job_files`).
//
// An upload becomes visible only whole: its bytes go to a temporary name in the same directory
// (.upload-RANDOM), are fsynced and their size and SHA-256 checked, then renamed to the id (the
// directory fsynced), and only then is the row committed. Whatever interrupts it (the client
// cancels, the connection drops, the server dies) leaves at most the temporary file, which the
// Upload's destructor removes, or the next server start does. The quotas (TenantQuota's
// max_file_bytes and max_files) count the committed files and the uploads in progress, so that
// concurrent uploads cannot pass them together; an upload that would pass one is refused
// (RESOURCE_EXHAUSTED) as soon as it does: at its metadata, or at the chunk that exceeds the
// size it announced.
//
// Thread-safe. Errors a request caused are RequestError; the others Error.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "launcher/server/job_store.h"
#include "launcher/server/server_config.h"
#include "shardtune/v1/files.pb.h"

namespace shardtune::server {

constexpr int64_t kMaxFileChunkBytes = int64_t{4} << 20;  // one UploadFile or DownloadFile message
constexpr char kPurposeFineTune[] = "fine-tune";          // checked as training data on upload
constexpr char kPurposeData[] = "data";                   // stored as it is

// What a data check of an uploaded file found: ok, and its summary or its problems.
struct FileCheck {
  bool ok = true;
  std::string details;
};

class FileStore {
 public:
  // Removes the temporary files interrupted uploads left in every known tenant's files/.
  FileStore(JobStore& db, const ServerConfig& config);

  // One upload in progress (see the file's comment). Not thread-safe: one RPC owns it.
  class Upload {
   public:
    ~Upload();  // uncommitted: removes the temporary file and releases the reservation
    Upload(const Upload&) = delete;
    Upload& operator=(const Upload&) = delete;
    // Appends a chunk (at most kMaxFileChunkBytes): INVALID_ARGUMENT past the announced size.
    void Write(const std::string& chunk);
    // Checks the size and digest (INVALID_ARGUMENT), runs `check` on the complete bytes for purpose
    // fine-tune, and makes the file visible. Returns its row.
    v1::File Commit(const std::function<FileCheck(const std::filesystem::path&)>& check);

   private:
    friend class FileStore;
    Upload(FileStore& store, v1::File file, std::filesystem::path temp, int fd);
    FileStore& store_;
    v1::File file_;  // as it will be committed; bytes is the announced size
    std::filesystem::path temp_;
    int fd_ = -1;
    int64_t written_ = 0;
    void* sha_ = nullptr;  // EVP_MD_CTX
    bool committed_ = false;
  };

  // Starts an upload for `tenant`: checks the metadata (INVALID_ARGUMENT) and the quotas
  // (RESOURCE_EXHAUSTED) and reserves its share of them.
  std::unique_ptr<Upload> BeginUpload(const std::string& tenant, const v1::UploadFileRequest::Metadata& metadata);

  // The tenant's file (any tenant's when `tenant` is empty); nullopt for an unknown id or another tenant's.
  std::optional<v1::File> Get(const std::string& tenant, const std::string& id);
  struct Page {
    std::vector<v1::File> files;  // newest first
    std::string next_page_token;  // empty: the last page
  };
  // The tenant's files (every tenant's when `tenant` is empty), newest first. `page_token`: empty,
  // or a next_page_token this store gave for the same tenant and purpose (INVALID_ARGUMENT otherwise).
  Page List(const std::string& tenant, const std::string& purpose, int64_t page_size, const std::string& page_token);
  // Removes the row, then the bytes. The caller has checked that no unfinished job uses it.
  void Delete(const v1::File& file);
  std::filesystem::path PathOf(const v1::File& file) const;

  // Which uploaded files a job names (for DeleteFile's refusal).
  void RecordUses(const std::string& job_id, const std::set<std::string>& file_ids);
  // The unfinished jobs (VALIDATING, QUEUED, RUNNING, PAUSED) that name the file.
  std::vector<std::string> JobsUsing(const std::string& file_id);

 private:
  struct Usage {
    int64_t bytes = 0;
    int64_t files = 0;
  };
  Usage Committed(const std::string& tenant);
  void Release(const std::string& tenant, int64_t bytes);
  void Insert(const v1::File& file);
  std::filesystem::path FilesDir(const std::string& tenant) const;

  JobStore& db_;
  const ServerConfig& config_;
  std::mutex mutex_;                       // guards reserved_
  std::map<std::string, Usage> reserved_;  // uploads in progress, by tenant
};

}  // namespace shardtune::server
