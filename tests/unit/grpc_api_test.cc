// The gRPC API's parts that need no running server: the page tokens of ListJobEvents and
// ListCheckpoints, a refused spec's google.rpc.BadRequest (from the spec reader's own problems),
// the one table of how a RequestError shows on each surface, events with their level and data
// and checkpoints with their figures from the store, and the upgrade of a store written before
// the API's times were Timestamps (schema version 3).
#include <google/protobuf/unknown_field_set.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include "common/job_spec.h"
#include "google/rpc/status.pb.h"
#include "launcher/api_values.h"
#include "launcher/server/bad_request.h"
#include "launcher/server/job_store.h"
#include "launcher/server/job_store_upgrade.h"
#include "launcher/server/page_token.h"
#include "launcher/server/request_error.h"
#include "launcher/server/sweep_store.h"
#include "test_util.h"

namespace shardtune::server {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

TEST(PageToken, EventAndCheckpointTokensAreBoundToTheirJobAndListing) {
  const std::string events = EncodeEventPageToken(42, "job-a", 0);
  EXPECT_EQ(events.find("job-a"), std::string::npos) << events;
  EXPECT_EQ(DecodeEventPageToken(events, "job-a", 0), 42);
  EXPECT_FALSE(DecodeEventPageToken(events, "job-b", 0).has_value());
  EXPECT_FALSE(DecodeEventPageToken(events, "job-a", 7).has_value());    // another after_seq
  EXPECT_FALSE(DecodeCheckpointPageToken(events, "job-a").has_value());  // another listing
  const std::string checkpoints = EncodeCheckpointPageToken(500, "job-a");
  EXPECT_EQ(DecodeCheckpointPageToken(checkpoints, "job-a"), 500);
  EXPECT_FALSE(DecodeCheckpointPageToken(checkpoints, "job-b").has_value());
  EXPECT_FALSE(DecodeEventPageToken(checkpoints, "job-a", 0).has_value());
  JobFilter jobs;
  EXPECT_FALSE(DecodePageToken(checkpoints, jobs).has_value());
  for (const std::string& bad : {std::string(), std::string("x"), checkpoints.substr(2), std::string(3000, 'A')})
    EXPECT_FALSE(DecodeCheckpointPageToken(bad, "job-a").has_value()) << bad;
}

// The spec reader's problems for `yaml` (it must be refused).
std::vector<std::string> SpecProblems(const std::string& yaml) {
  SpecOptions options;
  options.check_files = false;
  try {
    ParseJobSpec(yaml, "spec_yaml", "/", options);
  } catch (const SpecError& e) {
    return e.problems();
  }
  ADD_FAILURE() << "the spec was accepted:\n" << yaml;
  return {};
}

TEST(BadRequest, OneFieldViolationPerSpecProblemNamingItsKeyPath) {
  const auto problems = SpecProblems(
      "name: x\nmodel: {path: /m}\ndata: {train: /d.jsonl, format: tokens}\noutput: {dir: /o}\n"
      "training:\n  max_step: 3\n  optimizer: {lr: fast}\n");
  const google::rpc::BadRequest bad = BadRequestOf(problems);
  ASSERT_EQ(bad.field_violations_size(), 2) << ::testing::PrintToString(problems);
  std::map<std::string, std::string> by_field;
  for (const auto& v : bad.field_violations()) by_field[v.field()] = v.description();
  ASSERT_TRUE(by_field.count("training.max_step")) << bad.DebugString();
  EXPECT_EQ(by_field["training.max_step"].rfind("line 6, column 3: unknown key 'max_step'", 0), 0u)
      << by_field["training.max_step"];
  EXPECT_NE(by_field["training.max_step"].find("did you mean 'max_steps'"), std::string::npos);
  ASSERT_TRUE(by_field.count("training.optimizer.lr")) << bad.DebugString();
  EXPECT_EQ(by_field["training.optimizer.lr"].rfind("line 7, column 19: expected a number", 0), 0u)
      << by_field["training.optimizer.lr"];

  // The text as a whole (not YAML; no position) and a rule across keys (no position either).
  auto whole = FieldViolationOf(SpecProblems("name: [x\n")[0]);
  EXPECT_EQ(whole.field(), "");
  EXPECT_NE(whole.description().find("line "), std::string::npos) << whole.description();
  EXPECT_NE(whole.description().find("not valid YAML"), std::string::npos) << whole.description();
  auto top = FieldViolationOf("(top level): expected a mapping of sections");
  EXPECT_EQ(top.field(), "");
  EXPECT_EQ(top.description(), "expected a mapping of sections");
  auto rule = FieldViolationOf("training.global_batch_size: 64 is not divisible by micro_batch_size 3");
  EXPECT_EQ(rule.field(), "training.global_batch_size");
  EXPECT_EQ(rule.description(), "64 is not divisible by micro_batch_size 3");
}

TEST(BadRequest, TravelsInTheStatusDetailsAsAGoogleRpcStatus) {
  google::rpc::BadRequest bad;
  auto* v = bad.add_field_violations();
  v->set_field("training.epochs");
  v->set_description("line 5, column 20: expected an integer, got 'three'");
  const grpc::Status status = StatusWithBadRequest(grpc::StatusCode::INVALID_ARGUMENT, "invalid_spec: ...", bad);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(status.error_details()));
  EXPECT_EQ(details.code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(details.message(), "invalid_spec: ...");
  ASSERT_EQ(details.details_size(), 1);
  EXPECT_EQ(details.details(0).type_url(), "type.googleapis.com/google.rpc.BadRequest");
  google::rpc::BadRequest back;
  ASSERT_TRUE(details.details(0).UnpackTo(&back));
  ASSERT_EQ(back.field_violations_size(), 1);
  EXPECT_EQ(back.field_violations(0).field(), "training.epochs");
}

TEST(RequestError, EveryKindHasOneRowOfSurfaces) {
  using Kind = RequestError::Kind;
  const std::vector<std::tuple<Kind, grpc::StatusCode, int>> expected = {
      {Kind::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT, 400},
      {Kind::kNotFound, grpc::StatusCode::NOT_FOUND, 404},
      {Kind::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION, 409},
      {Kind::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED, 429},
      {Kind::kPermissionDenied, grpc::StatusCode::PERMISSION_DENIED, 403}};
  ASSERT_EQ(kSurfaces.size(), expected.size());
  for (const auto& [kind, code, http] : expected) {
    int rows = 0;
    for (const auto& row : kSurfaces) rows += row.kind == kind;
    EXPECT_EQ(rows, 1);
    EXPECT_EQ(SurfacesOf(kind).grpc_code, code);
    EXPECT_EQ(SurfacesOf(kind).http_status, http);
    EXPECT_STREQ(SurfacesOf(kind).openai_type, "invalid_request_error");
  }
}

JobRecord RunningJob(const std::string& id) {
  JobRecord r;
  r.job.set_id(id);
  r.job.set_tenant("t");
  r.job.set_status(v1::JOB_STATUS_RUNNING);
  *r.job.mutable_create_time() = api::TimeOfMs(1000);
  r.job.set_step(8);
  r.job.set_total_steps(20);
  (*r.job.mutable_metrics())["loss"] = 1.5;
  (*r.job.mutable_metrics())["val_loss"] = 2.5;
  (*r.job.mutable_metrics())["token_accuracy"] = 0.25;
  return r;
}

TEST(JobStore, EventsCarryTheirLevelAndDataAndCheckpointsTheirFigures) {
  ScratchDir dir;
  JobStore store(dir / "jobs.db");
  JobRecord r = RunningJob("a");
  store.Insert(r, v1::JOB_EVENT_KIND_STATUS, "running: started");
  store.AddEvent(r.job, v1::JOB_EVENT_KIND_METRICS, "eval");
  store.AddEvent(r.job, v1::JOB_EVENT_KIND_NOTE, "timeout: no heartbeat", v1::JOB_EVENT_LEVEL_ERROR);
  r.job.set_status(v1::JOB_STATUS_FAILED);
  store.Update(r, v1::JOB_EVENT_KIND_STATUS, "failed: ...");
  const auto events = store.Events("a", 0, 10);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].kind(), v1::JOB_EVENT_KIND_STATUS);
  EXPECT_EQ(events[0].level(), v1::JOB_EVENT_LEVEL_INFO);
  EXPECT_GT(api::Ms(events[0].create_time()), 0);
  EXPECT_EQ(events[0].data().fields_size(), 0);
  EXPECT_EQ(events[1].kind(), v1::JOB_EVENT_KIND_METRICS);
  const auto& data = events[1].data().fields();
  EXPECT_EQ(data.at("step").number_value(), 8);
  EXPECT_EQ(data.at("train_loss").number_value(), 1.5);
  EXPECT_EQ(data.at("valid_loss").number_value(), 2.5);
  EXPECT_EQ(data.at("valid_mean_token_accuracy").number_value(), 0.25);
  EXPECT_EQ(data.at("learning_rate").kind_case(), google::protobuf::Value::kNullValue);  // not reported
  EXPECT_EQ(events[2].level(), v1::JOB_EVENT_LEVEL_ERROR);
  EXPECT_EQ(events[3].level(), v1::JOB_EVENT_LEVEL_ERROR);  // a status event to FAILED

  store.AddCheckpoint("a", 5, "/o/checkpoints/step-5", {{"loss", 1.25}, {"val_loss", 2.0}, {"token_accuracy", 0.5}});
  store.AddCheckpoint("a", 10, "/o/checkpoints/step-10");
  store.AddCheckpoint("a", 15, "/o/checkpoints/step-15");
  const auto all = store.Checkpoints("a");
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].metrics().at("step"), 5);
  EXPECT_EQ(all[0].metrics().at("train_loss"), 1.25);
  EXPECT_EQ(all[0].metrics().at("valid_loss"), 2.0);
  EXPECT_EQ(all[0].metrics().at("valid_mean_token_accuracy"), 0.5);
  EXPECT_FALSE(all[0].metrics().count("train_mean_token_accuracy"));  // not reported
  EXPECT_GT(api::Ms(all[0].create_time()), 0);
  const auto page = store.Checkpoints("a", 5, 1);  // after step 5, one
  ASSERT_EQ(page.size(), 1u);
  EXPECT_EQ(page[0].step(), 10);
}

// A job blob as a server before schema version 4 wrote it: its times as int64 milliseconds in
// fields 7, 8, 9 and 18, and its error code's name in JobError field 1.
std::string OldJobBlob(const std::string& id) {
  v1::Job job;
  job.set_id(id);
  job.set_status(v1::JOB_STATUS_FAILED);
  job.mutable_error()->set_message("rank 1 died");
  auto* unknown = job.GetReflection()->MutableUnknownFields(&job);
  unknown->AddVarint(7, 1700000000123);
  unknown->AddVarint(8, 1700000001000);
  unknown->AddVarint(9, 1700000002000);
  unknown->AddVarint(18, 1700000003000);
  job.mutable_error()->GetReflection()->MutableUnknownFields(job.mutable_error())->AddLengthDelimited(1, "NODE_LOST");
  return job.SerializeAsString();
}

// Sweeps page newest first by a keyset: a sweep created between pages neither repeats nor shifts
// one; a token is bound to its tenant and status; a tenant sees only its own.
TEST(SweepStore, PagesByKeysetBoundToTenantAndStatus) {
  ScratchDir dir;
  JobStore db(dir / "jobs.db");
  SweepStore store(db);
  auto add = [&](const std::string& id, const std::string& tenant, int64_t ms, v1::SweepStatus status) {
    SweepRecord r;
    r.sweep.set_id(id);
    r.sweep.set_tenant(tenant);
    r.sweep.set_status(status);
    *r.sweep.mutable_create_time() = api::TimeOfMs(ms);
    r.sweep.add_trials()->set_number(0);
    r.idempotency_key = "key-" + id;
    store.Insert(r);
  };
  add("sweep-a", "t", 1000, v1::SWEEP_STATUS_SUCCEEDED);
  add("sweep-b", "t", 2000, v1::SWEEP_STATUS_RUNNING);
  add("sweep-c", "t", 3000, v1::SWEEP_STATUS_SUCCEEDED);
  add("sweep-x", "other", 2500, v1::SWEEP_STATUS_RUNNING);
  auto ids = [](const SweepStore::Page& page) {
    std::vector<std::string> out;
    for (const auto& s : page.sweeps) {
      out.push_back(s.id());
      EXPECT_EQ(s.trials_size(), 0) << "a listing leaves the trials out";
    }
    return out;
  };
  const auto first = store.List("t", v1::SWEEP_STATUS_UNSPECIFIED, 2, "");
  EXPECT_EQ(ids(first), (std::vector<std::string>{"sweep-c", "sweep-b"}));
  ASSERT_FALSE(first.next_page_token.empty());
  add("sweep-d", "t", 4000, v1::SWEEP_STATUS_RUNNING);  // newer than the cursor: not on a later page
  const auto second = store.List("t", v1::SWEEP_STATUS_UNSPECIFIED, 2, first.next_page_token);
  EXPECT_EQ(ids(second), (std::vector<std::string>{"sweep-a"}));
  EXPECT_TRUE(second.next_page_token.empty());
  EXPECT_EQ(ids(store.List("t", v1::SWEEP_STATUS_SUCCEEDED, 10, "")), (std::vector<std::string>{"sweep-c", "sweep-a"}));
  EXPECT_EQ(ids(store.List("", v1::SWEEP_STATUS_RUNNING, 10, "")),
            (std::vector<std::string>{"sweep-d", "sweep-x", "sweep-b"}));  // an admin: every tenant
  EXPECT_THROW(store.List("t", v1::SWEEP_STATUS_SUCCEEDED, 2, first.next_page_token), RequestError);
  EXPECT_THROW(store.List("other", v1::SWEEP_STATUS_UNSPECIFIED, 2, first.next_page_token), RequestError);
  // What a restarted server resumes, oldest first; and a sweep found again by its key.
  std::vector<std::string> running;
  for (const auto& r : store.Running()) running.push_back(r.sweep.id());
  EXPECT_EQ(running, (std::vector<std::string>{"sweep-b", "sweep-x", "sweep-d"}));
  ASSERT_TRUE(store.FindByIdempotencyKey("t", "key-sweep-a").has_value());
  EXPECT_EQ(store.FindByIdempotencyKey("t", "key-sweep-a")->sweep.trials_size(), 1);
  EXPECT_FALSE(store.FindByIdempotencyKey("other", "key-sweep-a").has_value());
}

TEST(JobStore, UpgradesAVersion3FileInPlace) {
  ScratchDir dir;
  const fs::path path = dir / "jobs.db";
  { JobStore store(path); }
  {
    // Turn the fresh file into one a version-3 server left: no events.level, old blobs, an
    // "error" event.
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    const std::string blob = OldJobBlob("job-old");
    sqlite3_stmt* q = nullptr;
    sqlite3_prepare_v2(db,
                       "INSERT INTO jobs (id, tenant, name, status, priority, created_ms, idempotency_key, labels, "
                       "job, server) VALUES ('job-old', 't', 'n', 6, 0, 1700000000123, '', '{}', ?1, '{}')",
                       -1, &q, nullptr);
    sqlite3_bind_blob(q, 1, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(q), SQLITE_DONE);
    sqlite3_finalize(q);
    sqlite3_prepare_v2(db,
                       "INSERT INTO events (job_id, seq, time_ms, kind, message, job) VALUES "
                       "('job-old', 1, 1700000002000, 'error', 'TIMEOUT: no heartbeat', ?1), "
                       "('job-old', 2, 1700000002001, 'status', 'FAILED: it failed', ?1)",
                       -1, &q, nullptr);
    sqlite3_bind_blob(q, 1, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(q), SQLITE_DONE);
    sqlite3_finalize(q);
    // Events were written before the column existed; SQLite drops it, and the sweeps, as version 3 lacked them.
    ASSERT_EQ(sqlite3_exec(
                  db, "ALTER TABLE events DROP COLUMN level; DROP TABLE sweeps; UPDATE schema_version SET version = 3",
                  nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  JobStore store(path);
  const auto r = store.Get("job-old");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(api::Ms(r->job.create_time()), 1700000000123);
  EXPECT_EQ(api::Ms(r->job.start_time()), 1700000001000);
  EXPECT_EQ(api::Ms(r->job.finish_time()), 1700000002000);
  EXPECT_EQ(api::Ms(r->job.estimated_finish_time()), 1700000003000);
  EXPECT_EQ(r->job.error().code(), v1::JOB_ERROR_CODE_NODE_LOST);
  EXPECT_EQ(r->job.error().message(), "rank 1 died");
  EXPECT_EQ(r->job.GetReflection()->GetUnknownFields(r->job).field_count(), 0);
  const auto events = store.Events("job-old", 0, 10);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind(), v1::JOB_EVENT_KIND_NOTE);  // the old "error" kind
  EXPECT_EQ(events[0].level(), v1::JOB_EVENT_LEVEL_ERROR);
  EXPECT_EQ(api::Ms(events[0].job().create_time()), 1700000000123);
  EXPECT_EQ(events[1].kind(), v1::JOB_EVENT_KIND_STATUS);
  EXPECT_EQ(events[1].level(), v1::JOB_EVENT_LEVEL_ERROR);
  // Listing still pages by the created_ms column, which the upgrade left as it was.
  JobFilter all;
  ASSERT_EQ(store.List(all).size(), 1u);
  // An upgraded blob upgrades to itself.
  const std::string once = UpgradeJobBlob(OldJobBlob("x"));
  EXPECT_EQ(UpgradeJobBlob(once), once);
}

}  // namespace
}  // namespace shardtune::server
