#include "worker/validate_data.h"

#include <algorithm>
#include <climits>

#include "common/job_spec.h"
#include "common/model_config.h"
#include "worker/data/formats.h"

namespace shardtune {

void ValidateData(const std::string& job_path, std::ostream& out) {
  const JobSpec spec = LoadJobSpec(job_path);
  const ModelConfig config = ModelConfig::Load(spec.model.path);
  const JobDataOptions data = DataOptionsFor(spec, config.vocab_size(), config.eos_token_ids());
  if (spec.data.format == DataFormat::kChat || spec.data.format == DataFormat::kShareGpt)
    out << data.template_note << "\n";

  auto report = [&](const std::string& role, const std::string& path) {
    const TokenDataset dataset = ReadDataset(path, data.options);
    const DataSummary s = Summarize(dataset);
    out << fmt::format("{} {}: {} examples, {} tokens ({} trained), longest {} tokens\n", role, path, s.examples,
                       s.tokens, s.target_tokens, s.longest);
    if (s.truncated > 0) {
      out << fmt::format("  warning: {} examples exceed data.max_seq_len {} and will be truncated\n", s.truncated,
                         spec.data.max_seq_len);
    }
    if (s.without_targets > 0 && spec.data.format != DataFormat::kClassification) {
      out << fmt::format("  warning: {} examples have no trained tokens\n", s.without_targets);
    }
    if (!dataset.label_names.empty()) {
      std::string counts;
      int64_t most = 0, least = INT64_MAX;
      for (size_t i = 0; i < dataset.label_names.size(); ++i) {
        counts += fmt::format("{}{} {}", i ? ", " : "", dataset.label_names[i], dataset.label_counts[i]);
        most = std::max(most, dataset.label_counts[i]);
        least = std::min(least, dataset.label_counts[i]);
      }
      out << "  labels: " << counts << "\n";
      // Keep classes balanced: flag a label seen more than 3x as often as another.
      if (spec.data.format == DataFormat::kClassification && most > 3 * least) {
        out << fmt::format("  warning: unbalanced classes: the most frequent label occurs {} times, the least {}\n",
                           most, least);
      }
    }
    return s;
  };
  const DataSummary train = report("train", spec.data.train);
  if (!spec.data.validation.empty()) report("validation", spec.data.validation);
  const int64_t ranks = spec.resources.world_size();
  const int64_t global = spec.GlobalBatchSize(ranks);
  out << fmt::format("per epoch: about {} tokens, {} steps of {} examples{}\n", train.tokens, train.examples / global,
                     global, spec.data.validation_split > 0 ? " (before the validation split)" : "");
  out << "ok\n";
}

}  // namespace shardtune
