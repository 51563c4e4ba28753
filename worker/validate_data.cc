#include "worker/validate_data.h"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <map>

#include "common/job_spec.h"
#include "common/model_config.h"
#include "common/run_dir.h"
#include "common/storage_roots.h"
#include "common/text_augmentation.h"
#include "worker/data/example_selection.h"
#include "worker/data/formats.h"
#include "worker/data/record_texts.h"
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

// What data.balance: oversample and data.augment add to the task's training examples, as the
// trainer makes them (trainer_data.cc): "balance_adds" and "augment_adds" in its file report.
void AddBalanceAndAugmentation(const JobSpec& spec, const TaskSpec& task, uint64_t seed, std::vector<int64_t> train,
                               json& report) {
  const bool oversample = spec.data.balance == BalanceMode::kOversample;
  if (!oversample && spec.data.augment.copies == 0) return;
  if (oversample) {
    std::map<std::string, int64_t> ids;  // a class id for each label, as written
    std::vector<int64_t> classes;
    for (const json& record : ReadRecords(task.train)) {
      const auto label = record.is_object() ? record.find("label") : record.end();
      classes.push_back(label == record.end() ? -1 : ids.emplace(label->dump(), ids.size()).first->second);
    }
    const size_t before = train.size();
    train = Oversampled(train, classes, seed);
    report["balance_adds"] = static_cast<int64_t>(train.size() - before);
  }
  if (spec.data.augment.copies > 0) {
    AugmentOptions augment = spec.data.augment;
    augment.seed = spec.training.seed;
    const std::filesystem::path wordnet = Synonyms::DefaultDir();
    Synonyms synonyms;
    if (std::filesystem::exists(wordnet / "data.noun")) {
      synonyms = Synonyms::Load(wordnet);
    } else {
      augment.synonym_replacement = augment.random_insertion = 0;
    }
    const std::string records = AugmentedRecords(task.train, task.format, train, augment, synonyms);
    report["augment_adds"] = static_cast<int64_t>(std::count(records.begin(), records.end(), '\n'));
  }
}

constexpr size_t kListed = 20;  // duplicate and leak pairs listed per file (all are counted)

// Duplicates within a task's training file and copies of its validation examples there, as the
// job's data.dedup finds them, added to the task's training file report; the job's selection.
void AddDuplicateFindings(const JobSpec& spec, const TaskSpec& task, uint64_t seed, json& train, json* validation) {
  const RecordTexts train_texts = ReadRecordTexts(task.train, task.format);
  RecordTexts held_texts;
  SelectionInputs in;
  in.train_size = static_cast<int64_t>(train_texts.texts.size());
  in.train_texts = &train_texts.texts;
  in.validation_split = spec.data.validation_split;
  in.seed = seed;
  in.dedup = spec.data.dedup;
  in.find_duplicates = true;
  if (validation != nullptr) {
    held_texts = ReadRecordTexts(task.validation, task.format);
    in.validation_size = static_cast<int64_t>(held_texts.texts.size());
    in.validation_texts = &held_texts.texts;
  }
  const TaskSelection selection = SelectExamples(in);
  const DedupFindings& d = selection.dedup;
  const RecordTexts& held = validation != nullptr ? held_texts : train_texts;
  const auto line = [](const RecordTexts& texts, int64_t i) { return texts.lines[static_cast<size_t>(i)]; };
  json duplicates = {{"exact", d.exact}, {"near", d.near}, {"pairs", json::array()}};
  for (size_t k = 0; k < d.duplicates.size() && k < kListed; ++k) {
    const DuplicatePair& p = d.duplicates[k];
    duplicates["pairs"].push_back({{"line", line(train_texts, p.index)},
                                   {"duplicate_of_line", line(train_texts, p.of)},
                                   {"kind", ToString(p.kind)},
                                   {"similarity", p.similarity}});
  }
  json copies = json::array();
  for (size_t k = 0; k < d.copies.size() && k < kListed; ++k) {
    const DuplicatePair& p = d.copies[k];
    copies.push_back({{"line", line(train_texts, p.index)},
                      {"validation_file", validation != nullptr ? task.validation : task.train},
                      {"validation_line", line(held, p.of)},
                      {"kind", ToString(p.kind)},
                      {"similarity", p.similarity}});
  }
  train["duplicates"] = duplicates;
  train["leaked"] = d.leaked;
  train["leaks"] = copies;
  train["dedup_removes"] = d.removed_duplicates + d.removed_copies;
  if (d.leaked > 0) {
    train["warnings"].push_back(fmt::format(
        "{} validation examples have exact or near copies among the training examples, so validation overstates the "
        "model{}",
        d.leaked, spec.data.dedup.mode == DedupMode::kNone ? " (data.dedup: near removes the training copies)" : ""));
  }
  if (validation != nullptr) (*validation)["leaked"] = d.leaked;
  AddBalanceAndAugmentation(spec, task, seed, selection.train, train);
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
  int64_t train_tokens = 0, train_examples = 0, exact = 0, near = 0, leaked = 0, removes = 0, balance_adds = 0,
          augment_adds = 0;
  std::map<std::string, int64_t> label_counts;
  json labels = json::array();
  for (size_t t = 0; t < sources.size(); ++t) {
    const TaskSpec& task = sources[t];
    FormatOptions options = data.options;
    options.format = task.format;
    if (!spec.model.labels.empty()) options.label_names = spec.model.labels;
    json train = FileReport(spec, data, options, cache_dir, task.train);
    train_tokens += train["tokens"].get<int64_t>();
    train_examples += train["examples"].get<int64_t>();
    train["role"] = "train";
    if (!task.name.empty()) train["task"] = task.name;
    json validation;
    if (!task.validation.empty()) {
      validation = FileReport(spec, data, options, cache_dir, task.validation);
      validation["role"] = "validation";
      if (!task.name.empty()) validation["task"] = task.name;
    }
    // The seed of the task's validation split, as the trainer draws it.
    AddDuplicateFindings(spec, task, spec.training.seed + t, train, task.validation.empty() ? nullptr : &validation);
    exact += train["duplicates"]["exact"].get<int64_t>();
    near += train["duplicates"]["near"].get<int64_t>();
    leaked += train["leaked"].get<int64_t>();
    removes += train["dedup_removes"].get<int64_t>();
    balance_adds += train.value("balance_adds", int64_t{0});
    augment_adds += train.value("augment_adds", int64_t{0});
    for (const json& label : train.value("labels", json::array())) {
      const std::string name = label["name"].get<std::string>();
      if (!label_counts.count(name)) labels.push_back(name);
      label_counts[name] += label["count"].get<int64_t>();
    }
    report["files"].push_back(train);
    if (!validation.is_null()) report["files"].push_back(validation);
  }
  // The training data's totals, for scripts (the files' entries have each file's).
  report["examples"] = train_examples;
  report["tokens"] = train_tokens;
  json label_list = json::array();
  for (const json& name : labels)
    label_list.push_back({{"name", name}, {"count", label_counts[name.get<std::string>()]}});
  report["labels"] = label_list;
  report["problems"] = json::array();
  report["duplicates"] = {{"exact", exact}, {"near", near}};
  report["leaked"] = leaked;
  const DataSpec::Dedup& dedup = spec.data.dedup;
  report["dedup"] = {{"mode", ToString(dedup.mode)},
                     {"threshold", dedup.similarity.threshold},
                     {"shingle", ToString(dedup.similarity.unit)},
                     {"ngram", dedup.similarity.ngram},
                     {"removes", removes}};
  report["balance"] = {{"mode", ToString(spec.data.balance)}, {"adds", balance_adds}};
  report["augment"] = {{"copies", spec.data.augment.copies}, {"adds", augment_adds}};
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
    if (file.contains("duplicates")) {
      const json& d = file["duplicates"];
      text += fmt::format("  duplicates: {} exact, {} near", d["exact"].get<int64_t>(), d["near"].get<int64_t>());
      if (!d["pairs"].empty()) {
        text += fmt::format(" (e.g. line {} copies line {})", d["pairs"][0]["line"].get<int64_t>(),
                            d["pairs"][0]["duplicate_of_line"].get<int64_t>());
      }
      text += "\n";
      if (!file["leaks"].empty()) {
        const json& l = file["leaks"][0];
        text += fmt::format("  leakage: line {} copies {}:{} ({})\n", l["line"].get<int64_t>(),
                            l["validation_file"].get<std::string>(), l["validation_line"].get<int64_t>(),
                            l["kind"].get<std::string>());
      }
    }
    for (const json& warning : file["warnings"]) text += "  warning: " + warning.get<std::string>() + "\n";
  }
  const json& epoch = report["per_epoch"];
  text += fmt::format("per epoch: about {} tokens, {} steps of {} examples{}\n", epoch["tokens"].get<int64_t>(),
                      epoch["steps"].get<int64_t>(), epoch["global_batch"].get<int64_t>(),
                      epoch["before_validation_split"].get<bool>() ? " (before the validation split)" : "");
  const json& dedup = report["dedup"];
  if (dedup["mode"] != "none") {
    text += fmt::format("data.dedup {} removes {} training examples\n", dedup["mode"].get<std::string>(),
                        dedup["removes"].get<int64_t>());
  }
  if (report["balance"]["mode"] == "oversample") {
    text += fmt::format("data.balance oversample adds {} training examples (repeats)\n",
                        report["balance"]["adds"].get<int64_t>());
  }
  if (report["augment"]["copies"].get<int64_t>() > 0) {
    text += fmt::format("data.augment adds {} new training examples\n", report["augment"]["adds"].get<int64_t>());
  }
  return text + "ok\n";
}

}  // namespace shardtune
