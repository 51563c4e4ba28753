#pragma once
// The charts `shardtune report` draws (a run's curves, a sweep's objective and parameters): one
// chart of lines and markers on a common pair of axes, written as a PNG (common/png.h). No LibTorch.

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "common/png.h"

namespace shardtune {

struct PlotSeries {
  std::string name;  // shown in the legend
  Rgb color;
  std::vector<std::pair<double, double>> points;  // x, y; lines join them in this order
  bool markers = false;                           // a square at each point instead of lines
};

// The x axis: linear by default (whole-number ticks when `whole_x`), logarithmic (ticks at
// powers of ten), or categories (x = 0, 1, ... labelled by `categories`).
struct PlotAxes {
  std::string x_label = "step";
  bool whole_x = true;  // ticks at whole numbers only (steps, trial numbers)
  bool log_x = false;   // every x must be > 0
  std::vector<std::string> categories;
};

// Draws `series` on one chart titled `title` (960 x 540) and writes it to `path` atomically.
void WritePlot(const std::filesystem::path& path, const std::string& title, const std::vector<PlotSeries>& series,
               const PlotAxes& axes = {});

}  // namespace shardtune
