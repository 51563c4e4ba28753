#include "common/job_spec_reader.h"

#include <string_view>

namespace shardtune::spec_yaml {

namespace fs = std::filesystem;

std::string NodeKind(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "nothing";
    default:
      return fmt::format("'{}'", node.Scalar());
  }
}

void SpecReader::Problem(const YAML::Mark& mark, const std::string& path, const std::string& message) {
  if (mark.is_null()) {
    problems_.push_back(fmt::format("{}: {}", path, message));
  } else {
    problems_.push_back(fmt::format("{} (line {}, column {}): {}", path, mark.line + 1, mark.column + 1, message));
  }
}

std::string SpecReader::Resolve(const std::string& path) const {
  if (path.empty() || fs::path(path).is_absolute()) return path;
  return (base_dir_ / path).lexically_normal().string();
}

MapReader::MapReader(SpecReader& reader, const YAML::Node& node, std::string path, YAML::Mark mark)
    : reader_(reader), node_(node), path_(std::move(path)), mark_(mark) {
  if (node_.IsDefined() && !node_.IsNull() && !node_.IsMap()) {
    reader_.Problem(node_.Mark(), path_.empty() ? "(top level)" : path_, "expected a mapping, got " + NodeKind(node_));
    valid_ = false;
  }
  // yaml-cpp keeps one of two equal keys silently; a user who wrote both meant something.
  if (valid_ && node_ && node_.IsMap()) {
    std::map<std::string, int> first_line;
    for (const auto& entry : node_) {
      const std::string key = entry.first.Scalar();
      const auto [it, inserted] = first_line.emplace(key, entry.first.Mark().line + 1);
      if (!inserted) {
        reader_.Problem(entry.first.Mark(), Join(key),
                        fmt::format("duplicate key '{}' (first at line {})", key, it->second));
      }
    }
  }
}

void MapReader::Int(const char* key, int64_t* out, int64_t min, int64_t max) {
  const YAML::Node value = Scalar(key, "an integer");
  if (!value) return;
  try {
    const auto v = value.as<int64_t>();
    if (v < min || v > max) {
      Problem(value, key,
              max == std::numeric_limits<int64_t>::max() ? fmt::format("must be >= {}, got {}", min, v)
                                                         : fmt::format("must be in [{}, {}], got {}", min, max, v));
      return;
    }
    *out = v;
  } catch (const YAML::Exception&) {
    Problem(value, key, "expected an integer, got " + NodeKind(value));
  }
}

void MapReader::Int(const char* key, int* out, int min, int max) {
  int64_t v = *out;
  Int(key, &v, min, max);
  *out = static_cast<int>(v);
}

void MapReader::Uint(const char* key, uint64_t* out) {
  const YAML::Node value = Scalar(key, "a non-negative integer");
  if (!value) return;
  try {
    if (!value.Scalar().empty() && value.Scalar()[0] == '-') throw YAML::Exception(value.Mark(), "negative");
    *out = value.as<uint64_t>();
  } catch (const YAML::Exception&) {
    Problem(value, key, "expected a non-negative integer, got " + NodeKind(value));
  }
}

void MapReader::Double(const char* key, double* out, double min, double max, bool min_open, bool max_open) {
  const YAML::Node value = Scalar(key, "a number");
  if (!value) return;
  double v = 0;
  try {
    v = value.as<double>();
  } catch (const YAML::Exception&) {
    Problem(value, key, "expected a number, got " + NodeKind(value));
    return;
  }
  const bool below = min_open ? !(v > min) : !(v >= min);
  const bool above = max_open ? !(v < max) : !(v <= max);
  if (below || above) {
    const std::string upper =
        max == std::numeric_limits<double>::infinity() ? "inf)" : fmt::format("{}{}", max, max_open ? ")" : "]");
    Problem(value, key, fmt::format("must be in {}{}, {}, got {}", min_open ? "(" : "[", min, upper, v));
    return;
  }
  *out = v;
}

void MapReader::Bool(const char* key, bool* out) {
  const YAML::Node value = Scalar(key, "true or false");
  if (!value) return;
  try {
    *out = value.as<bool>();
  } catch (const YAML::Exception&) {
    Problem(value, key, "expected true or false, got " + NodeKind(value));
  }
}

void MapReader::String(const char* key, std::string* out, bool required) {
  const YAML::Node value = Scalar(key, "a string");
  if (!value) {
    if (required && !Present(key)) MissingProblem(key);
    return;
  }
  *out = value.Scalar();
}

void MapReader::Path(const char* key, std::string* out, bool required) {
  String(key, out, required);
  *out = reader_.Resolve(*out);
}

void MapReader::DataPath(const char* key, std::string* out, bool required) {
  String(key, out, required);
  static constexpr std::string_view kUploaded = kUploadedFilePrefix;
  if (out->rfind(kUploaded, 0) != 0) {
    *out = reader_.Resolve(*out);
    return;
  }
  const std::string id = out->substr(kUploaded.size());
  if (const auto path = reader_.ResolveUploaded(id)) {
    *out = *path;
    return;
  }
  Problem(node_[key], key,
          reader_.resolves_uploads()
              ? fmt::format("no uploaded file '{}' (see shardtune files list)", id)
              : fmt::format("'{}' names an uploaded file, which only shardtune-server resolves: submit the job to it",
                            *out));
}

void MapReader::StringList(const char* key, std::vector<std::string>* out, bool* single) {
  const YAML::Node value = Get(key);
  if (!value || value.IsNull()) return;
  std::vector<std::string> result;
  if (value.IsScalar() && single != nullptr) {
    result.push_back(value.Scalar());
    *single = true;
  } else if (value.IsSequence()) {
    for (size_t i = 0; i < value.size(); ++i) {
      if (!value[i].IsScalar() || value[i].Scalar().empty()) {
        Problem(value[i], fmt::format("{}[{}]", key, i), "expected a non-empty string, got " + NodeKind(value[i]));
        return;
      }
      result.push_back(value[i].Scalar());
    }
    if (single != nullptr) *single = false;
  } else {
    Problem(value, key,
            std::string("expected a list of strings") + (single ? " or one string" : "") + ", got " + NodeKind(value));
    return;
  }
  *out = result;
}

void MapReader::NonEmptyIfGiven(const char* key, const std::vector<std::string>& list) {
  const YAML::Node value = Present(key) ? Get(key) : YAML::Node();
  if (value.IsSequence() && value.size() == 0 && list.empty())
    Problem(value, key, "is empty; name at least one module, or leave the key out for the model's defaults");
}

void MapReader::StringMap(const char* key, std::map<std::string, std::string>* out) {
  const YAML::Node value = Get(key);
  if (!value || value.IsNull()) return;
  if (!value.IsMap()) {
    Problem(value, key, "expected a mapping of strings, got " + NodeKind(value));
    return;
  }
  for (const auto& entry : value) {
    if (!entry.second.IsScalar()) {
      Problem(entry.second, fmt::format("{}.{}", key, entry.first.Scalar()),
              "expected a string, got " + NodeKind(entry.second));
      continue;
    }
    (*out)[entry.first.Scalar()] = entry.second.Scalar();
  }
}

MapReader MapReader::Section(const char* key) {
  const YAML::Node value = Get(key);
  reader_.NoteSection(Join(key));
  return MapReader(reader_, value ? value : YAML::Node(), Join(key), value ? value.Mark() : mark_);
}

void MapReader::Finish() {
  if (!valid_ || !node_ || !node_.IsMap()) return;
  std::vector<std::string> known(known_.begin(), known_.end());
  for (const auto& entry : node_) {
    const std::string key = entry.first.Scalar();
    if (known_.count(key)) continue;
    const std::string suggestion = ClosestMatch(key, known);
    reader_.Problem(entry.first.Mark(), Join(key),
                    suggestion.empty() ? fmt::format("unknown key '{}'; expected one of: {}", key, JoinNames(known))
                                       : fmt::format("unknown key '{}' (did you mean '{}'?)", key, suggestion));
  }
}

std::string MapReader::JoinNames(const std::vector<std::string>& names) {
  std::string joined;
  for (const auto& name : names) joined += (joined.empty() ? "" : ", ") + name;
  return joined;
}

YAML::Node MapReader::Get(const char* key) {
  known_.insert(key);
  reader_.NoteKey(Join(key));
  if (!valid_ || !node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  const YAML::Node value = node_[key];
  return value ? value : YAML::Node(YAML::NodeType::Undefined);
}

YAML::Node MapReader::Scalar(const char* key, const char* expected) {
  const YAML::Node value = Get(key);
  if (!value || value.IsNull()) return YAML::Node(YAML::NodeType::Undefined);
  if (!value.IsScalar()) {
    Problem(value, key, fmt::format("expected {}, got {}", expected, NodeKind(value)));
    return YAML::Node(YAML::NodeType::Undefined);
  }
  return value;
}

void MapReader::MissingProblem(const char* key, const std::string& choices) {
  reader_.Problem(mark_, Join(key), choices.empty() ? "is required" : "is required (one of: " + choices + ")");
}

}  // namespace shardtune::spec_yaml
