#pragma once
// Where a text stops being UTF-8. YAML and JSON are Unicode text, but yaml-cpp and a raw header
// read whatever bytes they are given; yaml-cpp's emitter then writes an invalid byte as U+FFFD,
// so a spec holding one would change on its way to the worker. Inputs are checked here first.

#include <cstddef>
#include <string_view>

namespace shardtune {

// The offset of the first byte that breaks UTF-8 (a bad lead or continuation byte, a truncated,
// overlong or surrogate sequence, a code point past U+10FFFF), or npos.
size_t FindInvalidUtf8(std::string_view text);

}  // namespace shardtune
