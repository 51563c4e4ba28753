#include "worker/data/formats.h"

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "tiny_models.h"
#include "worker/data/tokenizer/hf_tokenizer.h"
#include "worker/data/tokenizer/unicode.h"
#include "worker/generate.h"
#include "worker/trainer.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A byte-level tokenizer with no merges: every byte is its own id (0-255), so expected ids can be
// written by hand; the special tokens of every template follow from 256.
const std::vector<std::string> kSpecials = {
    "<s>",        "</s>",         "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<|im_start|>", "<|im_end|>"};
std::unique_ptr<Tokenizer> ByteTokenizer() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteToUnicode(static_cast<uint8_t>(b))] = b;
  json added = json::array();
  for (size_t i = 0; i < kSpecials.size(); ++i) {
    added.push_back({{"id", 256 + i}, {"content", kSpecials[i]}, {"special", true}, {"normalized", false}});
    vocab[kSpecials[i]] = 256 + i;
  }
  const json tokenizer = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
                          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
                          {"decoder", {{"type", "ByteLevel"}}},
                          {"added_tokens", added}};
  return LoadHfTokenizerJson(tokenizer.dump(), "byte tokenizer");
}

int64_t Special(const std::string& name) {
  return 256 + (std::find(kSpecials.begin(), kSpecials.end(), name) - kSpecials.begin());
}

// Expected sequence from pieces: text (as bytes) or a special token, trained or not.
struct Part {
  std::string text;
  bool trained = false;
  bool special = false;
};
Part T(std::string text, bool trained = false) { return {std::move(text), trained, false}; }
Part S(std::string name, bool trained = false) { return {std::move(name), trained, true}; }

Example Expected(const std::vector<Part>& parts) {
  Example e;
  for (const Part& p : parts) {
    std::vector<int64_t> ids;
    if (p.special)
      ids.push_back(p.text == "<s>" ? 1 : p.text == "</s>" ? 2 : Special(p.text));
    else
      for (unsigned char c : p.text) ids.push_back(c);
    for (int64_t id : ids) {
      e.input_ids.push_back(id);
      e.labels.push_back(p.trained ? id : -100);
    }
  }
  return e;
}

class FormatsTest : public ::testing::Test {
 protected:
  FormatOptions Options(ChatTemplate t) {
    FormatOptions o;
    o.tokenizer = tokenizer_.get();
    o.chat_template = t;
    o.vocab_size = 1000;
    o.bos_id = 1;
    o.eos_id = 2;
    return o;
  }
  const std::vector<ChatMessage> conversation_ = {{"system", "Be brief.", true},
                                                  {"user", "Hi", true},
                                                  {"assistant", "Yo", true},
                                                  {"user", "Bye", true},
                                                  {"assistant", "Ciao", false}};
  std::unique_ptr<Tokenizer> tokenizer_ = ByteTokenizer();
  testing::ScratchDir dir_;
};

void ExpectSame(const Example& actual, const Example& expected) {
  EXPECT_EQ(actual.input_ids, expected.input_ids);
  ASSERT_EQ(actual.labels.size(), expected.labels.size());
  for (size_t i = 0; i < actual.labels.size(); ++i) EXPECT_EQ(actual.labels[i], expected.labels[i]) << "token " << i;
}

TEST_F(FormatsTest, Llama3MasksAssistantContentAndEotOnly) {
  ExpectSame(RenderChat(conversation_, Options(ChatTemplate::kLlama3)), Expected({S("<|begin_of_text|>"),
                                                                                  S("<|start_header_id|>"),
                                                                                  T("system"),
                                                                                  S("<|end_header_id|>"),
                                                                                  T("\n\n"),
                                                                                  T("Be brief."),
                                                                                  S("<|eot_id|>"),
                                                                                  S("<|start_header_id|>"),
                                                                                  T("user"),
                                                                                  S("<|end_header_id|>"),
                                                                                  T("\n\n"),
                                                                                  T("Hi"),
                                                                                  S("<|eot_id|>"),
                                                                                  S("<|start_header_id|>"),
                                                                                  T("assistant"),
                                                                                  S("<|end_header_id|>"),
                                                                                  T("\n\n"),
                                                                                  T("Yo", true),
                                                                                  S("<|eot_id|>", true),
                                                                                  S("<|start_header_id|>"),
                                                                                  T("user"),
                                                                                  S("<|end_header_id|>"),
                                                                                  T("\n\n"),
                                                                                  T("Bye"),
                                                                                  S("<|eot_id|>"),
                                                                                  S("<|start_header_id|>"),
                                                                                  T("assistant"),
                                                                                  S("<|end_header_id|>"),
                                                                                  T("\n\n"),
                                                                                  T("Ciao"),
                                                                                  S("<|eot_id|>")}));
}

TEST_F(FormatsTest, ChatmlMasksAssistantContentAndImEndOnly) {
  ExpectSame(RenderChat(conversation_, Options(ChatTemplate::kChatml)),
             Expected({S("<|im_start|>"), T("system\n"),    T("Be brief."), S("<|im_end|>"),       T("\n"),
                       S("<|im_start|>"), T("user\n"),      T("Hi"),        S("<|im_end|>"),       T("\n"),
                       S("<|im_start|>"), T("assistant\n"), T("Yo", true),  S("<|im_end|>", true), T("\n"),
                       S("<|im_start|>"), T("user\n"),      T("Bye"),       S("<|im_end|>"),       T("\n"),
                       S("<|im_start|>"), T("assistant\n"), T("Ciao"),      S("<|im_end|>"),       T("\n")}));
}

TEST_F(FormatsTest, Llama2PutsTheSystemPromptInTheFirstTurnAndSpacesAroundAnswers) {
  ExpectSame(RenderChat(conversation_, Options(ChatTemplate::kLlama2)),
             Expected({S("<s>"), T("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"), T(" "), T("Yo", true), T(" "),
                       S("</s>", true), S("<s>"), T("[INST] Bye [/INST]"), T(" "), T("Ciao"), T(" "), S("</s>")}));
}

TEST_F(FormatsTest, MistralStartsWithOneBos) {
  ExpectSame(RenderChat(conversation_, Options(ChatTemplate::kMistral)),
             Expected({S("<s>"), T("[INST] Be brief.\n\nHi [/INST]"), T("Yo", true), S("</s>", true),
                       T("[INST] Bye [/INST]"), T("Ciao"), S("</s>")}));
}

TEST_F(FormatsTest, PlainNamesTheRoles) {
  ExpectSame(RenderChat(conversation_, Options(ChatTemplate::kPlain)),
             Expected({S("<s>"), T("System: "), T("Be brief."), T("\n"), T("User: "), T("Hi"), T("\n"),
                       T("Assistant: "), T("Yo", true), S("</s>", true), T("\n"), T("User: "), T("Bye"), T("\n"),
                       T("Assistant: "), T("Ciao"), S("</s>"), T("\n")}));
}

TEST_F(FormatsTest, EveryFormatReadsItsRecords) {
  FormatOptions o = Options(ChatTemplate::kChatml);
  struct Case {
    DataFormat format;
    std::string text;
    Example expected;
  };
  const std::string alpaca_prompt =
      "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
      "### Instruction:\nAdd 2+2\n\n### Response:\n";
  const std::vector<Case> cases = {
      {DataFormat::kCompletion, R"({"prompt": "Q: ", "completion": "A"})",
       Expected({S("<s>"), T("Q: "), T("A", true), S("</s>", true)})},
      {DataFormat::kText, R"({"text": "abc"})", Expected({S("<s>", true), T("abc", true), S("</s>", true)})},
      {DataFormat::kAlpaca, R"([{"instruction": "Add 2+2", "input": "", "output": "4"}])",
       Expected({S("<s>"), T(alpaca_prompt), T("4", true), S("</s>", true)})},
      {DataFormat::kShareGpt,
       R"({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]})",
       Expected({S("<|im_start|>"), T("user\n"), T("Hi"), S("<|im_end|>"), T("\n"), S("<|im_start|>"), T("assistant\n"),
                 T("Yo", true), S("<|im_end|>", true), T("\n")})},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(ToString(c.format));
    testing::WriteText(dir_ / "data.jsonl", c.text + "\n");
    o.format = c.format;
    const TokenDataset data = ReadDataset(dir_ / "data.jsonl", o);
    ASSERT_EQ(data.examples.size(), 1u);
    ExpectSame(data.examples[0], c.expected);
  }
}

// One file per error code: the code and the line must be reported.
TEST_F(FormatsTest, ValidationNamesTheCodeAndTheLine) {
  const std::string good =
      R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[1, 2]", "data_type"},
      {R"({"conversation": []})", "missing_messages_list"},
      {R"({"messages": [{"role": "user"}, {"role": "assistant", "content": "Yo"}]})", "message_missing_key"},
      {R"({"messages": [{"role": "user", "content": "Hi", "mood": "happy"}, {"role": "assistant", "content": "Yo"}]})",
       "message_unrecognized_key"},
      {R"({"messages": [{"role": "bot", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})",
       "unrecognized_role"},
      {R"({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "Yo"}]})",
       "missing_content"},
      {R"({"messages": [{"role": "user", "content": "Hi"}]})", "example_missing_assistant_message"},
      {R"({"messages": [)", "invalid_json"},
      {"{\"messages\": \"\xff\"}", "invalid_utf8"},
  };
  FormatOptions o = Options(ChatTemplate::kChatml);
  o.format = DataFormat::kChat;
  for (const auto& [line, code] : cases) {
    SCOPED_TRACE(code);
    testing::WriteText(dir_ / "train.jsonl", good + "\n" + good + "\n" + line + "\n");
    try {
      ReadDataset(dir_ / "train.jsonl", o);
      ADD_FAILURE() << "accepted";
    } catch (const DataError& e) {
      ASSERT_EQ(e.issues().size(), 1u) << e.what();
      EXPECT_EQ(e.issues()[0].code, code) << e.what();
      EXPECT_EQ(e.issues()[0].line, 3) << e.what();
      EXPECT_NE(std::string(e.what()).find("train.jsonl:3: [" + code + "]"), std::string::npos) << e.what();
    }
  }
  testing::WriteText(dir_ / "empty.jsonl", "\n\n");
  try {
    ReadDataset(dir_ / "empty.jsonl", o);
    ADD_FAILURE();
  } catch (const DataError& e) {
    EXPECT_EQ(e.issues()[0].code, "empty_dataset");
  }
  o.vocab_size = 100;  // 'Y' is 89, 'o' is 111
  testing::WriteText(dir_ / "train.jsonl", good + "\n");
  try {
    ReadDataset(dir_ / "train.jsonl", o);
    ADD_FAILURE();
  } catch (const DataError& e) {
    EXPECT_EQ(e.issues()[0].code, "token_out_of_vocabulary") << e.what();
  }
}

TEST_F(FormatsTest, AutoDetectsTheTemplateFromTokenizerConfig) {
  std::string reason;
  EXPECT_EQ(DetectChatTemplate(dir_.path(), &reason), ChatTemplate::kPlain);
  testing::WriteText(dir_ / "tokenizer_config.json",
                     R"({"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}"})");
  EXPECT_EQ(DetectChatTemplate(dir_.path(), &reason), ChatTemplate::kChatml);
  EXPECT_NE(reason.find("<|im_start|>"), std::string::npos);
  testing::WriteText(dir_ / "tokenizer_config.json", R"({"chat_template": "<|start_header_id|>"})");
  EXPECT_EQ(DetectChatTemplate(dir_.path(), &reason), ChatTemplate::kLlama3);
}

TEST(ChatFineTune, TinyModelWithTokenizerJsonLearnsItsAnswers) {
  const fs::path tokenizer = testing::FixturesDir() / "tokenizers" / "qwen2-style-tiny-bpe-tokenizer.json";
  SKIP_WITHOUT_FIXTURE(tokenizer);
  testing::ScratchDir dir;
  const auto tok = Tokenizer::Load(tokenizer);
  testing::WriteTinyModel(dir / "base", testing::TinyConfig("qwen2", "", static_cast<int>(tok->vocab_size())), 1);
  WriteFileAtomic(dir / "base" / "tokenizer.json", ReadFile(tokenizer));
  std::string data;
  for (int i = 0; i < 32; ++i) {
    const std::string city = std::vector<std::string>{"Paris", "Rome", "Berlin", "Madrid"}[i % 4];
    data += R"({"messages": [{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": ")" + city +
            R"("}]})"
            "\n";
  }
  testing::WriteText(dir / "chat.jsonl", data);
  const std::string yaml =
      "name: chat\nmodel: {path: base}\ndata: {train: chat.jsonl, format: chat, chat_template: chatml}\n"
      "output: {dir: run}\ntraining: {max_steps: 30, micro_batch_size: 8, optimizer: {lr: 3.0e-3}}\n";
  RunTraining(ParseJobSpec(yaml, "job.yaml", dir.path()));
  std::ifstream in(dir / "run" / "metrics.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(in, line);) {
    const json m = json::parse(line);
    if (m.contains("loss")) losses.push_back(m["loss"].get<double>());
  }
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT(losses.back(), losses.front() / 2) << "first " << losses.front() << ", last " << losses.back();
}

}  // namespace
}  // namespace shardtune

namespace shardtune {
namespace {

TEST(Packing, DocumentsRestartPositionsAndNeverAttendAcrossEachOther) {
  const std::vector<Example> docs = {
      {{1, 5, 6}, {1, 5, 6}, {}, {}}, {{1, 7}, {1, 7}, {}, {}}, {{1, 8, 9, 10}, {1, 8, 9, 10}, {}, {}}};
  const std::vector<Example> packed = PackExamples(docs, 6);
  ASSERT_EQ(packed.size(), 2u);  // [3 + 2] and [4]: the third document does not fit in the first
  EXPECT_EQ(packed[0].input_ids, (std::vector<int64_t>{1, 5, 6, 1, 7}));
  EXPECT_EQ(packed[0].labels, (std::vector<int64_t>{-100, 5, 6, -100, 7}));
  EXPECT_EQ(packed[0].position_ids, (std::vector<int64_t>{0, 1, 2, 0, 1}));
  EXPECT_EQ(packed[0].document_ids, (std::vector<int64_t>{0, 0, 0, 1, 1}));

  const LlamaBlocks blocks(LlamaConfig::Parse(testing::TinyConfig(), "config.json"));
  const Batch batch = Collate({&packed[0], &packed[1]}, 0);
  const Positions positions =
      blocks.PositionsFor(2, 5, 0, batch.attention_mask, at::kFloat, batch.position_ids, batch.document_ids);
  const at::Tensor allowed = positions.mask[0][0] == 0;  // (S, S) for the first sequence
  for (int64_t q = 0; q < 5; ++q) {
    for (int64_t k = 0; k < 5; ++k) {
      const bool same_document = (q < 3) == (k < 3);
      EXPECT_EQ(allowed[q][k].item<bool>(), k <= q && same_document) << q << ", " << k;
    }
  }
}

TEST(Packing, APackedBatchHasTheLossOfTheUnpackedOne) {
  testing::ScratchDir dir;
  testing::WriteTinyModel(dir / "m", testing::TinyConfig("llama"), 3);
  const LoadedModel m = LoadModelForInference(dir / "m");
  const LlamaBlocks blocks(m.model->config());
  const std::vector<Example> docs = {{{1, 5, 6, 7, 8}, {1, 5, 6, 7, 8}, {}, {}},
                                     {{1, 9, 10, 11}, {1, 9, 10, 11}, {}, {}},
                                     {{1, 12, 13}, {-100, -100, 13}, {}, {}}};
  at::NoGradGuard no_grad;
  const Batch unpacked = Collate({&docs[0], &docs[1], &docs[2]}, 0);
  const LossSum separate =
      CausalLmLossSum(m.model->Forward(unpacked.input_ids, unpacked.attention_mask), unpacked.labels);

  const std::vector<Example> packed = PackExamples(docs, 64);
  ASSERT_EQ(packed.size(), 1u);
  const Batch batch = Collate({&packed[0]}, 0);
  // The model's pieces, with the packed positions.
  const LlamaWeights w = BindLlamaWeights(
      m.model->config(), [&](const std::string& name) { return m.weights->Value(*m.weights->Find(name)); });
  at::Tensor h = blocks.Embed(batch.input_ids, w.embed_tokens);
  const Positions positions = blocks.PositionsFor(1, batch.input_ids.size(1), 0, batch.attention_mask, at::kFloat,
                                                  batch.position_ids, batch.document_ids);
  for (size_t i = 0; i < w.layers.size(); ++i) h = blocks.Layer(w.layers[i], h, positions, nullptr, i);
  const LossSum together = CausalLmLossSum(blocks.Head(h, w.norm, w.lm_head), batch.labels);
  EXPECT_EQ(together.tokens, separate.tokens);
  EXPECT_NEAR(together.sum.item<double>(), separate.sum.item<double>(), 1e-4);
}

}  // namespace
}  // namespace shardtune

namespace shardtune {
namespace {

TEST_F(FormatsTest, BertWordPieceReadsSentencePairsAsBertDoes) {
  const fs::path vocab = testing::FixturesDir() / "tokenizers" / "bert-base-cased-vocab.txt";
  if (!fs::exists(vocab)) GTEST_SKIP() << "fixture absent: " << vocab;
  const auto tokenizer = Tokenizer::Load(vocab);
  FormatOptions o;
  o.format = DataFormat::kClassification;
  o.tokenizer = tokenizer.get();
  o.max_seq_len = 64;
  o.vocab_size = 28996;
  o.separator_id = 102;  // [SEP], what the post-processor ends a sequence with
  o.label_names = {"no", "yes"};
  testing::WriteText(dir_ / "pairs.jsonl", R"({"text": "How are you?", "text_pair": "I am fine.", "label": "yes"})"
                                           "\n");
  const TokenDataset pairs = ReadDataset(dir_ / "pairs.jsonl", o);
  ASSERT_EQ(pairs.examples.size(), 1u);
  // [CLS] How are you ? [SEP] I am fine . [SEP], ids from the cased vocabulary (line number - 1).
  EXPECT_EQ(pairs.examples[0].input_ids,
            (std::vector<int64_t>{101, 1731, 1132, 1128, 136, 102, 146, 1821, 2503, 119, 102}));
  EXPECT_EQ(pairs.examples[0].token_type_ids, (std::vector<int64_t>{0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(pairs.examples[0].class_label, 1);
  const Batch batch = Collate({&pairs.examples[0]}, 0);
  EXPECT_EQ(batch.token_type_ids[0][6].item<int64_t>(), 1);
  EXPECT_EQ(batch.token_type_ids[0][5].item<int64_t>(), 0);
}

TEST_F(FormatsTest, ClassificationAndNerCarryTheirLabels) {
  FormatOptions o = Options(ChatTemplate::kPlain);
  o.bos_id.reset();
  o.format = DataFormat::kClassification;
  testing::WriteText(dir_ / "cls.jsonl", R"({"text": "good", "label": "pos"})"
                                         "\n"
                                         R"({"text": "bad", "label": "neg"})"
                                         "\n"
                                         R"({"text": "fine", "text_pair": "ok", "label": 1})"
                                         "\n");
  const TokenDataset cls = ReadDataset(dir_ / "cls.jsonl", o);
  EXPECT_EQ(cls.label_names, (std::vector<std::string>{"neg", "pos"}));  // sorted names found
  ASSERT_EQ(cls.examples.size(), 3u);
  EXPECT_EQ(cls.examples[0].class_label, 1);
  EXPECT_EQ(cls.examples[1].class_label, 0);
  EXPECT_EQ(cls.examples[2].class_label, 1);
  EXPECT_EQ(cls.examples[2].input_ids, (std::vector<int64_t>{'f', 'i', 'n', 'e', 'o', 'k', 2}));  // pair, then EOS
  EXPECT_EQ(cls.examples[2].token_type_ids, (std::vector<int64_t>{0, 0, 0, 0, 1, 1, 1}));
  EXPECT_TRUE(cls.examples[0].token_type_ids.empty());
  EXPECT_EQ(cls.label_counts, (std::vector<int64_t>{1, 2}));

  o.format = DataFormat::kNer;
  testing::WriteText(dir_ / "ner.jsonl", R"({"tokens": ["Ada", "met", "Bo"], "tags": ["B-PER", "O", "B-PER"]})"
                                         "\n");
  const TokenDataset ner = ReadDataset(dir_ / "ner.jsonl", o);
  EXPECT_EQ(ner.label_names, (std::vector<std::string>{"B-PER", "O"}));
  // Byte-level: "Ada" " met" " Bo"; each tag on its word's first byte.
  EXPECT_EQ(ner.examples[0].input_ids, (std::vector<int64_t>{'A', 'd', 'a', ' ', 'm', 'e', 't', ' ', 'B', 'o'}));
  EXPECT_EQ(ner.examples[0].labels, (std::vector<int64_t>{0, -100, -100, 1, -100, -100, -100, 0, -100, -100}));

  auto expect_code = [&](DataFormat format, const std::string& line, const std::string& code) {
    o.format = format;
    o.label_names = {"neg", "pos"};
    testing::WriteText(dir_ / "bad.jsonl", line + "\n");
    try {
      ReadDataset(dir_ / "bad.jsonl", o);
      ADD_FAILURE() << line;
    } catch (const DataError& e) {
      EXPECT_EQ(e.issues()[0].code, code) << e.what();
    }
  };
  expect_code(DataFormat::kClassification, R"({"text": "meh", "label": "neutral"})", "unknown_label");
  expect_code(DataFormat::kClassification, R"({"text": "meh", "label": 5})", "unknown_label");
  expect_code(DataFormat::kNer, R"({"tokens": ["a", "b"], "tags": ["pos"]})", "tags_tokens_length_mismatch");
}

}  // namespace
}  // namespace shardtune

namespace shardtune {
namespace {

// With a SentencePiece-style tokenizer, segments must be tokenized as the running text is: no
// dummy prefix before a completion, tags on the words' own tokens.
TEST(FormatsWithLlama2, SegmentsTokenizeAsTheRenderedText) {
  const fs::path path = testing::FixturesDir() / "tokenizers" / "llama2-tokenizer.json";
  SKIP_WITHOUT_FIXTURE(path);
  const auto tokenizer = Tokenizer::Load(path);
  FormatOptions o;
  o.tokenizer = tokenizer.get();
  o.vocab_size = tokenizer->vocab_size();
  o.bos_id = 1;
  o.eos_id = 2;
  testing::ScratchDir dir;
  o.format = DataFormat::kCompletion;
  testing::WriteText(dir / "c.jsonl", R"({"prompt": "### Response:\n", "completion": "Sure"})"
                                      "\n");
  const Example c = ReadDataset(dir / "c.jsonl", o).examples.at(0);
  std::vector<int64_t> expected = {1};
  for (int64_t id : tokenizer->Encode("### Response:\nSure", false)) expected.push_back(id);
  expected.push_back(2);
  EXPECT_EQ(c.input_ids, expected);
  EXPECT_EQ(c.labels.back(), 2);
  EXPECT_EQ(c.labels[c.labels.size() - 2], c.input_ids[c.input_ids.size() - 2]);  // "Sure" is trained
  EXPECT_EQ(c.labels[1], -100);

  o.format = DataFormat::kNer;
  testing::WriteText(dir / "n.jsonl", R"({"tokens": ["Ada", "met", "Bo"], "tags": ["B-PER", "O", "B-PER"]})"
                                      "\n");
  const Example n = ReadDataset(dir / "n.jsonl", o).examples.at(0);
  for (size_t t = 0; t < n.labels.size(); ++t) {
    if (n.labels[t] >= 0) {
      EXPECT_NE(tokenizer->IdToToken(n.input_ids[t]), "\xE2\x96\x81") << t;  // never a bare "▁"
    }
  }
  EXPECT_EQ(std::count_if(n.labels.begin(), n.labels.end(), [](int64_t l) { return l >= 0; }), 3);
}

}  // namespace
}  // namespace shardtune
