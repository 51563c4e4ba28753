// Finding or building a token cache (token_cache.h): its key, and the build shared by a group of
// processes. Each process renders a slice of the data file's records into part files (one per
// section); after a barrier every process reads the parts' reports (so bad data fails every
// process alike), places its own part in the cache file at the offsets the reports give, and
// hashes its share of it; process 0 writes the header and the digest and renames the file into
// place. Every phase is about 1/N of the work on each of N processes, so no process keeps the
// others waiting at a barrier for long (the collective timeout applies to them).

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "worker/data/token_cache.h"
#include "worker/data/token_cache_file.h"
#include "worker/progress.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// What a part file holds for each example, besides its tokens.
struct PartExample {
  uint64_t length;
  int32_t class_label;
  uint32_t flags;  // bit 0: it has segments
};

// The files of process `rank`'s part of a build staged under `stage`.
struct PartFiles {
  fs::path tokens, labels, segments, examples, report;
  PartFiles(const fs::path& stage, int rank) {
    const std::string base = stage.string() + "." + std::to_string(rank);
    tokens = base + ".tokens";
    labels = base + ".labels";
    segments = base + ".segments";
    examples = base + ".examples";
    report = base + ".report.json";
  }
  void Remove() const {
    std::error_code ec;
    for (const fs::path& p : {tokens, labels, segments, examples, report}) fs::remove(p, ec);
  }
};

// The labels of `tokens` and `ner` are ids of their own (a label that is not its token, tags);
// every other format's label is its token or -100, one byte says which.
bool FullLabels(DataFormat format) { return format == DataFormat::kTokens || format == DataFormat::kNer; }
bool HasSegments(DataFormat format) { return format == DataFormat::kClassification; }
uint32_t TokenBytes(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

// The files a tokenizer was loaded from (Tokenizer::Load's choices), which its key covers.
std::vector<fs::path> TokenizerFiles(const fs::path& source) {
  std::vector<fs::path> files;
  std::error_code ec;
  if (source.empty()) return files;
  const fs::path dir = fs::is_directory(source, ec) ? source : source.parent_path();
  if (!fs::is_directory(source, ec)) files.push_back(source);
  for (const char* name :
       {"tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "tokenizer_config.json"}) {
    if (fs::is_regular_file(dir / name, ec) && (dir / name) != source) files.push_back(dir / name);
  }
  return files;
}

// What the rendering of a file depends on besides its bytes and the tokenizer's.
json OptionsForKey(const FormatOptions& o) {
  const bool chat = o.format == DataFormat::kChat || o.format == DataFormat::kShareGpt;
  return {{"format", ToString(o.format)}, {"chat_template", chat ? ToString(o.chat_template) : ""},
          {"vocab_size", o.vocab_size},   {"bos_id", o.bos_id ? *o.bos_id : -1},
          {"eos_id", o.eos_id},           {"separator_id", o.separator_id ? *o.separator_id : -1},
          {"label_names", o.label_names}};
}

// An output file written through a buffer.
class PartWriter {
 public:
  explicit PartWriter(const fs::path& path) : out_(path, std::ios::binary | std::ios::trunc), path_(path) {
    if (!out_) Fail(ErrorCode::kIo, "{}: cannot create a token cache part", path.string());
  }
  void Write(const void* data, size_t size) {
    out_.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  void Close() {
    out_.close();
    if (!out_) Fail(ErrorCode::kIo, "{}: cannot write a token cache part", path_.string());
  }

 private:
  std::ofstream out_;
  fs::path path_;
};

// Renders `slice` of the data file into process `rank`'s part files; the report (examples,
// tokens, problems, lines, label counts) is written last, atomically.
void WritePart(const TokenCacheRequest& request, const FormatOptions& options, const RecordSlice& slice,
               const PartFiles& files, bool show_progress) {
  PartWriter tokens(files.tokens), labels(files.labels), segments(files.segments), examples(files.examples);
  const uint32_t token_bytes = TokenBytes(options.vocab_size);
  const bool full_labels = FullLabels(options.format), has_segments = HasSegments(options.format);
  int64_t token_count = 0;
  std::vector<uint8_t> buffer;
  const auto sink = [&](Example&& e) {
    const size_t n = e.input_ids.size();
    buffer.resize(4 * n);
    for (size_t t = 0; t < n; ++t) {
      const auto id = static_cast<uint32_t>(e.input_ids[t]);
      std::memcpy(buffer.data() + token_bytes * t, &id, token_bytes);  // little-endian: the low bytes
    }
    tokens.Write(buffer.data(), token_bytes * n);
    for (size_t t = 0; t < n; ++t) {
      if (full_labels) {
        const auto label = static_cast<int32_t>(e.labels[t]);
        std::memcpy(buffer.data() + 4 * t, &label, 4);
      } else {
        ST_CHECK(e.labels[t] == -100 || e.labels[t] == e.input_ids[t], "{}: a {} label is neither -100 nor its token",
                 request.data_file.string(), ToString(options.format));
        buffer[t] = e.labels[t] != -100;
      }
    }
    labels.Write(buffer.data(), (full_labels ? 4 : 1) * n);
    if (has_segments) {
      for (size_t t = 0; t < n; ++t)
        buffer[t] = e.token_type_ids.empty() ? 0 : static_cast<uint8_t>(e.token_type_ids[t]);
      segments.Write(buffer.data(), n);
    }
    const PartExample record{n, static_cast<int32_t>(e.class_label), e.token_type_ids.empty() ? 0u : 1u};
    examples.Write(&record, sizeof(record));
    token_count += static_cast<int64_t>(n);
  };
  // Rank 0's slice stands for the whole on a terminal: every slice is about as long.
  const uint64_t slice_bytes = slice.end - slice.begin;
  std::unique_ptr<ProgressBar> bar;
  if (show_progress) bar = std::make_unique<ProgressBar>(0, static_cast<int64_t>(slice_bytes >> 20));
  uint64_t shown = 0;
  const auto progress = [&](uint64_t done) {
    if (!bar || done - shown < (uint64_t{1} << 20)) return;
    shown = done;
    bar->Update(static_cast<int64_t>(done >> 20), "MiB tokenized into the token cache");
  };
  const SliceReport report = RenderRecords(request.data_file, options, slice, sink, progress);
  if (bar) bar->Finish();
  for (PartWriter* w : {&tokens, &labels, &segments, &examples}) w->Close();
  json issues = json::array();
  for (const DataIssue& i : report.issues)
    issues.push_back({{"line", i.line}, {"code", i.code}, {"message", i.message}});
  WriteFileAtomic(files.report, json{{"examples", report.examples},
                                     {"tokens", token_count},
                                     {"lines", report.lines},
                                     {"total_issues", report.total_issues},
                                     {"issues", issues},
                                     {"label_counts", report.label_counts}}
                                    .dump());
}

// The parts' reports combined: problems with line numbers of the whole file, in file order, and
// where each part's examples and tokens start in the whole.
struct BuildReport {
  int64_t examples = 0, tokens = 0;
  std::vector<DataIssue> issues;
  size_t total_issues = 0;
  std::vector<int64_t> label_counts;
  std::vector<int64_t> first_example, first_token;  // of each part
};

BuildReport ReadReports(const fs::path& data_file, const fs::path& stage, int parts) {
  BuildReport all;
  int64_t lines_before = 0;
  for (int k = 0; k < parts; ++k) {
    const json r = json::parse(ReadFile(PartFiles(stage, k).report));
    all.first_example.push_back(all.examples);
    all.first_token.push_back(all.tokens);
    all.examples += r["examples"].get<int64_t>();
    all.tokens += r["tokens"].get<int64_t>();
    all.total_issues += r["total_issues"].get<size_t>();
    for (const json& i : r["issues"]) {
      all.issues.push_back({data_file.string(), lines_before + i["line"].get<int64_t>(), i["code"].get<std::string>(),
                            i["message"].get<std::string>()});
    }
    const auto counts = r["label_counts"].get<std::vector<int64_t>>();
    all.label_counts.resize(counts.size(), 0);
    for (size_t c = 0; c < counts.size(); ++c) all.label_counts[c] += counts[c];
    lines_before += r["lines"].get<int64_t>();
  }
  return all;
}

// The header of the cache a build writes.
CacheHeader HeaderOf(const Sha256Digest& key, const FormatOptions& options, const BuildReport& report,
                     const std::string& meta) {
  CacheHeader h{};
  std::memcpy(h.magic, kTokenCacheMagic, sizeof(h.magic));
  h.version = kTokenCacheVersion;
  h.token_bytes = TokenBytes(options.vocab_size);
  h.full_labels = FullLabels(options.format);
  h.has_segments = HasSegments(options.format);
  h.examples = static_cast<uint64_t>(report.examples);
  h.tokens = static_cast<uint64_t>(report.tokens);
  h.meta_bytes = meta.size();
  std::memcpy(h.key, key.data(), key.size());
  return h;
}

// A file written at offsets (by several processes at once, each its own ranges).
class PlacedFile {
 public:
  PlacedFile(const fs::path& path, int flags) : path_(path), fd_(::open(path.c_str(), flags | O_CLOEXEC, 0644)) {
    if (fd_ < 0)
      Fail(ErrorCode::kIo, "{}: cannot open the token cache being written: {}", path.string(), std::strerror(errno));
  }
  ~PlacedFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  void Resize(uint64_t size) {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0)
      Fail(ErrorCode::kIo, "{}: cannot size it to {} bytes", path_.string(), size);
  }
  void WriteAt(uint64_t offset, const void* data, size_t size) {
    const auto* bytes = static_cast<const uint8_t*>(data);
    while (size > 0) {
      const ssize_t n = ::pwrite(fd_, bytes, size, static_cast<off_t>(offset));
      if (n <= 0)
        Fail(ErrorCode::kIo, "{}: cannot write {} bytes at {}: {}", path_.string(), size, offset, std::strerror(errno));
      bytes += n;
      offset += static_cast<uint64_t>(n);
      size -= static_cast<size_t>(n);
    }
  }
  // Copies a whole file to `offset`.
  void CopyAt(uint64_t offset, const fs::path& from) {
    std::ifstream in(from, std::ios::binary);
    if (!in) Fail(ErrorCode::kIo, "{}: cannot read a token cache part", from.string());
    std::vector<char> chunk(size_t{4} << 20);
    while (in.read(chunk.data(), static_cast<std::streamsize>(chunk.size())) || in.gcount() > 0) {
      WriteAt(offset, chunk.data(), static_cast<size_t>(in.gcount()));
      offset += static_cast<uint64_t>(in.gcount());
    }
  }
  void Sync() {
    if (::fsync(fd_) != 0) Fail(ErrorCode::kIo, "{}: fsync failed: {}", path_.string(), std::strerror(errno));
  }

 private:
  fs::path path_;
  int fd_;
};

// Places process `part`'s examples in the cache file being written: its offsets, tokens,
// labels, segments, flags and classes, each at its place in its section.
void PlacePart(PlacedFile& file, const CacheHeader& h, const CacheLayout& l, const fs::path& stage, int part,
               const BuildReport& report) {
  const PartFiles files(stage, part);
  const std::string bytes = ReadFile(files.examples);
  std::vector<PartExample> records(bytes.size() / sizeof(PartExample));
  std::memcpy(records.data(), bytes.data(), records.size() * sizeof(PartExample));
  const auto first_example = static_cast<uint64_t>(report.first_example[static_cast<size_t>(part)]);
  const auto first_token = static_cast<uint64_t>(report.first_token[static_cast<size_t>(part)]);
  std::vector<uint64_t> offsets;
  std::vector<uint8_t> flags;
  std::vector<int32_t> classes;
  uint64_t offset = first_token;
  for (const PartExample& r : records) {
    offsets.push_back(offset);
    offset += r.length;
    flags.push_back(static_cast<uint8_t>(r.flags));
    classes.push_back(r.class_label);
  }
  file.WriteAt(l.offsets + 8 * first_example, offsets.data(), 8 * offsets.size());
  file.CopyAt(l.tokens + h.token_bytes * first_token, files.tokens);
  file.CopyAt(l.labels + (h.full_labels ? 4 : 1) * first_token, files.labels);
  if (h.has_segments) file.CopyAt(l.segments + first_token, files.segments);
  file.WriteAt(l.flags + first_example, flags.data(), flags.size());
  file.WriteAt(l.classes + 4 * first_example, classes.data(), 4 * classes.size());
  file.Sync();
}

// The cache file from the parts (collective): process 0 makes the file at its full size (the
// gaps between sections stay zero) and writes the header, the last offset and the metadata;
// every process places its own part; the group hashes the file together; process 0 appends the
// digest and renames the file into place. No process copies more than its part.
void WriteCache(const fs::path& path, const Sha256Digest& key, const TokenCacheRequest& request,
                const FormatOptions& options, const fs::path& stage, const BuildReport& report, CacheGroup& group) {
  const std::string meta = json{
      {"data_file", request.data_file.string()},
      {"format", ToString(options.format)},
      {"label_names", options.label_names},
      {"label_counts",
       report.label_counts}}.dump();
  const CacheHeader h = HeaderOf(key, options, report, meta);
  const CacheLayout l = LayoutOf(h);
  const fs::path temp = stage.string() + ".cache";
  if (group.rank() == 0) {
    PlacedFile file(temp, O_WRONLY | O_CREAT | O_TRUNC);
    file.Resize(l.total);
    file.WriteAt(0, &h, sizeof(h));
    file.WriteAt(l.offsets + 8 * h.examples, &h.tokens, 8);
    file.WriteAt(l.meta, meta.data(), meta.size());
    file.Sync();
  }
  group.Barrier("token cache: file made");
  {
    PlacedFile file(temp, O_WRONLY);
    PlacePart(file, h, l, stage, group.rank(), report);
  }
  group.Barrier("token cache: parts placed");
  const Sha256Digest digest = TreeDigest(temp, l.digest, group, "token cache: digest");
  if (group.rank() == 0) {
    PlacedFile file(temp, O_WRONLY);
    file.WriteAt(l.digest, digest.data(), digest.size());
    file.Sync();
    fs::rename(temp, path);
    FsyncDirectory(path.parent_path());
  }
}

// The outermost directory of `dir` that does not exist yet (none when it does).
fs::path FirstMissing(const fs::path& dir) {
  std::error_code ec;
  fs::path missing;
  for (fs::path p = fs::absolute(dir); !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
    missing = p;
    if (p == p.parent_path()) break;
  }
  return missing;
}

// Builds the cache at `path` (collective). Throws DataError, every process alike, for bad data,
// leaving nothing behind.
void BuildCache(const TokenCacheRequest& request, const fs::path& path, const Sha256Digest& key, CacheGroup& group) {
  const int parts = group.size();
  FormatOptions options = request.options;
  options.label_names = ResolveLabelNames(request.data_file, request.options);
  const RecordSlice slice = SliceRecords(request.data_file, parts)[static_cast<size_t>(group.rank())];
  // A stage name of this build alone: process 0's id, which every process learns.
  std::vector<int64_t> id = {group.rank() == 0 ? static_cast<int64_t>(::getpid()) : 0};
  group.SumInt64(id, "token cache: build id");
  const fs::path stage = path.string() + ".build-" + std::to_string(id[0]);
  fs::path made;  // process 0: what it created, removed again if the data is bad
  if (group.rank() == 0) {
    made = FirstMissing(request.cache_dir);
    fs::create_directories(request.cache_dir);
  }
  group.Barrier("token cache: directory made");
  const PartFiles mine(stage, group.rank());
  WritePart(request, options, slice, mine, group.rank() == 0);
  group.Barrier("token cache: parts written");
  BuildReport report = ReadReports(request.data_file, stage, parts);
  group.Barrier("token cache: reports read");
  const bool bad = report.total_issues > 0 || report.examples == 0;
  if (!bad) WriteCache(path, key, request, options, stage, report, group);
  group.Barrier("token cache: written");
  if (group.rank() == 0) {
    for (int k = 0; k < parts; ++k) PartFiles(stage, k).Remove();
    std::error_code ec;
    if (bad && !made.empty()) fs::remove_all(made, ec);
  }
  if (bad) ThrowIfProblems(request.data_file, std::move(report.issues), report.total_issues, report.examples);
}

}  // namespace

std::string TokenCacheFileName(const fs::path& data_file, const Sha256Digest& key) {
  return data_file.filename().string() + "-" + Hex(key).substr(0, 20) + ".tokens";
}

Sha256Digest TokenCacheKey(const TokenCacheRequest& request, CacheGroup& group) {
  std::error_code ec;
  const uint64_t size = fs::file_size(request.data_file, ec);
  if (ec) Fail(ErrorCode::kNotFound, "{}: cannot open the data file", request.data_file.string());
  Sha256 key;
  key.Update(fmt::format("shardtune token cache {}\n", kTokenCacheVersion));
  const Sha256Digest data = TreeDigest(request.data_file, size, group, "token cache: data digest");
  key.Update(data.data(), data.size());
  if (request.options.format != DataFormat::kTokens) {
    for (const fs::path& file : TokenizerFiles(request.tokenizer_source)) {
      const std::string bytes = ReadFile(file);
      key.Update(file.filename().string() + "\n" + std::to_string(bytes.size()) + "\n");
      key.Update(bytes);
    }
  }
  key.Update(OptionsForKey(request.options).dump());
  return key.Finish();
}

TokenCacheResult OpenOrBuildTokenCache(const TokenCacheRequest& request, CacheGroup& group) {
  const auto start = std::chrono::steady_clock::now();
  const Sha256Digest key = TokenCacheKey(request, group);
  const fs::path path = request.cache_dir / TokenCacheFileName(request.data_file, key);
  TokenCacheResult result;
  std::string problem;
  std::unique_ptr<TokenCache> cache = TokenCache::Open(path, key, &problem);
  // Every process decides alike: the file is used only when all of them could open it.
  std::vector<int64_t> unusable = {cache ? 0 : 1};
  group.SumInt64(unusable, "token cache: opened");
  if (unusable[0] == 0) {
    if (cache->VerifyDigest(group)) {
      result.cache = std::move(cache);
      result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      return result;
    }
    problem = "its bytes do not match its digest (corrupt)";
  } else if (cache) {
    problem = "another process could not open it";
  }
  cache.reset();
  result.reason = problem;
  BuildCache(request, path, key, group);
  cache = TokenCache::Open(path, key, &problem);
  ST_CHECK(cache != nullptr, "{}: the token cache just written does not open: {}", path.string(), problem);
  result.cache = std::move(cache);
  result.built = true;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace shardtune
