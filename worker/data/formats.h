#pragma once
// Training data in the formats users already have, turned into token ids and loss labels:
//   chat        OpenAI fine-tuning JSONL: {"messages": [{"role", "content", "weight"?}]}
//   completion  {"prompt", "completion"}
//   alpaca      {"instruction", "input"?, "output"}, JSONL or one JSON array
//   sharegpt    {"conversations": [{"from": "system"|"human"|"gpt", "value"}]}
//   text        {"text"}: loss on every token
//   tokens      {"input_ids", "labels"?} (token_dataset.h)
// Conversations are rendered with a chat template, one segment at a time, so the loss mask is
// exact: it covers the assistant content plus the end-of-turn token, and nothing else. Every
// problem is reported with file:line and a code from a fixed taxonomy (OpenAI's, extended).

#include <filesystem>
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

 private:
  std::vector<DataIssue> issues_;
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

// The options a job's spec implies: its format, the tokenizer (model.tokenizer, else the model
// directory's), whether examples start with BOS (the tokenizer's post-processor says), the end
// token (config.json's eos), and the chat template (data.chat_template, or detected).
struct JobDataOptions {
  FormatOptions options;
  std::unique_ptr<Tokenizer> tokenizer;  // owns options.tokenizer
  std::string template_note;             // which template and why, for the log
};
JobDataOptions DataOptionsFor(const JobSpec& spec, int64_t vocab_size, const std::vector<int64_t>& eos_token_ids);

// `shardtune validate-data`: reads every data file of the job, prints a summary, and throws
// DataError (all problems, with file:line and code) when anything is wrong.
struct DataSummary {
  int64_t examples = 0, tokens = 0, target_tokens = 0, truncated = 0, without_targets = 0, longest = 0;
};
DataSummary Summarize(const TokenDataset& dataset);

// One conversation turn; exposed for tests.
struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
  bool trained = true;  // assistant turns only: weight 1
};
// Token ids and labels of a conversation (labels -100 outside trained assistant turns).
Example RenderChat(const std::vector<ChatMessage>& messages, const FormatOptions& options);

}  // namespace shardtune
