#include "launcher/api_values.h"

#include <algorithm>
#include <cctype>

namespace shardtune::api {

namespace {

constexpr char kUnspecified[] = "UNSPECIFIED";

// The prefix of `type`'s values: its zero's name without UNSPECIFIED ("JOB_STATUS_").
std::string Prefix(const google::protobuf::EnumDescriptor* type) {
  const auto* zero = type->FindValueByNumber(0);
  if (zero == nullptr) return "";
  const std::string& name = zero->name();
  const size_t at = name.rfind(kUnspecified);
  return at == std::string::npos ? "" : name.substr(0, at);
}

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

std::string Upper(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::toupper(c); });
  return text;
}

}  // namespace

std::string ShortName(const google::protobuf::EnumDescriptor* type, int value) {
  if (value == 0) return "";
  const auto* v = type->FindValueByNumber(value);
  if (v == nullptr) return std::to_string(value);
  const std::string prefix = Prefix(type);
  const std::string& name = v->name();
  return Lower(name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name);
}

std::optional<int> ParseName(const google::protobuf::EnumDescriptor* type, const std::string& text) {
  const std::string upper = Upper(text);
  const auto* v = type->FindValueByName(upper);
  if (v == nullptr) v = type->FindValueByName(Prefix(type) + upper);
  if (v == nullptr || v->number() == 0) return std::nullopt;
  return v->number();
}

std::string ShortNames(const google::protobuf::EnumDescriptor* type) {
  std::string names;
  for (int i = 0; i < type->value_count(); ++i) {
    if (type->value(i)->number() == 0) continue;
    if (!names.empty()) names += ", ";
    names += ShortName(type, type->value(i)->number());
  }
  return names;
}

}  // namespace shardtune::api
