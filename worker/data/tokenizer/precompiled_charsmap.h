#pragma once
// SentencePiece's compiled normalization rules ("precompiled charsmap"): the blob a .model carries
// in normalizer_spec.precompiled_charsmap and a tokenizer.json's "Precompiled" normalizer carries
// in base64. T5, ALBERT, XLNet, mT5 and XLM-R normalize with it (NFKC plus SentencePiece's "nmt"
// rules: control characters removed, zero-width characters and odd spaces made spaces, ...).
//
// Layout, little-endian:
//   uint32                the trie's size in bytes
//   uint32[size / 4]      a darts-clone double-array trie; keys are UTF-8 strings (a character or
//                         a short sequence), each key's value an offset into the strings below
//   char[]                the replacement strings, each NUL-terminated
//
// Two ways to apply it, because the two libraries that use it differ and ids must match each:
//   SentencePiece (a .model): at each position the LONGEST key that prefixes the rest of the text
//     is replaced; with no key, one character is copied (an invalid byte becomes U+FFFD).
//   Hugging Face tokenizers (a tokenizer.json): the text goes grapheme by grapheme; a grapheme of
//     fewer than 6 bytes that some key prefixes is replaced whole by the SHORTEST such key's
//     replacement; any other grapheme goes character by character the same way.
// The object is immutable after Parse and safe to share across threads.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardtune {

class PrecompiledCharsmap {
 public:
  // Throws Error(kDataLoss) naming `where` when the blob is too short, its trie size is not a
  // whole number of units or runs past the blob.
  static PrecompiledCharsmap Parse(std::string_view blob, const std::string& where);
  // The same from tokenizer.json's base64 text; Error(kInvalidArgument) when it is not base64.
  static PrecompiledCharsmap ParseBase64(std::string_view base64, const std::string& where);

  struct Match {
    size_t length;                 // bytes of the text the key covers
    std::string_view replacement;  // points into this object
  };
  // Every key that is a prefix of `text`, shortest first (darts-clone's commonPrefixSearch; the
  // search stops at a NUL byte, which no key holds).
  std::vector<Match> PrefixMatches(std::string_view text) const;

  // SentencePiece's step: the replacement of the longest key prefixing `text` and the bytes it
  // covers; with none, the first character itself (an invalid byte: U+FFFD, covering one byte).
  // `text` must not be empty.
  std::pair<std::string_view, size_t> NormalizePrefix(std::string_view text) const;

  // Hugging Face tokenizers' rule (see above) over valid UTF-8 text.
  std::string NormalizeByGrapheme(std::string_view text) const;

 private:
  PrecompiledCharsmap(std::vector<uint32_t> units, std::string strings, std::string where)
      : units_(std::move(units)), strings_(std::move(strings)), where_(std::move(where)) {}

  // The NUL-terminated string at `offset`; Error(kDataLoss) when the offset is past the strings.
  std::string_view StringAt(uint32_t offset) const;
  // The replacement of the shortest key prefixing `text`, as tokenizers' `transform` gives it.
  std::optional<std::string_view> ShortestReplacement(std::string_view text) const;

  std::vector<uint32_t> units_;
  std::string strings_;
  std::string where_;  // names the charsmap's source in errors
};

}  // namespace shardtune
