#include "launcher/server/metrics_registry.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "common/error.h"

namespace shardtune::server {

namespace {

bool IsNameChar(char c, bool first, bool allow_colon) {
  const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
  return letter || (!first && c >= '0' && c <= '9');
}

// Metric names: [a-zA-Z_:][a-zA-Z0-9_:]*; label names: [a-zA-Z_][a-zA-Z0-9_]*, not __reserved.
bool IsValidName(const std::string& name, bool label) {
  if (name.empty() || (label && name.rfind("__", 0) == 0)) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (!IsNameChar(name[i], i == 0, !label)) return false;
  return true;
}

// HELP text: backslash and newline escaped (a double quote stays as it is there).
std::string EscapeHelp(const std::string& help) {
  std::string out;
  for (const char c : help) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

const char* TypeName(MetricFamily::Type type) {
  switch (type) {
    case MetricFamily::Type::kCounter:
      return "counter";
    case MetricFamily::Type::kGauge:
      return "gauge";
    case MetricFamily::Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

}  // namespace

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", value);
}

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  for (const char c : value) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

MetricFamily::MetricFamily(std::string name, std::string help, Type type, std::vector<std::string> label_names)
    : name_(std::move(name)), help_(std::move(help)), type_(type), label_names_(std::move(label_names)) {
  ST_CHECK(IsValidName(name_, false), "'{}' is not a Prometheus metric name", name_);
  const bool total = name_.size() > 6 && name_.compare(name_.size() - 6, 6, "_total") == 0;
  ST_CHECK(total == (type_ == Type::kCounter), "{}: counters, and only counters, end in _total", name_);
  std::set<std::string> seen;
  for (const std::string& label : label_names_) {
    ST_CHECK(IsValidName(label, true), "{}: '{}' is not a Prometheus label name", name_, label);
    ST_CHECK(seen.insert(label).second, "{}: label '{}' given twice", name_, label);
    ST_CHECK(type_ != Type::kHistogram || label != "le", "{}: 'le' is the histogram's own label", name_);
  }
}

void MetricFamily::CheckArity(const LabelValues& values) const {
  ST_CHECK(values.size() == label_names_.size(), "{}: {} label values for {} label names", name_, values.size(),
           label_names_.size());
}

std::string MetricFamily::Sample(const std::string& suffix, const LabelValues& values, double value,
                                 const std::string& extra_label) const {
  std::string labels;
  for (size_t i = 0; i < values.size(); ++i)
    labels += fmt::format("{}{}=\"{}\"", labels.empty() ? "" : ",", label_names_[i], EscapeLabelValue(values[i]));
  if (!extra_label.empty()) labels += (labels.empty() ? "" : ",") + extra_label;
  return fmt::format("{}{}{} {}\n", name_, suffix, labels.empty() ? "" : "{" + labels + "}", FormatMetricValue(value));
}

void MetricFamily::Render(std::string& out) const {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name_, EscapeHelp(help_), name_, TypeName(type_));
  std::lock_guard<std::mutex> lock(mutex_);
  RenderSeries(out);
}

Counter::Counter(std::string name, std::string help, std::vector<std::string> label_names)
    : MetricFamily(std::move(name), std::move(help), Type::kCounter, std::move(label_names)) {}

void Counter::Add(const LabelValues& values, double by) {
  CheckArity(values);
  ST_CHECK(by >= 0, "{}: a counter never goes down (add {})", name(), by);
  std::lock_guard<std::mutex> lock(mutex_);
  series_[values] += by;
}

double Counter::Value(const LabelValues& values) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = series_.find(values);
  return it == series_.end() ? 0 : it->second;
}

void Counter::RenderSeries(std::string& out) const {
  for (const auto& [values, value] : series_) out += Sample("", values, value);
}

Gauge::Gauge(std::string name, std::string help, std::vector<std::string> label_names)
    : MetricFamily(std::move(name), std::move(help), Type::kGauge, std::move(label_names)) {}

void Gauge::Set(const LabelValues& values, double value) {
  CheckArity(values);
  std::lock_guard<std::mutex> lock(mutex_);
  series_[values] = value;
}

void Gauge::Clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  series_.clear();
}

void Gauge::RenderSeries(std::string& out) const {
  for (const auto& [values, value] : series_) out += Sample("", values, value);
}

Histogram::Histogram(std::string name, std::string help, std::vector<std::string> label_names,
                     std::vector<double> bounds)
    : MetricFamily(std::move(name), std::move(help), Type::kHistogram, std::move(label_names)),
      bounds_(std::move(bounds)) {
  ST_CHECK(!bounds_.empty() && std::is_sorted(bounds_.begin(), bounds_.end()) &&
               std::adjacent_find(bounds_.begin(), bounds_.end()) == bounds_.end() && std::isfinite(bounds_.back()),
           "{}: bucket bounds must be finite and strictly ascending", this->name());
}

void Histogram::Observe(const LabelValues& values, double value) {
  CheckArity(values);
  std::lock_guard<std::mutex> lock(mutex_);
  Series& s = series_[values];
  if (s.buckets.empty()) s.buckets.assign(bounds_.size() + 1, 0);
  // The first bound >= value (Prometheus buckets are upper-inclusive); past the last: +Inf.
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  ++s.buckets[bucket];
  s.sum += value;
  ++s.count;
}

void Histogram::RenderSeries(std::string& out) const {
  for (const auto& [values, s] : series_) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i < s.buckets.size(); ++i) {
      cumulative += s.buckets[i];
      const std::string le = i < bounds_.size() ? FormatMetricValue(bounds_[i]) : "+Inf";
      out += Sample("_bucket", values, static_cast<double>(cumulative), "le=\"" + le + "\"");
    }
    out += Sample("_sum", values, s.sum);
    out += Sample("_count", values, static_cast<double>(s.count));
  }
}

template <typename T, typename... Args>
T& MetricsRegistry::Add(Args&&... args) {
  auto family = std::make_unique<T>(std::forward<Args>(args)...);
  for (const auto& f : families_) ST_CHECK(f->name() != family->name(), "metric {} added twice", f->name());
  T& ref = *family;
  families_.push_back(std::move(family));
  return ref;
}

Counter& MetricsRegistry::AddCounter(const std::string& name, const std::string& help,
                                     std::vector<std::string> label_names) {
  return Add<Counter>(name, help, std::move(label_names));
}

Gauge& MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                                 std::vector<std::string> label_names) {
  return Add<Gauge>(name, help, std::move(label_names));
}

Histogram& MetricsRegistry::AddHistogram(const std::string& name, const std::string& help,
                                         std::vector<std::string> label_names, std::vector<double> bounds) {
  return Add<Histogram>(name, help, std::move(label_names), std::move(bounds));
}

std::string MetricsRegistry::Render() const {
  std::string out;
  for (const auto& family : families_) family->Render(out);
  return out;
}

}  // namespace shardtune::server
