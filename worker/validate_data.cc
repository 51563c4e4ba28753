#include "worker/validate_data.h"

#include <algorithm>
#include <climits>

#include "common/job_spec.h"
#include "common/model_config.h"
#include "common/run_dir.h"
#include "common/storage_roots.h"
#include "worker/data/formats.h"
#include "worker/data/token_cache.h"

namespace shardtune {

void ValidateData(const std::string& job_path, std::ostream& out) {
  const JobSpec spec = LoadJobSpecWithinGrantedRoots(job_path);  // the storage roots before anything opens a file
  const ModelConfig config = ModelConfig::Load(spec.model.path);
  const JobDataOptions data = DataOptionsFor(spec, config.vocab_size(), config.eos_token_ids());
  if (spec.data.format == DataFormat::kChat || spec.data.format == DataFormat::kShareGpt)
    out << data.template_note << "\n";

  const std::filesystem::path cache_dir =
      spec.data.cache_dir.empty() ? RunDir(spec.output.dir).Cache() : std::filesystem::path(spec.data.cache_dir);
  SoloGroup alone;
  auto report = [&](const std::string& role, const std::string& path) {
    const TokenCacheResult cached =
        OpenOrBuildTokenCache({path, data.options, data.tokenizer_source, cache_dir}, alone);
    const TokenCache& cache = *cached.cache;
    DataSummary s;
    for (int64_t i = 0; i < cache.size(); ++i) AddToSummary(s, cache.Read(i, spec.data.max_seq_len));
    s.truncated = cache.LongerThan(spec.data.max_seq_len);
    out << fmt::format("{} {}: {} examples, {} tokens ({} trained), longest {} tokens\n", role, path, s.examples,
                       s.tokens, s.target_tokens, s.longest);
    out << fmt::format("  token cache: {} {}\n", cached.built ? "built" : "reusing", cache.path().string());
    if (s.truncated > 0) {
      out << fmt::format("  warning: {} examples exceed data.max_seq_len {} and will be truncated\n", s.truncated,
                         spec.data.max_seq_len);
    }
    if (s.without_targets > 0 && spec.data.format != DataFormat::kClassification) {
      out << fmt::format("  warning: {} examples have no trained tokens\n", s.without_targets);
    }
    const std::vector<std::string>& names = cache.label_names();
    if (!names.empty()) {
      std::string counts;
      int64_t most = 0, least = INT64_MAX;
      for (size_t i = 0; i < names.size(); ++i) {
        const int64_t count = cache.label_counts()[i];
        counts += fmt::format("{}{} {}", i ? ", " : "", names[i], count);
        most = std::max(most, count);
        least = std::min(least, count);
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
