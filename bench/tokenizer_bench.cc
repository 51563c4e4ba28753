// Tokenizer throughput: MB of text encoded per second on one core, for shardtune's tokenizers and,
// on the same text, the sentencepiece library (the baseline: this binary links no LibTorch, so
// the library can share it). Text: the instructions and outputs of the Alpaca fixture, repeated.
//   tokenizer_bench FIXTURES_DIR [SECONDS_PER_CASE]
#include <sentencepiece_processor.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "common/atomic_file.h"
#include "worker/data/tokenizer/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

// Encodes every document repeatedly for about `seconds`; returns MB/s and the token count.
template <typename Encode>
std::pair<double, size_t> Measure(const std::vector<std::string>& documents, double seconds, Encode encode) {
  size_t bytes = 0, tokens = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  while (elapsed < seconds) {
    for (const auto& d : documents) {
      tokens += encode(d);
      bytes += d.size();
    }
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  }
  return {static_cast<double>(bytes) / 1e6 / elapsed, tokens};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FIXTURES_DIR [SECONDS_PER_CASE]\n", argv[0]);
    return 2;
  }
  const std::string fixtures = argv[1];
  const double seconds = argc > 2 ? std::stod(argv[2]) : 2.0;
  std::vector<std::string> documents;
  for (const auto& record : nlohmann::json::parse(shardtune::ReadFile(fixtures + "/datasets/alpaca_en_demo.json"))) {
    documents.push_back(record.value("instruction", "") + "\n" + record.value("input", "") + "\n" +
                        record.value("output", ""));
  }
  size_t total = 0;
  for (const auto& d : documents) total += d.size();
  std::printf("text: %zu documents, %.2f MB (Alpaca fixture); one core; %.0f s per case\n\n", documents.size(),
              total / 1e6, seconds);
  std::printf("| tokenizer | implementation | MB/s | ratio to baseline |\n|---|---|---|---|\n");

  const std::string tokenizers = fixtures + "/tokenizers/";
  sentencepiece::SentencePieceProcessor library;
  if (!library.Load(tokenizers + "llama2-sentencepiece.model").ok()) return 1;
  const auto [baseline, library_tokens] = Measure(documents, seconds, [&](const std::string& d) {
    std::vector<int> ids;
    return library.Encode(d, &ids).ok() ? ids.size() : 0;
  });
  std::printf("| Llama-2 SentencePiece | sentencepiece library (baseline) | %.2f | 1.00 |\n", baseline);

  const std::pair<const char*, const char*> cases[] = {
      {"Llama-2 SentencePiece", "llama2-sentencepiece.model"},
      {"Llama-2 tokenizer.json", "llama2-tokenizer.json"},
      {"GPT-2 vocab + merges", "gpt2-vocab.json"},
      {"Qwen2-style tokenizer.json", "qwen2-style-tiny-bpe-tokenizer.json"},
      {"BERT WordPiece", "bert-base-cased-vocab.txt"},
  };
  for (const auto& [name, file] : cases) {
    const auto tokenizer = shardtune::Tokenizer::Load(tokenizers + file);
    const auto [rate, tokens] =
        Measure(documents, seconds, [&](const std::string& d) { return tokenizer->Encode(d, false).size(); });
    std::printf("| %s | shardtune | %.2f | %.2f |\n", name, rate, rate / baseline);
  }
  return 0;
}
