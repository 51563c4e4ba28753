#pragma once
// Whitespace trimming as the data formats and synthesis read a field: one definition, so that a
// field the trainer reads and the same field a teacher wrote compare alike.

#include <string>
#include <string_view>

namespace shardtune {

// `s` without its leading and trailing spaces, tabs, carriage returns and newlines.
inline std::string TrimWhitespace(std::string_view s) {
  const size_t begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return "";
  return std::string(s.substr(begin, s.find_last_not_of(" \t\r\n") - begin + 1));
}

}  // namespace shardtune
