#pragma once
// Hugging Face `tokenizers`' pipeline, read from tokenizer.json: added tokens are split off
// first, then normalizer -> pre-tokenizer -> model (BPE, WordPiece, Unigram) -> post-processor;
// decoding runs the decoders. Each stage follows the Rust implementation's semantics, so ids
// match it byte for byte.

#include <filesystem>
#include <memory>
#include <string>

#include "worker/data/tokenizer/tokenizer.h"

namespace shardtune {

// `where` names the source in errors.
std::unique_ptr<Tokenizer> LoadHfTokenizerJson(const std::string& json_text, const std::string& where);
// GPT-2's vocab.json + merges.txt: byte-level BPE with GPT-2's pre-tokenizer regex.
std::unique_ptr<Tokenizer> LoadGpt2VocabMerges(const std::filesystem::path& vocab_json,
                                               const std::filesystem::path& merges_txt);

// BERT's vocab.txt (one WordPiece token a line): BERT's normalizer (cased: no lowercasing),
// pre-tokenizer, [CLS]/[SEP] post-processor and WordPiece decoder.
std::unique_ptr<Tokenizer> LoadWordPieceVocab(const std::filesystem::path& vocab_txt);

}  // namespace shardtune
