#pragma once
// A streaming ustar (POSIX.1-1988) writer: a directory tree as a tar stream, written block by block
// to a sink as it is read, never whole in memory, so that a checkpoint of any size downloads in
// constant memory. Regular files and directories only: a symbolic link (or anything else) in the
// tree is skipped, and files are opened with O_NOFOLLOW, so that a link a job left cannot make the
// server stream a file outside the tree. Names longer than ustar's 100 bytes use its 155-byte
// prefix field; sizes of 8 GiB or more use the base-256 size field that GNU tar and Python's
// tarfile read.
//
// Not thread-safe; the sink is called from the caller's thread.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace shardtune::server {

class TarWriter {
 public:
  // `sink` receives the stream in pieces of at most `piece_bytes`; it returns false when the
  // reader is gone, which makes the writer stop (Add* and Finish then return false).
  using Sink = std::function<bool(const std::string& piece)>;
  explicit TarWriter(Sink sink, size_t piece_bytes = size_t{1} << 20);

  // Adds `dir` and everything under it (sorted by name), named ARCHIVE_NAME/... in the stream.
  bool AddTree(const std::filesystem::path& dir, const std::string& archive_name);
  // Adds one regular file as `archive_name`.
  bool AddFile(const std::filesystem::path& file, const std::string& archive_name);
  // Writes the end-of-archive blocks and flushes.
  bool Finish();

 private:
  bool Header(const std::string& name, char type, int64_t size, int64_t mtime, unsigned mode);
  bool Append(const char* data, size_t size);
  bool Flush();

  Sink sink_;
  size_t piece_bytes_;
  std::string buffer_;
  bool open_ = true;  // false once the sink refused
};

}  // namespace shardtune::server
