// Bilinear sampling corners shared by the CPU and CUDA kernels, matching
// torch.nn.functional.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace mask2former {

// The four pixels around a sampling point: index 0 = (y0, x0), 1 = (y0, x0 + 1), 2 = (y0 + 1, x0),
// 3 = (y0 + 1, x0 + 1).
template <typename acc_t>
struct BilinearCorners {
  int64_t pixel[4];   // y * W + x within the level, or -1 for a pixel outside the map (reads zero)
  acc_t weight[4];    // bilinear weights; they sum to 1
  acc_t fx;           // x - x0, in [0, 1)
  acc_t fy;           // y - y0, in [0, 1)
};

// Fills `corners` for the normalised location (loc_x, loc_y) on an H x W map, i.e. at pixel
// coordinates x = loc_x * W - 0.5, y = loc_y * H - 0.5. Returns false when no corner lies inside
// the map (also for NaN locations): the sample and all its gradients are then zero.
template <typename acc_t>
C10_HOST_DEVICE inline bool bilinear_corners(
    acc_t loc_x, acc_t loc_y, int64_t height, int64_t width, BilinearCorners<acc_t>& corners) {
  const acc_t x = loc_x * static_cast<acc_t>(width) - static_cast<acc_t>(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(height) - static_cast<acc_t>(0.5);
  if (!(x >= static_cast<acc_t>(-1) && x < static_cast<acc_t>(width) &&
        y >= static_cast<acc_t>(-1) && y < static_cast<acc_t>(height))) {
    return false;
  }
  // floor() by truncation: x, y are in [-1, size) here
  int64_t x0 = static_cast<int64_t>(x);
  int64_t y0 = static_cast<int64_t>(y);
  x0 -= static_cast<acc_t>(x0) > x;
  y0 -= static_cast<acc_t>(y0) > y;
  const acc_t fx = x - static_cast<acc_t>(x0);
  const acc_t fy = y - static_cast<acc_t>(y0);
  const bool x0_in = x0 >= 0;
  const bool x1_in = x0 + 1 < width;
  const bool y0_in = y0 >= 0;
  const bool y1_in = y0 + 1 < height;
  corners.fx = fx;
  corners.fy = fy;
  corners.weight[0] = (1 - fy) * (1 - fx);
  corners.weight[1] = (1 - fy) * fx;
  corners.weight[2] = fy * (1 - fx);
  corners.weight[3] = fy * fx;
  const int64_t base = y0 * width + x0;
  corners.pixel[0] = (y0_in && x0_in) ? base : -1;
  corners.pixel[1] = (y0_in && x1_in) ? base + 1 : -1;
  corners.pixel[2] = (y1_in && x0_in) ? base + width : -1;
  corners.pixel[3] = (y1_in && x1_in) ? base + width + 1 : -1;
  return true;
}

}  // namespace mask2former
