// The data a job trains on: every task's training and validation examples (tokenized, packed,
// mixed) and, each step, the global batch in the epoch's order.

#include <spdlog/spdlog.h>

#include <algorithm>
#include <functional>
#include <numeric>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/generation_metrics.h"
#include "worker/data/communicator_cache_group.h"
#include "worker/data/formats.h"
#include "worker/data/record_texts.h"
#include "worker/trainer_internal.h"

namespace shardtune {

std::shared_ptr<const TokenCache> Trainer::CachedData(const std::string& file, const JobDataOptions& job_data,
                                                      const FormatOptions& options) {
  CommunicatorCacheGroup group(world_);
  TokenCacheRequest request{
      file, options, job_data.tokenizer_source,
      spec_.data.cache_dir.empty() ? run_dir_.Cache() : std::filesystem::path(spec_.data.cache_dir)};
  const TokenCacheResult result = OpenOrBuildTokenCache(request, group);
  if (rank0_) {
    if (result.built) {
      spdlog::info("token cache: built {} ({} examples, {} tokens) in {:.1f} s on {} ranks (before: {})",
                   result.cache->path().string(), result.cache->size(), result.cache->tokens(), result.seconds,
                   world_.size(), result.reason);
    } else {
      spdlog::info("token cache: reusing {} ({} examples, {} tokens; checked in {:.1f} s)",
                   result.cache->path().string(), result.cache->size(), result.cache->tokens(), result.seconds);
    }
  }
  return result.cache;
}

TaskSelection Trainer::SelectTaskExamples(const TaskSpec& task, const TokenCache& train, const TokenCache* held,
                                          uint64_t seed) const {
  const std::string name = task.name.empty() ? "" : " (task " + task.name + ")";
  SelectionInputs in;
  in.train_size = train.size();
  in.validation_size = held ? held->size() : -1;
  in.validation_split = spec_.data.validation_split;
  in.seed = seed;
  in.dedup = spec_.data.dedup;
  RecordTexts train_texts, held_texts;
  if (in.dedup.mode != DedupMode::kNone) {
    // Every rank reads the texts and finds the same duplicates (the search is deterministic).
    const auto texts_of = [&](const std::string& file, const TokenCache& cache) {
      RecordTexts texts = ReadRecordTexts(file, task.format);
      if (static_cast<int64_t>(texts.texts.size()) != cache.size()) {
        Fail(ErrorCode::kFailedPrecondition,
             "{}: {} records, but its token cache {} holds {} examples: the file "
             "changed while the job read it",
             file, texts.texts.size(), cache.path().string(), cache.size());
      }
      return texts;
    };
    train_texts = texts_of(task.train, train);
    in.train_texts = &train_texts.texts;
    if (held) {
      held_texts = texts_of(task.validation, *held);
      in.validation_texts = &held_texts.texts;
    }
  }
  TaskSelection selection = SelectExamples(in);
  const DedupFindings& d = selection.dedup;
  if (in.dedup.mode != DedupMode::kNone && rank0_) {
    spdlog::info(
        "dedup{}: {}: removed {} of {} training examples: {} duplicates ({} exact, {} near, Jaccard >= {}) "
        "and {} copies of validation examples ({} validation examples had copies)",
        name, task.train, d.removed_duplicates + d.removed_copies, train.size(), d.removed_duplicates, d.exact, d.near,
        in.dedup.similarity.threshold, d.removed_copies, d.leaked);
  }
  if (spec_.data.balance == BalanceMode::kOversample) {
    std::vector<int64_t> classes(static_cast<size_t>(train.size()));
    for (int64_t i = 0; i < train.size(); ++i) classes[static_cast<size_t>(i)] = train.ClassOf(i);
    const size_t before = selection.train.size();
    selection.train = Oversampled(selection.train, classes, seed);
    if (rank0_) {
      spdlog::info("balance{}: oversampled {} training examples to {}, as many of each class as of the largest", name,
                   before, selection.train.size());
    }
  }
  return selection;
}

std::shared_ptr<const TokenCache> Trainer::AugmentedData(const TaskSpec& task, const std::vector<int64_t>& documents,
                                                         const JobDataOptions& job_data, const FormatOptions& options) {
  AugmentOptions augment = spec_.data.augment;
  augment.seed = spec_.training.seed;
  // The copies must be the same on every rank: synonyms are used only when every rank has WordNet.
  const std::filesystem::path wordnet = Synonyms::DefaultDir();
  const bool here = std::filesystem::exists(wordnet / "data.noun");
  at::Tensor have = at::tensor({here ? 1.0 : 0.0}, at::TensorOptions().dtype(at::kDouble)).to(device_);
  AllReduceSumNow(world_, have, CollectiveTag{"augment: wordnet"});
  Synonyms synonyms;
  if (have.cpu().item<double>() == static_cast<double>(world_.size())) {
    synonyms = Synonyms::Load(wordnet);
  } else {
    if (rank0_) {
      spdlog::warn(
          "augment: WordNet ({}; Debian: apt install wordnet-base) is missing on {} rank(s): synonym "
          "replacement and insertion are skipped",
          wordnet.string(), world_.size() - static_cast<int64_t>(have.cpu().item<double>()));
    }
    augment.synonym_replacement = augment.random_insertion = 0;
  }
  // Every rank makes the same records (a function of the data, the options and the seed), so the
  // file's name, from their hash, is the same on every rank; rank 0 writes it, and every rank
  // learns whether that worked before any reads it.
  const std::string records = AugmentedRecords(task.train, task.format, documents, augment, synonyms);
  const std::filesystem::path dir =
      spec_.data.cache_dir.empty() ? run_dir_.Cache() : std::filesystem::path(spec_.data.cache_dir);
  const std::filesystem::path file =
      dir / fmt::format("{}-augmented-{:016x}.jsonl", std::filesystem::path(task.train).stem().string(),
                        std::hash<std::string>{}(records));
  std::string problem;
  if (rank0_ && !records.empty() && !std::filesystem::exists(file)) {
    try {
      WriteFileAtomic(file, records);
    } catch (const std::exception& e) {
      problem = e.what();
    }
  }
  at::Tensor failed = at::tensor({problem.empty() ? 0.0 : 1.0}, at::TensorOptions().dtype(at::kDouble)).to(device_);
  AllReduceSumNow(world_, failed, CollectiveTag{"augment: written"});
  if (failed.cpu().item<double>() > 0) {
    Fail(ErrorCode::kInternal, "augment: rank 0 could not write {}{}", file.string(),
         problem.empty() ? "" : ": " + problem);
  }
  if (records.empty()) {
    if (rank0_) spdlog::warn("augment: no operation changed any training example: no new examples");
    return nullptr;
  }
  const std::shared_ptr<const TokenCache> cache = CachedData(file.string(), job_data, options);
  if (rank0_) {
    spdlog::info("augment: {} new examples, up to {} for each of {} training examples ({})", cache->size(),
                 augment.copies, documents.size(), file.string());
  }
  return cache;
}

void Trainer::UseClassWeights(const TokenCache& train, const std::vector<int64_t>& documents) {
  // Classification: the classes of the training documents used; NER: the tags of the file.
  std::vector<int64_t> counts = train.label_counts();
  if (config_.task() == ModelTask::kSequenceClassification) {
    std::fill(counts.begin(), counts.end(), 0);
    for (const int64_t d : documents) {
      const int64_t c = train.ClassOf(d);
      if (c >= 0) ++counts[static_cast<size_t>(c)];
    }
  }
  const std::vector<double> weights = BalancedClassWeights(counts);
  class_weights_ = at::tensor(std::vector<float>(weights.begin(), weights.end()), at::kFloat);
  if (rank0_) {
    std::string list;
    for (size_t c = 0; c < weights.size(); ++c) {
      list += fmt::format("{}{} {:.4g}", list.empty() ? "" : ", ", c < label_names_.size() ? label_names_[c] : "?",
                          weights[c]);
    }
    spdlog::info("balance: class weights in the loss: {}", list);
  }
}

void Trainer::LoadData() {
  // One source per task; a single-task job is one unnamed task.
  std::vector<TaskSpec> sources = spec_.data.tasks;
  if (sources.empty()) sources.push_back(TaskSpec{"", spec_.data.train, spec_.data.validation, spec_.data.format, 1.0});
  JobSpec probe = spec_;  // the tokenizer is needed when any source is text
  probe.data.max_seq_len = max_seq_len_;
  for (const TaskSpec& task : sources) {
    if (task.format != DataFormat::kTokens) probe.data.format = task.format;
  }
  JobDataOptions job_data = DataOptionsFor(probe, config_.vocab_size(), config_.eos_token_ids());
  tokenizer_ = std::move(job_data.tokenizer);
  if (rank0_ && !job_data.template_note.empty()) spdlog::info("{}", job_data.template_note);

  const bool runs_tests =
      !spec_.evaluation.generate.metrics.empty() &&
      GenerationScorer(spec_.evaluation.generate.metrics, spec_.evaluation.generate.num_samples).RunsTests();
  std::vector<int64_t> sizes;
  std::vector<double> weights;
  for (size_t t = 0; t < sources.size(); ++t) {
    const TaskSpec& task = sources[t];
    FormatOptions options = job_data.options;
    options.format = task.format;
    if (!spec_.model.labels.empty()) options.label_names = spec_.model.labels;
    const std::shared_ptr<const TokenCache> train = CachedData(task.train, job_data, options);
    // Validation uses the training data's classes, whatever subset of them it holds.
    options.label_names = label_names_ = train->label_names();
    const int64_t truncated = train->LongerThan(max_seq_len_);
    if (truncated > 0 && rank0_) {
      spdlog::warn("{}: {} examples are longer than {} tokens and were truncated", task.train, truncated, max_seq_len_);
    }
    std::shared_ptr<const TokenCache> held;
    if (!task.validation.empty()) held = CachedData(task.validation, job_data, options);
    TaskSelection selection = SelectTaskExamples(task, *train, held.get(), spec_.training.seed + t);
    if (runs_tests) {  // the validation documents are the file's records, in order
      const std::vector<CodeTests> tests = ReadCodeTests(held ? task.validation : task.train);
      for (int64_t d : selection.validation) validation_tests_.push_back(tests.at(static_cast<size_t>(d)));
    }
    validation_.Add(held ? held : train, std::move(selection.validation), max_seq_len_, /*pack=*/false);
    std::vector<int64_t> kept = std::move(selection.train);
    if (spec_.data.balance == BalanceMode::kClassWeights) UseClassWeights(*train, kept);
    const std::shared_ptr<const TokenCache> augmented =
        spec_.data.augment.copies > 0 ? AugmentedData(task, kept, job_data, options) : nullptr;
    const size_t documents = kept.size();
    // Packed within the task: task ranges stay whole (the augmented examples are the task's too).
    int64_t examples = train_.Add(train, std::move(kept), max_seq_len_, spec_.data.packing);
    if (augmented) {
      std::vector<int64_t> all(static_cast<size_t>(augmented->size()));
      std::iota(all.begin(), all.end(), int64_t{0});
      examples += train_.Add(augmented, std::move(all), max_seq_len_, spec_.data.packing);
    }
    if (spec_.data.packing && rank0_) {
      spdlog::info("packing{}: {} examples in {} sequences of at most {} tokens",
                   task.name.empty() ? "" : " " + task.name, documents, examples, max_seq_len_);
    }
    tasks_.push_back(TaskRange{train_.size() - examples, examples, 0});
    task_names_.push_back(task.name);
    sizes.push_back(examples);
    weights.push_back(task.weight);
  }
  if (spec_.data.group_by_length) train_lengths_ = train_.Lengths();
  const std::vector<double> probabilities = MixtureProbabilities(sizes, weights, spec_.data.mixing_temperature);
  for (size_t t = 0; t < tasks_.size(); ++t) {
    tasks_[t].probability = probabilities[t];
    if (rank0_ && tasks_.size() > 1) {
      spdlog::info("task {}: {} training examples, drawn with probability {:.3f}", task_names_[t], sizes[t],
                   probabilities[t]);
    }
  }
  // A Llama extrapolates its rotary positions past max_position_embeddings (with a warning).
  if (spec_.data.max_seq_len > config_.max_positions() && config_.family != ModelFamily::kBert && rank0_) {
    spdlog::warn("data.max_seq_len {} exceeds the model's max_position_embeddings {}", spec_.data.max_seq_len,
                 config_.max_positions());
  }
  if (train_.size() < global_batch_) {
    Fail(ErrorCode::kInvalidArgument, "{}: {} training sequences are fewer than one global batch of {}",
         sources.size() == 1 ? sources[0].train : "data.tasks", train_.size(), global_batch_);
  }
  if (rank0_) spdlog::info("data: {} training examples, {} validation examples", train_.size(), validation_.size());
}

std::vector<int64_t> Trainer::GlobalBatch(int64_t step) {
  const int64_t epoch = step / steps_per_epoch_;
  if (epoch != cached_epoch_) {
    epoch_order_ = tasks_.size() > 1 ? MixtureOrder(tasks_, train_.size(), spec_.training.seed, epoch)
                                     : EpochOrder(train_.size(), spec_.training.seed, epoch, spec_.data.shuffle);
    // As Hugging Face's length-grouped sampler: sorted within mega-batches of 50 global batches.
    if (spec_.data.group_by_length) GroupByLength(epoch_order_, train_lengths_, 50 * global_batch_);
    cached_epoch_ = epoch;
  }
  const int64_t begin = (step % steps_per_epoch_) * global_batch_;
  return std::vector<int64_t>(epoch_order_.begin() + begin, epoch_order_.begin() + begin + global_batch_);
}

int64_t Trainer::TargetsOf(const std::vector<int64_t>& batch) const {
  int64_t targets = 0;
  for (int64_t i : batch) targets += TargetsOf(train_.Get(i));
  return targets;
}

std::vector<Example> Trainer::BatchExamples(const std::vector<int64_t>& batch, int64_t begin, int64_t count) const {
  std::vector<Example> examples;
  examples.reserve(static_cast<size_t>(count));
  for (int64_t i = begin; i < begin + count; ++i) examples.push_back(train_.Get(batch[static_cast<size_t>(i)]));
  return examples;
}

int64_t Trainer::TargetsOf(const Example& e) const {
  switch (config_.task()) {
    case ModelTask::kSequenceClassification:
      return e.class_label >= 0 ? 1 : 0;
    case ModelTask::kTokenClassification:
      return std::count_if(e.labels.begin(), e.labels.end(), [](int64_t l) { return l != -100; });
    case ModelTask::kCausalLm:
      break;
  }
  return e.target_tokens();
}

}  // namespace shardtune
