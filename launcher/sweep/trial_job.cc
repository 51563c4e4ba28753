#include "launcher/sweep/trial_job.h"

#include <fmt/format.h>

#include <cmath>

namespace shardtune::sweep {

namespace {

// Doubles are written in their shortest form that reads back to the same double (fmt's "{}"),
// so a trial's job.yaml says lr: 0.001, not 0.0010000000000000000208.
YAML::Node JsonToYaml(const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::number_float: {
      const double v = value.get<double>();
      // A whole double keeps a decimal point, so that it reads back as a double, not an integer.
      return YAML::Node(std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15 ? fmt::format("{:.1f}", v)
                                                                                      : fmt::format("{}", v));
    }
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
      return YAML::Node(value.dump());
    case nlohmann::json::value_t::boolean:
      return YAML::Node(value.get<bool>());
    case nlohmann::json::value_t::string:
      return YAML::Node(value.get<std::string>());
    case nlohmann::json::value_t::array: {
      YAML::Node list(YAML::NodeType::Sequence);
      for (const auto& element : value) list.push_back(JsonToYaml(element));
      return list;
    }
    case nlohmann::json::value_t::object: {
      YAML::Node map(YAML::NodeType::Map);
      for (const auto& [key, element] : value.items()) map[key] = JsonToYaml(element);
      return map;
    }
    default:
      return YAML::Node(YAML::NodeType::Null);
  }
}

// Sets `value` at the dotted `path` under `root`, replacing whatever is not a mapping on the way
// (the job's validation then judges the result).
void SetPath(YAML::Node root, const std::string& path, const YAML::Node& value) {
  YAML::Node node = root;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (dot == std::string::npos) {
      node[key] = value;
      return;
    }
    if (!node[key].IsMap()) node[key] = YAML::Node(YAML::NodeType::Map);
    // reset(), not assignment: assigning a yaml-cpp node overwrites the node it refers to.
    node.reset(node[key]);
    start = dot + 1;
  }
}

}  // namespace

nlohmann::json YamlToJson(const YAML::Node& node) {
  if (node.IsSequence()) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& element : node) list.push_back(YamlToJson(element));
    return list;
  }
  if (node.IsMap()) {
    nlohmann::json map = nlohmann::json::object();
    for (const auto& entry : node) map[entry.first.Scalar()] = YamlToJson(entry.second);
    return map;
  }
  if (!node.IsScalar()) return nullptr;
  // A quoted scalar ("8") stays a string, as YAML reads it.
  if (node.Tag() == "!") return node.Scalar();
  int64_t i = 0;
  double d = 0;
  bool b = false;
  if (YAML::convert<int64_t>::decode(node, i)) return i;
  if (YAML::convert<double>::decode(node, d) && std::isfinite(d)) return d;
  if (YAML::convert<bool>::decode(node, b)) return b;
  return node.Scalar();
}

TrialJob MakeTrialJob(const std::string& base_yaml, const std::filesystem::path& base_dir,
                      const TrialSettings& settings, const std::string& source, const SpecOptions& options) {
  YAML::Node root;
  try {
    root = YAML::Load(base_yaml);
  } catch (const YAML::ParserException& e) {
    throw SpecError(source, {fmt::format("the base job spec is not valid YAML (line {}, column {}): {}",
                                         e.mark.line + 1, e.mark.column + 1, e.msg)});
  }
  if (!root.IsMap()) throw SpecError(source, {"the base job spec is not a mapping of sections"});
  for (const auto& [path, value] : settings.values) SetPath(root, path, JsonToYaml(value));
  if (!settings.name.empty()) root["name"] = settings.name;
  if (!settings.output_dir.empty()) SetPath(root, "output.dir", YAML::Node(settings.output_dir));
  YAML::Emitter out;
  out << root;
  TrialJob job;
  job.spec = ParseJobSpec(out.c_str(), source, base_dir, options);
  job.yaml = JobSpecToYaml(job.spec);
  return job;
}

}  // namespace shardtune::sweep
