#pragma once
// `shardtune synthesize`: new training examples written by a teacher model, self-instruct style
// (Wang et al. 2023, "Self-Instruct: Aligning Language Models with Self-Generated Instructions"):
// each candidate's prompt is a few random seed examples rendered by the format's template, then
// the start of one more; the teacher's sampled continuation is read back through the same
// template into a record. Candidates are filtered, each filter counted: the record must parse
// (and a classification label be one of the seeds'), its text lie within length bounds, be no
// exact or near duplicate (common/near_duplicates.h) of a seed or of an example kept before it,
// and its ROUGE-L against the most similar seed stay below a threshold. Ranks split the
// candidates; rank 0 filters them in candidate order and writes the file.

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/near_duplicates.h"
#include "sharding/comm/communicator.h"

namespace shardtune {

// How one example of a format reads as text: literal text and {field} placeholders, e.g.
// "Text: {text}\nLabel: {label}\n". Few-shot prompts are examples rendered one after another,
// separated by a blank line; a continuation is parsed back by finding each literal in turn.
class ExampleTemplate {
 public:
  // Throws Error for a template without fields, with two fields in a row (nothing to tell where
  // one ends), or with a field the format has no place for.
  ExampleTemplate(const std::string& text, DataFormat format);
  // The default template of alpaca, chat, classification and completion data.
  static ExampleTemplate Default(DataFormat format);

  // A seed record as text: its fields (instruction/input/output; the first user and assistant
  // message; text/label; prompt/completion) in the template. nullopt for a record the template
  // cannot show (a chat without a user then assistant message).
  std::optional<std::string> Render(const nlohmann::json& record) const;
  // The start of a new example: the literal before the first field.
  const std::string& Opening() const { return literals_.front(); }
  // The example that `continuation` (generated after Opening()) holds, as a record of the format;
  // nullopt when it does not follow the template or a required field is empty.
  std::optional<nlohmann::json> Parse(const std::string& continuation) const;

 private:
  DataFormat format_;
  std::vector<std::string> literals_;  // literals_[i] precedes fields_[i]; the last one ends the example
  std::vector<std::string> fields_;
};

struct SynthesizeOptions {
  std::filesystem::path model, adapter, seed_data, out;
  std::filesystem::path template_file;  // optional: an ExampleTemplate's text
  std::string format;                   // alpaca, chat, classification or completion
  int64_t num = 100;                    // examples to write
  int64_t max_candidates = 0;           // stop after this many candidates; 0: 4 x num
  int64_t shots = 3;                    // seed examples in each prompt
  int64_t batch_size = 8;               // candidates generated together by a rank
  int64_t max_new_tokens = 256;
  double temperature = 0.8;
  double top_p = 0.95;
  uint64_t seed = 0;
  int64_t min_chars = 1, max_chars = 4000;  // bounds on a record's text (record_texts.h)
  double dedup_threshold = 0.85;            // near duplicates: Jaccard of character 5-gram sets
  double rouge_threshold = 0.7;  // ROUGE-L F against the most similar seed at or above which a candidate goes
};

// The filters, in the order they apply to each candidate (its continuation after the template's
// opening): it must parse, carry a seed's label (classification), have a text (record_texts.h)
// of min_chars to max_chars, duplicate neither a seed nor an example admitted before it exactly
// or nearly, and have a ROUGE-L F below rouge_threshold against every seed.
class SynthesisFilter {
 public:
  // `seed_texts`: every seed record's text; `labels`: classification's seed labels by the text
  // the template shows them as.
  SynthesisFilter(const SynthesizeOptions& options, DataFormat format, const ExampleTemplate& shape,
                  const std::vector<std::string>& seed_texts, std::map<std::string, nlohmann::json> labels);
  // The candidate's record if it passes every filter (it is then indexed against later ones),
  // else nullopt, counted under the filter that removed it.
  std::optional<nlohmann::json> Admit(const std::string& continuation);
  // Candidates removed by each filter: unparsed, unknown_label, too_short, too_long, duplicate,
  // near_duplicate, rouge_l.
  const std::map<std::string, int64_t>& removed() const { return removed_; }

 private:
  const SynthesizeOptions& options_;
  DataFormat format_;
  const ExampleTemplate& shape_;
  const std::vector<std::string>& seed_texts_;
  std::map<std::string, nlohmann::json> labels_;
  NearDuplicateIndex index_;
  int64_t admitted_ = 0;
  std::map<std::string, int64_t> removed_;
};

// What a run did: {"candidates", "kept", "removed": {filter: count}, "generated_tokens",
// "seconds", "tokens_per_s", "ranks", "out"}. The output is written (atomically) by rank 0.
nlohmann::json Synthesize(const SynthesizeOptions& options, Communicator& world);

}  // namespace shardtune
