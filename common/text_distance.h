#pragma once
// "Did you mean" suggestions for misspelled keys and enum values.

#include <string>
#include <string_view>
#include <vector>

namespace shardtune {

// Levenshtein distance (insertions, deletions, substitutions of single bytes).
size_t EditDistance(std::string_view a, std::string_view b);

// The candidate closest to `word`, if it is close enough to be a plausible typo; else "".
std::string ClosestMatch(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace shardtune
