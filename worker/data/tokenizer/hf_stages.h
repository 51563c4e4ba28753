#pragma once
// The five stages of Hugging Face `tokenizers`' pipeline, each built from its tokenizer.json node:
//   normalizer -> pre-tokenizer -> model -> post-processor   (encoding)
//   decoder                                                   (decoding)
// Each Parse* reads the node's "type" and dispatches through that stage's registry (one builder
// per type, in hf_<stage>.cc); an unknown type throws Error naming `where`, the stage and the type.
// A null node (the stage is absent) gives an empty stage, which the tokenizer skips; so do types
// that do nothing to ids or text. Semantics follow the Rust implementation, so ids match it.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "worker/data/tokenizer/hf_json.h"

namespace shardtune::hf {

// Text -> normalized text (hf_normalizers.cc).
using Normalizer = std::function<std::string(std::string)>;
Normalizer ParseNormalizer(const json& node, const std::string& where);

// Pieces -> finer pieces (hf_pre_tokenizers.cc). `at_start`: the pieces begin at the start of the
// whole text (not after an added token), which Metaspace's prepend_scheme "first" needs to know.
using PreTokenizer = std::function<Pieces(Pieces, bool at_start)>;
PreTokenizer ParsePreTokenizer(const json& node, const std::string& where);

// One pre-tokenized piece -> token ids (hf_models.cc): BPE, WordPiece, Unigram.
class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of `piece` to `out`.
  virtual void Encode(const std::string& piece, std::vector<int64_t>& out) const = 0;

  std::optional<int64_t> Find(const std::string& token) const {
    const auto it = vocab_.find(token);
    return it == vocab_.end() ? std::nullopt : std::optional<int64_t>(it->second);
  }
  // Indexed by id; ids the vocabulary skips map to "".
  const std::vector<std::string>& id_to_token() const { return id_to_token_; }

  void SetVocab(std::unordered_map<std::string, int64_t> vocab);

 protected:
  // The byte tokens "<0xAB>" that spell `character`, if the vocabulary has all of them.
  std::optional<std::vector<int64_t>> ByteFallback(const std::string& character) const;

 private:
  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> id_to_token_;
};
// The model's "type" may be absent in older files; its fields tell which it is.
std::unique_ptr<Model> ParseModel(const json& node, const std::string& where);

// The ids of one sequence -> with special tokens added (hf_post_processors.cc).
using PostProcessor = std::function<std::vector<int64_t>(std::vector<int64_t>)>;
PostProcessor ParsePostProcessor(const json& node, const std::string& where);

// Token strings -> text pieces, concatenated by the caller (hf_decoders.cc).
using Decoder = std::function<std::vector<std::string>(std::vector<std::string>)>;
Decoder ParseDecoder(const json& node, const std::string& where);

}  // namespace shardtune::hf
