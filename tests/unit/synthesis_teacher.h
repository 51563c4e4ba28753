#pragma once
// A teacher for shardtune synthesize's tests: a byte-level tiny Llama (256 positions) trained on
// blocks of labelled sentences as the classification template shows them ("Text: a good film and
// a warm song\nLabel: positive\n\n"), so that it writes new ones; and eight seed sentences.

#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "classification_tasks.h"
#include "common/job_spec.h"
#include "test_util.h"
#include "worker/synthesize.h"
#include "worker/trainer.h"

namespace shardtune::testing {

// Writes DIR/teacher, DIR/teaching.jsonl and DIR/seeds.jsonl, and trains the teacher into
// DIR/run (its model in DIR/run/final).
inline void WriteSentimentTeacher(const std::filesystem::path& dir) {
  WriteByteLevelModel(dir / "teacher", 11, R"("max_position_embeddings": 256)");
  const std::vector<std::string> good = {"good", "great", "fun", "lovely", "bright", "warm"};
  const std::vector<std::string> bad = {"bad", "dull", "sad", "slow", "weak", "cold"};
  const std::vector<std::string> nouns = {"film", "plot", "cast", "story", "song", "scene"};
  std::mt19937_64 rng(5);
  const auto sentence = [&](bool positive) {
    const auto& adjectives = positive ? good : bad;
    return "a " + adjectives[rng() % 6] + " " + nouns[rng() % 6] + " and a " + adjectives[rng() % 6] + " " +
           nouns[rng() % 6];
  };
  std::string teaching, seeds;
  for (int block = 0; block < 48; ++block) {
    std::string text;
    for (int k = 0; k < 3; ++k) {
      const bool positive = rng() % 2 == 0;
      text += "Text: " + sentence(positive) + "\nLabel: " + (positive ? "positive" : "negative") + "\n\n";
    }
    teaching += nlohmann::json({{"text", text}}).dump() + "\n";
  }
  for (int k = 0; k < 8; ++k) {
    const bool positive = k % 2 == 0;
    seeds +=
        nlohmann::json({{"text", sentence(positive)}, {"label", positive ? "positive" : "negative"}}).dump() + "\n";
  }
  WriteText(dir / "teaching.jsonl", teaching);
  WriteText(dir / "seeds.jsonl", seeds);
  RunTraining(
      ParseJobSpec("name: t\nmodel: {path: teacher}\ndata: {train: teaching.jsonl, format: text}\n"
                   "training: {max_steps: 150, micro_batch_size: 4, optimizer: {lr: 1.0e-2}}\n"
                   "output: {dir: run}\n",
                   "job.yaml", dir));
}

// Options asking the teacher of WriteSentimentTeacher(dir) for 6 examples into DIR/synthetic.jsonl.
inline SynthesizeOptions TeacherSynthesis(const std::filesystem::path& dir) {
  SynthesizeOptions options;
  options.model = dir / "run" / "final";
  options.seed_data = dir / "seeds.jsonl";
  options.format = "classification";
  options.num = 6;
  options.max_candidates = 32;
  options.shots = 2;
  options.max_new_tokens = 48;
  options.temperature = 1.0;
  options.top_p = 1.0;
  options.batch_size = 3;  // several rounds, and on many ranks several answers each
  options.out = dir / "synthetic.jsonl";
  return options;
}

}  // namespace shardtune::testing
