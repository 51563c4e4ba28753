#include "common/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "common/error.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

std::string UniqueSuffix() {
  std::random_device device;
  return fmt::format(".tmp-{}-{:08x}", ::getpid(), device());
}

// A failed write or fsync of `path` (through its temporary `temp`). A full file system (or an
// exhausted quota) is said in words that name the file meant, not only its temporary name: the
// writer removes the temporary, so `path` keeps what it held (a previous checkpoint stays whole).
[[noreturn]] void FailWrite(const char* call, const fs::path& path, const fs::path& temp) {
  const int err = errno;
  if (err == ENOSPC || err == EDQUOT) {
    Fail(ErrorCode::kIo, "{}: no space left on the device ({} of {} failed: {}); nothing was written there",
         path.string(), call, temp.filename().string(), std::strerror(err));
  }
  errno = err;
  FailErrno(call, temp.string());
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(fs::path path) : path_(std::move(path)) {
  temp_path_ = path_;
  temp_path_ += UniqueSuffix();
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  ST_SYSCALL_CHECK(fd_, temp_path_.string());
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_path_.c_str());
  }
}

void AtomicFileWriter::Write(const void* data, size_t size) {
  const char* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd_, bytes, size);
    if (written < 0 && errno == EINTR) continue;
    if (written < 0) FailWrite("write", path_, temp_path_);
    bytes += written;
    size -= static_cast<size_t>(written);
  }
}

void AtomicFileWriter::Commit() {
  if (::fsync(fd_) != 0) FailWrite("fsync", path_, temp_path_);  // NFS and some others report ENOSPC only here
  const int fd = fd_;
  fd_ = -1;  // closed below whatever close() says: never twice
  if (::close(fd) != 0) {
    ::unlink(temp_path_.c_str());
    FailErrno("close", temp_path_.string());
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    errno = err;
    FailErrno("rename", path_.string());
  }
  FsyncDirectory(path_.has_parent_path() ? path_.parent_path() : fs::path("."));
}

void WriteFileAtomic(const fs::path& path, std::string_view bytes) {
  AtomicFileWriter writer(path);
  writer.Write(bytes);
  writer.Commit();
}

void FsyncDirectory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ST_SYSCALL_CHECK(fd, dir.string());
  const int rc = ::fsync(fd);
  ::close(fd);
  ST_SYSCALL_CHECK(rc, dir.string());
}

void RenameDirectoryAtomic(const fs::path& from, const fs::path& to) {
  FsyncDirectory(from);
  ST_SYSCALL_CHECK(::rename(from.c_str(), to.c_str()), to.string());
  FsyncDirectory(to.has_parent_path() ? to.parent_path() : fs::path("."));
}

std::string ReadFile(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) Fail(ErrorCode::kNotFound, "{}: no such file", path.string());
  if (fs::is_directory(path, ec))
    Fail(ErrorCode::kInvalidArgument, "{}: is a directory, expected a file", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) FailErrno("open", path.string());
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) FailErrno("read", path.string());
  return contents.str();
}

}  // namespace shardtune
