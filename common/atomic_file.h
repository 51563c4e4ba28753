#pragma once
// Files that readers see either as they were or complete, never half-written: data goes to a
// temporary name in the same directory, is fsynced, then renamed over the target, and the
// directory is fsynced so the rename survives a crash.

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace shardtune {

// Streams bytes into `path`. Nothing is visible at `path` until Commit(); destroying an
// uncommitted writer removes the temporary file.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void Write(const void* data, size_t size);
  void Write(std::string_view bytes) { Write(bytes.data(), bytes.size()); }
  void Commit();

 private:
  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
};

void WriteFileAtomic(const std::filesystem::path& path, std::string_view bytes);

// Renames a fully written directory into place (e.g. checkpoints/step-N.tmp -> step-N), after
// fsyncing it, then fsyncs the parent. `to` must not exist.
void RenameDirectoryAtomic(const std::filesystem::path& from, const std::filesystem::path& to);

void FsyncDirectory(const std::filesystem::path& dir);

// Reads a whole file; errors name the path.
std::string ReadFile(const std::filesystem::path& path);

}  // namespace shardtune
