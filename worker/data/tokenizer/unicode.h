#pragma once
// UTF-8 and Unicode helpers for the tokenizers: code point and grapheme iteration, GPT-2's
// byte <-> printable character map, and ICU normalization.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace shardtune {

// Splits UTF-8 text into its characters (each a 1-4 byte string). Invalid bytes become
// one-byte "characters" of their own, so nothing is lost.
std::vector<std::string> Utf8Characters(std::string_view text);

// The byte length of the valid UTF-8 sequence that starts text[at], or 0 where none does
// (a stray continuation byte, a truncated, overlong or surrogate sequence).
size_t ValidUtf8Length(std::string_view text, size_t at);

bool IsValidUtf8(std::string_view text);

// Splits valid UTF-8 text into extended grapheme clusters (Unicode UAX #29, as ICU's character
// break iterator and Rust's unicode-segmentation `graphemes(true)` compute them): a base character
// with its combining marks, an emoji ZWJ sequence, a CR LF pair. The views point into `text`.
std::vector<std::string_view> Utf8Graphemes(std::string_view text);

// Invalid sequences replaced by U+FFFD, one per bad byte (as Rust's from_utf8_lossy does).
std::string Utf8Lossy(std::string_view bytes);

// GPT-2's byte-level alphabet: byte b <-> one printable code point, UTF-8 encoded.
const std::string& ByteToUnicode(uint8_t byte);
// The byte a GPT-2 alphabet character stands for, or -1.
int UnicodeToByte(std::string_view character);

enum class NormalizationForm { kNfc, kNfd, kNfkc, kNfkd };
std::string NormalizeUnicode(std::string_view text, NormalizationForm form);
std::string LowercaseUnicode(std::string_view text);
// Removes combining marks (category Mn) — after NFD this strips accents.
std::string StripCombiningMarks(std::string_view text);

}  // namespace shardtune
