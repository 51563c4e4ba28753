// JobSpec -> YAML: the resolved spec a run records in OUTPUT_DIR/job.yaml, every default filled in,
// which ParseJobSpec reads back to an equal spec.

#include "common/job_spec_reader.h"

namespace shardtune {
namespace spec_yaml {
namespace {

// An empty list is left out: for the keys that may be empty, absence means the default.
void EmitStrings(YAML::Emitter& out, const char* key, const std::vector<std::string>& values) {
  if (values.empty()) return;
  out << YAML::Key << key << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const auto& v : values) out << v;
  out << YAML::EndSeq;
}

void EmitMethod(YAML::Emitter& out, const MethodSpec& m) {
  out << YAML::Key << "method" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "type" << YAML::Value << NameOf(kMethods, m.type);
  switch (m.type) {
    case MethodType::kFull:
      break;
    case MethodType::kLora:
    case MethodType::kDora:
      out << YAML::Key << "lora" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "r" << YAML::Value << m.lora.r << YAML::Key << "alpha" << YAML::Value << m.lora.alpha;
      out << YAML::Key << "dropout" << YAML::Value << m.lora.dropout;
      if (m.lora.target_is_pattern) {
        out << YAML::Key << "target_modules" << YAML::Value << YAML::DoubleQuoted << m.lora.target_modules[0];
      } else {
        EmitStrings(out, "target_modules", m.lora.target_modules);
      }
      out << YAML::Key << "use_rslora" << YAML::Value << m.lora.use_rslora << YAML::EndMap;
      break;
    case MethodType::kIa3:
      out << YAML::Key << "ia3" << YAML::Value << YAML::BeginMap;
      EmitStrings(out, "target_modules", m.ia3.target_modules);
      if (m.ia3.feedforward_given) {  // even empty: given empty means none, absent the default
        out << YAML::Key << "feedforward_modules" << YAML::Value << YAML::Flow << YAML::BeginSeq;
        for (const auto& name : m.ia3.feedforward_modules) out << name;
        out << YAML::EndSeq;
      }
      out << YAML::EndMap;
      break;
    case MethodType::kAdapter:
      out << YAML::Key << "adapter" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "bottleneck" << YAML::Value << m.adapter.bottleneck;
      out << YAML::Key << "placement" << YAML::Value << NameOf(kPlacements, m.adapter.placement);
      out << YAML::Key << "activation" << YAML::Value << NameOf(kActivations, m.adapter.activation) << YAML::EndMap;
      break;
    case MethodType::kPrefix:
      out << YAML::Key << "prefix" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "num_virtual_tokens" << YAML::Value << m.prefix.num_virtual_tokens;
      out << YAML::Key << "projection" << YAML::Value << m.prefix.projection;
      out << YAML::Key << "encoder_hidden_size" << YAML::Value << m.prefix.encoder_hidden_size << YAML::EndMap;
      break;
    case MethodType::kPrompt:
      out << YAML::Key << "prompt" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "num_virtual_tokens" << YAML::Value << m.prompt.num_virtual_tokens << YAML::EndMap;
      break;
  }
  if (m.type != MethodType::kFull) EmitStrings(out, "modules_to_save", m.modules_to_save);
  if (!m.init_from.empty()) out << YAML::Key << "init_from" << YAML::Value << m.init_from;
  out << YAML::EndMap;
}

void EmitModel(YAML::Emitter& out, const ModelSpec& model) {
  out << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "path" << YAML::Value << model.path;
  if (!model.tokenizer.empty()) out << YAML::Key << "tokenizer" << YAML::Value << model.tokenizer;
  out << YAML::Key << "dtype" << YAML::Value << NameOf(kDTypes, model.dtype);
  out << YAML::Key << "task" << YAML::Value << NameOf(kTasks, model.task);
  EmitStrings(out, "labels", model.labels);
  if (model.quantization.type != QuantizationType::kNone) {
    const QuantizationSpec& q = model.quantization;
    out << YAML::Key << "quantization" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "type" << YAML::Value << NameOf(kQuantizationTypes, q.type);
    out << YAML::Key << "block_size" << YAML::Value << q.block_size;
    out << YAML::Key << "double_quant" << YAML::Value << q.double_quant;
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
}

void EmitData(YAML::Emitter& out, const DataSpec& d) {
  out << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  if (!d.train.empty()) out << YAML::Key << "train" << YAML::Value << d.train;
  if (!d.validation.empty()) out << YAML::Key << "validation" << YAML::Value << d.validation;
  out << YAML::Key << "validation_split" << YAML::Value << d.validation_split;
  out << YAML::Key << "format" << YAML::Value << NameOf(kFormats, d.format);
  out << YAML::Key << "max_seq_len" << YAML::Value << d.max_seq_len;
  out << YAML::Key << "packing" << YAML::Value << d.packing;
  out << YAML::Key << "shuffle" << YAML::Value << d.shuffle;
  out << YAML::Key << "chat_template" << YAML::Value << NameOf(kChatTemplates, d.chat_template);
  out << YAML::Key << "group_by_length" << YAML::Value << d.group_by_length;
  if (!d.cache_dir.empty()) out << YAML::Key << "cache_dir" << YAML::Value << d.cache_dir;
  out << YAML::Key << "dedup" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "mode" << YAML::Value << NameOf(kDedupModes, d.dedup.mode);
  out << YAML::Key << "threshold" << YAML::Value << d.dedup.similarity.threshold;
  out << YAML::Key << "shingle" << YAML::Value << NameOf(kShingleUnits, d.dedup.similarity.unit);
  out << YAML::Key << "ngram" << YAML::Value << d.dedup.similarity.ngram;
  out << YAML::EndMap;
  out << YAML::Key << "balance" << YAML::Value << NameOf(kBalanceModes, d.balance);
  const AugmentOptions& a = d.augment;
  out << YAML::Key << "augment" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "copies" << YAML::Value << a.copies;
  out << YAML::Key << "synonym_replacement" << YAML::Value << a.synonym_replacement;
  out << YAML::Key << "random_insertion" << YAML::Value << a.random_insertion;
  out << YAML::Key << "random_swap" << YAML::Value << a.random_swap;
  out << YAML::Key << "random_deletion" << YAML::Value << a.random_deletion;
  out << YAML::EndMap;
  if (!d.tasks.empty()) {
    out << YAML::Key << "mixing_temperature" << YAML::Value << d.mixing_temperature;
    out << YAML::Key << "tasks" << YAML::Value << YAML::BeginSeq;
    for (const TaskSpec& task : d.tasks) {
      out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << task.name << YAML::Key << "train" << YAML::Value
          << task.train;
      if (!task.validation.empty()) out << YAML::Key << "validation" << YAML::Value << task.validation;
      out << YAML::Key << "format" << YAML::Value << NameOf(kFormats, task.format) << YAML::Key << "weight"
          << YAML::Value << task.weight << YAML::EndMap;
    }
    out << YAML::EndSeq;
  }
  out << YAML::EndMap;
}

void EmitTraining(YAML::Emitter& out, const TrainingSpec& t) {
  out << YAML::Key << "training" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "epochs" << YAML::Value << t.epochs;
  out << YAML::Key << "max_steps" << YAML::Value << t.max_steps;
  out << YAML::Key << "micro_batch_size" << YAML::Value << t.micro_batch_size;
  out << YAML::Key << "global_batch_size" << YAML::Value << t.global_batch_size;
  out << YAML::Key << "optimizer" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "type" << YAML::Value << NameOf(kOptimizers, t.optimizer.type);
  out << YAML::Key << "lr" << YAML::Value << t.optimizer.lr;
  out << YAML::Key << "weight_decay" << YAML::Value << t.optimizer.weight_decay;
  out << YAML::Key << "beta1" << YAML::Value << t.optimizer.beta1;
  out << YAML::Key << "beta2" << YAML::Value << t.optimizer.beta2;
  out << YAML::Key << "eps" << YAML::Value << t.optimizer.eps;
  out << YAML::EndMap;
  out << YAML::Key << "scheduler" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "type" << YAML::Value << NameOf(kSchedulers, t.scheduler.type);
  out << YAML::Key << "warmup_steps" << YAML::Value << t.scheduler.warmup_steps;
  out << YAML::Key << "min_lr_ratio" << YAML::Value << t.scheduler.min_lr_ratio;
  out << YAML::EndMap;
  out << YAML::Key << "grad_clip" << YAML::Value << t.grad_clip;
  out << YAML::Key << "seed" << YAML::Value << t.seed;
  out << YAML::Key << "eval_every" << YAML::Value << t.eval_every;
  out << YAML::Key << "log_every" << YAML::Value << t.log_every;
  out << YAML::Key << "activation_checkpointing" << YAML::Value << t.activation_checkpointing;
  out << YAML::Key << "label_smoothing" << YAML::Value << t.label_smoothing;
  if (t.attention_dropout) out << YAML::Key << "attention_dropout" << YAML::Value << *t.attention_dropout;
  if (t.hidden_dropout) out << YAML::Key << "hidden_dropout" << YAML::Value << *t.hidden_dropout;
  if (t.classifier_dropout) out << YAML::Key << "classifier_dropout" << YAML::Value << *t.classifier_dropout;
  out << YAML::Key << "early_stopping" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "patience" << YAML::Value << t.early_stopping.patience;
  out << YAML::Key << "metric" << YAML::Value << t.early_stopping.metric;
  out << YAML::Key << "mode" << YAML::Value << NameOf(kMetricModes, t.early_stopping.mode);
  out << YAML::Key << "min_delta" << YAML::Value << t.early_stopping.min_delta;
  out << YAML::EndMap;
  out << YAML::EndMap;
}

void EmitEvaluation(YAML::Emitter& out, const EvaluationSpec& e) {
  const GenerateEvaluationSpec& g = e.generate;
  if (g.metrics.empty()) return;  // the default: no section
  out << YAML::Key << "evaluation" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "generate" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "metrics" << YAML::Value << YAML::Flow << g.metrics;
  out << YAML::Key << "max_new_tokens" << YAML::Value << g.max_new_tokens;
  out << YAML::Key << "num_samples" << YAML::Value << g.num_samples;
  out << YAML::Key << "temperature" << YAML::Value << g.temperature;
  out << YAML::Key << "top_p" << YAML::Value << g.top_p;
  out << YAML::Key << "max_examples" << YAML::Value << g.max_examples;
  out << YAML::Key << "test_timeout_s" << YAML::Value << g.test_timeout_s;
  out << YAML::EndMap << YAML::EndMap;
}

void EmitSharding(YAML::Emitter& out, const ShardingSpec& s) {
  out << YAML::Key << "sharding" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "zero_stage" << YAML::Value << s.zero_stage;
  out << YAML::Key << "backend" << YAML::Value << NameOf(kBackends, s.backend);
  out << YAML::Key << "shard_group_size" << YAML::Value << s.shard_group_size;
  out << YAML::Key << "offload_optimizer" << YAML::Value << NameOf(kOffloads, s.offload_optimizer);
  out << YAML::Key << "collective_timeout_s" << YAML::Value << s.collective_timeout_s;
  out << YAML::Key << "prefetch_layers" << YAML::Value << s.prefetch_layers;
  out << YAML::Key << "persistence_threshold" << YAML::Value << s.persistence_threshold;
  out << YAML::Key << "load_buffer_mb" << YAML::Value << s.load_buffer_mb;
  out << YAML::EndMap;
}

void EmitOutput(YAML::Emitter& out, const OutputSpec& o) {
  out << YAML::Key << "output" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "dir" << YAML::Value << o.dir;
  out << YAML::Key << "checkpoint_every" << YAML::Value << o.checkpoint_every;
  out << YAML::Key << "keep_checkpoints" << YAML::Value << o.keep_checkpoints;
  out << YAML::Key << "async_checkpoint" << YAML::Value << o.async_checkpoint;
  out << YAML::Key << "keep_best" << YAML::Value << o.keep_best;
  out << YAML::Key << "generations" << YAML::Value << o.generations;
  out << YAML::Key << "export" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (ExportFormat f : o.export_formats) out << NameOf(kExports, f);
  out << YAML::EndSeq << YAML::EndMap;
}

}  // namespace
}  // namespace spec_yaml

std::string JobSpecToYaml(const JobSpec& spec) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "name" << YAML::Value << spec.name;
  if (!spec.labels.empty()) {
    out << YAML::Key << "labels" << YAML::Value << YAML::BeginMap;
    for (const auto& [k, v] : spec.labels) out << YAML::Key << k << YAML::Value << v;
    out << YAML::EndMap;
  }
  spec_yaml::EmitModel(out, spec.model);
  spec_yaml::EmitMethod(out, spec.method);
  spec_yaml::EmitData(out, spec.data);
  spec_yaml::EmitTraining(out, spec.training);
  spec_yaml::EmitEvaluation(out, spec.evaluation);
  spec_yaml::EmitSharding(out, spec.sharding);
  spec_yaml::EmitOutput(out, spec.output);
  out << YAML::Key << "resources" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "nodes" << YAML::Value << spec.resources.nodes;
  out << YAML::Key << "ranks_per_node" << YAML::Value << spec.resources.ranks_per_node;
  if (spec.resources.gpus_per_node > 0)
    out << YAML::Key << "gpus_per_node" << YAML::Value << spec.resources.gpus_per_node;
  if (spec.resources.cpus_per_rank > 0)
    out << YAML::Key << "cpus_per_rank" << YAML::Value << spec.resources.cpus_per_rank;
  for (const auto& [key, value] : {std::pair<const char*, const std::string&>{"time_limit", spec.resources.time_limit},
                                   {"partition", spec.resources.partition},
                                   {"account", spec.resources.account},
                                   {"qos", spec.resources.qos}}) {
    if (!value.empty()) out << YAML::Key << key << YAML::Value << YAML::DoubleQuoted << value;
  }
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace shardtune
