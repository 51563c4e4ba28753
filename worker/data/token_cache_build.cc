// Finding or building a token cache (token_cache.h): its key, and the build shared by a group of
// processes. Each process renders a slice of the data file's records into part files (one per
// section); after a barrier every process reads the parts' reports (so bad data fails every
// process alike), and process 0 concatenates the parts into the cache file, renamed into place.

#include <spdlog/spdlog.h>
#include <unistd.h>

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

// The parts' reports combined: problems with line numbers of the whole file, in file order.
struct BuildReport {
  int64_t examples = 0, tokens = 0;
  std::vector<DataIssue> issues;
  size_t total_issues = 0;
  std::vector<int64_t> label_counts;
};

BuildReport ReadReports(const fs::path& data_file, const fs::path& stage, int parts) {
  BuildReport all;
  int64_t lines_before = 0;
  for (int k = 0; k < parts; ++k) {
    const json r = json::parse(ReadFile(PartFiles(stage, k).report));
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

// Writes through a TreeHasher into an AtomicFileWriter, with a buffer.
class HashedOutput {
 public:
  explicit HashedOutput(const fs::path& path) : out_(path) {}
  void Write(const void* data, size_t size) {
    hasher_.Update(data, size);
    const auto* bytes = static_cast<const uint8_t*>(data);
    buffer_.insert(buffer_.end(), bytes, bytes + size);
    written_ += size;
    if (buffer_.size() >= (size_t{8} << 20)) Flush();
  }
  // Zeros up to `offset`, where the next section starts.
  void PadTo(uint64_t offset) {
    ST_CHECK(offset >= written_ && offset - written_ < 8, "token cache layout: at {} for a section at {}", written_,
             offset);
    static constexpr uint8_t kZeros[8] = {};
    Write(kZeros, offset - written_);
  }
  void CopyFile(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) Fail(ErrorCode::kIo, "{}: cannot read a token cache part", path.string());
    std::vector<char> chunk(size_t{4} << 20);
    while (in.read(chunk.data(), static_cast<std::streamsize>(chunk.size())) || in.gcount() > 0) {
      Write(chunk.data(), static_cast<size_t>(in.gcount()));
    }
  }
  // Appends the digest of everything written and renames the file into place.
  void Commit() {
    const Sha256Digest digest = hasher_.Finish();
    buffer_.insert(buffer_.end(), digest.begin(), digest.end());
    Flush();
    out_.Commit();
  }

 private:
  void Flush() {
    out_.Write(buffer_.data(), buffer_.size());
    buffer_.clear();
  }
  AtomicFileWriter out_;
  TreeHasher hasher_;
  std::vector<uint8_t> buffer_;
  uint64_t written_ = 0;
};

// Process 0: the cache file from the parts, renamed into place at `path`.
void AssembleCache(const fs::path& path, const Sha256Digest& key, const TokenCacheRequest& request,
                   const FormatOptions& options, const fs::path& stage, int parts, const BuildReport& report) {
  std::vector<PartExample> records;
  records.reserve(static_cast<size_t>(report.examples));
  for (int k = 0; k < parts; ++k) {
    const std::string bytes = ReadFile(PartFiles(stage, k).examples);
    const size_t n = bytes.size() / sizeof(PartExample);
    records.resize(records.size() + n);
    std::memcpy(&records[records.size() - n], bytes.data(), n * sizeof(PartExample));
  }
  ST_CHECK(static_cast<int64_t>(records.size()) == report.examples, "token cache parts: {} examples, reports say {}",
           records.size(), report.examples);
  const std::string meta = json{
      {"data_file", request.data_file.string()},
      {"format", ToString(options.format)},
      {"label_names", options.label_names},
      {"label_counts",
       report.label_counts}}.dump();
  CacheHeader h{};
  std::memcpy(h.magic, kTokenCacheMagic, sizeof(h.magic));
  h.version = kTokenCacheVersion;
  h.token_bytes = TokenBytes(options.vocab_size);
  h.full_labels = FullLabels(options.format);
  h.has_segments = HasSegments(options.format);
  h.examples = records.size();
  h.tokens = static_cast<uint64_t>(report.tokens);
  h.meta_bytes = meta.size();
  std::memcpy(h.key, key.data(), key.size());
  const CacheLayout l = LayoutOf(h);
  HashedOutput out(path);
  out.Write(&h, sizeof(h));
  out.PadTo(l.offsets);
  uint64_t offset = 0;
  out.Write(&offset, 8);
  for (const PartExample& r : records) {
    offset += r.length;
    out.Write(&offset, 8);
  }
  const auto each_part = [&](uint64_t section, fs::path PartFiles::*file) {
    out.PadTo(section);
    for (int k = 0; k < parts; ++k) out.CopyFile(PartFiles(stage, k).*file);
  };
  each_part(l.tokens, &PartFiles::tokens);
  each_part(l.labels, &PartFiles::labels);
  if (h.has_segments) each_part(l.segments, &PartFiles::segments);
  out.PadTo(l.flags);
  for (const PartExample& r : records) {
    const auto flags = static_cast<uint8_t>(r.flags);
    out.Write(&flags, 1);
  }
  out.PadTo(l.classes);
  for (const PartExample& r : records) out.Write(&r.class_label, 4);
  out.PadTo(l.meta);
  out.Write(meta.data(), meta.size());
  out.PadTo(l.digest);
  out.Commit();
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
  if (group.rank() == 0 && !bad) AssembleCache(path, key, request, options, stage, parts, report);
  if (group.rank() == 0) {
    for (int k = 0; k < parts; ++k) PartFiles(stage, k).Remove();
    std::error_code ec;
    if (bad && !made.empty()) fs::remove_all(made, ec);
  }
  if (bad) ThrowIfProblems(request.data_file, std::move(report.issues), report.total_issues, report.examples);
  group.Barrier("token cache: written");
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
