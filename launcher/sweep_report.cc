#include "launcher/sweep_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <memory>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "launcher/plot.h"
#include "launcher/sweep/sweep_dir.h"
#include "launcher/sweep/sweep_state.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;
using sweep::Distribution;
using sweep::Parameter;
using sweep::SweepDir;
using sweep::SweepSpec;
using sweep::SweepState;
using sweep::TrialRecord;

namespace {

const Rgb kObjectiveColor{31, 119, 180}, kBestColor{255, 127, 14};

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return text;
}

// A listed value as a category's label: strings without their quotes.
std::string CategoryLabel(const json& value) { return value.is_string() ? value.get<std::string>() : value.dump(); }

// The spec the header records, and the state its events make.
struct ReplayedSweep {
  std::unique_ptr<SweepSpec> spec;  // the state points at it
  std::unique_ptr<SweepState> state;
};

ReplayedSweep Replay(const SweepDir& dir) {
  const fs::path path = dir.Trials();
  if (!fs::exists(path))
    Fail(ErrorCode::kNotFound, "{}: no trials.jsonl there (is it a sweep's directory?)", dir.path().string());
  std::string text = ReadFile(path);
  text.resize(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);  // a torn last line: being written
  std::istringstream lines(text);
  ReplayedSweep sweep;
  std::string line;
  for (int number = 1; std::getline(lines, line); ++number) {
    if (line.empty()) continue;
    try {
      const json event = json::parse(line);
      if (!sweep.spec) {
        sweep.spec = std::make_unique<SweepSpec>(sweep::SpecFromHeader(event));
        sweep.state = std::make_unique<SweepState>(*sweep.spec);
      }
      sweep.state->Apply(event);
    } catch (const json::exception& e) {
      Fail(ErrorCode::kDataLoss, "{}:{}: not a JSON line: {}", path.string(), number, e.what());
    } catch (const Error& e) {
      throw Error(e.code(), fmt::format("{}:{}: {}", path.string(), number, e.what()));
    }
  }
  if (!sweep.spec) Fail(ErrorCode::kDataLoss, "{}: empty", path.string());
  return sweep;
}

std::vector<SweepReport::Row> SortedRows(const SweepSpec& spec, const SweepState& state) {
  std::vector<SweepReport::Row> rows;
  for (const TrialRecord& t : state.trials()) {
    rows.push_back({t.number, sweep::ToString(t.status), t.steps, t.objective,
                    sweep::ValuesToJson(spec.parameters, t.values), t.note});
  }
  std::stable_sort(rows.begin(), rows.end(), [&](const SweepReport::Row& a, const SweepReport::Row& b) {
    if (a.objective.has_value() != b.objective.has_value()) return a.objective.has_value();
    return a.objective && spec.objective.Better(*a.objective, *b.objective);
  });
  return rows;
}

std::vector<std::pair<int64_t, double>> BestSoFar(const SweepSpec& spec, const SweepState& state) {
  std::vector<std::pair<int64_t, double>> best;
  for (const TrialRecord& t : state.trials()) {
    if (!t.objective) continue;
    const bool better = best.empty() || spec.objective.Better(*t.objective, best.back().second);
    best.emplace_back(t.number, better ? *t.objective : best.back().second);
  }
  return best;
}

// The objective of every trial that has one, and the best so far as a staircase.
void PlotObjective(const SweepDir& dir, const SweepSpec& spec, const SweepState& state,
                   const std::vector<std::pair<int64_t, double>>& best_so_far) {
  PlotSeries trials{spec.objective.metric, kObjectiveColor, {}, /*markers=*/true};
  PlotSeries best{"best so far", kBestColor, {}};
  for (const TrialRecord& t : state.trials())
    if (t.objective) trials.points.emplace_back(static_cast<double>(t.number), *t.objective);
  for (const auto& [trial, value] : best_so_far) {
    if (!best.points.empty()) best.points.emplace_back(static_cast<double>(trial), best.points.back().second);
    best.points.emplace_back(static_cast<double>(trial), value);
  }
  PlotAxes axes;
  axes.x_label = "trial";
  WritePlot(dir.ObjectivePng(), Lower(fmt::format("{} - {} by trial", spec.name, spec.objective.metric)),
            {trials, best}, axes);
}

// The objective against parameter `index`'s value: a log axis for log_uniform, the listed values
// as positions for choice and grid; the best trial marked.
void PlotParameter(const SweepDir& dir, const SweepSpec& spec, const SweepState& state, size_t index,
                   std::optional<int64_t> best_trial) {
  const Parameter& p = spec.parameters[index];
  PlotAxes axes;
  axes.x_label = p.path;
  axes.log_x = p.distribution == Distribution::kLogUniform;
  axes.whole_x = p.distribution == Distribution::kIntUniform;
  for (const json& v : p.values) axes.categories.push_back(CategoryLabel(v));
  PlotSeries trials{spec.objective.metric, kObjectiveColor, {}, /*markers=*/true};
  PlotSeries best{"best", kBestColor, {}, /*markers=*/true};
  for (const TrialRecord& t : state.trials()) {
    if (!t.objective) continue;
    const json& v = t.values[index];
    double x = 0;
    if (p.IsRange()) {
      x = v.get<double>();
    } else {
      const auto at = std::find(p.values.begin(), p.values.end(), v);
      x = static_cast<double>(at - p.values.begin());
    }
    (best_trial && *best_trial == t.number ? best : trials).points.emplace_back(x, *t.objective);
  }
  WritePlot(dir.ParameterPng(p.path), Lower(fmt::format("{} - {} by {}", spec.name, spec.objective.metric, p.path)),
            {trials, best}, axes);
}

std::string TableText(const SweepReport& report, const SweepSpec& spec) {
  std::map<std::string, int> statuses;
  for (const SweepReport::Row& row : report.rows) ++statuses[row.status];
  std::string counts;
  for (const auto& [status, n] : statuses) counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", n, status);
  std::string text = fmt::format("sweep: {} ({}), strategy {}\n", report.name, report.sweep_dir.string(),
                                 sweep::ToString(spec.strategy));
  text += fmt::format("objective: {} ({}); {} trials: {}\n", report.metric, report.goal, report.rows.size(), counts);
  text += fmt::format("{:>4}  {:>5}  {:<9}  {:>6}  {:>12}  {}\n", "rank", "trial", "status", "steps", report.metric,
                      "values");
  int rank = 0;
  for (const SweepReport::Row& row : report.rows) {
    const sweep::TrialValues values = sweep::ValuesFromJson(spec.parameters, row.values);
    text += fmt::format("{:>4}  {:>5}  {:<9}  {:>6}  {:>12}  {}{}\n", row.objective ? std::to_string(++rank) : "-",
                        SweepDir::TrialName(row.trial), row.status, row.steps,
                        row.objective ? fmt::format("{:.6g}", *row.objective) : "-",
                        sweep::ValuesText(spec.parameters, values), row.note.empty() ? "" : "  (" + row.note + ")");
  }
  text += "charts:";
  for (const fs::path& plot : report.plots) text += " " + plot.string();
  return text + "\n";
}

}  // namespace

bool IsSweepDir(const fs::path& dir) { return fs::is_regular_file(SweepDir(dir).Trials()); }

SweepReport WriteSweepReport(const fs::path& sweep_dir) {
  const SweepDir dir(sweep_dir);
  const ReplayedSweep sweep = Replay(dir);
  const SweepSpec& spec = *sweep.spec;
  const SweepState& state = *sweep.state;
  SweepReport report;
  report.name = spec.name;
  report.metric = spec.objective.metric;
  report.goal = sweep::ToString(spec.objective.goal);
  report.sweep_dir = sweep_dir;
  report.rows = SortedRows(spec, state);
  report.best_so_far = BestSoFar(spec, state);
  if (report.best_so_far.empty())
    Fail(ErrorCode::kFailedPrecondition, "{}: no trial has an objective yet ({} proposed), nothing to draw",
         dir.Trials().string(), state.trials().size());
  PlotObjective(dir, spec, state, report.best_so_far);
  report.plots.push_back(dir.ObjectivePng());
  const std::optional<int64_t> best_trial = report.rows.front().trial;
  for (size_t i = 0; i < spec.parameters.size(); ++i) {
    PlotParameter(dir, spec, state, i, best_trial);
    report.plots.push_back(dir.ParameterPng(spec.parameters[i].path));
  }
  report.text = TableText(report, spec);
  WriteFileAtomic(dir.ReportText(), report.text);
  return report;
}

std::string SweepReportJson(const SweepReport& report) {
  using Json = nlohmann::ordered_json;
  Json trials = Json::array(), best = Json::array(), plots = Json::array();
  for (const SweepReport::Row& row : report.rows) {
    trials.push_back({{"trial", row.trial},
                      {"status", row.status},
                      {"steps", row.steps},
                      {"objective", row.objective ? Json(*row.objective) : Json()},
                      {"values", Json(row.values)},
                      {"note", row.note}});
  }
  for (const auto& [trial, value] : report.best_so_far) best.push_back({{"trial", trial}, {"objective", value}});
  for (const fs::path& plot : report.plots) plots.push_back(plot.string());
  const Json out = {{"ok", true},
                    {"sweep", report.name},
                    {"sweep_dir", report.sweep_dir.string()},
                    {"metric", report.metric},
                    {"goal", report.goal},
                    {"trials", trials},
                    {"best_so_far", best},
                    {"plots", plots},
                    {"summary", report.text}};
  return out.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n";
}

}  // namespace shardtune
