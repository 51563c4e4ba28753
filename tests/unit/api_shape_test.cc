// The public API's shape (proto/shardtune/v1), checked through the protobuf descriptors so that a
// new field, enum or RPC is held to the same conventions (Google's API design guide) as the rest:
// enums with an _UNSPECIFIED zero and prefixed values, times as Timestamps named *_time (no int64
// *_ms), one request message per RPC, page tokens on every List. Also the short names people read.
#include <google/protobuf/descriptor.h>
#include <gtest/gtest.h>

#include <cctype>
#include <map>
#include <string>
#include <vector>

#include "launcher/api_values.h"
#include "shardtune/v1/files.pb.h"
#include "shardtune/v1/jobs.pb.h"
#include "shardtune/v1/sweeps.pb.h"

namespace shardtune {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::FileDescriptor;

std::vector<const FileDescriptor*> ApiFiles() {
  return {v1::Job::descriptor()->file(), v1::File::descriptor()->file(), v1::Sweep::descriptor()->file()};
}

// "JobErrorCode" -> "JOB_ERROR_CODE_".
std::string EnumPrefix(const std::string& name) {
  std::string prefix;
  for (size_t i = 0; i < name.size(); ++i) {
    if (i > 0 && std::isupper(static_cast<unsigned char>(name[i]))) prefix += '_';
    prefix += static_cast<char>(std::toupper(static_cast<unsigned char>(name[i])));
  }
  return prefix + "_";
}

void CollectMessages(const Descriptor* m, std::vector<const Descriptor*>& out) {
  out.push_back(m);
  for (int i = 0; i < m->nested_type_count(); ++i) CollectMessages(m->nested_type(i), out);
}

std::vector<const Descriptor*> AllMessages() {
  std::vector<const Descriptor*> messages;
  for (const FileDescriptor* f : ApiFiles())
    for (int i = 0; i < f->message_type_count(); ++i) CollectMessages(f->message_type(i), messages);
  return messages;
}

std::vector<const EnumDescriptor*> AllEnums() {
  std::vector<const EnumDescriptor*> enums;
  for (const FileDescriptor* f : ApiFiles())
    for (int i = 0; i < f->enum_type_count(); ++i) enums.push_back(f->enum_type(i));
  for (const Descriptor* m : AllMessages())
    for (int i = 0; i < m->enum_type_count(); ++i) enums.push_back(m->enum_type(i));
  return enums;
}

bool EndsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

TEST(ApiShape, EveryEnumHasAnUnspecifiedZeroAndPrefixedValues) {
  const auto enums = AllEnums();
  EXPECT_GE(enums.size(), 5u);  // JobStatus, JobErrorCode, JobEventKind, JobEventLevel, AttemptOutcome
  for (const EnumDescriptor* e : enums) {
    const std::string prefix = EnumPrefix(e->name());
    ASSERT_NE(e->FindValueByNumber(0), nullptr) << e->full_name();
    EXPECT_EQ(e->FindValueByNumber(0)->name(), prefix + "UNSPECIFIED") << e->full_name();
    for (int i = 0; i < e->value_count(); ++i)
      EXPECT_EQ(e->value(i)->name().rfind(prefix, 0), 0u) << e->value(i)->full_name() << " lacks " << prefix;
  }
}

TEST(ApiShape, TimesAreTimestampsNamedTime) {
  int timestamps = 0;
  for (const Descriptor* m : AllMessages()) {
    for (int i = 0; i < m->field_count(); ++i) {
      const FieldDescriptor* f = m->field(i);
      EXPECT_FALSE(EndsWith(f->name(), "_ms") || EndsWith(f->name(), "_at"))
          << f->full_name() << ": a Timestamp *_time";
      const bool timestamp = f->message_type() && f->message_type()->full_name() == "google.protobuf.Timestamp";
      if (timestamp) {
        ++timestamps;
        EXPECT_TRUE(EndsWith(f->name(), "_time")) << f->full_name();
      }
      if (EndsWith(f->name(), "_time")) {
        EXPECT_TRUE(timestamp) << f->full_name();
      }
    }
  }
  EXPECT_GE(timestamps, 7);  // Job's four, JobEvent's, Checkpoint's, File's
}

TEST(ApiShape, EveryRpcHasARequestOfItsOwn) {
  std::map<std::string, std::string> used_by;  // request type -> the RPC that takes it
  int rpcs = 0;
  for (const FileDescriptor* file : ApiFiles()) {
    for (int s = 0; s < file->service_count(); ++s) {
      const auto* service = file->service(s);
      const bool is_public = service->name() != "WorkerService";  // rank 0's reports keep their names
      for (int m = 0; m < service->method_count(); ++m) {
        const auto* method = service->method(m);
        ++rpcs;
        const std::string input = method->input_type()->full_name();
        const auto [it, fresh] = used_by.emplace(input, method->full_name());
        EXPECT_TRUE(fresh) << method->full_name() << " shares " << input << " with " << it->second;
        if (is_public) {
          EXPECT_EQ(method->input_type()->name(), method->name() + "Request") << method->full_name();
        }
      }
    }
  }
  EXPECT_GE(rpcs, 23);
}

TEST(ApiShape, EveryListPagesWithAnOpaqueToken) {
  int lists = 0;
  for (const FileDescriptor* file : ApiFiles()) {
    for (int s = 0; s < file->service_count(); ++s) {
      for (int m = 0; m < file->service(s)->method_count(); ++m) {
        const auto* method = file->service(s)->method(m);
        if (method->name().rfind("List", 0) != 0) continue;
        ++lists;
        const Descriptor* in = method->input_type();
        const Descriptor* out = method->output_type();
        ASSERT_NE(in->FindFieldByName("page_size"), nullptr) << method->full_name();
        EXPECT_EQ(in->FindFieldByName("page_size")->type(), FieldDescriptor::TYPE_INT32) << method->full_name();
        ASSERT_NE(in->FindFieldByName("page_token"), nullptr) << method->full_name();
        EXPECT_EQ(in->FindFieldByName("page_token")->type(), FieldDescriptor::TYPE_STRING) << method->full_name();
        EXPECT_NE(out->FindFieldByName("next_page_token"), nullptr) << method->full_name();
        EXPECT_EQ(in->FindFieldByName("limit"), nullptr) << method->full_name() << ": page_size, not limit";
      }
    }
  }
  EXPECT_EQ(lists, 5);  // ListJobs, ListJobEvents, ListCheckpoints, ListFiles, ListSweeps
}

TEST(ApiShape, CheckpointsCarryMetricsAndEventsALevelAndData) {
  const Descriptor* checkpoint = v1::Checkpoint::descriptor();
  ASSERT_NE(checkpoint->FindFieldByName("metrics"), nullptr);
  EXPECT_TRUE(checkpoint->FindFieldByName("metrics")->is_map());
  const Descriptor* event = v1::JobEvent::descriptor();
  EXPECT_EQ(event->FindFieldByName("kind")->enum_type(), v1::JobEventKind_descriptor());
  EXPECT_EQ(event->FindFieldByName("level")->enum_type(), v1::JobEventLevel_descriptor());
  EXPECT_EQ(event->FindFieldByName("data")->message_type()->full_name(), "google.protobuf.Struct");
  // The kinds the server writes, the metrics one included.
  for (const char* kind : {"status", "progress", "metrics", "checkpoint", "log", "note"})
    EXPECT_TRUE(api::ParseName<v1::JobEventKind>(kind).has_value()) << kind;
}

TEST(ApiValues, ShortNamesReadBothWays) {
  EXPECT_EQ(api::ShortName(v1::JOB_STATUS_RUNNING), "running");
  EXPECT_EQ(api::ShortName(v1::JOB_ERROR_CODE_INVALID_SPEC), "invalid_spec");
  EXPECT_EQ(api::ShortName(v1::ATTEMPT_OUTCOME_FINISHED), "finished");
  EXPECT_EQ(api::ShortName(v1::JOB_STATUS_UNSPECIFIED), "");
  EXPECT_EQ(api::ShortName(static_cast<v1::JobStatus>(42)), "42");
  for (const char* text : {"running", "RUNNING", "JOB_STATUS_RUNNING", "Running"})
    EXPECT_EQ(api::ParseName<v1::JobStatus>(text), v1::JOB_STATUS_RUNNING) << text;
  EXPECT_FALSE(api::ParseName<v1::JobStatus>("unspecified").has_value());
  EXPECT_FALSE(api::ParseName<v1::JobStatus>("JOB_STATUS_UNSPECIFIED").has_value());
  EXPECT_FALSE(api::ParseName<v1::JobStatus>("runing").has_value());
  EXPECT_FALSE(api::ParseName<v1::JobStatus>("invalid_spec").has_value());
  EXPECT_EQ(api::ShortNames(v1::JobStatus_descriptor()),
            "validating, queued, running, paused, succeeded, failed, cancelled");
}

TEST(ApiValues, TimesRoundTripThroughMilliseconds) {
  const auto t = api::TimeOfMs(1700000000123);
  EXPECT_EQ(t.seconds(), 1700000000);
  EXPECT_EQ(t.nanos(), 123000000);
  EXPECT_EQ(api::Ms(t), 1700000000123);
  EXPECT_EQ(api::Ms(google::protobuf::Timestamp()), 0);  // unset: not yet
}

}  // namespace
}  // namespace shardtune
