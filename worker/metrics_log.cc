#include "worker/metrics_log.h"

#include <fstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/run_dir.h"

namespace shardtune {

namespace {

void Scalars(TensorBoardWriter& tb, int64_t step, const std::string& prefix, const nlohmann::json& record) {
  for (const auto& [key, value] : record.items()) {
    if (prefix.empty() && key == "step") continue;
    if (value.is_number()) tb.Scalar(prefix + key, step, value.get<double>());
    if (value.is_object()) Scalars(tb, step, prefix + key + "/", value);
  }
}

}  // namespace

MetricsLog::MetricsLog(const std::filesystem::path& output_dir, int64_t resume_step)
    : path_(RunDir(output_dir).Metrics()) {
  if (std::filesystem::exists(path_)) {
    std::ifstream in(path_);
    std::string kept, line;
    while (std::getline(in, line)) {
      // Kept: the records of steps up to the resumed one, and those of no step. Dropped: later
      // steps, and what is not a record (a line cut short by the crash, or edited by hand).
      const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (record.is_discarded() || !record.is_object()) continue;
      const auto step = record.find("step");
      if (step == record.end() || (step->is_number_integer() && step->get<int64_t>() <= resume_step))
        kept += line + "\n";
    }
    WriteFileAtomic(path_, kept);
  }
  out_.open(path_, std::ios::app);
  if (!out_) FailErrno("open", path_.string());
  tensorboard_ =
      std::make_unique<TensorBoardWriter>(RunDir(output_dir).TensorBoard(), resume_step > 0 ? resume_step : -1);
}

void MetricsLog::Write(const nlohmann::json& record) {
  out_ << record.dump() << "\n";
  out_.flush();
  Scalars(*tensorboard_, record.value("step", int64_t{0}), "", record);
  tensorboard_->Flush();
}

}  // namespace shardtune
