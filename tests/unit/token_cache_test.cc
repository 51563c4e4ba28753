// The token cache (worker/data/token_cache.h): what it holds equals ReadDataset's examples for
// every format, it is reused while its key holds and rebuilt when the data, the tokenizer or the
// options change or the file is damaged; the trainer's view of it (ExampleSet) equals the
// in-memory split and packing.

#include "worker/data/token_cache.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <numeric>

#include "common/atomic_file.h"
#include "test_util.h"
#include "worker/data/example_set.h"
#include "worker/data/formats.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;

void ExpectSameExample(const Example& actual, const Example& expected) {
  EXPECT_EQ(actual.input_ids, expected.input_ids);
  EXPECT_EQ(actual.labels, expected.labels);
  EXPECT_EQ(actual.position_ids, expected.position_ids);
  EXPECT_EQ(actual.document_ids, expected.document_ids);
  EXPECT_EQ(actual.class_label, expected.class_label);
  EXPECT_EQ(actual.token_type_ids, expected.token_type_ids);
}

// Records of each format, several per file, some longer than the cut the tests use.
std::string Lines(DataFormat format) {
  switch (format) {
    case DataFormat::kChat:
      return R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help you today?"}]}
{"messages": [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "one two", "weight": 0}, {"role": "user", "content": "more"}, {"role": "assistant", "content": "three four five"}]}

{"messages": [{"role": "user", "content": "Ok?"}, {"role": "assistant", "content": "Ok."}]})"
             "\n";
    case DataFormat::kCompletion:
      return R"({"prompt": "The capital of France is", "completion": " Paris, a city on the Seine."}
{"prompt": "", "completion": "Empty prompts train on everything."})";  // (no final newline)
    case DataFormat::kAlpaca:
      return R"([{"instruction": "Add 2+2", "input": "", "output": "4"},
 {"instruction": "Translate", "input": "chat", "output": "cat"}])";
    case DataFormat::kShareGpt:
      return R"({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo, what is up?"}]}
{"conversations": [{"from": "system", "value": "Terse."}, {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because."}]})"
             "\n";
    case DataFormat::kText:
      return R"({"text": "Once upon a time there was a tokenizer that cached its work."}
{"text": "Short."})"
             "\n";
    case DataFormat::kTokens:
      return R"({"input_ids": [1, 15043, 29892, 3186, 29991, 2], "labels": [-100, -100, 29892, 77, 29991, 2]}
{"input_ids": [1, 306, 626]})"
             "\n";
    case DataFormat::kClassification:
      return R"({"text": "a wonderful film, truly", "label": "pos"}
{"text": "dull", "label": "neg"}
{"text": "is it good", "text_pair": "it is fine", "label": 1})"
             "\n";
    case DataFormat::kNer:
      return R"({"tokens": ["Ada", "Lovelace", "met", "Charles", "Babbage"], "tags": ["B-PER", "I-PER", "O", "B-PER", "I-PER"]}
{"tokens": ["in", "London"], "tags": ["O", "B-LOC"]})"
             "\n";
  }
  return "";
}

class TokenCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_path_ = testing::FixturesDir() / "tokenizers" / "llama2-tokenizer.json";
    SKIP_WITHOUT_FIXTURE(tokenizer_path_);
    // The tokenizer is copied, so that a test can change it.
    fs::copy_file(tokenizer_path_, dir_ / "tokenizer.json");
    tokenizer_path_ = dir_ / "tokenizer.json";
    tokenizer_ = Tokenizer::Load(tokenizer_path_);
  }
  FormatOptions Options(DataFormat format) const {
    FormatOptions o;
    o.format = format;
    o.tokenizer = tokenizer_.get();
    o.chat_template = ChatTemplate::kLlama2;
    o.vocab_size = 32000;
    o.bos_id = 1;
    o.eos_id = 2;
    return o;
  }
  TokenCacheRequest Request(const fs::path& data, const FormatOptions& options) const {
    return {data, options, tokenizer_path_, dir_ / "out" / "cache"};
  }
  TokenCacheResult Cached(const fs::path& data, const FormatOptions& options) {
    SoloGroup alone;
    return OpenOrBuildTokenCache(Request(data, options), alone);
  }
  // The cache holds what ReadDataset reads, whole and cut to `max_len`.
  void ExpectCacheEqualsReadDataset(const TokenCache& cache, const fs::path& data, FormatOptions options) {
    for (int64_t max_len : {int64_t{0}, int64_t{9}}) {
      SCOPED_TRACE(max_len);
      options.max_seq_len = max_len;
      const TokenDataset expected = ReadDataset(data, options);
      ASSERT_EQ(cache.size(), static_cast<int64_t>(expected.examples.size()));
      for (int64_t i = 0; i < cache.size(); ++i) {
        SCOPED_TRACE(i);
        ExpectSameExample(cache.Read(i, max_len), expected.examples[static_cast<size_t>(i)]);
      }
      EXPECT_EQ(cache.LongerThan(max_len), expected.truncated);
      EXPECT_EQ(cache.label_names(), expected.label_names);
      EXPECT_EQ(cache.label_counts(), expected.label_counts);
    }
  }

  testing::ScratchDir dir_;
  fs::path tokenizer_path_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(TokenCacheTest, EveryFormatReadsBackAsReadDatasetReadsIt) {
  for (DataFormat format : {DataFormat::kChat, DataFormat::kCompletion, DataFormat::kAlpaca, DataFormat::kShareGpt,
                            DataFormat::kText, DataFormat::kTokens, DataFormat::kClassification, DataFormat::kNer}) {
    SCOPED_TRACE(ToString(format));
    const fs::path data = dir_ / (std::string(ToString(format)) + ".jsonl");
    testing::WriteText(data, Lines(format));
    for (int64_t vocab : {int64_t{32000}, int64_t{70000}}) {  // uint16 and uint32 token ids
      FormatOptions options = Options(format);
      options.vocab_size = vocab;
      const TokenCacheResult result = Cached(data, options);
      EXPECT_TRUE(result.built);
      ExpectCacheEqualsReadDataset(*result.cache, data, options);
    }
  }
}

TEST_F(TokenCacheTest, TheFixtureDatasetsReadBackAsReadDatasetReadsThem) {
  const fs::path datasets = testing::FixturesDir() / "datasets";
  SKIP_WITHOUT_FIXTURE(datasets / "alpaca_en_demo.json");
  for (const auto& [file, format] :
       {std::pair{"alpaca_en_demo.json", DataFormat::kAlpaca}, std::pair{"chat_tiny.json", DataFormat::kShareGpt}}) {
    SCOPED_TRACE(file);
    if (!fs::exists(datasets / file)) continue;
    const TokenCacheResult result = Cached(datasets / file, Options(format));
    ExpectCacheEqualsReadDataset(*result.cache, datasets / file, Options(format));
  }
}

struct FileIdentity {
  ino_t inode;
  int64_t mtime_ns;
};
FileIdentity IdentityOf(const fs::path& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return {st.st_ino, static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

TEST_F(TokenCacheTest, ReusedWhileItsKeyHoldsAndRebuiltWhenTheDataTokenizerOrOptionsChange) {
  const fs::path data = dir_ / "chat.jsonl";
  testing::WriteText(data, Lines(DataFormat::kChat));
  const FormatOptions options = Options(DataFormat::kChat);
  const TokenCacheResult first = Cached(data, options);
  ASSERT_TRUE(first.built);
  EXPECT_EQ(first.reason, "there is none");
  const fs::path path = first.cache->path();
  EXPECT_EQ(path.parent_path(), dir_ / "out" / "cache");
  const FileIdentity before = IdentityOf(path);

  const TokenCacheResult again = Cached(data, options);
  EXPECT_FALSE(again.built);
  EXPECT_EQ(again.cache->path(), path);
  EXPECT_EQ(IdentityOf(path).inode, before.inode);
  EXPECT_EQ(IdentityOf(path).mtime_ns, before.mtime_ns);
  // Another max_seq_len reuses it: the cache holds whole examples.
  FormatOptions longer = options;
  longer.max_seq_len = 3;
  EXPECT_FALSE(Cached(data, longer).built);

  // One byte of the data changed (same size): another key, another cache.
  std::string text = Lines(DataFormat::kChat);
  text[text.find("Hi there")] = 'J';
  testing::WriteText(data, text);
  const TokenCacheResult changed = Cached(data, options);
  EXPECT_TRUE(changed.built);
  EXPECT_NE(changed.cache->path(), path);
  ExpectCacheEqualsReadDataset(*changed.cache, data, options);

  // The tokenizer's file changed (a space added to its JSON): rebuilt.
  std::string tokenizer = ReadFile(tokenizer_path_);
  testing::WriteText(tokenizer_path_, tokenizer + " ");
  EXPECT_TRUE(Cached(data, options).built);
  EXPECT_FALSE(Cached(data, options).built);

  // Another chat template: rebuilt.
  FormatOptions chatml = options;
  chatml.chat_template = ChatTemplate::kPlain;
  EXPECT_TRUE(Cached(data, chatml).built);
}

TEST_F(TokenCacheTest, ATruncatedOrCorruptCacheIsDetectedAndRebuilt) {
  const fs::path data = dir_ / "text.jsonl";
  testing::WriteText(data, Lines(DataFormat::kText));
  const FormatOptions options = Options(DataFormat::kText);
  const fs::path path = Cached(data, options).cache->path();
  const auto size = fs::file_size(path);

  fs::resize_file(path, size - 40);  // as a copy cut short would leave it
  TokenCacheResult result = Cached(data, options);
  EXPECT_TRUE(result.built);
  EXPECT_NE(result.reason.find("truncated"), std::string::npos) << result.reason;
  EXPECT_EQ(result.cache->path(), path);
  EXPECT_EQ(fs::file_size(path), size);
  ExpectCacheEqualsReadDataset(*result.cache, data, options);

  // One token id's byte flipped, the size unchanged: the digest tells.
  result.cache.reset();
  {
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(128 + 8 * 3);  // the header, then the offsets of 2 examples: the first token
    file.put('\x7f');
  }
  result = Cached(data, options);
  EXPECT_TRUE(result.built);
  EXPECT_NE(result.reason.find("digest"), std::string::npos) << result.reason;
  ExpectCacheEqualsReadDataset(*result.cache, data, options);
}

TEST_F(TokenCacheTest, BadDataFailsWithFileAndLineAndLeavesNothingBehind) {
  const fs::path data = dir_ / "bad.jsonl";
  testing::WriteText(data, Lines(DataFormat::kChat) + R"({"messages": [{"role": "bot", "content": "x"}]})" + "\n");
  try {
    Cached(data, Options(DataFormat::kChat));
    ADD_FAILURE() << "accepted";
  } catch (const DataError& e) {
    ASSERT_EQ(e.issues().size(), 1u) << e.what();
    EXPECT_EQ(e.issues()[0].line, 5);
    EXPECT_EQ(e.issues()[0].code, "unrecognized_role");
  }
  EXPECT_FALSE(fs::exists(dir_ / "out")) << "the build made directories and left them";
}

// Slices cut at line starts render, together, what the whole file renders, with the same line
// numbers once each slice's lines are counted from the newlines before it.
TEST_F(TokenCacheTest, SlicesTogetherRenderTheWholeFile) {
  std::string text;
  for (int i = 0; i < 40; ++i) text += i == 17 ? "{\"text\": 5}\n" : i % 7 == 3 ? "\n" : Lines(DataFormat::kText);
  const fs::path data = dir_ / "text.jsonl";
  testing::WriteText(data, text);
  const FormatOptions options = Options(DataFormat::kText);
  std::vector<Example> whole;
  const SliceReport all = RenderRecords(data, options, RecordSlice{}, [&](Example&& e) { whole.push_back(e); });
  for (int parts : {1, 2, 3, 7, 200}) {
    SCOPED_TRACE(parts);
    const std::vector<RecordSlice> slices = SliceRecords(data, parts);
    ASSERT_EQ(slices.size(), static_cast<size_t>(parts));
    std::vector<Example> pieces;
    std::vector<int64_t> issue_lines;
    int64_t lines = 0;
    for (const RecordSlice& slice : slices) {
      EXPECT_TRUE(slice.begin == 0 || slice.begin == text.size() || text[slice.begin - 1] == '\n');
      const SliceReport r = RenderRecords(data, options, slice, [&](Example&& e) { pieces.push_back(e); });
      for (const DataIssue& i : r.issues) issue_lines.push_back(lines + i.line);
      lines += r.lines;
    }
    EXPECT_EQ(slices.back().end, text.size());
    ASSERT_EQ(pieces.size(), whole.size());
    for (size_t i = 0; i < whole.size(); ++i) ExpectSameExample(pieces[i], whole[i]);
    ASSERT_EQ(all.issues.size(), 1u);
    EXPECT_EQ(issue_lines, std::vector<int64_t>{all.issues[0].line});
  }
}

// The trainer's view: documents selected by the validation split and packed equal the
// in-memory pipeline's (SplitValidation, PackExamples) on ReadDataset's examples.
TEST_F(TokenCacheTest, AnExampleSetEqualsTheSplitAndPackedDataset) {
  std::string text;
  for (int i = 0; i < 12; ++i) text += Lines(DataFormat::kChat);
  const fs::path data = dir_ / "chat.jsonl";
  testing::WriteText(data, text);
  FormatOptions options = Options(DataFormat::kChat);
  const std::shared_ptr<const TokenCache> cache = Cached(data, options).cache;
  constexpr int64_t kMaxLen = 48;
  options.max_seq_len = kMaxLen;
  std::vector<Example> train = ReadDataset(data, options).examples, validation;
  SplitValidation(train, validation, 0.25, 7);
  const std::vector<Example> packed = PackExamples(train, kMaxLen);

  const std::vector<bool> held = ValidationMask(cache->size(), 0.25, 7);
  std::vector<int64_t> kept, held_out;
  for (int64_t i = 0; i < cache->size(); ++i) (held[i] ? held_out : kept).push_back(i);
  ExampleSet set;
  EXPECT_EQ(set.Add(cache, held_out, kMaxLen, /*pack=*/false), static_cast<int64_t>(validation.size()));
  EXPECT_EQ(set.Add(cache, kept, kMaxLen, /*pack=*/true), static_cast<int64_t>(packed.size()));
  ASSERT_EQ(set.size(), static_cast<int64_t>(validation.size() + packed.size()));
  const std::vector<int64_t> lengths = set.Lengths();
  for (int64_t i = 0; i < set.size(); ++i) {
    SCOPED_TRACE(i);
    const auto v = static_cast<int64_t>(validation.size());
    const Example& expected = i < v ? validation[static_cast<size_t>(i)] : packed[static_cast<size_t>(i - v)];
    ExpectSameExample(set.Get(i), expected);
    EXPECT_EQ(set.PartOf(i), i < v ? 0 : 1);
    EXPECT_EQ(lengths[static_cast<size_t>(i)], static_cast<int64_t>(expected.input_ids.size()));
  }
}

}  // namespace
}  // namespace shardtune
