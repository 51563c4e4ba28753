#pragma once
// Text <-> token ids, exactly as Hugging Face `tokenizers` (or SentencePiece) would produce them.
// Load() reads a tokenizer.json, a SentencePiece .model, or a directory holding tokenizer.json,
// tokenizer.model, or vocab.json + merges.txt (GPT-2's pair).

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shardtune {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Throws Error naming the file and what is wrong with it.
  static std::unique_ptr<Tokenizer> Load(const std::filesystem::path& path);

  // `add_special_tokens`: let the post-processor add its tokens (BOS, EOS, CLS/SEP). Special
  // tokens written in the text are recognized either way. Invalid UTF-8 bytes are read as U+FFFD.
  virtual std::vector<int64_t> Encode(std::string_view text, bool add_special_tokens) const = 0;
  virtual std::string Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const = 0;

  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int64_t> TokenToId(const std::string& token) const = 0;
  virtual std::string IdToToken(int64_t id) const = 0;
  virtual bool IsSpecial(int64_t id) const = 0;
};

}  // namespace shardtune
