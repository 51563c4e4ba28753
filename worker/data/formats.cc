#include "worker/data/formats.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/atomic_file.h"
#include "common/hf_config.h"
#include "common/storage_roots.h"
#include "common/trim.h"
#include "worker/data/record_reader.h"
#include "worker/data/tokenizer/unicode.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

using record_reader::ForEachRecord;
using record_reader::IsJsonArrayFile;
using record_reader::Issues;
using record_reader::kMaxReportedIssues;

namespace {

// Builds one example segment by segment. Consecutive text segments are tokenized together, as
// the rendered string would be (tokenizing them apart would add SentencePiece's dummy prefix or
// split a byte-level space from its word); each token then belongs to the segment its text
// ends in, found by tokenizing the prefixes: the tokens a prefix shares with the whole run are
// the prefix's. Special tokens are inserted by id and end a run.
class SequenceBuilder {
 public:
  explicit SequenceBuilder(const FormatOptions& options) : options_(options) {}
  ~SequenceBuilder() = default;

  // Returns the segment's index (for SegmentStart).
  size_t Text(const std::string& text, bool trained = false) {
    run_.push_back({text, trained, segments_++});
    return segments_ - 1;
  }
  void Special(const std::string& token, bool trained = false) {
    const auto id = options_.tokenizer->TokenToId(token);
    if (!id) {
      Fail(ErrorCode::kInvalidArgument, "the {} chat template needs the token '{}', which the tokenizer does not have",
           ToString(options_.chat_template), token);
    }
    Id(*id, trained);
  }
  void Id(int64_t id, bool trained = false) {
    Flush();
    Append(id, trained);
    ++segments_;
  }
  Example Finish() {
    Flush();
    return std::move(example_);
  }
  // The index of the first token of segment `k`, or -1 when it got none (after Finish).
  int64_t SegmentStart(size_t k) const { return k < starts_.size() ? starts_[k] : -1; }

 private:
  struct Pending {
    std::string text;
    bool trained;
    size_t index;
  };
  void Append(int64_t id, bool trained) {
    example_.input_ids.push_back(id);
    example_.labels.push_back(trained ? id : -100);
  }
  void Flush() {
    if (run_.empty()) return;
    std::string text;
    for (const auto& p : run_) text += p.text;
    const std::vector<int64_t> ids = options_.tokenizer->Encode(text, /*add_special_tokens=*/false);
    std::string prefix;
    size_t begin = 0;
    for (size_t k = 0; k < run_.size(); ++k) {
      prefix += run_[k].text;
      size_t end = ids.size();
      if (k + 1 < run_.size()) {
        const std::vector<int64_t> prefix_ids = options_.tokenizer->Encode(prefix, /*add_special_tokens=*/false);
        end = 0;
        while (end < prefix_ids.size() && end < ids.size() && prefix_ids[end] == ids[end]) ++end;
        end = std::max(end, begin);
      }
      if (starts_.size() <= run_[k].index) starts_.resize(run_[k].index + 1, -1);
      starts_[run_[k].index] = end > begin ? static_cast<int64_t>(example_.input_ids.size()) : -1;
      for (size_t t = begin; t < end; ++t) Append(ids[t], run_[k].trained);
      begin = end;
    }
    run_.clear();
  }

  const FormatOptions& options_;
  Example example_;
  std::vector<Pending> run_;
  std::vector<int64_t> starts_;
  size_t segments_ = 0;
};

// A record's problem: thrown inside the parsing of one record, caught per record.
struct RecordProblem {
  std::string code, message;
};
[[noreturn]] void Problem(const std::string& code, const std::string& message) { throw RecordProblem{code, message}; }

std::string RequireString(const json& record, const char* key, const std::string& context, bool allow_empty = false) {
  const auto it = record.find(key);
  if (it == record.end()) Problem("missing_key", fmt::format("{}'{}' is missing", context, key));
  if (!it->is_string())
    Problem("data_type", fmt::format("{}'{}' must be a string, got {}", context, key, it->type_name()));
  std::string value = it->get<std::string>();
  if (!allow_empty && TrimWhitespace(value).empty())
    Problem("missing_content", fmt::format("{}'{}' is empty", context, key));
  return value;
}

void RejectUnknownKeys(const json& record, std::initializer_list<const char*> allowed, const char* code,
                       const std::string& context) {
  for (const auto& item : record.items()) {
    const std::string& key = item.key();  // a name, not a structured binding: lambdas capture it in C++17
    if (std::none_of(allowed.begin(), allowed.end(), [&](const char* a) { return key == a; })) {
      std::string list;
      for (const char* a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      Problem(code, fmt::format("{}unknown key '{}' (expected {})", context, key, list));
    }
  }
}

std::vector<ChatMessage> ReadMessages(const json& record) {
  const auto it = record.find("messages");
  if (it == record.end() || !it->is_array()) Problem("missing_messages_list", "expected a 'messages' list");
  RejectUnknownKeys(record, {"messages"}, "unrecognized_key", "");
  std::vector<ChatMessage> messages;
  bool has_assistant = false;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string at = fmt::format("messages[{}]: ", i);
    if (!m.is_object()) Problem("data_type", at + "expected an object");
    if (!m.contains("role")) Problem("message_missing_key", at + "'role' is missing");
    if (!m.contains("content")) Problem("message_missing_key", at + "'content' is missing");
    RejectUnknownKeys(m, {"role", "content", "weight", "name"}, "message_unrecognized_key", at);
    ChatMessage message;
    message.role = m["role"].is_string() ? m["role"].get<std::string>() : "";
    if (message.role != "system" && message.role != "user" && message.role != "assistant") {
      Problem("unrecognized_role",
              fmt::format("{}role {} is not one of system, user, assistant", at, m["role"].dump()));
    }
    message.content = RequireString(m, "content", at);
    if (m.contains("weight")) {
      if (message.role != "assistant") Problem("data_type", at + "'weight' applies to assistant messages only");
      if (!m["weight"].is_number_integer() || (m["weight"] != 0 && m["weight"] != 1)) {
        Problem("data_type", at + "'weight' must be 0 or 1, got " + m["weight"].dump());
      }
      message.trained = m["weight"] == 1;
    }
    has_assistant |= message.role == "assistant";
    messages.push_back(std::move(message));
  }
  if (!has_assistant)
    Problem("example_missing_assistant_message", "the conversation has no assistant message to learn from");
  return messages;
}

std::vector<ChatMessage> ReadShareGpt(const json& record) {
  const auto it = record.find("conversations");
  if (it == record.end() || !it->is_array()) Problem("missing_messages_list", "expected a 'conversations' list");
  std::vector<ChatMessage> messages;
  bool has_assistant = false;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& turn = (*it)[i];
    const std::string at = fmt::format("conversations[{}]: ", i);
    if (!turn.is_object()) Problem("data_type", at + "expected an object");
    const std::string from = turn.contains("from") && turn["from"].is_string() ? turn["from"].get<std::string>() : "";
    ChatMessage message;
    if (from == "system")
      message.role = "system";
    else if (from == "human" || from == "user")
      message.role = "user";
    else if (from == "gpt" || from == "assistant")
      message.role = "assistant";
    else
      Problem("unrecognized_role",
              fmt::format("{}'from' {} is not one of system, human, gpt", at, turn.value("from", json()).dump()));
    message.content = RequireString(turn, "value", at);
    has_assistant |= message.role == "assistant";
    messages.push_back(std::move(message));
  }
  if (!has_assistant) Problem("example_missing_assistant_message", "the conversation has no gpt turn to learn from");
  return messages;
}

// Label names and ids for classification and ner, fixed before any record is rendered.
struct LabelSet {
  std::vector<std::string> names;
  std::map<std::string, int64_t> ids;
  int64_t Id(const json& label, const char* field) const {
    if (label.is_number_integer()) {
      const auto id = label.get<int64_t>();
      if (id < 0 || id >= static_cast<int64_t>(names.size())) {
        Problem("unknown_label", fmt::format("'{}' {} is outside the {} labels", field, id, names.size()));
      }
      return id;
    }
    if (!label.is_string())
      Problem("data_type", fmt::format("'{}' must be a label name or index, got {}", field, label.dump()));
    const auto it = ids.find(label.get<std::string>());
    if (it == ids.end())
      Problem("unknown_label", fmt::format("'{}' {} is not one of the {} labels", field, label.dump(), names.size()));
    return it->second;
  }
};

// A list of token ids; with `allow_ignore`, -100 (no loss) too.
std::vector<int64_t> ReadIdList(const json& value, const char* field, int64_t vocab_size, bool allow_ignore) {
  if (!value.is_array())
    Problem("data_type", fmt::format("'{}' must be a list of integers, got {}", field, value.type_name()));
  std::vector<int64_t> ids;
  ids.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    if (!value[i].is_number_integer())
      Problem("data_type", fmt::format("{}[{}] must be an integer, got {}", field, i, value[i].dump()));
    const auto v = value[i].get<int64_t>();
    if (!(allow_ignore && v == -100) && (v < 0 || v >= vocab_size)) {
      Problem("token_out_of_vocabulary", fmt::format("{}[{}] = {} is outside the vocabulary [0, {}){}", field, i, v,
                                                     vocab_size, allow_ignore ? " (or -100 for no loss)" : ""));
    }
    ids.push_back(v);
  }
  return ids;
}

// [BOS] prompt response EOS, training on the response and EOS only (completion and Alpaca records).
Example PromptAndResponse(const std::string& prompt, const std::string& response, const FormatOptions& options) {
  SequenceBuilder b(options);
  if (options.bos_id) b.Id(*options.bos_id);
  b.Text(prompt);
  b.Text(response, true);
  b.Id(options.eos_id, true);
  return b.Finish();
}

Example Render(const json& record, const FormatOptions& options, const LabelSet& labels) {
  if (!record.is_object()) Problem("data_type", fmt::format("expected a JSON object, got {}", record.type_name()));
  switch (options.format) {
    case DataFormat::kChat:
      return RenderChat(ReadMessages(record), options);
    case DataFormat::kShareGpt:
      return RenderChat(ReadShareGpt(record), options);
    case DataFormat::kCompletion: {
      // "tests" and "entry_point": code to run an answer against (pass@k, record_texts.h); a record
      // with tests may leave its completion out (it is then trained on the end token alone).
      RejectUnknownKeys(record, {"prompt", "completion", "tests", "entry_point"}, "unrecognized_key", "");
      const bool tested = record.contains("tests");
      for (const char* key : {"tests", "entry_point"})
        if (record.contains(key)) RequireString(record, key, "", /*allow_empty=*/true);
      const std::string prompt = RequireString(record, "prompt", "", /*allow_empty=*/true);
      const std::string completion =
          tested && !record.contains("completion") ? "" : RequireString(record, "completion", "", tested);
      return PromptAndResponse(prompt, completion, options);
    }
    case DataFormat::kAlpaca: {
      RejectUnknownKeys(record, {"instruction", "input", "output"}, "unrecognized_key", "");
      const std::string instruction = RequireString(record, "instruction", "");
      const std::string input =
          record.contains("input") ? RequireString(record, "input", "", /*allow_empty=*/true) : "";
      const std::string output = RequireString(record, "output", "");
      // The Stanford Alpaca prompt.
      const std::string prompt = TrimWhitespace(input).empty()
                                     ? "Below is an instruction that describes a task. Write a response that "
                                       "appropriately completes the request.\n\n"
                                       "### Instruction:\n" +
                                           instruction + "\n\n### Response:\n"
                                     : "Below is an instruction that describes a task, paired with an input that "
                                       "provides further context. Write a "
                                       "response that appropriately completes the request.\n\n### Instruction:\n" +
                                           instruction + "\n\n### Input:\n" + input + "\n\n### Response:\n";
      return PromptAndResponse(prompt, output, options);
    }
    case DataFormat::kText: {
      SequenceBuilder b(options);
      RejectUnknownKeys(record, {"text"}, "unrecognized_key", "");
      const std::string text = RequireString(record, "text", "");
      if (options.bos_id) b.Id(*options.bos_id, true);
      b.Text(text, true);
      b.Id(options.eos_id, true);
      return b.Finish();
    }
    case DataFormat::kTokens: {
      RejectUnknownKeys(record, {"input_ids", "labels"}, "unrecognized_key", "");
      if (!record.contains("input_ids")) Problem("missing_key", "'input_ids' is missing");
      Example e;
      e.input_ids = ReadIdList(record["input_ids"], "input_ids", options.vocab_size, /*allow_ignore=*/false);
      if (e.input_ids.empty()) Problem("missing_content", "'input_ids' is empty");
      if (record.contains("labels")) {
        e.labels = ReadIdList(record["labels"], "labels", options.vocab_size, /*allow_ignore=*/true);
        if (e.labels.size() != e.input_ids.size()) {
          Problem("data_type",
                  fmt::format("'labels' has {} entries but 'input_ids' has {}", e.labels.size(), e.input_ids.size()));
        }
      } else {
        e.labels = e.input_ids;
      }
      return e;
    }
    case DataFormat::kClassification: {
      RejectUnknownKeys(record, {"text", "text_pair", "label"}, "unrecognized_key", "");
      const std::string text = RequireString(record, "text", "");
      if (!record.contains("label")) Problem("missing_key", "'label' is missing");
      Example e;
      e.input_ids = options.tokenizer->Encode(text, /*add_special_tokens=*/true);
      if (record.contains("text_pair")) {
        const std::vector<int64_t> pair =
            options.tokenizer->Encode(RequireString(record, "text_pair", ""), /*add_special_tokens=*/false);
        e.token_type_ids.assign(e.input_ids.size(), 0);
        e.input_ids.insert(e.input_ids.end(), pair.begin(), pair.end());
        e.input_ids.push_back(options.separator_id.value_or(options.eos_id));
        e.token_type_ids.resize(e.input_ids.size(), 1);
      }
      e.labels.assign(e.input_ids.size(), -100);
      e.class_label = labels.Id(record["label"], "label");
      return e;
    }
    case DataFormat::kNer: {
      RejectUnknownKeys(record, {"tokens", "tags"}, "unrecognized_key", "");
      const auto words = record.find("tokens"), tags = record.find("tags");
      if (words == record.end() || !words->is_array()) Problem("missing_key", "expected a 'tokens' list of words");
      if (tags == record.end() || !tags->is_array()) Problem("missing_key", "expected a 'tags' list");
      if (words->size() != tags->size()) {
        Problem("tags_tokens_length_mismatch", fmt::format("{} tokens but {} tags", words->size(), tags->size()));
      }
      if (words->empty()) Problem("missing_content", "'tokens' is empty");
      // The sentence is tokenized as running text; each tag sits on its word's first token.
      SequenceBuilder b(options);
      if (options.bos_id) b.Id(*options.bos_id);
      std::vector<std::pair<size_t, int64_t>> word_tags;
      for (size_t i = 0; i < words->size(); ++i) {
        if (!(*words)[i].is_string()) Problem("data_type", fmt::format("tokens[{}] must be a string", i));
        const int64_t tag = labels.Id((*tags)[i], "tags");
        std::string word = i > 0 ? " " : "";
        word += (*words)[i].get<std::string>();
        word_tags.emplace_back(b.Text(word), tag);
      }
      Example e = b.Finish();
      std::fill(e.labels.begin(), e.labels.end(), -100);
      for (const auto& [segment, tag] : word_tags) {
        const int64_t first = b.SegmentStart(segment);
        if (first >= 0) e.labels[static_cast<size_t>(first)] = tag;
      }
      return e;
    }
    default:
      Fail(ErrorCode::kUnimplemented, "data.format '{}' is not supported by this build yet", ToString(options.format));
  }
}

}  // namespace

const char* ToString(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::kLlama3:
      return "llama3";
    case ChatTemplate::kChatml:
      return "chatml";
    case ChatTemplate::kLlama2:
      return "llama2";
    case ChatTemplate::kMistral:
      return "mistral";
    case ChatTemplate::kPlain:
      return "plain";
  }
  return "?";
}

std::optional<ChatTemplate> ParseChatTemplate(const std::string& name) {
  for (ChatTemplate t : {ChatTemplate::kLlama3, ChatTemplate::kChatml, ChatTemplate::kLlama2, ChatTemplate::kMistral,
                         ChatTemplate::kPlain}) {
    if (name == ToString(t)) return t;
  }
  return std::nullopt;
}

ChatTemplate DetectChatTemplate(const fs::path& dir, std::string* reason) {
  const fs::path config = dir / "tokenizer_config.json";
  std::error_code ec;
  if (!fs::exists(config, ec)) {
    *reason = "no tokenizer_config.json";
    return ChatTemplate::kPlain;
  }
  const json root = json::parse(ReadFile(config), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.contains("chat_template") || !root["chat_template"].is_string()) {
    *reason = "tokenizer_config.json has no chat_template";
    return ChatTemplate::kPlain;
  }
  const std::string t = root["chat_template"].get<std::string>();
  const std::pair<const char*, ChatTemplate> markers[] = {{"<|start_header_id|>", ChatTemplate::kLlama3},
                                                          {"<|im_start|>", ChatTemplate::kChatml},
                                                          {"<<SYS>>", ChatTemplate::kLlama2},
                                                          {"[INST]", ChatTemplate::kMistral}};
  for (const auto& [marker, result] : markers) {
    if (t.find(marker) != std::string::npos) {
      *reason = fmt::format("its chat_template uses {}", marker);
      return result;
    }
  }
  *reason = "its chat_template matches no known template";
  return ChatTemplate::kPlain;
}

namespace record_reader {

bool IsJsonArrayFile(const fs::path& path) {
  const GrantedFile opened(path);  // the storage sandbox, on the file really opened
  std::ifstream in(opened.Name(), std::ios::binary);
  if (!in) Fail(ErrorCode::kNotFound, "{}: cannot open the data file", path.string());
  char c = 0;
  while (in.get(c)) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return c == '[';
  }
  return false;
}

}  // namespace record_reader

std::string DataIssue::ToString() const { return fmt::format("{}:{}: [{}] {}", file, line, code, message); }

DataError::DataError(std::vector<DataIssue> issues, size_t total)
    : Error(ErrorCode::kInvalidArgument,
            [&] {
              std::string message = fmt::format("{} problem{} in the data:", total, total == 1 ? "" : "s");
              for (const auto& issue : issues) message += "\n  " + issue.ToString();
              if (total > issues.size()) message += fmt::format("\n  ... and {} more", total - issues.size());
              return message;
            }()),
      issues_(std::move(issues)),
      total_(total) {}

Example RenderChat(const std::vector<ChatMessage>& messages, const FormatOptions& options) {
  SequenceBuilder b(options);
  const bool has_system = !messages.empty() && messages[0].role == "system";
  switch (options.chat_template) {
    case ChatTemplate::kLlama3:
      b.Special("<|begin_of_text|>");
      for (const ChatMessage& m : messages) {
        const bool trained = m.role == "assistant" && m.trained;
        b.Special("<|start_header_id|>");
        b.Text(m.role);
        b.Special("<|end_header_id|>");
        b.Text("\n\n");
        b.Text(TrimWhitespace(m.content), trained);
        b.Special("<|eot_id|>", trained);
      }
      break;
    case ChatTemplate::kChatml:
      for (const ChatMessage& m : messages) {
        const bool trained = m.role == "assistant" && m.trained;
        b.Special("<|im_start|>");
        b.Text(m.role + "\n");
        b.Text(m.content, trained);
        b.Special("<|im_end|>", trained);
        b.Text("\n");
      }
      break;
    case ChatTemplate::kLlama2:
    case ChatTemplate::kMistral: {
      // [INST] user [/INST] assistant</s>; the system prompt joins the first user turn.
      const bool llama2 = options.chat_template == ChatTemplate::kLlama2;
      std::string system = has_system ? messages[0].content : "";
      if (!llama2 && options.bos_id) b.Id(*options.bos_id);
      for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "user") {
          std::string content = TrimWhitespace(m.content);
          if (!system.empty()) {
            content = llama2 ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content : system + "\n\n" + content;
            system.clear();
          }
          if (llama2 && options.bos_id) b.Id(*options.bos_id);
          b.Text("[INST] " + content + " [/INST]");
        } else if (m.role == "assistant") {
          // llama2: ' ' + content + ' ' + eos; mistral: content + eos.
          if (llama2) b.Text(" ");
          b.Text(TrimWhitespace(m.content), m.trained);
          if (llama2) b.Text(" ");
          b.Id(options.eos_id, m.trained);
        }
      }
      break;
    }
    case ChatTemplate::kPlain:
      if (options.bos_id) b.Id(*options.bos_id);
      for (const ChatMessage& m : messages) {
        const bool trained = m.role == "assistant" && m.trained;
        const std::string role = m.role == "system" ? "System" : m.role == "user" ? "User" : "Assistant";
        b.Text(role + ": ");
        b.Text(m.content, trained);
        if (m.role == "assistant") b.Id(options.eos_id, trained);
        b.Text("\n");
      }
      break;
  }
  return b.Finish();
}

JobDataOptions DataOptionsFor(const JobSpec& spec, int64_t vocab_size, const std::vector<int64_t>& eos_token_ids) {
  JobDataOptions result;
  FormatOptions& options = result.options;
  options.format = spec.data.format;
  options.vocab_size = vocab_size;
  options.max_seq_len = spec.data.max_seq_len;
  options.eos_id = eos_token_ids.empty() ? 2 : eos_token_ids.front();
  if (spec.data.format == DataFormat::kTokens) return result;
  // Label names from config.json's id2label, unless they are transformers' placeholders (LABEL_k).
  const fs::path config_path = fs::path(spec.model.path) / "config.json";
  const json config = json::parse(ReadFile(config_path), nullptr, false);
  if (config.is_object()) {
    ModelTask task = ModelTask::kCausalLm;
    std::vector<std::string> names;
    ReadHead(config, config_path.string(), &task, &names);
    // Only a checkpoint with the job's head says the classes (a tagger's tags are not a
    // sentiment classifier's), and not transformers' placeholders.
    if (task == spec.model.task &&
        std::none_of(names.begin(), names.end(), [](const std::string& n) { return n.rfind("LABEL_", 0) == 0; }))
      options.label_names = names;
  }
  const fs::path source = spec.model.tokenizer.empty() ? fs::path(spec.model.path) : fs::path(spec.model.tokenizer);
  result.tokenizer = Tokenizer::Load(source);
  result.tokenizer_source = source;
  options.tokenizer = result.tokenizer.get();
  // The tokenizer's own convention: the special tokens its post-processor puts before a text
  // (BOS, [CLS]) and after it (EOS, [SEP]), found around a one-character text.
  const std::vector<int64_t> bare = result.tokenizer->Encode("a", /*add_special_tokens=*/false);
  const std::vector<int64_t> full = result.tokenizer->Encode("a", /*add_special_tokens=*/true);
  const auto at = std::search(full.begin(), full.end(), bare.begin(), bare.end());
  if (at != full.end()) {
    if (at != full.begin()) options.bos_id = full.front();
    if (at + static_cast<std::ptrdiff_t>(bare.size()) != full.end()) options.separator_id = full.back();
  }
  if (spec.data.chat_template == ChatTemplateChoice::kAuto) {
    std::string reason;
    options.chat_template = DetectChatTemplate(fs::is_directory(source) ? source : source.parent_path(), &reason);
    result.template_note = fmt::format("chat template: {} (auto: {})", ToString(options.chat_template), reason);
  } else {
    options.chat_template = *ParseChatTemplate(ToString(spec.data.chat_template));
    result.template_note = fmt::format("chat template: {} (data.chat_template)", ToString(options.chat_template));
  }
  return result;
}

void AddToSummary(DataSummary& s, const Example& e) {
  const auto n = static_cast<int64_t>(e.input_ids.size());
  ++s.examples;
  s.tokens += n;
  s.longest = std::max(s.longest, n);
  const int64_t targets = e.target_tokens();
  s.target_tokens += targets;
  s.without_targets += targets == 0;
}

DataSummary Summarize(const TokenDataset& dataset) {
  DataSummary s;
  s.truncated = dataset.truncated;
  for (const Example& e : dataset.examples) AddToSummary(s, e);
  return s;
}

std::vector<std::string> ResolveLabelNames(const fs::path& path, const FormatOptions& options) {
  const bool labelled = options.format == DataFormat::kClassification || options.format == DataFormat::kNer;
  if (!labelled || !options.label_names.empty()) return options.label_names;
  // No id2label given: the label names found in the file, sorted; with index labels only,
  // classes 0 .. the largest index seen. One pass collects both.
  std::set<std::string> found;
  int64_t largest = -1;
  Issues ignored;  // problems are reported by the pass that renders the records
  int64_t lines = 0;
  ForEachRecord(path, RecordSlice{}, ignored, &lines, [&](const json& record, int64_t) {
    if (!record.is_object()) return;
    for (const char* key : {"label", "tags"}) {
      if (!record.contains(key)) continue;
      const json& value = record[key];
      for (const json& v : value.is_array() ? value : json::array({value})) {
        if (v.is_string()) found.insert(v.get<std::string>());
        if (v.is_number_integer() && key == std::string("label")) largest = std::max(largest, v.get<int64_t>());
      }
    }
  });
  std::vector<std::string> names(found.begin(), found.end());
  if (names.empty()) {
    for (int64_t i = 0; i <= largest; ++i) names.push_back(std::to_string(i));
  }
  return names;
}

std::vector<RecordSlice> SliceRecords(const fs::path& path, int parts) {
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec) Fail(ErrorCode::kNotFound, "{}: cannot open the data file", path.string());
  std::vector<uint64_t> cuts = {0};
  if (IsJsonArrayFile(path)) {
    cuts.resize(static_cast<size_t>(parts), size);
  } else {
    // Each cut moves forward to the start of a line: just after the next newline.
    const GrantedFile opened(path);
    std::ifstream in(opened.Name(), std::ios::binary);
    for (int k = 1; k < parts; ++k) {
      uint64_t at = std::max(cuts.back(), size / static_cast<uint64_t>(parts) * static_cast<uint64_t>(k));
      if (at > 0 && at < size) {
        in.seekg(static_cast<std::streamoff>(at - 1));
        char c = 0;
        while (in.get(c) && c != '\n') ++at;
        at = std::min(at, size);
      }
      cuts.push_back(at);
    }
  }
  cuts.push_back(size);
  std::vector<RecordSlice> slices;
  for (int k = 0; k < parts; ++k) slices.push_back(RecordSlice{cuts[k], cuts[k + 1]});
  return slices;
}

SliceReport RenderRecords(const fs::path& path, const FormatOptions& options, const RecordSlice& slice,
                          const std::function<void(Example&&)>& sink, const std::function<void(uint64_t)>& progress) {
  ST_CHECK(options.tokenizer != nullptr || options.format == DataFormat::kTokens, "data.format {} needs a tokenizer",
           ToString(options.format));
  SliceReport report;
  Issues issues;
  const std::string file = path.string();
  LabelSet labels;
  labels.names = options.label_names;
  for (size_t i = 0; i < labels.names.size(); ++i) labels.ids[labels.names[i]] = static_cast<int64_t>(i);
  report.label_counts.assign(labels.names.size(), 0);
  ForEachRecord(
      path, slice, issues, &report.lines,
      [&](const json& record, int64_t line) {
        try {
          Example example = Render(record, options, labels);
          if (example.class_label >= 0) ++report.label_counts[static_cast<size_t>(example.class_label)];
          for (int64_t l : example.labels) {
            if (options.format == DataFormat::kNer && l >= 0) ++report.label_counts[static_cast<size_t>(l)];
          }
          for (int64_t id : example.input_ids) {  // (labels of ner are tag ids, not token ids)
            if (id < 0 || id >= options.vocab_size) {
              Problem("token_out_of_vocabulary",
                      fmt::format("the tokenizer produced id {}, outside the model's vocabulary of {}", id,
                                  options.vocab_size));
            }
          }
          ++report.examples;
          sink(std::move(example));
        } catch (const RecordProblem& p) {
          issues.Add(file, line, p.code, p.message);
        }
      },
      progress);
  report.issues = issues.issues();
  report.total_issues = issues.total();
  return report;
}

void ThrowIfProblems(const fs::path& path, std::vector<DataIssue> issues, size_t total, int64_t examples) {
  if (total == 0 && examples == 0) {
    issues.push_back({path.string(), 0, "empty_dataset", "the file holds no examples"});
    total = 1;
  }
  if (issues.size() > kMaxReportedIssues) issues.resize(kMaxReportedIssues);
  if (total > 0) throw DataError(std::move(issues), total);
}

void TruncateExample(Example& example, int64_t max_len) {
  const auto n = static_cast<size_t>(max_len);
  example.input_ids.resize(n);
  example.labels.resize(n);
  if (!example.token_type_ids.empty()) example.token_type_ids.resize(n);
}

TokenDataset ReadDataset(const fs::path& path, const FormatOptions& options) {
  TokenDataset dataset;
  FormatOptions resolved = options;
  resolved.label_names = dataset.label_names = ResolveLabelNames(path, options);
  SliceReport report = RenderRecords(path, resolved, RecordSlice{}, [&](Example&& example) {
    if (options.max_seq_len > 0 && static_cast<int64_t>(example.input_ids.size()) > options.max_seq_len) {
      TruncateExample(example, options.max_seq_len);
      ++dataset.truncated;
    }
    dataset.examples.push_back(std::move(example));
  });
  ThrowIfProblems(path, std::move(report.issues), report.total_issues, report.examples);
  dataset.label_counts = std::move(report.label_counts);
  return dataset;
}

}  // namespace shardtune
