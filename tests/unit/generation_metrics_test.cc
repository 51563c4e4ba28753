#include "common/generation_metrics.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"

namespace shardtune {
namespace {

// rouge-score's README: scorer.score('The quick brown fox jumps over the lazy dog',
// 'The quick brown dog jumps on the log.') gives rougeL precision=0.625,
// recall=0.5555555555555556, fmeasure=0.5882352941176471.
TEST(RougeL, EqualsTheRougeScorePackagesDocumentedExample) {
  const RougeScore s = RougeL("The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log.");
  EXPECT_DOUBLE_EQ(s.precision, 0.625);
  EXPECT_DOUBLE_EQ(s.recall, 0.5555555555555556);
  EXPECT_DOUBLE_EQ(s.fmeasure, 0.5882352941176471);
}

TEST(RougeL, TokenizesAsRougeScoreDoes) {
  EXPECT_EQ(RougeTokens("Hello, World! it's 3.14 café"),
            (std::vector<std::string>{"hello", "world", "it", "s", "3", "14", "caf"}));
  EXPECT_DOUBLE_EQ(RougeL("", "anything").fmeasure, 0.0);
  EXPECT_DOUBLE_EQ(RougeL("same words here", "Same, words. Here!").fmeasure, 1.0);
}

TEST(Bleu, Tokenizes13a) {
  EXPECT_EQ(Tokenize13a("It wasn't surprising."), "It wasn't surprising .");
  EXPECT_EQ(Tokenize13a("Pi is 3.14, e is 2.72."), "Pi is 3.14 , e is 2.72 .");
  EXPECT_EQ(Tokenize13a("(a) &amp; b-c 1-2 x/y"), "( a ) & b-c 1 - 2 x / y");
  // Python's str.split() separates at Unicode spaces too; trailing whitespace goes first.
  EXPECT_EQ(Tokenize13a("mot\u00a0: fin\u3000x"), "mot : fin x");
  EXPECT_EQ(Tokenize13a("well-\n"), "well-");
}

// sacreBLEU's README: corpus_score of these gives
// "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)".
TEST(Bleu, EqualsSacreBleusDocumentedExample) {
  const std::vector<std::string> hypotheses = {"The dog bit the man.", "It wasn't surprising.",
                                               "The man had just bitten him."};
  const std::vector<std::vector<std::string>> references = {{"The dog bit the man.", "The dog had bit the man."},
                                                            {"It was not unexpected.", "No one was surprised."},
                                                            {"The man bit him first.", "The man had bitten the dog."}};
  const BleuScore bleu = CorpusBleu(hypotheses, references);
  EXPECT_NEAR(bleu.score, 48.53, 0.005);
  EXPECT_NEAR(bleu.precisions[0], 82.4, 0.05);
  EXPECT_NEAR(bleu.precisions[1], 50.0, 0.05);
  EXPECT_NEAR(bleu.precisions[2], 45.5, 0.05);
  EXPECT_NEAR(bleu.precisions[3], 37.5, 0.05);
  EXPECT_NEAR(bleu.brevity_penalty, 0.943, 0.0005);
  EXPECT_EQ(bleu.hypothesis_length, 17);
  EXPECT_EQ(bleu.reference_length, 18);
}

TEST(Bleu, PerfectAndEmptyAndSmoothed) {
  EXPECT_NEAR(CorpusBleu({"a b c d e"}, {{"a b c d e"}}).score, 100.0, 1e-9);
  EXPECT_EQ(CorpusBleu({""}, {{"a b c d"}}).score, 0.0);  // no n-grams at all
  // Not one n-gram matches: 0 and no smoothing (sacreBLEU returns early, its issue #141).
  const BleuScore none = CorpusBleu({"x y z w v"}, {{"a b c d e"}});
  EXPECT_EQ(none.score, 0.0);
  EXPECT_EQ(none.precisions[0], 0.0);
  // No 4-gram matches: exp smoothing counts it as 1/2 of a match out of 2 four-grams.
  const BleuScore b = CorpusBleu({"a b c x e"}, {{"a b c d e"}});
  EXPECT_NEAR(b.precisions[3], 100.0 / (2 * 2), 1e-9);
  EXPECT_NEAR(b.score, std::exp((std::log(80.0) + std::log(50.0) + std::log(100.0 / 3) + std::log(25.0)) / 4), 1e-9);
}

TEST(PassAtK, IsTheUnbiasedEstimatorsClosedForm) {
  EXPECT_DOUBLE_EQ(PassAtK(10, 3, 1), 0.3);                   // c / n
  EXPECT_NEAR(PassAtK(10, 3, 5), 1.0 - 21.0 / 252.0, 1e-12);  // 1 - C(7,5) / C(10,5)
  EXPECT_NEAR(PassAtK(200, 13, 10), 1.0 - 0.5024489, 1e-6);   // 1 - C(187,10) / C(200,10)
  EXPECT_DOUBLE_EQ(PassAtK(5, 0, 2), 0.0);
  EXPECT_DOUBLE_EQ(PassAtK(5, 4, 2), 1.0);  // fewer than k failures: some pick of k passes
  EXPECT_THROW(PassAtK(3, 1, 4), Error);
}

TEST(JsonFields, CountsFlattenedKeyValuePairs) {
  FieldCounts counts;
  AddJsonFields(R"({"name": "Ada", "address": {"city": "London", "zip": "N1"}, "tags": ["a", "b"]})",
                R"({"name": "Ada", "address": {"city": "Paris", "zip": "N1"}, "tags": ["a", "b"]})", counts);
  EXPECT_EQ(counts.predicted, 4);
  EXPECT_EQ(counts.reference, 4);
  EXPECT_EQ(counts.correct, 3);
  EXPECT_DOUBLE_EQ(counts.F1(), 0.75);
  // A generation that does not parse predicts nothing: recall falls, precision does not.
  AddJsonFields("name: Ada", R"({"name": "Ada"})", counts);
  EXPECT_EQ(counts.reference, 5);
  EXPECT_EQ(counts.predicted, 4);
  EXPECT_DOUBLE_EQ(counts.Recall(), 0.6);
  EXPECT_DOUBLE_EQ(counts.Precision(), 0.75);
  // Numbers compare as JSON values: 1 and 1.0 are one value, "1" another.
  FieldCounts types;
  AddJsonFields(R"({"n": 1, "m": "2", "l": [1, {"b": 2, "a": 1}]})",
                R"({"n": 1.0, "m": 2, "l": [1.0, {"a": 1, "b": 2.0}]})", types);
  EXPECT_EQ(types.correct, 2);
  EXPECT_THROW(AddJsonFields("{}", "not json", types), Error);
  EXPECT_THROW(AddJsonFields("{}", "[1, 2]", types), Error);
}

TEST(JsonFields, ParsesFencedAndPlainJsonOnly) {
  EXPECT_TRUE(ParsesAsJson(" {\"a\": 1}\n"));
  EXPECT_TRUE(ParsesAsJson("```json\n{\"a\": 1}\n```"));
  EXPECT_TRUE(ParsesAsJson("```\n[1, 2]\n```"));
  EXPECT_FALSE(ParsesAsJson("Sure! {\"a\": 1}"));
  EXPECT_FALSE(ParsesAsJson("{\"a\": 1"));
  EXPECT_TRUE(ExactMatch(" Paris\n", "Paris"));
  EXPECT_FALSE(ExactMatch("paris", "Paris"));
}

TEST(GenerationScorer, ScoresEachMetricAndNamesBadInput) {
  GenerationScorer scorer({"exact_match", "rouge_l", "bleu", "json_parse_rate", "json_field_f1"});
  scorer.Add(R"({"a": 1, "b": 2})", R"({"a": 1, "b": 3})", "val.jsonl:1");
  scorer.Add(R"({"a": 1})", R"({"a": 1})", "val.jsonl:2");
  const nlohmann::json m = scorer.Metrics();
  EXPECT_EQ(m["generated"], 2);
  EXPECT_DOUBLE_EQ(m["exact_match"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(m["json_parse_rate"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(m["json_field_f1"].get<double>(), 2.0 / 3.0);  // 2 of 3 pairs right both ways
  EXPECT_DOUBLE_EQ(m["rouge_l"].get<double>(), (RougeL(R"({"a": 1, "b": 3})", R"({"a": 1, "b": 2})").fmeasure + 1) / 2);
  EXPECT_TRUE(m.contains("bleu"));
  try {
    scorer.Add("{}", "plain text", "val.jsonl:3");
    FAIL() << "a reference that is not JSON was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("val.jsonl:3: json_field_f1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(GenerationScorer({"rouge"}), Error);
}

// Ranks score their share of the examples and add up the sums: the figures equal one scorer's
// over all the examples (corpus BLEU included, which is not a mean of per-rank BLEUs).
TEST(GenerationScorer, SumsOfPartsGiveTheWholesFigures) {
  const std::vector<std::string> metrics = {"exact_match", "rouge_l", "bleu", "json_parse_rate"};
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"the cat sat on the mat", "the cat sat on a mat"},
      {R"({"name": "Ada", "year": 1815})", R"({"name": "Ada", "year": 1816})"},
      {"a quick brown fox jumps", "the quick brown fox jumped over"},
      {"hello", "hello"}};
  GenerationScorer whole(metrics), first(metrics), second(metrics);
  std::vector<std::string> hypotheses;
  std::vector<std::vector<std::string>> references;
  for (size_t i = 0; i < pairs.size(); ++i) {
    const auto& [generated, reference] = pairs[i];
    whole.Add(generated, reference, "x");
    (i % 2 == 0 ? first : second).Add(generated, reference, "x");
    hypotheses.push_back(generated);
    references.push_back({reference});
  }
  std::vector<double> sums = first.sums();
  for (size_t i = 0; i < sums.size(); ++i) sums[i] += second.sums()[i];
  GenerationScorer combined(metrics);
  combined.sums() = sums;
  const nlohmann::json a = whole.Metrics(), b = combined.Metrics();
  EXPECT_EQ(a["generated"], 4);
  EXPECT_EQ(b["generated"], 4);
  for (const char* name : {"exact_match", "rouge_l", "bleu", "json_parse_rate"})
    EXPECT_DOUBLE_EQ(a[name].get<double>(), b[name].get<double>()) << name;
  EXPECT_DOUBLE_EQ(a["bleu"].get<double>(), CorpusBleu(hypotheses, references).score);
  EXPECT_DOUBLE_EQ(a["exact_match"].get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(a["json_parse_rate"].get<double>(), 0.25);  // the object; "hello" is not JSON
}

TEST(GenerationScorer, PassAtKAveragesTheEstimatorOverProblems) {
  GenerationScorer scorer({"pass@1", "pass_at_5", "pass_at_k"}, 10);
  scorer.AddTested(3);  // 3 of 10 samples pass
  scorer.AddTested(0);
  scorer.AddTested(10);
  const nlohmann::json m = scorer.Metrics();
  EXPECT_EQ(m["problems"], 3);
  EXPECT_DOUBLE_EQ(m["pass@1"].get<double>(), (0.3 + 0.0 + 1.0) / 3);
  EXPECT_DOUBLE_EQ(m["pass@5"].get<double>(), (PassAtK(10, 3, 5) + 0.0 + 1.0) / 3);
  // 1 - C(7, 5) / C(10, 5) = 1 - 21 / 252.
  EXPECT_NEAR(PassAtK(10, 3, 5), 1.0 - 21.0 / 252.0, 1e-12);
  EXPECT_DOUBLE_EQ(m["pass@10"].get<double>(), 2.0 / 3);  // pass_at_k: pass@1 and pass@n
  EXPECT_TRUE(scorer.RunsTests());
  EXPECT_FALSE(GenerationScorer({"rouge_l"}).RunsTests());
  EXPECT_THROW(GenerationScorer({"pass@11"}, 10), Error);
  EXPECT_THROW(GenerationScorer({"pass@"}, 10), Error);
  EXPECT_THROW(GenerationScorer({"pass@0"}, 10), Error);
}

}  // namespace
}  // namespace shardtune
