// A training data file in each format users bring (worker/data/formats.h): the first byte picks
// the format (chat, completion, alpaca, sharegpt, text, classification, ner, tokens) and the chat
// template, the rest is the file (JSONL lines, or alpaca's JSON array). It is read as training
// reads it: the label names resolved, then every record rendered to token ids with a WordPiece
// tokenizer (examples/tiny-bert/vocab.txt). Problems in records are DataIssues, not exceptions.

#include <filesystem>

#include "common/error.h"
#include "tests/fuzz/fuzz_util.h"
#include "worker/data/formats.h"
#include "worker/data/tokenizer/hf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardtune;
  static const std::unique_ptr<Tokenizer> tokenizer =
      LoadWordPieceVocab(std::filesystem::path(SHARDTUNE_SOURCE_DIR) / "examples/tiny-bert/vocab.txt");
  if (size == 0) return 0;
  FormatOptions options;
  options.format = static_cast<DataFormat>(data[0] % 8);
  options.chat_template = static_cast<ChatTemplate>((data[0] >> 3) % 5);
  options.tokenizer = tokenizer.get();
  options.vocab_size = tokenizer->vocab_size();
  options.max_seq_len = 64;
  options.bos_id = 2;
  options.eos_id = 3;
  const auto path = fuzz::WriteScratch("data.jsonl", fuzz::AsText(data + 1, size - 1));
  try {
    options.label_names = ResolveLabelNames(path, options);
    int64_t tokens = 0;
    const SliceReport report = RenderRecords(path, options, RecordSlice{}, [&](Example&& example) {
      TruncateExample(example, options.max_seq_len);
      tokens += static_cast<int64_t>(example.input_ids.size());
    });
    (void)report;
    (void)tokens;
  } catch (const Error&) {
  }
  return 0;
}
