// CPU kernels of multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, Eq. 2)
// on raw pointers, included by ms_deform_attn_cpu.cpp (compiled for the baseline instruction set)
// and by ms_deform_attn_cpu_avx2.cpp (compiled for AVX2 + FMA); everything here has internal
// linkage, so that the two builds never mix.
//
// Forward: at::parallel_for over (batch, query); each task accumulates the P * L bilinear samples of
// every head in an accumulator of the op-math type (float for bfloat16 / half).
// Value (and grad_output) are scalar_t; sampling locations and attention weights (and their
// gradients) are coord_t: scalar_t, or float for a 16-bit scalar_t (float32 coordinates).
// Backward: grad_sampling_locations and grad_attention_weights belong to one (batch, query, head)
// each, but grad_value is scattered; tasks own one (batch, head) and a chunk of queries, and every
// chunk accumulates into its own grad_value slice, summed afterwards, so no two threads write to the
// same element and the result does not depend on scheduling.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "bilinear.h"
#include "ms_deform_attn.h"

namespace mask2former {
namespace {

// Queries per forward task below which at::parallel_for does not split further.
constexpr int64_t kForwardGrain = 16;
// Fewest queries a backward chunk gets when (batch, head) pairs are split over more threads.
constexpr int64_t kMinQueriesPerChunk = 256;
// Independent partial sums per dot product in the backward pass.
constexpr int kDotLanes = 8;

// acc[d] += sum_k coef[k] * v[k][d] over the channels of one head. With kChannels > 0 the channel
// count is a compile-time constant, so that the loop is fully unrolled and vectorised.
template <int64_t kChannels, typename scalar_t, typename acc_t>
inline void add_bilinear_sample(
    acc_t* __restrict__ acc, const scalar_t* const* v, const acc_t* coef, int64_t channels) {
  const int64_t count = kChannels > 0 ? kChannels : channels;
  const scalar_t* __restrict__ v0 = v[0];
  const scalar_t* __restrict__ v1 = v[1];
  const scalar_t* __restrict__ v2 = v[2];
  const scalar_t* __restrict__ v3 = v[3];
  for (int64_t d = 0; d < count; ++d) {
    acc[d] += coef[0] * static_cast<acc_t>(v0[d]) + coef[1] * static_cast<acc_t>(v1[d]) +
        coef[2] * static_cast<acc_t>(v2[d]) + coef[3] * static_cast<acc_t>(v3[d]);
  }
}

template <int64_t kChannels, typename scalar_t, typename coord_t>
void forward_kernel(
    const MSDeformAttnSizes& sz,
    const scalar_t* value,
    const int64_t* shapes,
    const int64_t* starts,
    const coord_t* locations,
    const coord_t* weights,
    scalar_t* output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = sz.channels;
  const int64_t pixel_stride = sz.heads * channels;
  const int64_t level_points = sz.levels * sz.points;
  at::parallel_for(0, sz.batch * sz.queries, kForwardGrain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(channels);
    const std::vector<scalar_t> zeros(channels, scalar_t(0));
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t n = nq / sz.queries;
      for (int64_t m = 0; m < sz.heads; ++m) {
        const int64_t nqm = nq * sz.heads + m;
        const coord_t* loc = locations + nqm * level_points * 2;
        const coord_t* attn = weights + nqm * level_points;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t l = 0; l < sz.levels; ++l) {
          const scalar_t* value_l = value + (n * sz.spatial + starts[l]) * pixel_stride + m * channels;
          for (int64_t p = 0; p < sz.points; ++p) {
            const int64_t lp = l * sz.points + p;
            BilinearCorners<acc_t> c;
            if (!bilinear_corners<acc_t>(
                    static_cast<acc_t>(loc[2 * lp]), static_cast<acc_t>(loc[2 * lp + 1]), shapes[2 * l],
                    shapes[2 * l + 1], c)) {
              continue;
            }
            const acc_t a = static_cast<acc_t>(attn[lp]);
            const scalar_t* v[4];
            acc_t coef[4];
            for (int k = 0; k < 4; ++k) {
              v[k] = c.pixel[k] >= 0 ? value_l + c.pixel[k] * pixel_stride : zeros.data();
              coef[k] = a * c.weight[k];
            }
            add_bilinear_sample<kChannels>(acc.data(), v, coef, channels);
          }
        }
        scalar_t* out = output + nqm * channels;
        for (int64_t d = 0; d < channels; ++d) {
          out[d] = static_cast<scalar_t>(acc[d]);
        }
      }
    }
  });
}

// dot[k] = sum_d g[d] * v[k][d] for the four corners, with kDotLanes independent partial sums
// per corner so that the compiler can vectorise the loop.
template <typename scalar_t>
void dot4(
    const at::opmath_type<scalar_t>* g,
    const scalar_t* const* v,
    int64_t channels,
    at::opmath_type<scalar_t>* dot) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t partial[4][kDotLanes] = {};
  int64_t d = 0;
  for (; d + kDotLanes <= channels; d += kDotLanes) {
    for (int k = 0; k < 4; ++k) {
      for (int j = 0; j < kDotLanes; ++j) {
        partial[k][j] += g[d + j] * static_cast<acc_t>(v[k][d + j]);
      }
    }
  }
  for (; d < channels; ++d) {
    for (int k = 0; k < 4; ++k) {
      partial[k][0] += g[d] * static_cast<acc_t>(v[k][d]);
    }
  }
  for (int k = 0; k < 4; ++k) {
    dot[k] = 0;
    for (int j = 0; j < kDotLanes; ++j) {
      dot[k] += partial[k][j];
    }
  }
}

// grad_value_acc is [N, chunks, S, M, D] in the op-math type; chunk c of (n, m) covers queries
// [c * Lq / chunks, (c + 1) * Lq / chunks).
template <typename scalar_t, typename coord_t>
void backward_kernel(
    const MSDeformAttnSizes& sz,
    int64_t chunks,
    const scalar_t* value,
    const int64_t* shapes,
    const int64_t* starts,
    const coord_t* locations,
    const coord_t* weights,
    const scalar_t* grad_output,
    at::opmath_type<scalar_t>* grad_value_acc,
    coord_t* grad_locations,
    coord_t* grad_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = sz.channels;
  const int64_t pixel_stride = sz.heads * channels;
  const int64_t level_points = sz.levels * sz.points;
  at::parallel_for(0, sz.batch * sz.heads * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> grad_out(channels);
    const std::vector<scalar_t> zeros(channels, scalar_t(0));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t m = (task / chunks) % sz.heads;
      const int64_t n = task / (chunks * sz.heads);
      const int64_t q_begin = chunk * sz.queries / chunks;
      const int64_t q_end = (chunk + 1) * sz.queries / chunks;
      acc_t* grad_value_nm = grad_value_acc + (n * chunks + chunk) * sz.spatial * pixel_stride + m * channels;
      for (int64_t q = q_begin; q < q_end; ++q) {
        const int64_t nqm = (n * sz.queries + q) * sz.heads + m;
        const coord_t* loc = locations + nqm * level_points * 2;
        const coord_t* attn = weights + nqm * level_points;
        const scalar_t* g = grad_output + nqm * channels;
        for (int64_t d = 0; d < channels; ++d) {
          grad_out[d] = static_cast<acc_t>(g[d]);
        }
        for (int64_t l = 0; l < sz.levels; ++l) {
          const int64_t height = shapes[2 * l];
          const int64_t width = shapes[2 * l + 1];
          const scalar_t* value_l = value + (n * sz.spatial + starts[l]) * pixel_stride + m * channels;
          acc_t* grad_value_l = grad_value_nm + starts[l] * pixel_stride;
          for (int64_t p = 0; p < sz.points; ++p) {
            const int64_t lp = l * sz.points + p;
            BilinearCorners<acc_t> c;
            if (!bilinear_corners<acc_t>(
                    static_cast<acc_t>(loc[2 * lp]), static_cast<acc_t>(loc[2 * lp + 1]), height, width, c)) {
              continue;
            }
            const acc_t a = static_cast<acc_t>(attn[lp]);
            const scalar_t* v[4];
            for (int k = 0; k < 4; ++k) {
              v[k] = c.pixel[k] >= 0 ? value_l + c.pixel[k] * pixel_stride : zeros.data();
            }
            // with dot[k] = <grad_out, v_k>: sample = sum_k weight_k v_k, so
            // dL/da = sum_k weight_k dot[k], dL/dx = a ((1 - fy)(dot1 - dot0) + fy (dot3 - dot2)) * W
            // (x = loc_x * W - 0.5), and likewise along y
            acc_t dot[4];
            dot4<scalar_t>(grad_out.data(), v, channels, dot);
            const acc_t grad_a =
                c.weight[0] * dot[0] + c.weight[1] * dot[1] + c.weight[2] * dot[2] + c.weight[3] * dot[3];
            const acc_t grad_x = (1 - c.fy) * (dot[1] - dot[0]) + c.fy * (dot[3] - dot[2]);
            const acc_t grad_y = (1 - c.fx) * (dot[2] - dot[0]) + c.fx * (dot[3] - dot[1]);
            const int64_t point = nqm * level_points + lp;
            grad_weights[point] = static_cast<coord_t>(grad_a);
            grad_locations[2 * point] = static_cast<coord_t>(a * grad_x * static_cast<acc_t>(width));
            grad_locations[2 * point + 1] = static_cast<coord_t>(a * grad_y * static_cast<acc_t>(height));
            for (int k = 0; k < 4; ++k) {
              if (c.pixel[k] < 0) {
                continue;
              }
              const acc_t coef = a * c.weight[k];
              acc_t* grad_v = grad_value_l + c.pixel[k] * pixel_stride;
              for (int64_t d = 0; d < channels; ++d) {
                grad_v[d] += coef * grad_out[d];
              }
            }
          }
        }
      }
    }
  });
}

// Calls body(scalar_t{}, coord_t{}) with scalar_t the value's dtype and coord_t the locations'
// dtype: scalar_t itself, or float (the op-math type) for 16-bit values with float32 locations.
template <typename Body>
void dispatch_value_and_coord(const at::Tensor& value, const at::Tensor& sampling_locations, const Body& body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, value.scalar_type(), "ms_deform_attn", [&] {
    if (sampling_locations.scalar_type() == value.scalar_type()) {
      body(scalar_t{}, scalar_t{});
    } else {
      body(scalar_t{}, at::opmath_type<scalar_t>{});
    }
  });
}

// Runs the forward kernel of value's dtype: value [N, S, M, D], locations, weights (in the
// locations' dtype) and output contiguous; output [N, Lq, M * D] is fully written.
void run_forward_kernel(
    const MSDeformAttnSizes& sz,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    at::Tensor& output) {
  dispatch_value_and_coord(value, sampling_locations, [&](auto s, auto c) {
    using scalar_t = decltype(s);
    using coord_t = decltype(c);
    // 32 channels per head: Mask2Former's and Deformable DETR's 256 dims / 8 heads
    const auto kernel =
        sz.channels == 32 ? forward_kernel<32, scalar_t, coord_t> : forward_kernel<0, scalar_t, coord_t>;
    kernel(
        sz, value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<coord_t>(),
        attention_weights.const_data_ptr<coord_t>(), output.mutable_data_ptr<scalar_t>());
  });
}

// Runs the backward kernel of value's dtype on contiguous inputs (weights, grad_locations and
// grad_weights in the locations' dtype); grad_value_acc is [N, chunks, S, M, D] in the op-math
// type, zero-initialised like grad_locations and grad_weights.
void run_backward_kernel(
    const MSDeformAttnSizes& sz,
    int64_t chunks,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output,
    at::Tensor& grad_value_acc,
    at::Tensor& grad_locations,
    at::Tensor& grad_weights) {
  dispatch_value_and_coord(value, sampling_locations, [&](auto s, auto c) {
    using scalar_t = decltype(s);
    using coord_t = decltype(c);
    backward_kernel<scalar_t, coord_t>(
        sz, chunks, value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<coord_t>(),
        attention_weights.const_data_ptr<coord_t>(), grad_output.const_data_ptr<scalar_t>(),
        grad_value_acc.mutable_data_ptr<at::opmath_type<scalar_t>>(),
        grad_locations.mutable_data_ptr<coord_t>(), grad_weights.mutable_data_ptr<coord_t>());
  });
}

}  // namespace
}  // namespace mask2former
