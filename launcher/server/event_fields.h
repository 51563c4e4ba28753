#pragma once
// What an event and a checkpoint say beyond their own fields, in one place for both APIs: the
// gRPC API's JobEvent.level and .data and Checkpoint.metrics, and the OpenAI-compatible API's
// event `level` and `data` and checkpoint `metrics` (openai_json.cc), so that a figure has one
// name on both ("train_loss", "valid_mean_token_accuracy", ...).
//
// Thread-safe (no state).

#include <google/protobuf/struct.pb.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "shardtune/v1/jobs.pb.h"

namespace shardtune::server {

// An event's level when its writer names none: ERROR for a status event to FAILED, WARNING for
// one to CANCELLED, INFO otherwise.
v1::JobEventLevel DefaultEventLevel(v1::JobEventKind kind, const v1::Job& job_after);

// A PROGRESS or METRICS event's figures from the job after it (event.job()), in OpenAI's order:
// step, total_steps, train_loss, [valid_loss, valid_mean_token_accuracy, full_valid_loss,
// full_valid_mean_token_accuracy: a METRICS event only, the figures of its evaluation],
// learning_rate, tokens_per_second; a figure the job has not reported is null. An empty object
// for the other kinds.
nlohmann::ordered_json EventData(const v1::JobEvent& event);

// A JSON object as a google.protobuf.Struct (JobEvent.data, a sweep trial's values): numbers, strings,
// booleans, objects and lists as such, null as null.
google::protobuf::Struct ToStruct(const nlohmann::ordered_json& object);

// A checkpoint's figures from the job's metrics when it was saved (loss, val_loss, ...), in
// OpenAI's order and names: step, train_loss, train_mean_token_accuracy, valid_loss,
// valid_mean_token_accuracy, full_valid_loss, full_valid_mean_token_accuracy (those reported).
std::vector<std::pair<std::string, double>> CheckpointFigures(int64_t step,
                                                              const std::map<std::string, double>& job_metrics);

}  // namespace shardtune::server
