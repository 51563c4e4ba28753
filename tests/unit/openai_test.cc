// The OpenAI-compatible API's pure mappings (launcher/server/openai_json.h): statuses, the "auto"
// rules, ft: names, request refusals with their param and code, the objects; and what it keeps in
// the store (checkpoint metrics, JobRecord::openai) and the `models:` catalog of server.yaml. The
// routes themselves run in tests/e2e/openai_test.sh, under the official Node SDK.
#include <gtest/gtest.h>

#include "launcher/api_values.h"
#include "launcher/server/job_store.h"
#include "launcher/server/openai_json.h"
#include "launcher/server/server_config.h"
#include "test_util.h"

namespace shardtune::server::openai {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

TEST(OpenAiJson, MapsEveryStatus) {
  const std::vector<std::pair<v1::JobStatus, std::string>> cases = {{v1::JOB_STATUS_VALIDATING, "validating_files"},
                                                                    {v1::JOB_STATUS_QUEUED, "queued"},
                                                                    {v1::JOB_STATUS_RUNNING, "running"},
                                                                    {v1::JOB_STATUS_PAUSED, "paused"},
                                                                    {v1::JOB_STATUS_SUCCEEDED, "succeeded"},
                                                                    {v1::JOB_STATUS_FAILED, "failed"},
                                                                    {v1::JOB_STATUS_CANCELLED, "cancelled"}};
  for (const auto& [status, name] : cases) EXPECT_EQ(StatusName(status), name);
}

TEST(OpenAiJson, ResolvesAutoFromTheExampleCount) {
  struct Case {
    int64_t examples, epochs, batch;
  };
  // Small files train more epochs (100 examples seen at least), large ones fewer (25000 at most).
  for (const Case& c : {Case{16, 7, 1}, Case{1, 25, 1}, Case{10, 10, 1}, Case{100, 3, 1}, Case{1000, 3, 2},
                        Case{10000, 2, 20}, Case{200000, 1, 256}}) {
    const Hyperparameters h = ResolveHyperparameters({}, c.examples);
    EXPECT_EQ(h.n_epochs, c.epochs) << c.examples;
    EXPECT_EQ(h.batch_size, c.batch) << c.examples;
    EXPECT_EQ(h.learning_rate_multiplier, 1.0);
  }
  RequestedHyperparameters given;
  given.n_epochs = 4;
  given.learning_rate_multiplier = 0.5;
  const Hyperparameters h = ResolveHyperparameters(given, 16);
  EXPECT_EQ(h.n_epochs, 4);
  EXPECT_EQ(h.batch_size, 1);  // still auto
  EXPECT_EQ(h.learning_rate_multiplier, 0.5);
}

TEST(OpenAiJson, ParsesARequestInEitherForm) {
  const FineTuneRequest r = ParseFineTuneRequest(R"({"model": "m", "training_file": "file-1",
      "validation_file": null, "suffix": "my-run_1.0", "seed": 3, "metadata": {"k": "v"}, "integrations": [],
      "method": {"type": "supervised", "supervised": {"hyperparameters":
          {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.1}}}})");
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.training_file, "file-1");
  EXPECT_EQ(r.validation_file, "");
  EXPECT_EQ(r.suffix, "my-run_1.0");
  EXPECT_EQ(r.seed, 3);
  EXPECT_EQ(r.metadata.at("k"), "v");
  EXPECT_EQ(r.hyperparameters.n_epochs, 2);
  EXPECT_FALSE(r.hyperparameters.batch_size.has_value());
  EXPECT_EQ(r.hyperparameters.learning_rate_multiplier, 0.1);
  const FineTuneRequest legacy =
      ParseFineTuneRequest(R"({"model": "m", "training_file": "f", "hyperparameters": {"batch_size": 8}})");
  EXPECT_EQ(legacy.hyperparameters.batch_size, 8);
}

TEST(OpenAiJson, RefusesEachBadFieldNamingItsParam) {
  struct Case {
    std::string body, param, code;
  };
  const std::string ok = R"("model": "m", "training_file": "f")";
  const std::vector<Case> cases = {
      {"[1]", "", "invalid_json"},
      {"{", "", "invalid_json"},
      {R"({"training_file": "f"})", "model", "missing_required_parameter"},
      {R"({"model": "m"})", "training_file", "missing_required_parameter"},
      {R"({"model": 3, "training_file": "f"})", "model", "invalid_type"},
      {"{" + ok + R"(, "temperature": 1})", "temperature", "unknown_parameter"},
      {"{" + ok + R"(, "suffix": "a:b"})", "suffix", "invalid_value"},
      {"{" + ok + R"(, "seed": -1})", "seed", "invalid_value"},
      {"{" + ok + R"(, "metadata": {"k": 1}})", "metadata.k", "invalid_value"},
      {"{" + ok + R"(, "integrations": [{"type": "wandb"}]})", "integrations", "unsupported_parameter"},
      {"{" + ok + R"(, "hyperparameters": {"n_epochs": 0}})", "hyperparameters.n_epochs", "invalid_value"},
      {"{" + ok + R"(, "hyperparameters": {"batch_size": 1.5}})", "hyperparameters.batch_size", "invalid_value"},
      {"{" + ok + R"(, "hyperparameters": {"learning_rate_multiplier": 0}})",
       "hyperparameters.learning_rate_multiplier", "invalid_value"},
      {"{" + ok + R"(, "hyperparameters": {"epochs": 2}})", "hyperparameters.epochs", "unknown_parameter"},
      {"{" + ok + R"(, "method": {"type": "dpo"}})", "method.type", "unsupported_method"},
      {"{" + ok + R"(, "method": {"type": "reinforcement"}})", "method.type", "unsupported_method"},
      {"{" + ok + R"(, "method": {"type": "rlhf"}})", "method.type", "invalid_value"},
      {"{" + ok + R"(, "method": {}})", "method.type", "missing_required_parameter"},
      {"{" + ok + R"(, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 99}}}})",
       "method.supervised.hyperparameters.n_epochs", "invalid_value"},
      {"{" + ok + R"(, "hyperparameters": {}, "method": {"type": "supervised"}})", "hyperparameters", "invalid_value"},
  };
  for (const Case& c : cases) {
    try {
      ParseFineTuneRequest(c.body);
      ADD_FAILURE() << "accepted: " << c.body;
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status(), 400) << c.body;
      EXPECT_EQ(e.param(), c.param) << c.body << ": " << e.what();
      EXPECT_EQ(e.code(), c.code) << c.body << ": " << e.what();
    }
  }
}

TEST(OpenAiJson, NamesFineTunedModelsAndReadsThemBack) {
  EXPECT_EQ(FineTunedModelName("llama-3-8b", "run", "job-0123abcd"), "ft:llama-3-8b:run:job-0123abcd");
  const auto ref = ParseFineTunedModelName("ft:llama-3-8b::job-0123abcd");
  ASSERT_TRUE(ref.has_value());
  EXPECT_EQ(ref->base, "llama-3-8b");
  EXPECT_EQ(ref->suffix, "");
  EXPECT_EQ(ref->job_id, "job-0123abcd");
  for (const char* bad : {"llama-3-8b", "ft:a:b", "ft:a:b:job-xyz", "ft::b:job-01", "ft:a:b:job-01:ckpt-step-4"})
    EXPECT_FALSE(ParseFineTunedModelName(bad).has_value()) << bad;
}

TEST(OpenAiJson, SpecNamesFollowTheJobSpecRule) {
  EXPECT_EQ(SpecName("My Run_2", "llama"), "ft-my-run-2");
  EXPECT_EQ(SpecName("", "Llama-3-8B"), "ft-llama-3-8b");
  EXPECT_EQ(SpecName("--", "x"), "ft");
  EXPECT_EQ(SpecName(std::string(100, 'a'), "x").size(), 64u);
}

TEST(OpenAiJson, TheSpecCarriesTheHyperparameters) {
  OpenAiFields f;
  f.training_file = "file-t";
  f.validation_file = "file-v";
  f.hyperparameters = {3, 12, 0.5};
  f.seed = 9;
  SpecInputs in{"ft-x", "/models/m", "/out/ft-x", 5, {{"k", "v"}}};
  const auto spec = nlohmann::json::parse(FineTuneSpec(f, in));
  EXPECT_EQ(spec["data"]["train"], "file:file-t");
  EXPECT_EQ(spec["data"]["validation"], "file:file-v");
  EXPECT_EQ(spec["data"]["format"], "chat");
  EXPECT_EQ(spec["training"]["epochs"], 3);
  EXPECT_EQ(spec["training"]["global_batch_size"], 12);
  EXPECT_EQ(spec["training"]["micro_batch_size"], 6);  // the largest divisor up to 8
  EXPECT_DOUBLE_EQ(spec["training"]["optimizer"]["lr"].get<double>(), kBaseLearningRate * 0.5);
  EXPECT_EQ(spec["training"]["seed"], 9);
  EXPECT_EQ(spec["training"]["eval_every"], 5);
  EXPECT_EQ(spec["output"]["checkpoint_every"], 5);
  EXPECT_EQ(spec["labels"]["k"], "v");
  const auto back = ParseStoredFields(StoredFields(f));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->hyperparameters.batch_size, 12);
  EXPECT_EQ(back->seed, 9);
  EXPECT_FALSE(ParseStoredFields("").has_value());
  EXPECT_FALSE(ParseStoredFields("not json").has_value());
}

TEST(OpenAiJson, JobObjectsInOpenAiShape) {
  JobRecord r;
  r.job.set_id("job-00ff");
  r.job.set_tenant("team-a");
  r.job.set_status(v1::JOB_STATUS_SUCCEEDED);
  *r.job.mutable_create_time() = api::TimeOfMs(5000);
  *r.job.mutable_finish_time() = api::TimeOfMs(9000);
  r.job.set_trained_tokens(123);
  (*r.job.mutable_labels())["run"] = "x";
  OpenAiFields f;
  f.model = f.base = "tiny";
  f.suffix = "s";
  f.training_file = "file-t";
  f.seed = 4;
  r.openai = StoredFields(f);
  Json job = JobObject(r);
  EXPECT_EQ(job["object"], "fine_tuning.job");
  EXPECT_EQ(job["status"], "succeeded");
  EXPECT_EQ(job["created_at"], 5);
  EXPECT_EQ(job["finished_at"], 9);
  EXPECT_EQ(job["fine_tuned_model"], "ft:tiny:s:job-00ff");
  EXPECT_EQ(job["trained_tokens"], 123);
  EXPECT_EQ(job["organization_id"], "team-a");
  EXPECT_EQ(job["metadata"]["run"], "x");
  EXPECT_TRUE(job["error"].is_null());
  EXPECT_TRUE(job["validation_file"].is_null());
  r.job.set_status(v1::JOB_STATUS_FAILED);
  r.job.mutable_error()->set_code(v1::JOB_ERROR_CODE_INVALID_DATA);
  r.job.mutable_error()->set_message("train.jsonl:2: [unrecognized_role]");
  job = JobObject(r);
  EXPECT_TRUE(job["fine_tuned_model"].is_null());
  EXPECT_EQ(job["error"]["code"], "invalid_data");
  EXPECT_EQ(job["error"]["param"], "training_file");
  // A job created over gRPC: shown from its spec.
  JobRecord grpc;
  grpc.job.set_id("job-01");
  grpc.job.set_status(v1::JOB_STATUS_RUNNING);
  grpc.job.set_spec_yaml("model: {path: /m}\ndata: {train: /d.jsonl}\ntraining: {epochs: 2, global_batch_size: 8}\n");
  job = JobObject(grpc);
  EXPECT_EQ(job["model"], "/m");
  EXPECT_EQ(job["training_file"], "/d.jsonl");
  EXPECT_EQ(job["hyperparameters"]["n_epochs"], 2);
  EXPECT_EQ(job["hyperparameters"]["batch_size"], 8);
}

TEST(OpenAiJson, EventsAndCheckpoints) {
  v1::JobEvent e;
  e.set_job_id("job-01");
  e.set_seq(12);
  *e.mutable_create_time() = api::TimeOfMs(7000);
  e.set_kind(v1::JOB_EVENT_KIND_METRICS);
  e.mutable_job()->set_step(4);
  e.mutable_job()->set_total_steps(8);
  (*e.mutable_job()->mutable_metrics())["loss"] = 1.5;
  (*e.mutable_job()->mutable_metrics())["val_loss"] = 2.0;
  Json event = EventObject(e);
  EXPECT_EQ(event["object"], "fine_tuning.job.event");
  EXPECT_EQ(event["type"], "metrics");
  EXPECT_EQ(event["data"]["step"], 4);
  EXPECT_EQ(event["data"]["train_loss"], 1.5);
  EXPECT_EQ(event["data"]["valid_loss"], 2.0);
  EXPECT_EQ(event["message"], "Step 4/8: training loss=1.5000, validation loss=2.0000");
  e.set_kind(v1::JOB_EVENT_KIND_PROGRESS);  // no evaluation at this step: the latest val_loss is not repeated
  EXPECT_FALSE(EventObject(e)["data"].contains("valid_loss"));
  e.set_kind(v1::JOB_EVENT_KIND_STATUS);
  e.mutable_job()->set_status(v1::JOB_STATUS_FAILED);
  e.set_level(v1::JOB_EVENT_LEVEL_ERROR);  // as the store sets it (DefaultEventLevel)
  e.set_message("failed: ...");
  event = EventObject(e);
  EXPECT_EQ(event["type"], "message");
  EXPECT_EQ(event["level"], "error");
  EXPECT_EQ(event["created_at"], 7);
  EXPECT_EQ(event["data"], Json::object());
  EXPECT_EQ(EventSeq("job-01", event["id"]), 12);
  EXPECT_FALSE(EventSeq("job-02", event["id"]).has_value());
  EXPECT_FALSE(EventSeq("job-01", "ftevent-job-01-x").has_value());

  v1::Job job;
  job.set_id("job-01");
  const Json c = CheckpointObject(job, "ft:m::job-01", 8, 3000, {{"loss", 1.0}, {"val_loss", 2.0}});
  EXPECT_EQ(c["step_number"], 8);
  EXPECT_EQ(c["fine_tuned_model_checkpoint"], "ft:m::job-01:ckpt-step-8");
  EXPECT_EQ(c["metrics"]["train_loss"], 1.0);
  EXPECT_EQ(c["metrics"]["full_valid_loss"], 2.0);
  EXPECT_FALSE(c["metrics"].contains("valid_mean_token_accuracy"));  // not measured: left out
  EXPECT_EQ(CheckpointStep("job-01", c["id"]), 8);
  EXPECT_EQ(ExampleCount("chat: 16 examples, 910 bytes"), 16);
  EXPECT_FALSE(ExampleCount("").has_value());
}

TEST(OpenAiStore, KeepsCheckpointMetricsAndTheOpenAiFieldsAcrossReopening) {
  ScratchDir dir;
  {
    JobStore store(dir / "jobs.db");
    JobRecord r;
    r.job.set_id("job-1");
    r.job.set_tenant("t");
    r.openai = R"({"model": "m"})";
    store.Insert(r);
    store.AddCheckpoint("job-1", 4, "/o/checkpoints/step-4", {{"loss", 0.5}, {"val_loss", 0.75}});
    store.AddCheckpoint("job-1", 8, "/o/checkpoints/step-8");
    for (int i = 0; i < 5; ++i) store.AddEvent(r.job, v1::JOB_EVENT_KIND_NOTE, std::to_string(i));
  }
  JobStore store(dir / "jobs.db");
  EXPECT_EQ(store.Get("job-1")->openai, R"({"model": "m"})");
  const auto metrics = store.CheckpointMetrics("job-1");
  EXPECT_EQ(metrics.at(4).at("val_loss"), 0.75);
  EXPECT_TRUE(metrics.at(8).empty());
  const auto newest = store.EventsNewestFirst("job-1", 0, 2);
  ASSERT_EQ(newest.size(), 2u);
  EXPECT_EQ(newest[0].seq(), 5);
  EXPECT_EQ(newest[1].seq(), 4);
  const auto older = store.EventsNewestFirst("job-1", 4, 10);
  ASSERT_EQ(older.size(), 3u);
  EXPECT_EQ(older[0].seq(), 3);
}

TEST(OpenAiConfig, ReadsTheModelCatalogAndRefusesWhatCannotServe) {
  ScratchDir dir;
  fs::create_directories(dir / "models" / "tiny");
  fs::create_directories(dir / "private" / "other");
  testing::WriteText(dir / "ok.yaml", "models: {tiny: models/tiny, Llama-3.1_8B: models/tiny}\n");
  const ServerConfig c = LoadServerConfig(dir / "ok.yaml");
  EXPECT_EQ(c.models.at("tiny"), (dir / "models" / "tiny").string());
  EXPECT_EQ(c.models.size(), 2u);
  testing::WriteText(dir / "bad.yaml", R"(storage:
  tenants: {a: {root: tenants/a}}
  read_only: [models]
models:
  "a:b": models/tiny
  gone: models/none
  other: private/other
  tiny: models/tiny
)");
  fs::create_directories(dir / "tenants" / "a");
  testing::ExpectRefusedWith([&] { LoadServerConfig(dir / "bad.yaml"); },
                             {"models.a:b (line 5): a model name is", "models.gone (line 6):", "is not a directory",
                              "models.other (line 7):", "is not inside storage.read_only", "3 problem(s)"});
  testing::WriteText(dir / "list.yaml", "models: [tiny]\n");
  testing::ExpectRefusedWith([&] { LoadServerConfig(dir / "list.yaml"); }, {"models (line 1): expected a mapping"});
}

}  // namespace
}  // namespace shardtune::server::openai
