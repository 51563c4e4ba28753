#pragma once
// The API's values as people read them, shared by the server and the CLI: an enum value's short
// name ("running" for JOB_STATUS_RUNNING: its name without the prefix that its _UNSPECIFIED
// value shows, lowercase), read back from either form; and times, which the API carries as
// google.protobuf.Timestamp and the server keeps as Unix milliseconds.

#include <google/protobuf/generated_enum_reflection.h>
#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/util/time_util.h>

#include <cstdint>
#include <optional>
#include <string>

namespace shardtune::api {

// "running" for JOB_STATUS_RUNNING; "" for the _UNSPECIFIED zero; the number for an unknown value.
std::string ShortName(const google::protobuf::EnumDescriptor* type, int value);
template <typename E>
std::string ShortName(E value) {
  return ShortName(google::protobuf::GetEnumDescriptor<E>(), static_cast<int>(value));
}

// The value named `text`, short or full, in any case ("running", "RUNNING", "JOB_STATUS_RUNNING");
// nullopt for another text or the _UNSPECIFIED zero.
std::optional<int> ParseName(const google::protobuf::EnumDescriptor* type, const std::string& text);
template <typename E>
std::optional<E> ParseName(const std::string& text) {
  const auto value = ParseName(google::protobuf::GetEnumDescriptor<E>(), text);
  return value ? std::optional<E>(static_cast<E>(*value)) : std::nullopt;
}

// Every short name of `type` but the zero's, joined by ", " (for help texts and errors).
std::string ShortNames(const google::protobuf::EnumDescriptor* type);

// Unix milliseconds as a Timestamp (for a time that is set: a field stays unset for "not yet").
inline google::protobuf::Timestamp TimeOfMs(int64_t ms) {
  return google::protobuf::util::TimeUtil::MillisecondsToTimestamp(ms);
}
// A Timestamp as Unix milliseconds; an unset one as 0.
inline int64_t Ms(const google::protobuf::Timestamp& time) {
  return google::protobuf::util::TimeUtil::TimestampToMilliseconds(time);
}

}  // namespace shardtune::api
