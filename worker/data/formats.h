#pragma once
// Training data in the formats users already have, turned into token ids and loss labels:
//   chat        OpenAI fine-tuning JSONL: {"messages": [{"role", "content", "weight"?}]}
//   completion  {"prompt", "completion"}; for code, "tests" and "entry_point" too (pass@k;
//               a record with tests may leave the completion out)
//   alpaca      {"instruction", "input"?, "output"}, JSONL or one JSON array
//   sharegpt    {"conversations": [{"from": "system"|"human"|"gpt", "value"}]}
//   text        {"text"}: loss on every token
//   tokens      {"input_ids", "labels"?} (token_dataset.h)
// Conversations are rendered with a chat template, one segment at a time, so the loss mask is
// exact: it covers the assistant content plus the end-of-turn token, and nothing else. Every
// problem is reported with file:line and a code from a fixed taxonomy (OpenAI's, extended).

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/job_spec.h"
#include "worker/data/token_dataset.h"
#include "worker/data/tokenizer/tokenizer.h"

namespace shardtune {

enum class ChatTemplate { kLlama3, kChatml, kLlama2, kMistral, kPlain };
const char* ToString(ChatTemplate t);
std::optional<ChatTemplate> ParseChatTemplate(const std::string& name);

// Recognizes the template a tokenizer_config.json's "chat_template" implements; plain when
// there is none. `reason` says what was recognized.
ChatTemplate DetectChatTemplate(const std::filesystem::path& model_or_tokenizer_dir, std::string* reason);

struct DataIssue {
  std::string file;
  int64_t line = 0;  // 1-based line (JSONL) or record (JSON array)
  std::string code;  // data_type, missing_messages_list, message_missing_key, ...
  std::string message;
  std::string ToString() const;
};

// Every problem in the data, each on its own line (the first 50; the count of all).
class DataError : public Error {
 public:
  explicit DataError(std::vector<DataIssue> issues, size_t total);
  const std::vector<DataIssue>& issues() const { return issues_; }
  size_t total() const { return total_; }

 private:
  std::vector<DataIssue> issues_;
  size_t total_ = 0;
};

struct FormatOptions {
  DataFormat format = DataFormat::kChat;
  const Tokenizer* tokenizer = nullptr;  // not needed for `tokens`
  ChatTemplate chat_template = ChatTemplate::kPlain;
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;
  std::optional<int64_t> bos_id;        // prepended to every example when set
  int64_t eos_id = 2;                   // ends completions, text, and plain/llama2/mistral assistant turns
  std::optional<int64_t> separator_id;  // closes a classification text_pair ([SEP], </s>); else eos_id
  // classification and ner: the label names in id order (config.json's id2label). Empty: the
  // sorted names found in the data.
  std::vector<std::string> label_names;
};

// Reads and validates the whole file. Throws DataError listing every problem found.
TokenDataset ReadDataset(const std::filesystem::path& path, const FormatOptions& options);

// The pieces ReadDataset is made of, for readers that share a file's records among processes
// (the token cache, token_cache.h).

// classification and ner: options.label_names, or when empty the sorted label names found in the
// file (with index labels only, "0" .. the largest index). Other formats: options.label_names.
std::vector<std::string> ResolveLabelNames(const std::filesystem::path& path, const FormatOptions& options);

// A byte range of a data file that starts at a line start (or is empty).
struct RecordSlice {
  uint64_t begin = 0;
  uint64_t end = UINT64_MAX;
};
// The file cut into `parts` slices of about equal bytes, each starting at a line start; a JSON
// array file (alpaca's form) is not cut: the first slice holds it whole, the others are empty.
std::vector<RecordSlice> SliceRecords(const std::filesystem::path& path, int parts);

// What rendering a slice found besides its examples.
struct SliceReport {
  int64_t examples = 0;
  std::vector<DataIssue> issues;  // the first 50, with lines counted from the slice's first (1)
  size_t total_issues = 0;
  int64_t lines = 0;                  // newlines in the slice: the next slice's lines follow them
  std::vector<int64_t> label_counts;  // by label id
};
// Renders the records of `slice` in file order and hands each valid example, whole (not cut to
// max_seq_len), to `sink`; `progress` (when set) gets the bytes of the slice read so far.
// options.label_names must be resolved (ResolveLabelNames).
SliceReport RenderRecords(const std::filesystem::path& path, const FormatOptions& options, const RecordSlice& slice,
                          const std::function<void(Example&&)>& sink,
                          const std::function<void(uint64_t)>& progress = {});
// Throws the DataError of a file's problems (the first 50 of `issues`, `total` in all), or of an
// empty file when there are no problems and no examples.
void ThrowIfProblems(const std::filesystem::path& path, std::vector<DataIssue> issues, size_t total, int64_t examples);
// Cuts an example to its first `max_len` tokens (labels and segments with them).
void TruncateExample(Example& example, int64_t max_len);

// The options a job's spec implies: its format, the tokenizer (model.tokenizer, else the model
// directory's), whether examples start with BOS (the tokenizer's post-processor says), the end
// token (config.json's eos), and the chat template (data.chat_template, or detected).
struct JobDataOptions {
  FormatOptions options;
  std::unique_ptr<Tokenizer> tokenizer;    // owns options.tokenizer
  std::filesystem::path tokenizer_source;  // the file or directory it was loaded from (none for tokens)
  std::string template_note;               // which template and why, for the log
};
JobDataOptions DataOptionsFor(const JobSpec& spec, int64_t vocab_size, const std::vector<int64_t>& eos_token_ids);

// `shardtune validate-data`: reads every data file of the job, prints a summary, and throws
// DataError (all problems, with file:line and code) when anything is wrong.
struct DataSummary {
  int64_t examples = 0, tokens = 0, target_tokens = 0, truncated = 0, without_targets = 0, longest = 0;
};
DataSummary Summarize(const TokenDataset& dataset);
// Adds one example (as training sees it: cut to max_seq_len) to a summary.
void AddToSummary(DataSummary& summary, const Example& example);

// One conversation turn; exposed for tests.
struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
  bool trained = true;  // assistant turns only: weight 1
};
// Token ids and labels of a conversation (labels -100 outside trained assistant turns).
Example RenderChat(const std::vector<ChatMessage>& messages, const FormatOptions& options);

}  // namespace shardtune
