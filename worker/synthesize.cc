#include "worker/synthesize.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <random>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/generation_metrics.h"
#include "common/near_duplicates.h"
#include "common/trim.h"
#include "worker/data/record_texts.h"
#include "worker/data/tokenizer/tokenizer.h"
#include "worker/generate.h"
#include "worker/inference_model.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The fields each format's template may use; all but alpaca's input must be non-empty.
const std::vector<std::string>& FieldsOf(DataFormat format) {
  static const std::map<DataFormat, std::vector<std::string>> kFields = {
      {DataFormat::kAlpaca, {"instruction", "input", "output"}},
      {DataFormat::kChat, {"user", "assistant"}},
      {DataFormat::kClassification, {"text", "label"}},
      {DataFormat::kCompletion, {"prompt", "completion"}}};
  const auto it = kFields.find(format);
  if (it == kFields.end()) {
    Fail(ErrorCode::kInvalidArgument, "--format {}: synthesize writes alpaca, chat, classification or completion data",
         ToString(format));
  }
  return it->second;
}

// A label as the template shows it: a string as it is, anything else as JSON.
std::string LabelText(const json& label) { return label.is_string() ? label.get<std::string>() : label.dump(); }

// The first user message and the assistant message after it.
std::optional<std::pair<std::string, std::string>> FirstExchange(const json& record) {
  const auto messages = record.find("messages");
  if (messages == record.end() || !messages->is_array()) return std::nullopt;
  std::optional<std::string> user;
  for (const json& m : *messages) {
    if (!m.is_object() || !m.contains("role") || !m.contains("content") || !m["content"].is_string()) continue;
    if (m["role"] == "user" && !user) user = m["content"].get<std::string>();
    if (m["role"] == "assistant" && user) return std::pair{*user, m["content"].get<std::string>()};
  }
  return std::nullopt;
}

}  // namespace

ExampleTemplate::ExampleTemplate(const std::string& text, DataFormat format) : format_(format) {
  const std::vector<std::string>& known = FieldsOf(format);
  std::string literal;
  for (size_t i = 0; i < text.size();) {
    const size_t close = text[i] == '{' ? text.find('}', i) : std::string::npos;
    const std::string name = close == std::string::npos ? "" : text.substr(i + 1, close - i - 1);
    if (close == std::string::npos || std::find(known.begin(), known.end(), name) == known.end()) {
      if (close != std::string::npos && !name.empty() && name.find_first_of("{ \n") == std::string::npos) {
        Fail(ErrorCode::kInvalidArgument, "template: {{{}}} is not a field of {} data (its fields: {})", name,
             ToString(format), fmt::format("{}", fmt::join(known, ", ")));
      }
      literal += text[i++];
      continue;
    }
    if (!fields_.empty() && literal.empty())
      Fail(ErrorCode::kInvalidArgument, "template: {{{}}} follows {{{}}} with nothing between them", name,
           fields_.back());
    literals_.push_back(literal);
    literal.clear();
    fields_.push_back(name);
    i = close + 1;
  }
  literals_.push_back(literal);
  if (fields_.empty()) Fail(ErrorCode::kInvalidArgument, "template: no {{field}} in it");
  for (const std::string& field : known) {
    const bool optional = format == DataFormat::kAlpaca && field == "input";
    if (!optional && std::find(fields_.begin(), fields_.end(), field) == fields_.end())
      Fail(ErrorCode::kInvalidArgument, "template: {} data need {{{}}}", ToString(format), field);
  }
  if (TrimWhitespace(literals_.front()).empty())
    Fail(ErrorCode::kInvalidArgument,
         "template: it must open with text before its first field (where an example starts)");
}

ExampleTemplate ExampleTemplate::Default(DataFormat format) {
  switch (format) {
    case DataFormat::kAlpaca:
      return ExampleTemplate("Instruction: {instruction}\nInput: {input}\nOutput: {output}\n", format);
    case DataFormat::kChat:
      return ExampleTemplate("User: {user}\nAssistant: {assistant}\n", format);
    case DataFormat::kClassification:
      return ExampleTemplate("Text: {text}\nLabel: {label}\n", format);
    case DataFormat::kCompletion:
      return ExampleTemplate("Prompt: {prompt}\nCompletion: {completion}\n", format);
    default:
      FieldsOf(format);  // throws
      return ExampleTemplate("", format);
  }
}

std::optional<std::string> ExampleTemplate::Render(const json& record) const {
  if (!record.is_object()) return std::nullopt;
  std::map<std::string, std::string> values;
  if (format_ == DataFormat::kChat) {
    const auto exchange = FirstExchange(record);
    if (!exchange) return std::nullopt;
    values = {{"user", exchange->first}, {"assistant", exchange->second}};
  } else {
    for (const std::string& field : FieldsOf(format_)) {
      const auto it = record.find(field);
      if (it == record.end()) continue;
      values[field] = field == "label" ? LabelText(*it) : it->is_string() ? it->get<std::string>() : it->dump();
    }
  }
  std::string text;
  for (size_t i = 0; i < fields_.size(); ++i) text += literals_[i] + values[fields_[i]];
  return text + literals_.back();
}

std::optional<json> ExampleTemplate::Parse(const std::string& continuation) const {
  // The example ends where the teacher starts the next one, if it does.
  std::string text = continuation;
  const std::string next = "\n" + TrimWhitespace(literals_.front());
  if (const size_t at = text.find(next); at != std::string::npos) text.resize(at);
  std::map<std::string, std::string> values;
  size_t at = 0;
  for (size_t i = 0; i < fields_.size(); ++i) {
    const bool last = i + 1 == fields_.size();
    const std::string end = last ? TrimWhitespace(literals_.back()) : literals_[i + 1];
    size_t stop = text.size();
    if (!end.empty()) {
      stop = last ? text.rfind(end) : text.find(end, at);
      if (stop == std::string::npos || stop < at) {
        if (!last) return std::nullopt;
        stop = text.size();  // the example's closing text may be left out
      }
    }
    values[fields_[i]] = TrimWhitespace(text.substr(at, stop - at));
    at = stop + end.size();
  }
  for (const auto& [field, value] : values) {
    const bool optional = format_ == DataFormat::kAlpaca && field == "input";
    if (!optional && value.empty()) return std::nullopt;
  }
  switch (format_) {
    case DataFormat::kChat:
      return json({{"messages",
                    {{{"role", "user"}, {"content", values["user"]}},
                     {{"role", "assistant"}, {"content", values["assistant"]}}}}});
    case DataFormat::kAlpaca: {
      json record = {{"instruction", values["instruction"]}, {"output", values["output"]}};
      if (!values["input"].empty()) record["input"] = values["input"];
      return record;
    }
    case DataFormat::kClassification:
      return json({{"text", values["text"]}, {"label", values["label"]}});
    default:
      return json({{"prompt", values["prompt"]}, {"completion", values["completion"]}});
  }
}

namespace {

// Strings gathered from every rank to rank 0 (in rank order); other ranks get nothing.
std::vector<std::string> GatherStrings(Communicator& world, const std::vector<std::string>& mine, int64_t round) {
  std::string packed;
  for (const std::string& s : mine) packed += json(s).dump() + "\n";
  at::Tensor size = at::full({1}, static_cast<int64_t>(packed.size()), at::kLong);
  at::Tensor sizes = at::zeros({world.size()}, at::kLong);
  world.AllGather(size, sizes, CollectiveTag{"synthesize sizes", round})->Wait();
  // Bytes travel as int64 words (the collectives' element types), padded to the longest part.
  const int64_t words = (sizes.max().item<int64_t>() + 7) / 8;
  at::Tensor bytes = at::zeros({words}, at::kLong);
  std::memcpy(bytes.data_ptr<int64_t>(), packed.data(), packed.size());
  at::Tensor all = at::zeros({world.size() * words}, at::kLong);
  world.AllGather(bytes, all, CollectiveTag{"synthesize candidates", round})->Wait();
  std::vector<std::string> out;
  if (world.rank() != 0) return out;
  for (int r = 0; r < world.size(); ++r) {
    const std::string part(reinterpret_cast<const char*>(all.data_ptr<int64_t>() + r * words),
                           static_cast<size_t>(sizes[r].item<int64_t>()));
    size_t begin = 0;
    for (size_t end = part.find('\n'); end != std::string::npos; begin = end + 1, end = part.find('\n', begin))
      out.push_back(json::parse(part.substr(begin, end - begin)).get<std::string>());
  }
  return out;
}

}  // namespace

SynthesisFilter::SynthesisFilter(const SynthesizeOptions& options, DataFormat format, const ExampleTemplate& shape,
                                 const std::vector<std::string>& seed_texts, std::map<std::string, json> labels)
    : options_(options),
      format_(format),
      shape_(shape),
      seed_texts_(seed_texts),
      labels_(std::move(labels)),
      index_([&] {
        NearDuplicateOptions dedup;
        dedup.threshold = options.dedup_threshold;
        return dedup;
      }()) {
  for (size_t i = 0; i < seed_texts_.size(); ++i)
    index_.Add(-1 - static_cast<int64_t>(i), index_.Fingerprinted(seed_texts_[i]));
  for (const char* name :
       {"unparsed", "unknown_label", "too_short", "too_long", "duplicate", "near_duplicate", "rouge_l"})
    removed_[name] = 0;
}

std::optional<json> SynthesisFilter::Admit(const std::string& continuation) {
  const auto remove = [this](const char* filter) {
    ++removed_[filter];
    return std::nullopt;
  };
  std::optional<json> record = shape_.Parse(continuation);
  if (!record) return remove("unparsed");
  if (format_ == DataFormat::kClassification) {
    const auto label = labels_.find(LabelText((*record)["label"]));
    if (label == labels_.end()) return remove("unknown_label");
    (*record)["label"] = label->second;  // as the seeds give it (a name or an id)
  }
  const std::string text = RecordText(*record, format_);
  const auto length = static_cast<int64_t>(text.size());
  if (length < options_.min_chars) return remove("too_short");
  if (length > options_.max_chars) return remove("too_long");
  const NearDuplicateIndex::Fingerprint fingerprint = index_.Fingerprinted(text);
  const DuplicateMatch match = index_.Find(fingerprint);
  if (match.kind == DuplicateMatch::Kind::kExact) return remove("duplicate");
  if (match.kind == DuplicateMatch::Kind::kNear) return remove("near_duplicate");
  double closest = 0.0;
  for (const std::string& seed : seed_texts_) closest = std::max(closest, RougeL(seed, text).fmeasure);
  if (closest >= options_.rouge_threshold) return remove("rouge_l");
  index_.Add(admitted_++, fingerprint);
  return record;
}

json Synthesize(const SynthesizeOptions& o, Communicator& world) {
  const std::optional<DataFormat> format = DataFormatNamed(o.format);
  if (!format) Fail(ErrorCode::kInvalidArgument, "--format {}: not a data format", o.format);
  const ExampleTemplate shape =
      o.template_file.empty() ? ExampleTemplate::Default(*format) : ExampleTemplate(ReadFile(o.template_file), *format);
  if (o.shots < 1 || o.num < 1 || o.batch_size < 1)
    Fail(ErrorCode::kInvalidArgument, "--num, --shots and --batch-size must be at least 1");

  // The seeds: every record the template can show, each also indexed for the duplicate and
  // ROUGE-L filters.
  std::vector<std::string> seed_texts;  // every seed's text (as data.dedup reads it), shown or not
  std::vector<std::string> shown;
  std::map<std::string, json> labels;  // classification: each seed label as the template shows it
  for (const json& record : ReadRecords(o.seed_data)) {
    seed_texts.push_back(RecordText(record, *format));
    const std::optional<std::string> rendered = shape.Render(record);
    if (!rendered) continue;
    if (*format == DataFormat::kClassification && record.contains("label"))
      labels.emplace(LabelText(record["label"]), record["label"]);
    shown.push_back(*rendered);
  }
  if (shown.size() < static_cast<size_t>(o.shots)) {
    Fail(ErrorCode::kInvalidArgument,
         "{}: {} seed example{} the template can show; --shots {} needs at least that many", o.seed_data.string(),
         shown.size(), shown.size() == 1 ? "" : "s", o.shots);
  }

  const LoadedModel teacher = LoadModelForInference(o.model, o.adapter);
  if (!teacher.model) Fail(ErrorCode::kInvalidArgument, "{}: synthesize needs a language model", o.model.string());
  const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::Load(o.model);
  GenerateOptions sampling;
  sampling.max_new_tokens = o.max_new_tokens;
  sampling.temperature = o.temperature;
  sampling.top_p = o.top_p;

  SynthesisFilter filter(o, *format, shape, seed_texts, labels);

  const int64_t limit = o.max_candidates > 0 ? o.max_candidates : 4 * o.num;
  const int64_t per_round = o.batch_size * world.size();
  std::string out;
  int64_t kept = 0, candidates = 0, generated_tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t round = 0; kept < o.num && candidates < limit; ++round) {
    // This rank's candidates of the round: indices round * per_round + rank * batch + j, each
    // seeded by its index (its shots and its sampling).
    std::vector<std::vector<int64_t>> prompts;
    std::vector<uint64_t> seeds_of;
    for (int64_t j = 0; j < o.batch_size; ++j) {
      const int64_t candidate = round * per_round + world.rank() * o.batch_size + j;
      if (candidate >= limit) break;
      std::mt19937_64 rng(o.seed * 1000003ULL + static_cast<uint64_t>(candidate));
      std::vector<size_t> order(shown.size());
      std::iota(order.begin(), order.end(), size_t{0});
      std::shuffle(order.begin(), order.end(), rng);
      std::string prompt;
      for (int64_t s = 0; s < o.shots; ++s) prompt += shown[order[static_cast<size_t>(s)]] + "\n";
      prompt += shape.Opening();
      prompts.push_back(tokenizer->Encode(prompt, /*add_special_tokens=*/true));
      seeds_of.push_back(rng());
    }
    std::vector<std::string> continuations;
    int64_t tokens = 0;
    for (const std::vector<int64_t>& answer : GenerateBatch(*teacher.model, prompts, sampling, seeds_of)) {
      tokens += static_cast<int64_t>(answer.size());
      continuations.push_back(tokenizer->Decode(WithoutEos(answer, teacher.config.eos_token_ids()), true));
    }
    at::Tensor total = at::full({1}, static_cast<double>(tokens), at::kDouble);
    AllReduceSumNow(world, total, CollectiveTag{"synthesize tokens", round});
    generated_tokens += static_cast<int64_t>(total.item<double>());
    // Rank 0 filters the round's candidates in candidate order, then tells every rank whether to go on.
    const std::vector<std::string> all = GatherStrings(world, continuations, round);
    for (const std::string& continuation : all) {
      if (kept >= o.num) break;
      ++candidates;
      const std::optional<json> record = filter.Admit(continuation);
      if (!record) continue;
      ++kept;
      out += record->dump() + "\n";
    }
    at::Tensor go_on = at::full({2}, 0.0, at::kDouble);
    if (world.rank() == 0) {
      go_on[0] = static_cast<double>(kept);
      go_on[1] = static_cast<double>(candidates);
    }
    world.Broadcast(go_on, 0, CollectiveTag{"synthesize progress", round})->Wait();
    kept = static_cast<int64_t>(go_on[0].item<double>());
    candidates = static_cast<int64_t>(go_on[1].item<double>());
    if (world.rank() == 0) spdlog::info("synthesize: {} of {} kept after {} candidates", kept, o.num, candidates);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (world.rank() == 0) WriteFileAtomic(o.out, out);
  json report = {{"out", o.out.string()},
                 {"candidates", candidates},
                 {"kept", kept},
                 {"removed", filter.removed()},
                 {"generated_tokens", generated_tokens},
                 {"seconds", seconds},
                 {"tokens_per_s", seconds > 0 ? static_cast<double>(generated_tokens) / seconds : 0.0},
                 {"ranks", world.size()}};
  if (kept < o.num && world.rank() == 0) {  // the counts are global: one warning, not one per rank
    spdlog::warn(
        "synthesize: only {} of the {} examples asked for passed the filters in {} candidates (--max-candidates)", kept,
        o.num, candidates);
  }
  return report;
}

}  // namespace shardtune
