#include "launcher/server/job_store_upgrade.h"

#include <fmt/format.h>
#include <google/protobuf/unknown_field_set.h>

#include <utility>
#include <vector>

#include "common/error.h"
#include "launcher/api_values.h"
#include "launcher/server/sqlite_statement.h"
#include "shardtune/v1/jobs.pb.h"

namespace shardtune::server {

namespace {

using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

// The field numbers the old int64 millisecond times had.
constexpr int kCreatedMs = 7, kStartedMs = 8, kFinishedMs = 9, kEstimatedFinishMs = 18;
constexpr int kOldErrorCodeName = 1;  // JobError's string code

void UpgradeError(v1::JobError& error) {
  const UnknownFieldSet& unknown = error.GetReflection()->GetUnknownFields(error);
  for (int i = 0; i < unknown.field_count(); ++i) {
    const UnknownField& f = unknown.field(i);
    if (f.number() != kOldErrorCodeName || f.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    if (error.code() == v1::JOB_ERROR_CODE_UNSPECIFIED)
      error.set_code(api::ParseName<v1::JobErrorCode>(f.length_delimited()).value_or(v1::JOB_ERROR_CODE_RANK_FAILED));
  }
  error.DiscardUnknownFields();
}

}  // namespace

std::string UpgradeJobBlob(const std::string& blob) {
  v1::Job job;
  if (!job.ParseFromString(blob)) Fail(ErrorCode::kDataLoss, "job store: a job row does not parse");
  const UnknownFieldSet& unknown = job.GetReflection()->GetUnknownFields(job);
  for (int i = 0; i < unknown.field_count(); ++i) {
    const UnknownField& f = unknown.field(i);
    if (f.type() != UnknownField::TYPE_VARINT || f.varint() == 0) continue;
    const auto ms = static_cast<int64_t>(f.varint());
    switch (f.number()) {
      case kCreatedMs:
        *job.mutable_create_time() = api::TimeOfMs(ms);
        break;
      case kStartedMs:
        *job.mutable_start_time() = api::TimeOfMs(ms);
        break;
      case kFinishedMs:
        *job.mutable_finish_time() = api::TimeOfMs(ms);
        break;
      case kEstimatedFinishMs:
        *job.mutable_estimated_finish_time() = api::TimeOfMs(ms);
        break;
      default:
        break;
    }
  }
  job.GetReflection()->MutableUnknownFields(&job)->Clear();
  if (job.has_error()) UpgradeError(*job.mutable_error());
  return job.SerializeAsString();
}

void UpgradeJobBlobs(sqlite3* db) {
  // rowid addresses a row of either table; both are small next to what a migration may take.
  for (const char* table : {"jobs", "events"}) {
    std::vector<std::pair<int64_t, std::string>> rows;
    {
      Statement q(db, fmt::format("SELECT rowid, job FROM {}", table));
      while (q.Step()) rows.emplace_back(q.Int(0), q.Blob(1));
    }
    for (const auto& [rowid, blob] : rows) {
      Statement q(db, fmt::format("UPDATE {} SET job = ? WHERE rowid = ?", table));
      q.BindBlob(1, UpgradeJobBlob(blob)).Bind(2, rowid);
      q.Step();
    }
  }
}

}  // namespace shardtune::server
