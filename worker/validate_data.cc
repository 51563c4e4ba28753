#include "worker/validate_data.h"

#include "common/job_spec.h"
#include "worker/data/formats.h"
#include "worker/models/llama_config.h"

namespace shardtune {

void ValidateData(const std::string& job_path, std::ostream& out) {
  const JobSpec spec = LoadJobSpec(job_path);
  const LlamaConfig config = LlamaConfig::Load(spec.model.path);
  const JobDataOptions data = DataOptionsFor(spec, config.vocab_size, config.eos_token_ids);
  if (spec.data.format == DataFormat::kChat || spec.data.format == DataFormat::kShareGpt)
    out << data.template_note << "\n";

  auto report = [&](const std::string& role, const std::string& path) {
    const DataSummary s = Summarize(ReadDataset(path, data.options));
    out << fmt::format("{} {}: {} examples, {} tokens ({} trained), longest {} tokens\n", role, path, s.examples,
                       s.tokens, s.target_tokens, s.longest);
    if (s.truncated > 0) {
      out << fmt::format("  warning: {} examples exceed data.max_seq_len {} and will be truncated\n", s.truncated,
                         spec.data.max_seq_len);
    }
    if (s.without_targets > 0) out << fmt::format("  warning: {} examples have no trained tokens\n", s.without_targets);
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
