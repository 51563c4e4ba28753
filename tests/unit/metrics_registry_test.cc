// The Prometheus registry's text format (launcher/server/metrics_registry.h): HELP/TYPE lines,
// escaping, histogram buckets, value spelling and the checks on names; the route templates of the
// HTTP listener and HOST:PORT splitting.
#include "launcher/server/metrics_registry.h"

#include <gtest/gtest.h>

#include "common/error.h"
#include "launcher/server/http_server.h"
#include "launcher/server/server_config.h"

namespace shardtune::server {
namespace {

TEST(MetricsRegistry, RendersCountersAndGaugesWithHelpTypeAndSortedSeries) {
  MetricsRegistry registry;
  Counter& requests = registry.AddCounter("shardtune_requests_total", "Requests, by code.", {"code"});
  Gauge& depth = registry.AddGauge("shardtune_queue_depth", "Jobs queued.");
  requests.Add({"OK"});
  requests.Add({"OK"}, 2);
  requests.Add({"NOT_FOUND"});
  depth.Set({}, 7);
  EXPECT_EQ(registry.Render(),
            "# HELP shardtune_requests_total Requests, by code.\n"
            "# TYPE shardtune_requests_total counter\n"
            "shardtune_requests_total{code=\"NOT_FOUND\"} 1\n"
            "shardtune_requests_total{code=\"OK\"} 3\n"
            "# HELP shardtune_queue_depth Jobs queued.\n"
            "# TYPE shardtune_queue_depth gauge\n"
            "shardtune_queue_depth 7\n");
  EXPECT_EQ(requests.Value({"OK"}), 3);
  EXPECT_EQ(requests.Value({"UNAVAILABLE"}), 0);
}

TEST(MetricsRegistry, EscapesLabelValuesAndHelp) {
  MetricsRegistry registry;
  Gauge& loss = registry.AddGauge("shardtune_job_loss", "Loss \\ of a \"job\"\nper step.", {"job", "name"});
  loss.Set({"job-1", "a \"quoted\" \\ name\nwith a newline"}, 0.25);
  EXPECT_EQ(registry.Render(),
            "# HELP shardtune_job_loss Loss \\\\ of a \"job\"\\nper step.\n"
            "# TYPE shardtune_job_loss gauge\n"
            "shardtune_job_loss{job=\"job-1\",name=\"a \\\"quoted\\\" \\\\ name\\nwith a newline\"} 0.25\n");
}

TEST(MetricsRegistry, GaugeClearDropsEverySeries) {
  MetricsRegistry registry;
  Gauge& step = registry.AddGauge("shardtune_job_step", "Step.", {"job"});
  step.Set({"a"}, 1);
  step.Clear();
  step.Set({"b"}, 2);
  EXPECT_EQ(registry.Render(),
            "# HELP shardtune_job_step Step.\n# TYPE shardtune_job_step gauge\n"
            "shardtune_job_step{job=\"b\"} 2\n");
}

TEST(MetricsRegistry, HistogramBucketsAreCumulativeAndUpperInclusive) {
  MetricsRegistry registry;
  Histogram& seconds = registry.AddHistogram("shardtune_rpc_seconds", "Latency.", {"method"}, {0.25, 1});
  for (const double v : {0.125, 0.25, 0.5, 3.0}) seconds.Observe({"Get"}, v);
  EXPECT_EQ(registry.Render(),
            "# HELP shardtune_rpc_seconds Latency.\n"
            "# TYPE shardtune_rpc_seconds histogram\n"
            "shardtune_rpc_seconds_bucket{method=\"Get\",le=\"0.25\"} 2\n"
            "shardtune_rpc_seconds_bucket{method=\"Get\",le=\"1\"} 3\n"
            "shardtune_rpc_seconds_bucket{method=\"Get\",le=\"+Inf\"} 4\n"
            "shardtune_rpc_seconds_sum{method=\"Get\"} 3.875\n"
            "shardtune_rpc_seconds_count{method=\"Get\"} 4\n");
}

TEST(MetricsRegistry, ValuesAsPrometheusSpellsThem) {
  EXPECT_EQ(FormatMetricValue(3), "3");
  EXPECT_EQ(FormatMetricValue(0.001), "0.001");
  EXPECT_EQ(FormatMetricValue(-2.5), "-2.5");
  EXPECT_EQ(FormatMetricValue(1e21), "1e+21");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::nan("")), "NaN");
}

TEST(MetricsRegistry, RefusesWhatPrometheusWouldRefuse) {
  MetricsRegistry registry;
  EXPECT_THROW(registry.AddCounter("shardtune_requests", "A counter without _total."), Error);
  EXPECT_THROW(registry.AddGauge("shardtune_up_total", "A gauge with _total."), Error);
  EXPECT_THROW(registry.AddGauge("2xx", "Starts with a digit."), Error);
  EXPECT_THROW(registry.AddGauge("shardtune-dash", "A dash."), Error);
  EXPECT_THROW(registry.AddGauge("shardtune_a", "Bad label.", {"le-x"}), Error);
  EXPECT_THROW(registry.AddGauge("shardtune_b", "Reserved label.", {"__name"}), Error);
  EXPECT_THROW(registry.AddHistogram("shardtune_c", "le is the histogram's.", {"le"}, {1}), Error);
  EXPECT_THROW(registry.AddHistogram("shardtune_d", "Unsorted.", {}, {1, 0.5}), Error);
  registry.AddGauge("shardtune_e", "Once.");
  EXPECT_THROW(registry.AddGauge("shardtune_e", "Twice."), Error);
  Counter& counter = registry.AddCounter("shardtune_f_total", "Counter.", {"code"});
  EXPECT_THROW(counter.Add({"OK"}, -1), Error);       // counters never go down
  EXPECT_THROW(counter.Add({"OK", "extra"}), Error);  // one value per label name
}

TEST(HttpRoutes, TemplatesBecomeOneSegmentGroups) {
  EXPECT_EQ(RoutePattern("/metrics"), "/metrics");
  EXPECT_EQ(RoutePattern("/v1/files/{id}/content"), "/v1/files/([^/]+)/content");
  EXPECT_EQ(RoutePattern("/v1/fine_tuning/jobs/{id}/cancel"), "/v1/fine_tuning/jobs/([^/]+)/cancel");
  EXPECT_EQ(RoutePattern("/a.b"), "/a\\.b");  // every other character literal
}

TEST(HttpRoutes, HostPortSplits) {
  const auto v4 = SplitHostPort("127.0.0.1:8080");
  ASSERT_TRUE(v4);
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 8080);
  const auto v6 = SplitHostPort("[::1]:0");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 0);
  for (const char* bad : {"8080", ":8080", "localhost:", "localhost:http", "localhost:70000", "::1:80", "h:1234567"})
    EXPECT_FALSE(SplitHostPort(bad)) << bad;
}

}  // namespace
}  // namespace shardtune::server
