// CPU kernels of multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, Eq. 2),
// registered as the CPU implementations of mask2former::ms_deform_attn_{forward,backward}.
//
// Forward: at::parallel_for over (batch, query); each task accumulates the P * L bilinear samples of
// every head in an accumulator of the op-math type (float for bfloat16 / half).
// Backward: grad_sampling_locations and grad_attention_weights belong to one (batch, query, head)
// each, but grad_value is scattered; tasks own one (batch, head) and a chunk of queries, and every
// chunk accumulates into its own grad_value slice, summed afterwards, so no two threads write to the
// same element and the result does not depend on scheduling.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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

template <typename scalar_t>
void forward_kernel(
    const MSDeformAttnSizes& sz,
    const scalar_t* value,
    const int64_t* shapes,
    const int64_t* starts,
    const scalar_t* locations,
    const scalar_t* weights,
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
        const scalar_t* loc = locations + nqm * level_points * 2;
        const scalar_t* attn = weights + nqm * level_points;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t l = 0; l < sz.levels; ++l) {
          const scalar_t* value_l = value + (n * sz.spatial + starts[l]) * pixel_stride + m * channels;
          for (int64_t p = 0; p < sz.points; ++p) {
            const int64_t lp = l * sz.points + p;
            BilinearCorners<acc_t> c;
            if (!bilinear_corners<acc_t>(loc[2 * lp], loc[2 * lp + 1], shapes[2 * l], shapes[2 * l + 1], c)) {
              continue;
            }
            const acc_t a = attn[lp];
            const scalar_t* v[4];
            acc_t coef[4];
            for (int k = 0; k < 4; ++k) {
              v[k] = c.pixel[k] >= 0 ? value_l + c.pixel[k] * pixel_stride : zeros.data();
              coef[k] = a * c.weight[k];
            }
            for (int64_t d = 0; d < channels; ++d) {
              acc[d] += coef[0] * static_cast<acc_t>(v[0][d]) + coef[1] * static_cast<acc_t>(v[1][d]) +
                  coef[2] * static_cast<acc_t>(v[2][d]) + coef[3] * static_cast<acc_t>(v[3][d]);
            }
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
template <typename scalar_t>
void backward_kernel(
    const MSDeformAttnSizes& sz,
    int64_t chunks,
    const scalar_t* value,
    const int64_t* shapes,
    const int64_t* starts,
    const scalar_t* locations,
    const scalar_t* weights,
    const scalar_t* grad_output,
    at::opmath_type<scalar_t>* grad_value_acc,
    scalar_t* grad_locations,
    scalar_t* grad_weights) {
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
        const scalar_t* loc = locations + nqm * level_points * 2;
        const scalar_t* attn = weights + nqm * level_points;
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
            if (!bilinear_corners<acc_t>(loc[2 * lp], loc[2 * lp + 1], height, width, c)) {
              continue;
            }
            const acc_t a = attn[lp];
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
            grad_weights[point] = static_cast<scalar_t>(grad_a);
            grad_locations[2 * point] = static_cast<scalar_t>(a * grad_x * static_cast<acc_t>(width));
            grad_locations[2 * point + 1] = static_cast<scalar_t>(a * grad_y * static_cast<acc_t>(height));
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

void check_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index) {
  TORCH_CHECK_VALUE(
      value.device().is_cpu() && spatial_shapes.device().is_cpu() && level_start_index.device().is_cpu(),
      "ms_deform_attn CPU kernel: value, spatial_shapes and level_start_index must be on the CPU");
}

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_cpu(value, spatial_shapes, level_start_index);
  check_ms_deform_attn_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const MSDeformAttnSizes sz = get_sizes(value, sampling_locations);
  auto output = at::zeros({sz.batch, sz.queries, sz.heads * sz.channels}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.contiguous();
  const auto starts_c = level_start_index.contiguous();
  const auto locations_c = sampling_locations.contiguous();
  const auto weights_c = attention_weights.contiguous();
  const auto dtype = value.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "ms_deform_attn_forward_cpu", [&] {
    forward_kernel<scalar_t>(
        sz, value_c.const_data_ptr<scalar_t>(), shapes_c.const_data_ptr<int64_t>(),
        starts_c.const_data_ptr<int64_t>(), locations_c.const_data_ptr<scalar_t>(),
        weights_c.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>());
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  check_cpu(value, spatial_shapes, level_start_index);
  check_ms_deform_attn_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_grad_output(value, sampling_locations, grad_output);
  const MSDeformAttnSizes sz = get_sizes(value, sampling_locations);
  const auto dtype = value.scalar_type();
  auto grad_locations = at::zeros(sampling_locations.sizes(), sampling_locations.options());
  auto grad_weights = at::zeros(attention_weights.sizes(), attention_weights.options());
  if (sz.batch * sz.heads * sz.queries == 0) {
    return {at::zeros(value.sizes(), value.options()), grad_locations, grad_weights};
  }
  const int64_t pairs = sz.batch * sz.heads;
  const int64_t wanted_chunks = (at::get_num_threads() + pairs - 1) / pairs;
  const int64_t chunks = std::max<int64_t>(1, std::min(wanted_chunks, sz.queries / kMinQueriesPerChunk));
  auto grad_value_acc = at::zeros(
      {sz.batch, chunks, sz.spatial, sz.heads, sz.channels},
      value.options().dtype(at::toOpMathType(dtype)));
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.contiguous();
  const auto starts_c = level_start_index.contiguous();
  const auto locations_c = sampling_locations.contiguous();
  const auto weights_c = attention_weights.contiguous();
  const auto grad_output_c = grad_output.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "ms_deform_attn_backward_cpu", [&] {
    backward_kernel<scalar_t>(
        sz, chunks, value_c.const_data_ptr<scalar_t>(), shapes_c.const_data_ptr<int64_t>(),
        starts_c.const_data_ptr<int64_t>(), locations_c.const_data_ptr<scalar_t>(),
        weights_c.const_data_ptr<scalar_t>(), grad_output_c.const_data_ptr<scalar_t>(),
        grad_value_acc.mutable_data_ptr<at::opmath_type<scalar_t>>(),
        grad_locations.mutable_data_ptr<scalar_t>(), grad_weights.mutable_data_ptr<scalar_t>());
  });
  auto grad_value = chunks == 1 ? grad_value_acc.select(1, 0) : grad_value_acc.sum(1);
  return {grad_value.to(dtype), grad_locations, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(mask2former, CPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace mask2former
