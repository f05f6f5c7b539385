// The mask2former._C extension: declares the operator schemas of mask2former::ms_deform_attn_* and
// mask2former::resize_bilinear, registers the Meta (shape-only) kernels of the former, and provides
// the Python module whose import loads them into torch.ops.mask2former. The CPU and CUDA kernels are
// registered in ms_deform_attn_cpu.cpp, ms_deform_attn_cuda.cu and resize_bilinear_cpu.cpp.
#include <torch/extension.h>
#include <torch/library.h>

#include <tuple>

#include "ms_deform_attn.h"
#include "ms_deform_attn_cpu_isa.h"

namespace mask2former {
namespace {

at::Tensor ms_deform_attn_forward_meta(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_ms_deform_attn_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  return at::empty(
      {value.size(0), sampling_locations.size(1), value.size(2) * value.size(3)}, value.options());
}

at::Tensor ms_deform_attn_forward_fused_meta(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& reference_points,
    const at::Tensor& sampling_offsets,
    const at::Tensor& attention_logits) {
  check_fused_forward_args(
      value, spatial_shapes, level_start_index, reference_points, sampling_offsets, attention_logits);
  return at::empty(
      {value.size(0), sampling_offsets.size(1), value.size(2) * value.size(3)}, value.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_meta(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  check_ms_deform_attn_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_grad_output(value, sampling_locations, grad_output);
  return {
      at::empty(value.sizes(), value.options()),
      at::empty(sampling_locations.sizes(), sampling_locations.options()),
      at::empty(attention_weights.sizes(), attention_weights.options())};
}

}  // namespace
}  // namespace mask2former

TORCH_LIBRARY(mask2former, m) {
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)");
  // inference only (no autograd formula): the forward with sampling_locations = reference_points +
  // sampling_offsets / (W_l, H_l) and attention_weights = softmax(attention_logits, -1) computed
  // inside the kernel (CPU)
  m.def(
      "ms_deform_attn_forward_fused(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor reference_points, Tensor sampling_offsets, Tensor attention_logits) -> Tensor");
  // output rows row_start..row_stop-1 of the bilinear resize (align_corners=False) of float32
  // [C, h, w] to size = (H, W): [C, row_stop - row_start, W], F.interpolate's values (CPU;
  // resize_bilinear_cpu.cpp)
  m.def("resize_bilinear(Tensor x, int[] size, int row_start, int row_stop) -> Tensor");
}

TORCH_LIBRARY_IMPL(mask2former, Meta, m) {
  m.impl("ms_deform_attn_forward", &mask2former::ms_deform_attn_forward_meta);
  m.impl("ms_deform_attn_forward_fused", &mask2former::ms_deform_attn_forward_fused_meta);
  m.impl("ms_deform_attn_backward", &mask2former::ms_deform_attn_backward_meta);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Compiled kernels of mask2former (multi-scale deformable attention).";
  m.def(
      "compiled_with_cuda",
      []() {
#ifdef WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether the CUDA kernels were compiled into this extension.");
  m.def(
      "cpu_kernel_isa",
      []() { return std::string(mask2former::cpu_kernel_isa()); },
      "Instruction set of the CPU kernels in use: 'avx512' (AVX-512 F/BW/VL/DQ + FMA build, chosen "
      "when ATen's CPU capability is AVX512), 'avx2' (AVX2 + FMA build, when it is AVX2, e.g. under "
      "ATEN_CPU_CAPABILITY=avx2) or 'default' (the baseline, e.g. under ATEN_CPU_CAPABILITY=default).");
}
