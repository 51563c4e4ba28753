#pragma once
// `shardtune evaluate --model DIR [--adapter DIR] --data FILE`: a finished model (a Hugging Face
// directory shardtune or transformers wrote, with a PEFT adapter or not) on a dataset, with the
// figures the trainer's evaluations report for the model's task (worker/evaluation.h). One
// process; the model's own head decides the task (config.json's architectures).

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/code_sandbox.h"
#include "worker/generate.h"

namespace shardtune {

struct EvaluateOptions {
  std::filesystem::path model;
  std::filesystem::path adapter;    // optional
  std::filesystem::path data;       // JSONL
  std::string format;               // default: classification or ner for classifiers (required else)
  std::filesystem::path tokenizer;  // default: the model's
  int64_t max_seq_len = 2048;
  int64_t batch_size = 8;
  // Language models: answers generated to each example's prompt (what precedes its trained
  // tokens) and scored against its reference (the trained tokens) by these metrics
  // (common/generation_metrics.h); none: no generation.
  std::vector<std::string> generation_metrics;
  GenerateOptions generate;
  int64_t num_samples = 1;                // answers per example (sampling needs generate.temperature > 0)
  std::filesystem::path generations_out;  // optional: each answer as JSONL {"line", "prompt", "reference", "generated"}
  // pass@k: each answer run against its record's tests in the code sandbox, with these limits.
  SandboxLimits sandbox;
};

// {"model", "data", "examples", "val_loss", ...the task's figures, and with generation metrics
// "generation": {"generated", each metric; with pass@K "problems" too}}. Throws Error for bad input.
nlohmann::json EvaluateModel(const EvaluateOptions& options);

}  // namespace shardtune
