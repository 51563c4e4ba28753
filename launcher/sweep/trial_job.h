#pragma once
// A trial's job spec: the sweep's base job spec with the trial's values set at their key paths,
// validated as a job (ParseJobSpec) before anything runs. No LibTorch.

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "common/job_spec.h"

namespace shardtune::sweep {

struct TrialSettings {
  std::map<std::string, nlohmann::json> values;  // key path -> value (a number, string, bool or list)
  std::string name;                              // the job's name; empty keeps the base's
  std::string output_dir;                        // output.dir; empty keeps the base's
};

struct TrialJob {
  JobSpec spec;
  std::string yaml;  // the resolved spec (JobSpecToYaml: every default, absolute paths), what the trial runs
};

// Sets each value in a copy of `base_yaml` (creating the sections a path needs) and parses the
// result as a job spec whose relative paths resolve against `base_dir` (the base file's
// directory). Throws SpecError (named `source`) when the trial's job is not valid.
TrialJob MakeTrialJob(const std::string& base_yaml, const std::filesystem::path& base_dir,
                      const TrialSettings& settings, const std::string& source, const SpecOptions& options = {});

// A YAML value as JSON: integers, then doubles, then true/false are recognized in plain scalars,
// the rest are strings; lists and mappings recursively. The inverse of what MakeTrialJob writes.
nlohmann::json YamlToJson(const YAML::Node& node);

}  // namespace shardtune::sweep
