// The CPU implementations of mask2former::ms_deform_attn_{forward,forward_fused,backward}: argument
// checks, output allocation, and the choice between the baseline, the AVX2 + FMA and the AVX-512
// build of the kernels (ms_deform_attn_cpu_kernels.h).
#include <ATen/ATen.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "ms_deform_attn.h"
#include "ms_deform_attn_cpu_isa.h"
#include "ms_deform_attn_cpu_kernels.h"

namespace mask2former {

const char* cpu_kernel_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  // ATen's capability string: "DEFAULT", "AVX2" or "AVX512" (lowered by ATEN_CPU_CAPABILITY)
  const std::string aten = at::get_cpu_capability();
  if (cpu_kernels_have_avx512() && aten == "AVX512" && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")) {
    return "avx512";
  }
  if (cpu_kernels_have_avx2() && (aten == "AVX2" || aten == "AVX512") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma")) {
    return "avx2";
  }
#endif
  return "default";
}

namespace {

// The kernels chosen once per process: the AVX-512 or AVX2 + FMA build, or the baseline one of
// this file.
const CpuKernels& cpu_kernels() {
  static const CpuKernels kernels = [] {
    const std::string isa = cpu_kernel_isa();
    if (isa == "avx512") {
      return avx512_cpu_kernels();
    }
    if (isa == "avx2") {
      return avx2_cpu_kernels();
    }
    return CpuKernels{run_forward_kernel, run_fused_forward_kernel, run_backward_kernel};
  }();
  return kernels;
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
  // every element is written by the kernel
  auto output = at::empty({sz.batch, sz.queries, sz.heads * sz.channels}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.contiguous();
  const auto starts_c = level_start_index.contiguous();
  const auto locations_c = sampling_locations.contiguous();
  const auto weights_c = weights_in_coord_dtype(attention_weights, sampling_locations);
  cpu_kernels().forward(sz, value_c, shapes_c, starts_c, locations_c, weights_c, output);
  return output;
}

at::Tensor ms_deform_attn_forward_fused_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& reference_points,
    const at::Tensor& sampling_offsets,
    const at::Tensor& attention_logits) {
  const int64_t points = check_fused_forward_args(
      value, spatial_shapes, level_start_index, reference_points, sampling_offsets, attention_logits);
  const MSDeformAttnSizes sz{
      value.size(0), value.size(1), value.size(2), value.size(3), sampling_offsets.size(1),
      spatial_shapes.size(0), points};
  auto output = at::empty({sz.batch, sz.queries, sz.heads * sz.channels}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.contiguous();
  const auto starts_c = level_start_index.contiguous();
  const auto reference_c = reference_points.contiguous();
  const auto offsets_c = sampling_offsets.contiguous();
  const auto logits_c = attention_logits.contiguous();
  cpu_kernels().fused_forward(sz, value_c, shapes_c, starts_c, reference_c, offsets_c, logits_c, output);
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
  auto grad_weights = at::zeros(attention_weights.sizes(), sampling_locations.options());
  if (sz.batch * sz.heads * sz.queries == 0) {
    return {at::zeros(value.sizes(), value.options()), grad_locations,
            grad_weights.to(attention_weights.scalar_type())};
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
  const auto weights_c = weights_in_coord_dtype(attention_weights, sampling_locations);
  const auto grad_output_c = grad_output.contiguous();
  cpu_kernels().backward(
      sz, chunks, value_c, shapes_c, starts_c, locations_c, weights_c, grad_output_c, grad_value_acc,
      grad_locations, grad_weights);
  auto grad_value = chunks == 1 ? grad_value_acc.select(1, 0) : grad_value_acc.sum(1);
  return {grad_value.to(dtype), grad_locations, grad_weights.to(attention_weights.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mask2former, CPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_forward_fused", &ms_deform_attn_forward_fused_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace mask2former
