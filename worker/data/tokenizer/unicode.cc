#include "worker/data/tokenizer/unicode.h"

#include <unicode/brkiter.h>
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utext.h>

#include <array>
#include <memory>
#include <unordered_map>

#include "common/error.h"

namespace shardtune {

namespace {

// Length of the UTF-8 sequence starting at text[i] if it is valid, else 0.
size_t ValidSequenceLength(std::string_view text, size_t i) {
  const auto c = static_cast<unsigned char>(text[i]);
  size_t length = 0;
  uint32_t code = 0, min = 0;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0)
    length = 2, code = c & 0x1F, min = 0x80;
  else if ((c & 0xF0) == 0xE0)
    length = 3, code = c & 0x0F, min = 0x800;
  else if ((c & 0xF8) == 0xF0)
    length = 4, code = c & 0x07, min = 0x10000;
  else
    return 0;
  if (i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    const auto next = static_cast<unsigned char>(text[i + k]);
    if ((next & 0xC0) != 0x80) return 0;
    code = (code << 6) | (next & 0x3F);
  }
  if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
  return length;
}

std::string EncodeUtf8(uint32_t code) {
  std::string out;
  if (code < 0x80) {
    out.push_back(static_cast<char>(code));
  } else if (code < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (code >> 6)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else if (code < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (code >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (code >> 18)));
    out.push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  }
  return out;
}

// GPT-2: printable Latin-1 bytes map to themselves; the other 68 bytes map to 256, 257, ...
const std::array<std::string, 256>& ByteTable() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = EncodeUtf8(printable ? static_cast<uint32_t>(b) : next++);
    }
    return t;
  }();
  return table;
}

icu::UnicodeString ToIcu(std::string_view text) {
  return icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
}

std::string FromIcu(const icu::UnicodeString& text) {
  std::string out;
  text.toUTF8String(out);
  return out;
}

}  // namespace

std::vector<std::string> Utf8Characters(std::string_view text) {
  std::vector<std::string> characters;
  for (size_t i = 0; i < text.size();) {
    const size_t length = std::max<size_t>(1, ValidSequenceLength(text, i));
    characters.emplace_back(text.substr(i, length));
    i += length;
  }
  return characters;
}

size_t ValidUtf8Length(std::string_view text, size_t at) {
  return at < text.size() ? ValidSequenceLength(text, at) : 0;
}

bool IsValidUtf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t length = ValidSequenceLength(text, i);
    if (length == 0) return false;
    i += length;
  }
  return true;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  for (size_t i = 0; i < bytes.size();) {
    const size_t length = ValidSequenceLength(bytes, i);
    if (length == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(bytes.substr(i, length));
      i += length;
    }
  }
  return out;
}

std::vector<std::string_view> Utf8Graphemes(std::string_view text) {
  std::vector<std::string_view> graphemes;
  if (text.empty()) return graphemes;
  // One iterator per thread: creating one loads ICU's rules, which costs more than a short text's breaks.
  thread_local std::unique_ptr<icu::BreakIterator> iterator;
  UErrorCode status = U_ZERO_ERROR;
  if (!iterator) {
    iterator.reset(icu::BreakIterator::createCharacterInstance(icu::Locale::getRoot(), status));
    if (U_FAILURE(status))
      Fail(ErrorCode::kInternal, "ICU character break iterator unavailable: {}", u_errorName(status));
  }
  // A UText over the UTF-8 bytes makes the boundaries byte offsets.
  UText* utext = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status);
  if (U_FAILURE(status)) Fail(ErrorCode::kInternal, "ICU could not open the text: {}", u_errorName(status));
  iterator->setText(utext, status);
  if (U_FAILURE(status)) {
    utext_close(utext);
    Fail(ErrorCode::kInternal, "ICU could not segment the text: {}", u_errorName(status));
  }
  int32_t begin = iterator->first();
  for (int32_t end = iterator->next(); end != icu::BreakIterator::DONE; begin = end, end = iterator->next()) {
    graphemes.push_back(text.substr(static_cast<size_t>(begin), static_cast<size_t>(end - begin)));
  }
  utext_close(utext);
  return graphemes;
}

const std::string& ByteToUnicode(uint8_t byte) { return ByteTable()[byte]; }

int UnicodeToByte(std::string_view character) {
  static const std::unordered_map<std::string, int> inverse = [] {
    std::unordered_map<std::string, int> m;
    for (int b = 0; b < 256; ++b) m[ByteTable()[b]] = b;
    return m;
  }();
  const auto it = inverse.find(std::string(character));
  return it == inverse.end() ? -1 : it->second;
}

std::string NormalizeUnicode(std::string_view text, NormalizationForm form) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = nullptr;
  switch (form) {
    case NormalizationForm::kNfc:
      normalizer = icu::Normalizer2::getNFCInstance(status);
      break;
    case NormalizationForm::kNfd:
      normalizer = icu::Normalizer2::getNFDInstance(status);
      break;
    case NormalizationForm::kNfkc:
      normalizer = icu::Normalizer2::getNFKCInstance(status);
      break;
    case NormalizationForm::kNfkd:
      normalizer = icu::Normalizer2::getNFKDInstance(status);
      break;
  }
  if (U_FAILURE(status)) Fail(ErrorCode::kInternal, "ICU normalizer unavailable: {}", u_errorName(status));
  const icu::UnicodeString normalized = normalizer->normalize(ToIcu(text), status);
  if (U_FAILURE(status)) Fail(ErrorCode::kInternal, "ICU normalization failed: {}", u_errorName(status));
  return FromIcu(normalized);
}

std::string LowercaseUnicode(std::string_view text) {
  icu::UnicodeString s = ToIcu(text);
  s.toLower(icu::Locale::getRoot());
  return FromIcu(s);
}

std::string StripCombiningMarks(std::string_view text) {
  const icu::UnicodeString s = ToIcu(text);
  icu::UnicodeString out;
  for (int32_t i = 0; i < s.length();) {
    const UChar32 c = s.char32At(i);
    if (u_charType(c) != U_NON_SPACING_MARK) out.append(c);
    i += U16_LENGTH(c);
  }
  return FromIcu(out);
}

}  // namespace shardtune
