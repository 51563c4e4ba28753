#include "worker/validate_data.h"

#include <fmt/format.h>

#include <algorithm>
#include <climits>

#include "common/job_spec.h"
#include "common/model_config.h"
#include "common/run_dir.h"
#include "common/storage_roots.h"
#include "worker/data/formats.h"
#include "worker/data/token_cache.h"

namespace shardtune {

namespace {

using json = nlohmann::json;

// One data file's entry of the report, its token cache built or reused in `cache_dir`.
json FileReport(const JobSpec& spec, const JobDataOptions& data, const FormatOptions& options,
                const std::filesystem::path& cache_dir, const std::string& path) {
  SoloGroup alone;
  const TokenCacheResult cached = OpenOrBuildTokenCache({path, options, data.tokenizer_source, cache_dir}, alone);
  const TokenCache& cache = *cached.cache;
  DataSummary s;
  for (int64_t i = 0; i < cache.size(); ++i) AddToSummary(s, cache.Read(i, spec.data.max_seq_len));
  s.truncated = cache.LongerThan(spec.data.max_seq_len);
  json file = {{"path", path},
               {"examples", s.examples},
               {"tokens", s.tokens},
               {"target_tokens", s.target_tokens},
               {"longest", s.longest},
               {"truncated", s.truncated},
               {"without_targets", s.without_targets},
               {"token_cache", {{"path", cache.path().string()}, {"built", cached.built}}},
               {"warnings", json::array()}};
  if (s.truncated > 0) {
    file["warnings"].push_back(fmt::format("{} examples exceed data.max_seq_len {} and will be truncated", s.truncated,
                                           spec.data.max_seq_len));
  }
  if (s.without_targets > 0 && options.format != DataFormat::kClassification)
    file["warnings"].push_back(fmt::format("{} examples have no trained tokens", s.without_targets));
  const std::vector<std::string>& names = cache.label_names();
  if (!names.empty()) {
    json labels = json::array();  // in id order
    int64_t most = 0, least = INT64_MAX;
    for (size_t i = 0; i < names.size(); ++i) {
      const int64_t count = cache.label_counts()[i];
      labels.push_back({{"name", names[i]}, {"count", count}});
      most = std::max(most, count);
      least = std::min(least, count);
    }
    file["labels"] = labels;
    // Keep classes balanced: flag a label seen more than 3x as often as another.
    if (options.format == DataFormat::kClassification && most > 3 * least) {
      file["warnings"].push_back(
          fmt::format("unbalanced classes: the most frequent label occurs {} times, the least {}", most, least));
    }
  }
  return file;
}

}  // namespace

json ValidateData(const std::string& job_path) {
  const JobSpec spec = LoadJobSpecWithinGrantedRoots(job_path);  // the storage roots before anything opens a file
  const ModelConfig config = ModelConfig::Load(spec.model.path);
  // As training reads them (Trainer::LoadData): one source per task, each in its own format.
  std::vector<TaskSpec> sources = spec.data.tasks;
  if (sources.empty()) sources.push_back(TaskSpec{"", spec.data.train, spec.data.validation, spec.data.format, 1.0});
  JobSpec probe = spec;  // the tokenizer is needed when any source is text
  for (const TaskSpec& task : sources) {
    if (task.format != DataFormat::kTokens) probe.data.format = task.format;
  }
  const JobDataOptions data = DataOptionsFor(probe, config.vocab_size(), config.eos_token_ids());
  json report = {{"job", spec.name}, {"files", json::array()}};
  if (probe.data.format == DataFormat::kChat || probe.data.format == DataFormat::kShareGpt)
    report["template_note"] = data.template_note;

  const std::filesystem::path cache_dir =
      spec.data.cache_dir.empty() ? RunDir(spec.output.dir).Cache() : std::filesystem::path(spec.data.cache_dir);
  int64_t train_tokens = 0, train_examples = 0;
  for (const TaskSpec& task : sources) {
    FormatOptions options = data.options;
    options.format = task.format;
    if (!spec.model.labels.empty()) options.label_names = spec.model.labels;
    json train = FileReport(spec, data, options, cache_dir, task.train);
    train_tokens += train["tokens"].get<int64_t>();
    train_examples += train["examples"].get<int64_t>();
    train["role"] = "train";
    if (!task.name.empty()) train["task"] = task.name;
    report["files"].push_back(train);
    if (task.validation.empty()) continue;
    json validation = FileReport(spec, data, options, cache_dir, task.validation);
    validation["role"] = "validation";
    if (!task.name.empty()) validation["task"] = task.name;
    report["files"].push_back(validation);
  }
  const int64_t global = spec.GlobalBatchSize(spec.resources.world_size());
  report["per_epoch"] = {{"tokens", train_tokens},
                         {"steps", train_examples / global},
                         {"global_batch", global},
                         {"before_validation_split", spec.data.validation_split > 0}};
  report["ok"] = true;
  return report;
}

std::string ValidationText(const json& report) {
  std::string text;
  if (report.contains("template_note")) text += report["template_note"].get<std::string>() + "\n";
  for (const json& file : report["files"]) {
    const std::string task = file.contains("task") ? " (task " + file["task"].get<std::string>() + ")" : "";
    text += fmt::format("{}{} {}: {} examples, {} tokens ({} trained), longest {} tokens\n",
                        file["role"].get<std::string>(), task, file["path"].get<std::string>(),
                        file["examples"].get<int64_t>(), file["tokens"].get<int64_t>(),
                        file["target_tokens"].get<int64_t>(), file["longest"].get<int64_t>());
    text += fmt::format("  token cache: {} {}\n", file["token_cache"]["built"].get<bool>() ? "built" : "reusing",
                        file["token_cache"]["path"].get<std::string>());
    if (file.contains("labels")) {
      std::string counts;
      for (const json& label : file["labels"]) {
        counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", label["name"].get<std::string>(),
                              label["count"].get<int64_t>());
      }
      text += "  labels: " + counts + "\n";
    }
    for (const json& warning : file["warnings"]) text += "  warning: " + warning.get<std::string>() + "\n";
  }
  const json& epoch = report["per_epoch"];
  text += fmt::format("per epoch: about {} tokens, {} steps of {} examples{}\n", epoch["tokens"].get<int64_t>(),
                      epoch["steps"].get<int64_t>(), epoch["global_batch"].get<int64_t>(),
                      epoch["before_validation_split"].get<bool>() ? " (before the validation split)" : "");
  return text + "ok\n";
}

}  // namespace shardtune
