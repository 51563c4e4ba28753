// shardtune synthesize's parts: the example templates (render, parse back), each filter on
// candidates written by hand, and batched generation against one-at-a-time generation.
#include "worker/synthesize.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "classification_tasks.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "sharding/comm/communicator.h"
#include "synthesis_teacher.h"
#include "test_util.h"
#include "tiny_models.h"
#include "worker/data/formats.h"
#include "worker/generate.h"
#include "worker/inference_model.h"
#include "worker/trainer.h"

namespace shardtune {
namespace {

using nlohmann::json;

TEST(ExampleTemplate, RendersAndParsesEachFormat) {
  const ExampleTemplate classification = ExampleTemplate::Default(DataFormat::kClassification);
  EXPECT_EQ(classification.Render({{"text", "great film"}, {"label", "positive"}}),
            "Text: great film\nLabel: positive\n");
  EXPECT_EQ(classification.Opening(), "Text: ");
  // A continuation ends where the teacher starts the next example.
  EXPECT_EQ(classification.Parse("dull plot\nLabel: negative\n\nText: more"),
            json({{"text", "dull plot"}, {"label", "negative"}}));
  EXPECT_EQ(classification.Parse("no label here"), std::nullopt);
  EXPECT_EQ(classification.Parse("\nLabel: negative"), std::nullopt);  // an empty text

  const ExampleTemplate alpaca = ExampleTemplate::Default(DataFormat::kAlpaca);
  EXPECT_EQ(alpaca.Render({{"instruction", "Add"}, {"input", "2 and 3"}, {"output", "5"}}),
            "Instruction: Add\nInput: 2 and 3\nOutput: 5\n");
  EXPECT_EQ(alpaca.Parse("Name a color\nInput: \nOutput: Red, or\nblue.\n\nInstruction: x"),
            json({{"instruction", "Name a color"}, {"output", "Red, or\nblue."}}));  // no input; lines kept

  const ExampleTemplate chat = ExampleTemplate::Default(DataFormat::kChat);
  const json conversation = {{"messages",
                              {{{"role", "system"}, {"content", "Be brief."}},
                               {{"role", "user"}, {"content", "Hi"}},
                               {{"role", "assistant"}, {"content", "Hello!"}}}}};
  EXPECT_EQ(chat.Render(conversation), "User: Hi\nAssistant: Hello!\n");
  EXPECT_EQ(chat.Parse("How are you?\nAssistant: Well."),
            json({{"messages",
                   {{{"role", "user"}, {"content", "How are you?"}}, {{"role", "assistant"}, {"content", "Well."}}}}}));
  EXPECT_EQ(chat.Render({{"messages", {{{"role", "assistant"}, {"content", "alone"}}}}}), std::nullopt);

  // A template of one's own.
  const ExampleTemplate custom("Review: {text} => {label};\n", DataFormat::kClassification);
  EXPECT_EQ(custom.Parse("fine => positive;\nReview: x"), json({{"text", "fine"}, {"label", "positive"}}));
  EXPECT_THROW(ExampleTemplate("{text}{label}", DataFormat::kClassification), Error);          // fields adjoin
  EXPECT_THROW(ExampleTemplate("Text: {text}\n", DataFormat::kClassification), Error);         // no {label}
  EXPECT_THROW(ExampleTemplate("Text: {txt} {label}\n", DataFormat::kClassification), Error);  // unknown field
  EXPECT_THROW(ExampleTemplate::Default(DataFormat::kNer), Error);
}

TEST(SynthesisFilter, EachFilterRemovesWhatItShouldAndCountsIt) {
  SynthesizeOptions options;
  options.min_chars = 8;
  options.max_chars = 60;
  const ExampleTemplate shape = ExampleTemplate::Default(DataFormat::kClassification);
  const std::vector<std::string> seeds = {"the acting was wonderful and moving", "a tedious film with a weak script"};
  SynthesisFilter filter(options, DataFormat::kClassification, shape, seeds,
                         {{"positive", "positive"}, {"negative", "negative"}});
  const auto admit = [&](const std::string& text, const std::string& label) {
    return filter.Admit(text + "\nLabel: " + label);
  };
  EXPECT_TRUE(admit("bright colours and a clever ending", "positive"));
  EXPECT_FALSE(filter.Admit("no label line"));                                // unparsed
  EXPECT_FALSE(admit("a stunning and heartfelt story", "neutral"));           // unknown_label
  EXPECT_FALSE(admit("meh", "negative"));                                     // too_short
  EXPECT_FALSE(admit(std::string(70, 'x') + " long", "negative"));            // too_long
  EXPECT_FALSE(admit("bright colours and a clever ending", "negative"));      // duplicate of the admitted one
  EXPECT_FALSE(admit("the acting was wonderful and moving!", "positive"));    // near duplicate of a seed
  EXPECT_FALSE(admit("a tedious film with such a weak script", "negative"));  // ROUGE-L 0.93 to a seed
  EXPECT_TRUE(admit("slow in the middle yet worth seeing", "positive"));
  const std::map<std::string, int64_t> expected = {{"unparsed", 1}, {"unknown_label", 1}, {"too_short", 1},
                                                   {"too_long", 1}, {"duplicate", 1},     {"near_duplicate", 1},
                                                   {"rouge_l", 1}};
  EXPECT_EQ(filter.removed(), expected);
}

// Several prompts of different lengths in one batch, left-padded, answer as each would alone.
TEST(GenerateBatch, EqualsGeneratingEachPromptAlone) {
  testing::ScratchDir dir;
  testing::WriteByteLevelModel(dir / "bytes", 7);
  const LoadedModel loaded = LoadModelForInference(dir / "bytes");
  const std::vector<std::vector<int64_t>> prompts = {{70, 71, 72, 73, 74, 75}, {80}, {90, 91, 92}};
  GenerateOptions options;
  options.max_new_tokens = 12;
  options.stop_at_eos = false;
  const std::vector<uint64_t> seeds = {1, 2, 3};
  for (double temperature : {0.0, 0.9}) {
    options.temperature = temperature;
    const auto batched = GenerateBatch(*loaded.model, prompts, options, seeds);
    ASSERT_EQ(batched.size(), prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      GenerateOptions alone = options;
      alone.seed = seeds[i];
      EXPECT_EQ(batched[i], Generate(*loaded.model, prompts[i], alone)) << "prompt " << i << " at " << temperature;
    }
  }
}

// End to end: a teacher that has learned what labelled sentences look like writes new ones; every
// candidate is accounted for, what is kept validates as classification data with the seeds'
// labels, and the same seed writes the same file.
TEST(Synthesize, ATeacherWritesNewExamplesThatValidate) {
  testing::ScratchDir dir;
  testing::WriteSentimentTeacher(dir.path());
  SynthesizeOptions options = testing::TeacherSynthesis(dir.path());
  SingleProcessCommunicator world;
  const json report = Synthesize(options, world);
  int64_t removed = 0;
  for (const auto& [filter, count] : report.at("removed").items()) removed += count.get<int64_t>();
  const int64_t kept = report.at("kept").get<int64_t>();
  EXPECT_EQ(report.at("candidates").get<int64_t>(), kept + removed) << report.dump();
  EXPECT_GE(kept, 1) << report.dump();
  EXPECT_GT(report.at("tokens_per_s").get<double>(), 0.0);
  std::ifstream in(options.out);
  int64_t lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    const json record = json::parse(line);
    EXPECT_TRUE(record.at("label") == "positive" || record.at("label") == "negative") << line;
    EXPECT_FALSE(record.at("text").get<std::string>().empty());
  }
  EXPECT_EQ(lines, kept);
  // It validates: the classification reader takes every line.
  FormatOptions format;
  format.format = DataFormat::kClassification;
  const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::Load(dir / "teacher");
  format.tokenizer = tokenizer.get();
  format.label_names = {"negative", "positive"};
  format.eos_id = 309;
  format.vocab_size = 311;
  EXPECT_EQ(static_cast<int64_t>(ReadDataset(options.out, format).examples.size()), kept);
  const std::string first = ReadFile(options.out);
  Synthesize(options, world);
  EXPECT_EQ(ReadFile(options.out), first) << "the same seed wrote another file";
}

}  // namespace
}  // namespace shardtune
