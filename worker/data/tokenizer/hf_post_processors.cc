// tokenizer.json post-processors, for single sequences: one builder per "type", dispatched
// through PostProcessors().
#include <map>

#include "worker/data/tokenizer/hf_stages.h"

namespace shardtune::hf {

namespace {

int64_t IdOfPair(const json& pair, const std::string& where) {
  if (!pair.is_array() || pair.size() != 2) Malformed(where, "expected [token, id]");
  return TokenId(pair[1], "the id of a [token, id] pair", where);
}

PostProcessor BuildTemplate(const json& node, const std::string& where) {
  std::map<std::string, std::vector<int64_t>> specials;
  if (node.contains("special_tokens")) {
    for (const auto& [name, special] : node["special_tokens"].items()) {
      const json& ids = special.at("ids");
      if (!ids.is_array())  // nlohmann would iterate a lone number as a list of one
        Malformed(where, fmt::format("the ids of special token {} must be a list, got {}", name, ids.dump()));
      for (const json& id : ids) specials[name].push_back(TokenId(id, "an id of special token " + name, where));
    }
  }
  std::vector<std::vector<int64_t>> template_ids;  // empty vector = the sequence itself
  for (const json& item : Field(node, "single", where)) {
    if (item.contains("SpecialToken")) {
      const std::string id = StringField(item["SpecialToken"], "id", where);
      if (!specials.count(id))
        Malformed(where, fmt::format("TemplateProcessing uses special token '{}' without listing it", id));
      template_ids.push_back(specials[id]);
    } else {
      template_ids.push_back({});
    }
  }
  return [template_ids](std::vector<int64_t> ids) {
    std::vector<int64_t> out;
    for (const auto& item : template_ids) {
      if (item.empty())
        out.insert(out.end(), ids.begin(), ids.end());
      else
        out.insert(out.end(), item.begin(), item.end());
    }
    return out;
  };
}

// RobertaProcessing and BertProcessing alike: [CLS] ids [SEP].
PostProcessor BuildClsSep(const json& node, const std::string& where) {
  const int64_t cls = IdOfPair(Field(node, "cls", where), where), sep = IdOfPair(Field(node, "sep", where), where);
  return [cls, sep](std::vector<int64_t> ids) {
    ids.insert(ids.begin(), cls);
    ids.push_back(sep);
    return ids;
  };
}

PostProcessor BuildByteLevel(const json&, const std::string&) { return nullptr; }  // only adjusts offsets

PostProcessor BuildSequence(const json& node, const std::string& where) {
  std::vector<PostProcessor> parts = ParseParts(node, "processors", where, &ParsePostProcessor);
  return [parts = std::move(parts)](std::vector<int64_t> ids) {
    for (const auto& p : parts) ids = p(std::move(ids));
    return ids;
  };
}

}  // namespace

PostProcessor ParsePostProcessor(const json& node, const std::string& where) {
  static const Registry<PostProcessor> registry = {
      {"BertProcessing", &BuildClsSep}, {"ByteLevel", &BuildByteLevel},         {"RobertaProcessing", &BuildClsSep},
      {"Sequence", &BuildSequence},     {"TemplateProcessing", &BuildTemplate},
  };
  return ParseOptionalStage(registry, "post-processor", node, where);
}

}  // namespace shardtune::hf
