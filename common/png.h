#pragma once
// A minimal PNG writer (8-bit RGB, no interlace): enough for the plots `shardtune report` draws.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace shardtune {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

// A canvas to draw on: lines, filled rectangles and text in a small built-in bitmap font.
class Canvas {
 public:
  Canvas(int width, int height, Rgb background);
  int width() const { return width_; }
  int height() const { return height_; }
  void Set(int x, int y, Rgb color);
  void FillRect(int x0, int y0, int x1, int y1, Rgb color);
  void Line(int x0, int y0, int x1, int y1, Rgb color, int thickness = 1);
  // Text with its top-left corner at (x, y), `scale` pixels per font pixel. The font has digits,
  // ". - +", lowercase letters and "_"; anything else is drawn as a blank.
  void Text(int x, int y, const std::string& text, Rgb color, int scale = 2);
  static int TextWidth(const std::string& text, int scale = 2) { return static_cast<int>(text.size()) * 6 * scale; }
  const std::vector<uint8_t>& pixels() const { return pixels_; }  // RGB, row-major

 private:
  int width_, height_;
  std::vector<uint8_t> pixels_;
};

// Writes `canvas` as a PNG file (atomically).
void WritePng(const std::filesystem::path& path, const Canvas& canvas);

}  // namespace shardtune
