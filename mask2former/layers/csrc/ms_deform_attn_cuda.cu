// CUDA kernels of multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, Eq. 2),
// registered as the CUDA implementations of mask2former::ms_deform_attn_{forward,backward}.
// float32 / float64 / float16 / bfloat16, accumulating in the op-math type (float for the 16-bit
// types). Sampling locations and attention weights (coord_t) are the value's dtype, or float32 for
// 16-bit values.
//
// Forward: one thread per output element (batch, query, head, channel); the threads of a warp read
// consecutive channels of a pixel, so value loads are coalesced.
// Backward: one warp per (batch, query, head), lanes striding over channels. grad_value is scattered
// with atomicAdd into an op-math-typed buffer; the per-point gradients of the sampling location and
// attention weight are channel sums, reduced with warp shuffles and written by lane 0.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

#include "bilinear.h"
#include "ms_deform_attn.h"

namespace mask2former {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;

int64_t num_blocks(int64_t threads_needed) {
  const int64_t blocks = (threads_needed + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return std::min<int64_t>(std::max<int64_t>(blocks, 1), INT_MAX);
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

template <typename scalar_t, typename coord_t>
__global__ void __launch_bounds__(kThreadsPerBlock) forward_kernel(
    const MSDeformAttnSizes sz,
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts,
    const coord_t* __restrict__ locations,
    const coord_t* __restrict__ weights,
    scalar_t* __restrict__ output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pixel_stride = sz.heads * sz.channels;
  const int64_t level_points = sz.levels * sz.points;
  const int64_t total = sz.batch * sz.queries * pixel_stride;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total;
       index += stride) {
    const int64_t d = index % sz.channels;
    const int64_t nqm = index / sz.channels;
    const int64_t m = nqm % sz.heads;
    const int64_t n = nqm / (sz.heads * sz.queries);
    const coord_t* loc = locations + nqm * level_points * 2;
    const coord_t* attn = weights + nqm * level_points;
    acc_t acc = 0;
    for (int64_t l = 0; l < sz.levels; ++l) {
      const scalar_t* value_l = value + (n * sz.spatial + starts[l]) * pixel_stride + m * sz.channels + d;
      for (int64_t p = 0; p < sz.points; ++p) {
        const int64_t lp = l * sz.points + p;
        BilinearCorners<acc_t> c;
        if (!bilinear_corners<acc_t>(
                static_cast<acc_t>(loc[2 * lp]), static_cast<acc_t>(loc[2 * lp + 1]), shapes[2 * l],
                shapes[2 * l + 1], c)) {
          continue;
        }
        acc_t sample = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.pixel[k] >= 0) {
            sample += c.weight[k] * static_cast<acc_t>(value_l[c.pixel[k] * pixel_stride]);
          }
        }
        acc += static_cast<acc_t>(attn[lp]) * sample;
      }
    }
    output[index] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename coord_t>
__global__ void __launch_bounds__(kThreadsPerBlock) backward_kernel(
    const MSDeformAttnSizes sz,
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts,
    const coord_t* __restrict__ locations,
    const coord_t* __restrict__ weights,
    const scalar_t* __restrict__ grad_output,
    at::opmath_type<scalar_t>* __restrict__ grad_value,
    coord_t* __restrict__ grad_locations,
    coord_t* __restrict__ grad_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pixel_stride = sz.heads * sz.channels;
  const int64_t level_points = sz.levels * sz.points;
  const int64_t groups = sz.batch * sz.queries * sz.heads;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t group_stride = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  // every lane of a warp handles the same (batch, query, head), so the warp stays converged for
  // the shuffles below
  for (int64_t nqm = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize; nqm < groups;
       nqm += group_stride) {
    const int64_t m = nqm % sz.heads;
    const int64_t n = nqm / (sz.heads * sz.queries);
    const coord_t* loc = locations + nqm * level_points * 2;
    const coord_t* attn = weights + nqm * level_points;
    const scalar_t* grad_out = grad_output + nqm * sz.channels;
    for (int64_t l = 0; l < sz.levels; ++l) {
      const int64_t height = shapes[2 * l];
      const int64_t width = shapes[2 * l + 1];
      const int64_t offset = (n * sz.spatial + starts[l]) * pixel_stride + m * sz.channels;
      const scalar_t* value_l = value + offset;
      acc_t* grad_value_l = grad_value + offset;
      for (int64_t p = 0; p < sz.points; ++p) {
        const int64_t lp = l * sz.points + p;
        BilinearCorners<acc_t> c;
        if (!bilinear_corners<acc_t>(
                static_cast<acc_t>(loc[2 * lp]), static_cast<acc_t>(loc[2 * lp + 1]), height, width, c)) {
          continue;
        }
        const acc_t a = static_cast<acc_t>(attn[lp]);
        acc_t grad_a = 0;
        acc_t grad_x = 0;
        acc_t grad_y = 0;
        for (int64_t d = lane; d < sz.channels; d += kWarpSize) {
          const acc_t g = static_cast<acc_t>(grad_out[d]);
          acc_t v[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (c.pixel[k] >= 0) {
              v[k] = static_cast<acc_t>(value_l[c.pixel[k] * pixel_stride + d]);
              atomicAdd(grad_value_l + c.pixel[k] * pixel_stride + d, a * c.weight[k] * g);
            } else {
              v[k] = 0;
            }
          }
          grad_a += g * (c.weight[0] * v[0] + c.weight[1] * v[1] + c.weight[2] * v[2] + c.weight[3] * v[3]);
          // d(sample)/dx = (1 - fy) (v1 - v0) + fy (v3 - v2); d(sample)/dy likewise along y
          grad_x += g * ((1 - c.fy) * (v[1] - v[0]) + c.fy * (v[3] - v[2]));
          grad_y += g * ((1 - c.fx) * (v[2] - v[0]) + c.fx * (v[3] - v[1]));
        }
        grad_a = warp_sum(grad_a);
        grad_x = warp_sum(grad_x);
        grad_y = warp_sum(grad_y);
        if (lane == 0) {
          const int64_t point = nqm * level_points + lp;
          grad_weights[point] = static_cast<coord_t>(grad_a);
          grad_locations[2 * point] = static_cast<coord_t>(a * grad_x * static_cast<acc_t>(width));
          grad_locations[2 * point + 1] = static_cast<coord_t>(a * grad_y * static_cast<acc_t>(height));
        }
      }
    }
  }
}

// Calls body(scalar_t{}, coord_t{}) with scalar_t the value's dtype and coord_t the locations'
// dtype: scalar_t itself, or float (the op-math type) for 16-bit values with float32 locations.
template <typename Body>
void dispatch_value_and_coord(const at::Tensor& value, const at::Tensor& sampling_locations, const Body& body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn", [&] {
    if (sampling_locations.scalar_type() == value.scalar_type()) {
      body(scalar_t{}, scalar_t{});
    } else {
      body(scalar_t{}, at::opmath_type<scalar_t>{});
    }
  });
}

void check_cuda(const at::Tensor& value) {
  TORCH_CHECK_VALUE(
      value.is_cuda(), "ms_deform_attn CUDA kernel: value must be a CUDA tensor, got ", value.device());
}

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_cuda(value);
  check_ms_deform_attn_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const MSDeformAttnSizes sz = get_sizes(value, sampling_locations);
  auto output = at::zeros({sz.batch, sz.queries, sz.heads * sz.channels}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.to(value.device()).contiguous();
  const auto starts_c = level_start_index.to(value.device()).contiguous();
  const auto locations_c = sampling_locations.contiguous();
  const auto weights_c = weights_in_coord_dtype(attention_weights, sampling_locations);
  const auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_value_and_coord(value, sampling_locations, [&](auto s, auto c) {
    using scalar_t = decltype(s);
    using coord_t = decltype(c);
    forward_kernel<scalar_t, coord_t><<<num_blocks(output.numel()), kThreadsPerBlock, 0, stream>>>(
        sz, value_c.const_data_ptr<scalar_t>(), shapes_c.const_data_ptr<int64_t>(),
        starts_c.const_data_ptr<int64_t>(), locations_c.const_data_ptr<coord_t>(),
        weights_c.const_data_ptr<coord_t>(), output.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  check_cuda(value);
  check_ms_deform_attn_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_grad_output(value, sampling_locations, grad_output);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const MSDeformAttnSizes sz = get_sizes(value, sampling_locations);
  const auto dtype = value.scalar_type();
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(at::toOpMathType(dtype)));
  auto grad_locations = at::zeros(sampling_locations.sizes(), sampling_locations.options());
  auto grad_weights = at::zeros(attention_weights.sizes(), sampling_locations.options());
  const int64_t groups = sz.batch * sz.queries * sz.heads;
  if (groups == 0) {
    return {grad_value.to(dtype), grad_locations, grad_weights.to(attention_weights.scalar_type())};
  }
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.to(value.device()).contiguous();
  const auto starts_c = level_start_index.to(value.device()).contiguous();
  const auto locations_c = sampling_locations.contiguous();
  const auto weights_c = weights_in_coord_dtype(attention_weights, sampling_locations);
  const auto grad_output_c = grad_output.contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_value_and_coord(value, sampling_locations, [&](auto s, auto c) {
    using scalar_t = decltype(s);
    using coord_t = decltype(c);
    backward_kernel<scalar_t, coord_t><<<num_blocks(groups * kWarpSize), kThreadsPerBlock, 0, stream>>>(
        sz, value_c.const_data_ptr<scalar_t>(), shapes_c.const_data_ptr<int64_t>(),
        starts_c.const_data_ptr<int64_t>(), locations_c.const_data_ptr<coord_t>(),
        weights_c.const_data_ptr<coord_t>(), grad_output_c.const_data_ptr<scalar_t>(),
        grad_value.mutable_data_ptr<at::opmath_type<scalar_t>>(), grad_locations.mutable_data_ptr<coord_t>(),
        grad_weights.mutable_data_ptr<coord_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_value.to(dtype), grad_locations, grad_weights.to(attention_weights.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mask2former, CUDA, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}

}  // namespace mask2former
