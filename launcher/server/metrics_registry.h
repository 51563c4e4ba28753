#pragma once
// A small Prometheus registry: counter, gauge and histogram families with labels, rendered in the
// text exposition format 0.0.4 (what GET /metrics serves; `promtool check metrics` accepts it).
//
// Contract: families are added once, before the registry is shared between threads (a name or a
// label name that Prometheus would refuse, a counter not ending in `_total`, or a name added twice
// throws Error(kInternal): a bug, not bad input). After that every call is thread-safe: each family
// has its own lock, and Render() reads each family under it. A sample's label values are given in
// the order of the family's label names, any bytes (they are escaped when rendered); a count of
// values that differs from the names' throws Error(kInternal). Families render in the order they
// were added, their series sorted by label values, so two renders of the same state are equal.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace shardtune::server {

using LabelValues = std::vector<std::string>;

// One metric name with its HELP, TYPE and label names; the base of the three kinds.
class MetricFamily {
 public:
  enum class Type { kCounter, kGauge, kHistogram };
  MetricFamily(std::string name, std::string help, Type type, std::vector<std::string> label_names);
  virtual ~MetricFamily() = default;
  const std::string& name() const { return name_; }
  // Appends this family's HELP and TYPE lines and its samples to `out`.
  void Render(std::string& out) const;

 protected:
  void CheckArity(const LabelValues& values) const;
  // `name{labels} value` lines of the series with `values` (under mutex_).
  virtual void RenderSeries(std::string& out) const = 0;
  std::string Sample(const std::string& suffix, const LabelValues& values, double value,
                     const std::string& extra_label = "") const;
  mutable std::mutex mutex_;

 private:
  std::string name_, help_;
  Type type_;
  std::vector<std::string> label_names_;
};

// A value that only goes up (from 0 at the server's start; Prometheus takes a restart's reset).
class Counter final : public MetricFamily {
 public:
  Counter(std::string name, std::string help, std::vector<std::string> label_names);
  void Add(const LabelValues& values, double by = 1);  // `by` >= 0
  double Value(const LabelValues& values) const;       // 0 for a series never added to

 private:
  void RenderSeries(std::string& out) const override;
  std::map<LabelValues, double> series_;
};

// A value that is set; Clear() drops every series (a gauge recomputed at each scrape, whose
// series come and go, such as one per running job).
class Gauge final : public MetricFamily {
 public:
  Gauge(std::string name, std::string help, std::vector<std::string> label_names);
  void Set(const LabelValues& values, double value);
  void Clear();

 private:
  void RenderSeries(std::string& out) const override;
  std::map<LabelValues, double> series_;
};

// Observations counted into buckets with the given upper bounds (ascending; +Inf is implicit),
// with their sum and count.
class Histogram final : public MetricFamily {
 public:
  Histogram(std::string name, std::string help, std::vector<std::string> label_names, std::vector<double> bounds);
  void Observe(const LabelValues& values, double value);

 private:
  struct Series {
    std::vector<uint64_t> buckets;  // per bound, not cumulative; the last is +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  void RenderSeries(std::string& out) const override;
  std::vector<double> bounds_;
  std::map<LabelValues, Series> series_;
};

class MetricsRegistry {
 public:
  Counter& AddCounter(const std::string& name, const std::string& help, std::vector<std::string> label_names = {});
  Gauge& AddGauge(const std::string& name, const std::string& help, std::vector<std::string> label_names = {});
  Histogram& AddHistogram(const std::string& name, const std::string& help, std::vector<std::string> label_names,
                          std::vector<double> bounds);
  // Every family, in the text exposition format 0.0.4.
  std::string Render() const;

 private:
  template <typename T, typename... Args>
  T& Add(Args&&... args);
  std::vector<std::unique_ptr<MetricFamily>> families_;
};

// The Content-Type of Render()'s text.
inline constexpr char kPrometheusTextContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// A sample value as Prometheus writes it: shortest round-trip decimal, +Inf, -Inf, NaN.
std::string FormatMetricValue(double value);
// A label value inside its double quotes: backslash, double quote and newline escaped.
std::string EscapeLabelValue(const std::string& value);

}  // namespace shardtune::server
