#include "launcher/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/png.h"
#include "common/run_dir.h"

namespace shardtune {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Series {
  std::string name;
  Rgb color;
  std::vector<std::pair<double, double>> points;  // step, value
};

// About five round tick values covering [lo, hi].
std::vector<double> Ticks(double lo, double hi) {
  const double raw = (hi - lo) / 5;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (magnitude * m >= raw) {
      step = magnitude * m;
      break;
    }
  }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push_back(t);
  return ticks;
}

std::string Label(double v) {
  std::string s = fmt::format("{:.4g}", v);
  return s == "-0" ? "0" : s;
}

void Plot(const fs::path& path, const std::string& title, const std::vector<Series>& series) {
  constexpr int kWidth = 960, kHeight = 540, kLeft = 90, kRight = 30, kTop = 50, kBottom = 60;
  const Rgb white{255, 255, 255}, ink{40, 40, 40}, grid{225, 225, 225};
  Canvas c(kWidth, kHeight, white);
  double x_lo = std::numeric_limits<double>::max(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const Series& s : series) {
    for (const auto& [x, y] : s.points) {
      x_lo = std::min(x_lo, x);
      x_hi = std::max(x_hi, x);
      y_lo = std::min(y_lo, y);
      y_hi = std::max(y_hi, y);
    }
  }
  if (x_hi <= x_lo) x_hi = x_lo + 1;
  if (y_hi <= y_lo) y_hi = y_lo + 1;
  const double pad = (y_hi - y_lo) * 0.05;
  y_lo -= pad;
  y_hi += pad;
  const int w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  auto px = [&](double x) { return kLeft + static_cast<int>(std::lround((x - x_lo) / (x_hi - x_lo) * w)); };
  auto py = [&](double y) { return kTop + h - static_cast<int>(std::lround((y - y_lo) / (y_hi - y_lo) * h)); };
  for (double t : Ticks(y_lo, y_hi)) {
    c.Line(kLeft, py(t), kLeft + w, py(t), grid);
    const std::string label = Label(t);
    c.Text(kLeft - 8 - Canvas::TextWidth(label), py(t) - 7, label, ink);
  }
  for (double t : Ticks(x_lo, x_hi)) {
    if (std::fabs(t - std::round(t)) > 1e-9) continue;  // steps are whole
    c.Line(px(t), kTop, px(t), kTop + h, grid);
    const std::string label = Label(t);
    c.Text(px(t) - Canvas::TextWidth(label) / 2, kTop + h + 10, label, ink);
  }
  c.Line(kLeft, kTop + h, kLeft + w, kTop + h, ink, 2);
  c.Line(kLeft, kTop, kLeft, kTop + h, ink, 2);
  c.Text(kLeft + w / 2 - Canvas::TextWidth("step") / 2, kHeight - 26, "step", ink);
  c.Text(kLeft, 16, title, ink);
  int legend_x = kLeft + w;
  for (auto s = series.rbegin(); s != series.rend(); ++s) {
    legend_x -= Canvas::TextWidth(s->name) + 40;
    c.Line(legend_x, 23, legend_x + 24, 23, s->color, 3);
    c.Text(legend_x + 30, 16, s->name, ink);
  }
  for (const Series& s : series) {
    for (size_t i = 1; i < s.points.size(); ++i) {
      c.Line(px(s.points[i - 1].first), py(s.points[i - 1].second), px(s.points[i].first), py(s.points[i].second),
             s.color, 2);
    }
    if (s.points.size() == 1)
      c.FillRect(px(s.points[0].first) - 3, py(s.points[0].second) - 3, px(s.points[0].first) + 3,
                 py(s.points[0].second) + 3, s.color);
  }
  WritePng(path, c);
}

}  // namespace

RunReport WriteRunReport(const fs::path& run_dir) {
  const RunDir run(run_dir);
  const fs::path metrics_path = run.Metrics();
  std::ifstream in(metrics_path);
  if (!in) Fail(ErrorCode::kNotFound, "{}: no metrics.jsonl there (is it a run's output.dir?)", run_dir.string());
  Series loss{"loss", {31, 119, 180}, {}}, val{"val_loss", {255, 127, 14}, {}};
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
  std::vector<Series> series = {loss};
  if (!val.points.empty()) series.push_back(val);
  Plot(run.ReportPng(), title, series);

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
