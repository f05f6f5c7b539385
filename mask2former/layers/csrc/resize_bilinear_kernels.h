// Bilinear resize (align_corners=False) of float32 planes, included by resize_bilinear_cpu.cpp
// (baseline instruction set: separately rounded products) and resize_bilinear_cpu_fma.cpp (AVX2 +
// FMA target: fused multiply-adds); internal linkage, so that the two builds never mix.
//
// The values are those of ATen's CPU kernel of F.interpolate(mode="bilinear", align_corners=False)
// bit for bit: per axis, source position src = max(scale * (dst + 0.5) - 0.5, 0) with
// scale = in / out, index i0 = floor(src), i1 = min(i0 + 1, in - 1), weights w1 = src - i0 and
// w0 = 1 - w1; per output pixel, t_r = x[r, i0] * w0 + x[r, i1] * w1 along the width on the two
// source rows, then t_0 * w0 + t_1 * w1 along the height. ATen's AVX2 / AVX512 builds contract
// every a * b + c * d into fma(a, b, c * d); its baseline build rounds both products. Here the
// width pass runs once per source row (ATen repeats it for every output pixel), so each plane
// costs one pass over the input rows and one over the output. Bit-identity with ATen was verified
// on upsamplings to outputs of at least 128 x 128 with a multiple of 16 columns, the only ones
// mask2former.modeling.mask_upsampling sends here; ATen's loops split smaller outputs otherwise.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace mask2former {
namespace {

// a * wa + b * wb, rounded as ATen's build of the same expression rounds it.
template <bool kFused>
inline float weighted_sum(float a, float wa, float b, float wb) {
  if (kFused) {
    return std::fma(a, wa, b * wb);
  }
  const float second = b * wb;
  return a * wa + second;
}

// Source indices and weights of the output positions 0..out-1 along one axis of size in.
struct ResizeAxis {
  std::vector<int64_t> i0, i1;
  std::vector<float> w0, w1;
};

template <bool kFused>
ResizeAxis resize_axis(int64_t in, int64_t out) {
  ResizeAxis axis{std::vector<int64_t>(out), std::vector<int64_t>(out), std::vector<float>(out), std::vector<float>(out)};
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t d = 0; d < out; ++d) {
    if (in == out) {
      axis.i0[d] = axis.i1[d] = d;
      axis.w0[d] = 1.0f;
      axis.w1[d] = 0.0f;
      continue;
    }
    const float centre = static_cast<float>(d) + 0.5f;
    const float src = std::max(kFused ? std::fma(scale, centre, -0.5f) : scale * centre - 0.5f, 0.0f);
    const int64_t i0 = static_cast<int64_t>(src);
    axis.i0[d] = i0;
    axis.i1[d] = i0 + (i0 < in - 1 ? 1 : 0);
    axis.w1[d] = std::min(std::max(src - static_cast<float>(i0), 0.0f), 1.0f);
    axis.w0[d] = 1.0f - axis.w1[d];
  }
  return axis;
}

// out [planes, row_stop - row_start, out_w] = output rows row_start..row_stop-1 of the resize of
// x [planes, in_h, in_w] to out_h x out_w (both contiguous float32); only the input rows those
// output rows read are resized along the width.
template <bool kFused>
void resize_planes(
    const float* x, int64_t planes, int64_t in_h, int64_t in_w, float* out, int64_t out_h, int64_t out_w,
    int64_t row_start, int64_t row_stop) {
  const ResizeAxis rows = resize_axis<kFused>(in_h, out_h);
  const ResizeAxis cols = resize_axis<kFused>(in_w, out_w);
  const int64_t first = rows.i0[row_start];
  const int64_t last = rows.i1[row_stop - 1];
  const int64_t out_rows = row_stop - row_start;
  // planes per task: enough for about 32k output values, as ATen splits elementwise work
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(out_rows * out_w, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    // the plane's input rows first..last resized along the width
    std::vector<float> along_w((last - first + 1) * out_w);
    for (int64_t c = begin; c < end; ++c) {
      const float* plane = x + c * in_h * in_w;
      for (int64_t r = first; r <= last; ++r) {
        const float* row = plane + r * in_w;
        float* dst = along_w.data() + (r - first) * out_w;
        for (int64_t j = 0; j < out_w; ++j) {
          dst[j] = weighted_sum<kFused>(row[cols.i0[j]], cols.w0[j], row[cols.i1[j]], cols.w1[j]);
        }
      }
      float* out_plane = out + c * out_rows * out_w;
      for (int64_t y = row_start; y < row_stop; ++y) {
        const float* top = along_w.data() + (rows.i0[y] - first) * out_w;
        const float* bottom = along_w.data() + (rows.i1[y] - first) * out_w;
        const float w0 = rows.w0[y];
        const float w1 = rows.w1[y];
        float* dst = out_plane + (y - row_start) * out_w;
        for (int64_t j = 0; j < out_w; ++j) {
          dst[j] = weighted_sum<kFused>(top[j], w0, bottom[j], w1);
        }
      }
    }
  });
}

}  // namespace
}  // namespace mask2former
