#include "common/utf8.h"

#include <cstdint>

namespace shardtune {

size_t FindInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t length = 0;
    uint32_t min_code = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      length = 2, min_code = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3, min_code = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4, min_code = 0x10000;
    } else {
      return i;
    }
    if (i + length > s.size()) return i;
    uint32_t code = c & (0xFF >> (length + 1));
    for (size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(s[i + k]);
      if ((next & 0xC0) != 0x80) return i;
      code = (code << 6) | (next & 0x3F);
    }
    if (code < min_code || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return i;
    i += length;
  }
  return std::string_view::npos;
}

}  // namespace shardtune
