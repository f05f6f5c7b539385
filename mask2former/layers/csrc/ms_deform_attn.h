// Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, Eq. 2-3): argument
// checks shared by the CPU and CUDA kernels.
//
// Shapes (N batch, S = sum_l H_l * W_l value positions, M heads, D channels per head, Lq queries,
// L levels, P points per level):
//   value               [N, S, M, D]         float
//   spatial_shapes      [L, 2]               int64, (H_l, W_l)
//   level_start_index   [L]                  int64, offset of level l in S
//   sampling_locations  [N, Lq, M, L, P, 2]  value's dtype, or float32 for a 16-bit value ("mixed":
//                                            16-bit features, float32 coordinates); normalised
//                                            (x, y), pixel coordinate x * W_l - 0.5
//                                            (align_corners=False), zeros outside
//   attention_weights   [N, Lq, M, L, P]     value's dtype or sampling_locations' dtype
//   output              [N, Lq, M * D]       value's dtype
// The kernels read the weights in the locations' dtype (the entry points convert 16-bit weights
// that come with float32 locations) and accumulate in the op-math type (float for 16-bit types).
#pragma once

#include <ATen/ATen.h>

#include <sstream>

namespace mask2former {

// Problem sizes, passed by value to the CUDA kernels.
struct MSDeformAttnSizes {
  int64_t batch;     // N
  int64_t spatial;   // S
  int64_t heads;     // M
  int64_t channels;  // D
  int64_t queries;   // Lq
  int64_t levels;    // L
  int64_t points;    // P
};

// attention_weights in sampling_locations' dtype, the one the kernels read them in.
inline at::Tensor weights_in_coord_dtype(const at::Tensor& attention_weights, const at::Tensor& sampling_locations) {
  return attention_weights.to(sampling_locations.scalar_type()).contiguous();
}

inline MSDeformAttnSizes get_sizes(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return MSDeformAttnSizes{
      value.size(0), value.size(1), value.size(2), value.size(3),
      sampling_locations.size(1), sampling_locations.size(3), sampling_locations.size(4)};
}

// Raises ValueError unless the CPU tensors spatial_shapes [L, 2] and level_start_index [L] (int64)
// describe positive levels that tile S positions in order. Messages follow
// mask2former.layers.ms_deform_attn.ms_deform_attn_pytorch.
inline void check_level_layout(
    int64_t spatial, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index) {
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const int64_t* hw = shapes.const_data_ptr<int64_t>();
  const int64_t* given = starts.const_data_ptr<int64_t>();
  const int64_t levels = shapes.size(0);
  std::ostringstream shapes_str, expected_str, given_str;
  bool positive = true, starts_match = true;
  int64_t total = 0;
  for (int64_t l = 0; l < levels; ++l) {
    const char* sep = l == 0 ? "" : ", ";
    shapes_str << sep << "(" << hw[2 * l] << ", " << hw[2 * l + 1] << ")";
    expected_str << sep << total;
    given_str << sep << given[l];
    positive = positive && hw[2 * l] > 0 && hw[2 * l + 1] > 0;
    starts_match = starts_match && given[l] == total;
    total += hw[2 * l] * hw[2 * l + 1];
  }
  TORCH_CHECK_VALUE(positive, "spatial_shapes must be positive (H, W) pairs, got [", shapes_str.str(), "]");
  TORCH_CHECK_VALUE(
      total == spatial, "value has S=", spatial, " positions but spatial_shapes [", shapes_str.str(),
      "] sum to ", total);
  TORCH_CHECK_VALUE(
      starts_match, "level_start_index must be [", expected_str.str(), "] for spatial_shapes [",
      shapes_str.str(), "]: [", given_str.str(), "]");
}

// Raises ValueError (c10::ValueError) unless the arguments have the shapes, dtypes and devices
// above. Level sizes are checked against S only when spatial_shapes lives on the CPU, so that the
// CUDA path never synchronises with the host.
// Raises ValueError unless value is 4-d, spatial_shapes an int64 [L, 2] tensor and
// level_start_index an int64 [L] tensor; returns L.
inline int64_t check_value_and_levels(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index) {
  TORCH_CHECK_VALUE(value.dim() == 4, "value must be [N, S, heads, C], got ", value.sizes());
  TORCH_CHECK_VALUE(
      spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2 &&
          spatial_shapes.scalar_type() == at::kLong,
      "spatial_shapes must be an int64 [L, 2] tensor, got ", spatial_shapes.scalar_type(), " ",
      spatial_shapes.sizes());
  const int64_t levels = spatial_shapes.size(0);
  TORCH_CHECK_VALUE(
      level_start_index.dim() == 1 && level_start_index.size(0) == levels &&
          level_start_index.scalar_type() == at::kLong,
      "level_start_index must be an int64 [L=", levels, "] tensor, got ",
      level_start_index.scalar_type(), " ", level_start_index.sizes());
  return levels;
}

// Raises ValueError unless coord_dtype, the dtype of the coordinate tensor `name`, is value's dtype
// or float32 for a bfloat16 / float16 value.
inline void check_coord_dtype(at::ScalarType dtype, at::ScalarType coord_dtype, const char* name) {
  const bool mixed = (dtype == at::kBFloat16 || dtype == at::kHalf) && coord_dtype == at::kFloat;
  TORCH_CHECK_VALUE(
      coord_dtype == dtype || mixed, name, " must have value's dtype ", dtype,
      " (or float32 for a bfloat16 / float16 value), got ", coord_dtype);
}

inline void check_ms_deform_attn_args(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const int64_t levels = check_value_and_levels(value, spatial_shapes, level_start_index);
  TORCH_CHECK_VALUE(
      sampling_locations.dim() == 6 && sampling_locations.size(0) == value.size(0) &&
          sampling_locations.size(2) == value.size(2) && sampling_locations.size(3) == levels &&
          sampling_locations.size(5) == 2,
      "sampling_locations must be [N=", value.size(0), ", Lq, heads=", value.size(2), ", L=",
      levels, ", P, 2], got ", sampling_locations.sizes());
  TORCH_CHECK_VALUE(
      attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
      "attention_weights must be [N, Lq, heads, L, P] = ", sampling_locations.sizes().slice(0, 5),
      ", got ", attention_weights.sizes());
  const auto dtype = value.scalar_type();
  const auto coord_dtype = sampling_locations.scalar_type();
  const bool mixed = (dtype == at::kBFloat16 || dtype == at::kHalf) && coord_dtype == at::kFloat;
  TORCH_CHECK_VALUE(
      (coord_dtype == dtype || mixed) &&
          (attention_weights.scalar_type() == dtype || attention_weights.scalar_type() == coord_dtype),
      "sampling_locations must have value's dtype ", dtype,
      " (or float32 for a bfloat16 / float16 value) and attention_weights value's or "
      "sampling_locations' dtype, got ", coord_dtype, " and ", attention_weights.scalar_type());
  TORCH_CHECK_VALUE(
      sampling_locations.device() == value.device() && attention_weights.device() == value.device(),
      "sampling_locations and attention_weights must be on value's device ", value.device());
  if (spatial_shapes.device().is_cpu() && level_start_index.device().is_cpu()) {
    check_level_layout(value.size(1), spatial_shapes, level_start_index);
  }
}

// Raises ValueError unless the arguments of the fused forward (inference) op have these shapes,
// dtypes and devices:
//   reference_points    [N, Lq, L, 2]        normalised (x, y) per level
//   sampling_offsets    [N, Lq, M, L, P, 2]  (x, y) in pixels of level l
//   attention_logits    [N, Lq, M, L * P]    softmax-ed over the last dim inside the kernel
// all three in value's dtype, or float32 for a bfloat16 / float16 value; value, spatial_shapes
// and level_start_index as in check_ms_deform_attn_args. The fused op runs on the CPU only: all
// tensors must be CPU tensors (or all meta tensors, for shape inference). Returns P.
inline int64_t check_fused_forward_args(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& reference_points,
    const at::Tensor& sampling_offsets,
    const at::Tensor& attention_logits) {
  const int64_t levels = check_value_and_levels(value, spatial_shapes, level_start_index);
  TORCH_CHECK_VALUE(
      sampling_offsets.dim() == 6 && sampling_offsets.size(0) == value.size(0) &&
          sampling_offsets.size(2) == value.size(2) && sampling_offsets.size(3) == levels &&
          sampling_offsets.size(5) == 2,
      "sampling_offsets must be [N=", value.size(0), ", Lq, heads=", value.size(2), ", L=", levels,
      ", P, 2], got ", sampling_offsets.sizes());
  const int64_t queries = sampling_offsets.size(1);
  const int64_t points = sampling_offsets.size(4);
  TORCH_CHECK_VALUE(
      reference_points.dim() == 4 && reference_points.size(0) == value.size(0) &&
          reference_points.size(1) == queries && reference_points.size(2) == levels &&
          reference_points.size(3) == 2,
      "reference_points must be [N=", value.size(0), ", Lq=", queries, ", L=", levels, ", 2], got ",
      reference_points.sizes());
  TORCH_CHECK_VALUE(
      attention_logits.dim() == 4 && attention_logits.size(0) == value.size(0) &&
          attention_logits.size(1) == queries && attention_logits.size(2) == value.size(2) &&
          attention_logits.size(3) == levels * points,
      "attention_logits must be [N=", value.size(0), ", Lq=", queries, ", heads=", value.size(2),
      ", L*P=", levels * points, "], got ", attention_logits.sizes());
  const auto dtype = value.scalar_type();
  check_coord_dtype(dtype, sampling_offsets.scalar_type(), "sampling_offsets");
  TORCH_CHECK_VALUE(
      reference_points.scalar_type() == sampling_offsets.scalar_type() &&
          attention_logits.scalar_type() == sampling_offsets.scalar_type(),
      "reference_points and attention_logits must have sampling_offsets' dtype ",
      sampling_offsets.scalar_type(), ", got ", reference_points.scalar_type(), " and ",
      attention_logits.scalar_type());
  const auto device = value.device();
  TORCH_CHECK_VALUE(
      (device.is_cpu() || device.is_meta()) && spatial_shapes.device() == device &&
          level_start_index.device() == device && reference_points.device() == device &&
          sampling_offsets.device() == device && attention_logits.device() == device,
      "ms_deform_attn_forward_fused runs on the CPU only: all its tensors must be CPU tensors, got "
      "value on ", device);
  if (device.is_cpu()) {
    check_level_layout(value.size(1), spatial_shapes, level_start_index);
  }
  return points;
}

// Raises ValueError unless grad_output is [N, Lq, M * D] with value's dtype and device.
inline void check_grad_output(
    const at::Tensor& value, const at::Tensor& sampling_locations, const at::Tensor& grad_output) {
  TORCH_CHECK_VALUE(
      grad_output.dim() == 3 && grad_output.size(0) == value.size(0) &&
          grad_output.size(1) == sampling_locations.size(1) &&
          grad_output.size(2) == value.size(2) * value.size(3),
      "grad_output must be [N, Lq, heads * C] = [", value.size(0), ", ", sampling_locations.size(1),
      ", ", value.size(2) * value.size(3), "], got ", grad_output.sizes());
  TORCH_CHECK_VALUE(
      grad_output.scalar_type() == value.scalar_type() && grad_output.device() == value.device(),
      "grad_output must have value's dtype and device (", value.scalar_type(), ", ", value.device(),
      "), got (", grad_output.scalar_type(), ", ", grad_output.device(), ")");
}

}  // namespace mask2former
