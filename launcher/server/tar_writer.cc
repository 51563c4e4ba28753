#include "launcher/server/tar_writer.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

#include "common/error.h"

namespace shardtune::server {

namespace fs = std::filesystem;

namespace {

constexpr size_t kBlock = 512;

// ustar's header (POSIX.1-1988), each field at its offset.
struct UstarHeader {
  char name[100], mode[8], uid[8], gid[8], size[12], mtime[12], checksum[8], type[1], linkname[100], magic[6],
      version[2], uname[32], gname[32], devmajor[8], devminor[8], prefix[155], pad[12];
};
static_assert(sizeof(UstarHeader) == kBlock);

// `value` in octal, zero-padded to fill `width - 1` digits and a NUL.
void Octal(char* field, size_t width, uint64_t value) {
  const std::string digits = fmt::format("{:0{}o}", value, width - 1);
  std::memcpy(field, digits.data(), width - 1);
  field[width - 1] = '\0';
}

// The name in ustar's two fields: NAME alone when it fits in 100 bytes, else PREFIX/NAME split at
// a '/' (prefix at most 155 bytes). Error when no split fits.
void SplitName(const std::string& path, UstarHeader& h) {
  if (path.size() <= sizeof(h.name)) {
    std::memcpy(h.name, path.data(), path.size());
    return;
  }
  for (size_t slash = path.find('/'); slash != std::string::npos; slash = path.find('/', slash + 1)) {
    if (slash <= sizeof(h.prefix) && path.size() - slash - 1 <= sizeof(h.name) && slash + 1 < path.size()) {
      std::memcpy(h.prefix, path.data(), slash);
      std::memcpy(h.name, path.data() + slash + 1, path.size() - slash - 1);
      return;
    }
  }
  Fail(ErrorCode::kInvalidArgument, "{}: the name is too long for a ustar archive", path);
}

}  // namespace

TarWriter::TarWriter(Sink sink, size_t piece_bytes) : sink_(std::move(sink)), piece_bytes_(piece_bytes) {
  buffer_.reserve(piece_bytes_);
}

bool TarWriter::Append(const char* data, size_t size) {
  while (size > 0 && open_) {
    const size_t n = std::min(size, piece_bytes_ - buffer_.size());
    buffer_.append(data, n);
    data += n;
    size -= n;
    if (buffer_.size() == piece_bytes_) Flush();
  }
  return open_;
}

bool TarWriter::Flush() {
  if (open_ && !buffer_.empty()) open_ = sink_(buffer_);
  buffer_.clear();
  return open_;
}

bool TarWriter::Header(const std::string& name, char type, int64_t size, int64_t mtime, unsigned mode) {
  UstarHeader h;
  std::memset(&h, 0, sizeof(h));
  SplitName(name, h);
  Octal(h.mode, sizeof(h.mode), mode & 07777);
  Octal(h.uid, sizeof(h.uid), 0);
  Octal(h.gid, sizeof(h.gid), 0);
  if (static_cast<uint64_t>(size) < (uint64_t{1} << 33)) {
    Octal(h.size, sizeof(h.size), static_cast<uint64_t>(size));
  } else {  // base-256: the high bit of the first byte set, the value big-endian in the rest
    h.size[0] = static_cast<char>(0x80);
    for (size_t i = 0; i < sizeof(h.size) - 1; ++i)
      h.size[sizeof(h.size) - 1 - i] = static_cast<char>((static_cast<uint64_t>(size) >> (8 * i)) & 0xff);
  }
  Octal(h.mtime, sizeof(h.mtime), static_cast<uint64_t>(std::max<int64_t>(mtime, 0)));
  h.type[0] = type;
  std::memcpy(h.magic, "ustar", 6);  // with its NUL
  std::memcpy(h.version, "00", 2);
  // The checksum: the sum of the header's bytes, its own field counted as spaces.
  std::memset(h.checksum, ' ', sizeof(h.checksum));
  unsigned sum = 0;
  for (size_t i = 0; i < kBlock; ++i) sum += reinterpret_cast<const unsigned char*>(&h)[i];
  const std::string digits = fmt::format("{:06o}", sum);
  std::memcpy(h.checksum, digits.data(), 6);
  h.checksum[6] = '\0';
  return Append(reinterpret_cast<const char*>(&h), kBlock);
}

bool TarWriter::AddFile(const fs::path& file, const std::string& archive_name) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) Fail(ErrorCode::kNotFound, "{}: cannot open: {}", file.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    Fail(ErrorCode::kInvalidArgument, "{}: not a regular file", file.string());
  }
  bool ok = Header(archive_name, '0', st.st_size, st.st_mtime, st.st_mode);
  // Exactly the size the header announced, even if the file changes meanwhile: a shorter file is
  // padded with zeros, a longer one cut, so that the stream stays a valid archive.
  std::vector<char> chunk(1 << 20);
  int64_t left = st.st_size;
  while (ok && left > 0) {
    const ssize_t n = ::read(fd, chunk.data(), static_cast<size_t>(std::min<int64_t>(left, chunk.size())));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::fill(chunk.begin(), chunk.end(), '\0');
      while (ok && left > 0) {
        const size_t zeros = static_cast<size_t>(std::min<int64_t>(left, chunk.size()));
        ok = Append(chunk.data(), zeros);
        left -= static_cast<int64_t>(zeros);
      }
      break;
    }
    ok = Append(chunk.data(), static_cast<size_t>(n));
    left -= n;
  }
  ::close(fd);
  const size_t padding = (kBlock - static_cast<size_t>(st.st_size) % kBlock) % kBlock;
  static const std::array<char, kBlock> kZeros{};
  return ok && Append(kZeros.data(), padding);
}

bool TarWriter::AddTree(const fs::path& dir, const std::string& archive_name) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    Fail(ErrorCode::kNotFound, "{}: not a directory", dir.string());
  if (!Header(archive_name + "/", '5', 0, st.st_mtime, st.st_mode)) return false;
  std::vector<fs::directory_entry> entries{fs::directory_iterator(dir), fs::directory_iterator()};
  std::sort(entries.begin(), entries.end());
  for (const fs::directory_entry& entry : entries) {
    const std::string name = archive_name + "/" + entry.path().filename().string();
    const fs::file_status status = entry.symlink_status();
    bool ok = true;
    if (fs::is_directory(status)) ok = AddTree(entry.path(), name);
    if (fs::is_regular_file(status)) ok = AddFile(entry.path(), name);
    if (!ok) return false;
  }
  return open_;
}

bool TarWriter::Finish() {
  static const std::array<char, 2 * kBlock> kEnd{};
  return Append(kEnd.data(), kEnd.size()) && Flush();
}

}  // namespace shardtune::server
