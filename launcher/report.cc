#include "launcher/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/run_dir.h"
#include "launcher/plot.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

RunReport WriteRunReport(const fs::path& run_dir) {
  const RunDir run(run_dir);
  const fs::path metrics_path = run.Metrics();
  std::ifstream in(metrics_path);
  if (!in) Fail(ErrorCode::kNotFound, "{}: no metrics.jsonl there (is it a run's output.dir?)", run_dir.string());
  PlotSeries loss{"loss", {31, 119, 180}, {}}, val{"val_loss", {255, 127, 14}, {}};
  json last_train, last_val, best_val;
  int64_t line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    const json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_discarded() || !record.is_object() || !record.contains("step"))
      Fail(ErrorCode::kDataLoss, "{}:{}: not a metrics record", metrics_path.string(), line_number);
    const double step = record.at("step").get<double>();
    if (record.contains("loss")) {
      loss.points.emplace_back(step, record.at("loss").get<double>());
      last_train = record;
    }
    if (record.contains("val_loss")) {
      val.points.emplace_back(step, record.at("val_loss").get<double>());
      last_val = record;
      if (best_val.is_null() || record.at("val_loss").get<double>() < best_val.at("val_loss").get<double>())
        best_val = record;
    }
  }
  if (loss.points.empty()) Fail(ErrorCode::kDataLoss, "{}: no training steps logged yet", metrics_path.string());

  std::string name = run_dir.filename().string();
  if (fs::exists(run.JobYaml())) {
    const std::string job = ReadFile(run.JobYaml());
    const size_t at = job.find("name: ");
    if (at != std::string::npos) name = job.substr(at + 6, job.find('\n', at) - at - 6);
  }
  std::string title = name;
  std::transform(title.begin(), title.end(), title.begin(), [](unsigned char ch) { return std::tolower(ch); });
  std::vector<PlotSeries> series = {loss};
  if (!val.points.empty()) series.push_back(val);
  WritePlot(run.ReportPng(), title, series);

  const auto min_loss = std::min_element(loss.points.begin(), loss.points.end(),
                                         [](const auto& a, const auto& b) { return a.second < b.second; });
  auto train_point = [](const std::pair<double, double>& p) {
    return RunReport::Point{static_cast<int64_t>(p.first), p.second};
  };
  auto eval_point = [](const json& record) {
    return RunReport::Point{record.at("step").get<int64_t>(), record.at("val_loss").get<double>(),
                            record.value("perplexity", 0.0)};
  };
  RunReport report;
  report.name = name;
  report.run_dir = run_dir;
  report.curves = run.ReportPng();
  report.steps = last_train.at("step").get<int64_t>();
  report.tokens = last_train.value("tokens", int64_t{0});
  report.first_loss = train_point(loss.points.front());
  report.last_loss = train_point(loss.points.back());
  report.lowest_loss = train_point(*min_loss);
  if (!best_val.is_null()) {
    report.best_eval = eval_point(best_val);
    report.last_eval = eval_point(last_val);
  }

  std::string& text = report.text;
  text = fmt::format("run: {} ({})\n", name, run_dir.string());
  text += fmt::format("steps: {}, tokens trained on: {}\n", report.steps, report.tokens);
  text += fmt::format("training loss: {:.4f} at step {} -> {:.4f} at step {} (lowest {:.4f} at step {})\n",
                      report.first_loss.loss, report.first_loss.step, report.last_loss.loss, report.last_loss.step,
                      report.lowest_loss.loss, report.lowest_loss.step);
  if (report.best_eval) {
    text += fmt::format("best evaluation: val_loss {:.4f} (perplexity {:.3f}) at step {}\n", report.best_eval->loss,
                        report.best_eval->perplexity, report.best_eval->step);
    text += fmt::format("last evaluation: val_loss {:.4f} (perplexity {:.3f}) at step {}\n", report.last_eval->loss,
                        report.last_eval->perplexity, report.last_eval->step);
  } else {
    text += "no evaluations (the job has no validation data)\n";
  }
  text += fmt::format("curves: {}\n", report.curves.string());
  WriteFileAtomic(run.ReportText(), text);
  return report;
}

std::string RunReportJson(const RunReport& report) {
  using Json = nlohmann::ordered_json;
  auto loss = [](const RunReport::Point& p) { return Json{{"step", p.step}, {"loss", p.loss}}; };
  auto eval = [](const std::optional<RunReport::Point>& p) {
    return p ? Json{{"step", p->step}, {"loss", p->loss}, {"perplexity", p->perplexity}} : Json();
  };
  const Json out = {
      {"ok", true},
      {"run", report.name},
      {"run_dir", report.run_dir.string()},
      {"steps", report.steps},
      {"tokens", report.tokens},
      {"train_loss",
       {{"first", loss(report.first_loss)}, {"last", loss(report.last_loss)}, {"lowest", loss(report.lowest_loss)}}},
      {"best_eval", eval(report.best_eval)},
      {"last_eval", eval(report.last_eval)},
      {"curves", report.curves.string()},
      {"summary", report.text}};
  return out.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n";
}

}  // namespace shardtune
