#include "launcher/server/file_store.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <regex>

#include "common/atomic_file.h"
#include "launcher/api_values.h"
#include "launcher/server/page_token.h"
#include "launcher/server/request_error.h"
#include "launcher/server/sqlite_statement.h"

namespace shardtune::server {

namespace fs = std::filesystem;

namespace {

constexpr char kTempPrefix[] = ".upload-";
constexpr const char* kFileColumns = "id, tenant, filename, purpose, bytes, sha256, created_ms, status, status_details";

[[noreturn]] void Refuse(RequestError::Kind kind, const std::string& message) { throw RequestError(kind, message); }

v1::File FromRow(Statement& q) {
  v1::File f;
  f.set_id(q.Text(0));
  f.set_tenant(q.Text(1));
  f.set_filename(q.Text(2));
  f.set_purpose(q.Text(3));
  f.set_bytes(q.Int(4));
  f.set_sha256(q.Text(5));
  *f.mutable_create_time() = api::TimeOfMs(q.Int(6));
  f.set_status(q.Text(7));
  f.set_status_details(q.Text(8));
  return f;
}

void CheckMetadata(const v1::UploadFileRequest::Metadata& m) {
  const std::string& name = m.filename();
  if (name.empty() || name.size() > 255 || name.find('/') != std::string::npos || name == "." || name == ".." ||
      name.find('\0') != std::string::npos)
    Refuse(RequestError::Kind::kInvalidArgument,
           fmt::format("metadata.filename '{}': expected a file name of 1 to 255 bytes, without '/'", name));
  if (m.purpose() != kPurposeFineTune && m.purpose() != kPurposeData)
    Refuse(RequestError::Kind::kInvalidArgument,
           fmt::format("metadata.purpose '{}': expected {} or {}", m.purpose(), kPurposeFineTune, kPurposeData));
  static const std::regex kSha256("[0-9a-f]{64}");
  if (!std::regex_match(m.sha256(), kSha256))
    Refuse(RequestError::Kind::kInvalidArgument,
           "metadata.sha256: expected the file's SHA-256 as 64 lowercase hex digits");
  if (m.bytes() < 0) Refuse(RequestError::Kind::kInvalidArgument, "metadata.bytes: expected the file's size (>= 0)");
}

std::string Hex(const unsigned char* digest, unsigned size) {
  std::string hex;
  for (unsigned i = 0; i < size; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

}  // namespace

FileStore::FileStore(JobStore& db, const ServerConfig& config) : db_(db), config_(config) {
  std::set<std::string> tenants;
  for (const ApiKey& key : config_.api_keys) tenants.insert(key.tenant);
  for (const auto& [tenant, _] : config_.storage.tenants) tenants.insert(tenant);
  for (const std::string& tenant : tenants) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(FilesDir(tenant), ec)) {
      if (entry.path().filename().string().rfind(kTempPrefix, 0) != 0) continue;
      spdlog::info("removing {}: an upload interrupted before it completed", entry.path().string());
      fs::remove(entry.path(), ec);
    }
  }
}

fs::path FileStore::FilesDir(const std::string& tenant) const { return config_.TenantRoot(tenant) / "files"; }

fs::path FileStore::PathOf(const v1::File& file) const { return FilesDir(file.tenant()) / file.id(); }

FileStore::Usage FileStore::Committed(const std::string& tenant) {
  auto db = db_.Lock();
  Statement q(db.db, "SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM files WHERE tenant = ?");
  q.Bind(1, tenant);
  q.Step();
  return {q.Int(0), q.Int(1)};
}

std::unique_ptr<FileStore::Upload> FileStore::BeginUpload(const std::string& tenant,
                                                          const v1::UploadFileRequest::Metadata& metadata) {
  CheckMetadata(metadata);
  {
    const Usage used = Committed(tenant);
    std::lock_guard<std::mutex> lock(mutex_);
    Usage& reserved = reserved_[tenant];
    TenantQuota quota;
    if (const auto it = config_.quotas.find(tenant); it != config_.quotas.end()) quota = it->second;
    const int64_t bytes = used.bytes + reserved.bytes + metadata.bytes();
    if (quota.max_file_bytes > 0 && bytes > quota.max_file_bytes)
      Refuse(RequestError::Kind::kResourceExhausted,
             fmt::format("tenant '{}' may store at most {} bytes of files; it has {} (and {} uploading), this file "
                         "has {}",
                         tenant, quota.max_file_bytes, used.bytes, reserved.bytes, metadata.bytes()));
    if (quota.max_files > 0 && used.files + reserved.files + 1 > quota.max_files)
      Refuse(RequestError::Kind::kResourceExhausted,
             fmt::format("tenant '{}' may store at most {} files; it has {} (and {} uploading)", tenant,
                         quota.max_files, used.files, reserved.files));
    reserved.bytes += metadata.bytes();
    reserved.files += 1;
  }
  v1::File file;
  file.set_id("file-" + RandomToken().substr(0, 24));
  file.set_tenant(tenant);
  file.set_filename(metadata.filename());
  file.set_purpose(metadata.purpose());
  file.set_bytes(metadata.bytes());
  file.set_sha256(metadata.sha256());
  const fs::path temp = FilesDir(tenant) / (kTempPrefix + RandomToken().substr(0, 16));
  std::error_code ec;
  fs::create_directories(temp.parent_path(), ec);
  // Readable by the jobs that name it, which may run as `run_as` rather than as the server; the
  // tenant's root is what keeps other users out.
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int error = errno;
    Release(tenant, metadata.bytes());
    Fail(ErrorCode::kInternal, "{}: cannot create: {}", temp.string(), std::strerror(error));
  }
  return std::unique_ptr<Upload>(new Upload(*this, std::move(file), temp, fd));
}

void FileStore::Release(const std::string& tenant, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  Usage& reserved = reserved_[tenant];
  reserved.bytes -= bytes;
  reserved.files -= 1;
}

FileStore::Upload::Upload(FileStore& store, v1::File file, fs::path temp, int fd)
    : store_(store), file_(std::move(file)), temp_(std::move(temp)), fd_(fd) {
  auto* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  sha_ = ctx;
}

FileStore::Upload::~Upload() {
  EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(sha_));
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ec;
    fs::remove(temp_, ec);
  }
  store_.Release(file_.tenant(), file_.bytes());
}

void FileStore::Upload::Write(const std::string& chunk) {
  if (static_cast<int64_t>(chunk.size()) > kMaxFileChunkBytes)
    Refuse(RequestError::Kind::kInvalidArgument,
           fmt::format("a chunk of {} bytes: chunks are at most {} bytes", chunk.size(), kMaxFileChunkBytes));
  if (written_ + static_cast<int64_t>(chunk.size()) > file_.bytes())
    Refuse(RequestError::Kind::kInvalidArgument,
           fmt::format("more bytes than metadata.bytes ({}) announced", file_.bytes()));
  size_t done = 0;
  while (done < chunk.size()) {
    const ssize_t n = ::write(fd_, chunk.data() + done, chunk.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) Fail(ErrorCode::kInternal, "{}: write failed: {}", temp_.string(), std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(sha_), chunk.data(), chunk.size());
  written_ += static_cast<int64_t>(chunk.size());
}

v1::File FileStore::Upload::Commit(const std::function<FileCheck(const fs::path&)>& check) {
  if (written_ != file_.bytes())
    Refuse(RequestError::Kind::kInvalidArgument,
           fmt::format("the upload ended after {} bytes; metadata.bytes announced {}", written_, file_.bytes()));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned size = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(sha_), digest, &size);
  if (const std::string sha256 = Hex(digest, size); sha256 != file_.sha256())
    Refuse(
        RequestError::Kind::kInvalidArgument,
        fmt::format("the bytes' SHA-256 is {}, metadata.sha256 says {}: nothing was stored", sha256, file_.sha256()));
  if (::fsync(fd_) != 0) Fail(ErrorCode::kInternal, "{}: fsync failed: {}", temp_.string(), std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  const FileCheck result = file_.purpose() == kPurposeFineTune ? check(temp_) : FileCheck{};
  file_.set_status(result.ok ? "processed" : "error");
  file_.set_status_details(result.details);
  const fs::path target = store_.FilesDir(file_.tenant()) / file_.id();
  fs::rename(temp_, target);
  FsyncDirectory(target.parent_path());
  committed_ = true;
  try {
    *file_.mutable_create_time() = api::TimeOfMs(NowMs());  // the upload's answer shows it too
    store_.Insert(file_);
  } catch (...) {
    std::error_code ec;
    fs::remove(target, ec);
    throw;
  }
  return file_;
}

void FileStore::Insert(const v1::File& file) {
  auto db = db_.Lock();
  Statement q(db.db, fmt::format("INSERT INTO files ({}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", kFileColumns));
  q.Bind(1, file.id()).Bind(2, file.tenant()).Bind(3, file.filename()).Bind(4, file.purpose()).Bind(5, file.bytes());
  q.Bind(6, file.sha256()).Bind(7, api::Ms(file.create_time())).Bind(8, file.status()).Bind(9, file.status_details());
  q.Step();
}

std::optional<v1::File> FileStore::Get(const std::string& tenant, const std::string& id) {
  auto db = db_.Lock();
  Statement q(db.db, fmt::format("SELECT {} FROM files WHERE id = ?1 AND (?2 = '' OR tenant = ?2)", kFileColumns));
  q.Bind(1, id).Bind(2, tenant);
  if (!q.Step()) return std::nullopt;
  return FromRow(q);
}

FileStore::Page FileStore::List(const std::string& tenant, const std::string& purpose, int64_t page_size,
                                const std::string& page_token) {
  int64_t after = INT64_MAX;
  if (!page_token.empty()) {
    const auto cursor = DecodeFilePageToken(page_token, tenant, purpose);
    if (!cursor) {
      Refuse(RequestError::Kind::kInvalidArgument,
             "page_token is not one this server gave for this listing (a token belongs to the purpose it was given "
             "with)");
    }
    after = *cursor;
  }
  auto db = db_.Lock();
  // Keyset paging on the rowid (insertion order), newest first: files uploaded or deleted between
  // pages neither repeat nor skip a row.
  Statement q(
      db.db, fmt::format("SELECT {}, rowid FROM files WHERE (?1 = '' OR tenant = ?1) AND (?2 = '' OR purpose = ?2) AND "
                         "rowid < ?3 ORDER BY rowid DESC LIMIT ?4",
                         kFileColumns));
  q.Bind(1, tenant).Bind(2, purpose).Bind(3, after).Bind(4, page_size + 1);
  Page page;
  int64_t last_rowid = 0;
  while (q.Step()) {
    if (static_cast<int64_t>(page.files.size()) == page_size) {
      page.next_page_token = EncodeFilePageToken(last_rowid, page.files.back().id(), tenant, purpose);
      break;
    }
    last_rowid = q.Int(9);
    page.files.push_back(FromRow(q));
  }
  return page;
}

void FileStore::Delete(const v1::File& file) {
  {
    auto db = db_.Lock();
    Statement q(db.db, "DELETE FROM files WHERE id = ?");
    q.Bind(1, file.id());
    q.Step();
  }
  std::error_code ec;
  fs::remove(PathOf(file), ec);
  FsyncDirectory(PathOf(file).parent_path());
}

void FileStore::RecordUses(const std::string& job_id, const std::set<std::string>& file_ids) {
  auto db = db_.Lock();
  for (const std::string& id : file_ids) {
    Statement q(db.db, "INSERT OR IGNORE INTO job_files (job_id, file_id) VALUES (?, ?)");
    q.Bind(1, job_id).Bind(2, id);
    q.Step();
  }
}

std::vector<std::string> FileStore::JobsUsing(const std::string& file_id) {
  auto db = db_.Lock();
  Statement q(db.db,
              "SELECT j.id FROM job_files f JOIN jobs j ON j.id = f.job_id WHERE f.file_id = ? AND j.status IN "
              "(?, ?, ?, ?) ORDER BY j.created_ms");
  q.Bind(1, file_id)
      .Bind(2, int64_t{v1::JOB_STATUS_VALIDATING})
      .Bind(3, int64_t{v1::JOB_STATUS_QUEUED})
      .Bind(4, int64_t{v1::JOB_STATUS_RUNNING});
  q.Bind(5, int64_t{v1::JOB_STATUS_PAUSED});
  std::vector<std::string> jobs;
  while (q.Step()) jobs.push_back(q.Text(0));
  return jobs;
}

}  // namespace shardtune::server
