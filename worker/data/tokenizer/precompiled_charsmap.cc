#include "worker/data/tokenizer/precompiled_charsmap.h"

#include <algorithm>
#include <array>

#include "common/error.h"
#include "worker/data/tokenizer/unicode.h"

namespace shardtune {

namespace {

constexpr const char* kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD
// tokenizers replaces a grapheme whole only below this many bytes (longer ones go by character).
constexpr size_t kWholeGraphemeBytes = 6;

// A darts-clone unit. An inner node: bits 0-7 its label (the key byte that leads to it), bit 8
// "a key ends here" (its value is then the unit at offset ^ 0), bits 10-31 the offset to its
// children, scaled by 256 when bit 9 is set. A value unit: bit 31 set, the value in bits 0-30;
// the set bit 31 keeps a value unit from ever matching a label.
constexpr bool HasLeaf(uint32_t unit) { return ((unit >> 8) & 1) != 0; }
constexpr uint32_t Value(uint32_t unit) { return unit & 0x7FFFFFFFu; }
constexpr uint32_t Label(uint32_t unit) { return unit & (0x80000000u | 0xFFu); }
constexpr uint32_t Offset(uint32_t unit) { return (unit >> 10) << ((unit & 0x200u) >> 6); }

uint32_t ReadLittleEndian32(std::string_view bytes, size_t at) {
  uint32_t value = 0;
  for (size_t k = 0; k < 4; ++k) value |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[at + k])) << (8 * k);
  return value;
}

// Standard base64 (RFC 4648, '+' and '/', '=' padding), as serde writes tokenizer.json's blob.
std::string DecodeBase64(std::string_view text, const std::string& where) {
  static const std::array<int8_t, 256> kValues = [] {
    std::array<int8_t, 256> values{};
    values.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) values[static_cast<unsigned char>(alphabet[i])] = static_cast<int8_t>(i);
    return values;
  }();
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  std::string out;
  out.reserve(text.size() * 3 / 4);
  uint32_t bits = 0;
  int bit_count = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const int8_t value = kValues[static_cast<unsigned char>(text[i])];
    if (value < 0) {
      Fail(ErrorCode::kInvalidArgument, "{}: precompiled_charsmap is not base64 (character {} is '{}')", where, i,
           text[i]);
    }
    bits = (bits << 6) | static_cast<uint32_t>(value);
    bit_count += 6;
    if (bit_count >= 8) {
      bit_count -= 8;
      out.push_back(static_cast<char>((bits >> bit_count) & 0xFF));
    }
  }
  return out;
}

}  // namespace

PrecompiledCharsmap PrecompiledCharsmap::Parse(std::string_view blob, const std::string& where) {
  if (blob.size() < 4)
    Fail(ErrorCode::kDataLoss, "{}: precompiled charsmap of {} bytes is too short", where, blob.size());
  const uint32_t trie_bytes = ReadLittleEndian32(blob, 0);
  if (trie_bytes % 4 != 0 || trie_bytes == 0 || trie_bytes > blob.size() - 4) {
    Fail(ErrorCode::kDataLoss,
         "{}: precompiled charsmap says its trie has {} bytes, which is not a positive multiple of 4 within the "
         "{} bytes that follow",
         where, trie_bytes, blob.size() - 4);
  }
  std::vector<uint32_t> units(trie_bytes / 4);
  for (size_t i = 0; i < units.size(); ++i) units[i] = ReadLittleEndian32(blob, 4 + 4 * i);
  return PrecompiledCharsmap(std::move(units), std::string(blob.substr(4 + trie_bytes)), where);
}

PrecompiledCharsmap PrecompiledCharsmap::ParseBase64(std::string_view base64, const std::string& where) {
  return Parse(DecodeBase64(base64, where), where);
}

std::vector<PrecompiledCharsmap::Match> PrecompiledCharsmap::PrefixMatches(std::string_view text) const {
  std::vector<Match> matches;
  size_t node = Offset(units_[0]);
  for (size_t i = 0; i < text.size() && text[i] != '\0'; ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    node ^= byte;
    if (node >= units_.size() || Label(units_[node]) != byte) break;
    const uint32_t unit = units_[node];
    node ^= Offset(unit);
    if (!HasLeaf(unit)) continue;
    if (node >= units_.size()) break;  // a corrupt trie: stop as if the key ended
    matches.push_back({i + 1, StringAt(Value(units_[node]))});
  }
  return matches;
}

std::string_view PrecompiledCharsmap::StringAt(uint32_t offset) const {
  if (offset >= strings_.size()) {
    Fail(ErrorCode::kDataLoss, "{}: precompiled charsmap points at byte {} of its {} bytes of replacement strings",
         where_, offset, strings_.size());
  }
  const size_t end = strings_.find('\0', offset);
  return std::string_view(strings_).substr(offset, (end == std::string::npos ? strings_.size() : end) - offset);
}

std::pair<std::string_view, size_t> PrecompiledCharsmap::NormalizePrefix(std::string_view text) const {
  const std::vector<Match> matches = PrefixMatches(text);
  if (!matches.empty()) return {matches.back().replacement, matches.back().length};  // the longest
  const size_t length = ValidUtf8Length(text, 0);
  if (length == 0) return {kReplacementCharacter, 1};
  return {text.substr(0, length), length};
}

std::optional<std::string_view> PrecompiledCharsmap::ShortestReplacement(std::string_view text) const {
  const std::vector<Match> matches = PrefixMatches(text);
  if (matches.empty()) return std::nullopt;
  return matches.front().replacement;
}

std::string PrecompiledCharsmap::NormalizeByGrapheme(std::string_view text) const {
  // tokenizers' rule, odd as it is (a short grapheme whose first character alone is a key loses
  // the rest: full-width A + U+0301 becomes "A"): the Rust implementation says it is what matches
  // SentencePiece-trained models on XNLI in every language, and ids must match it.
  std::string out;
  out.reserve(text.size());
  for (const std::string_view grapheme : Utf8Graphemes(text)) {
    if (grapheme.size() < kWholeGraphemeBytes) {
      if (const auto replacement = ShortestReplacement(grapheme)) {
        out += *replacement;
        continue;
      }
    }
    for (size_t i = 0; i < grapheme.size();) {
      const size_t length = std::max<size_t>(1, ValidUtf8Length(grapheme, i));
      const std::string_view character = grapheme.substr(i, length);
      const auto replacement = ShortestReplacement(character);
      out += replacement ? *replacement : character;
      i += length;
    }
  }
  return out;
}

}  // namespace shardtune
