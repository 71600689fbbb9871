// Copyright © 2026 TurboQuant-MLX authors.

// clang-format off
#include "mlx/backend/metal/kernels/utils.h"
#include "mlx/backend/metal/kernels/turbo_quantize.h"

// Kernel names must equal turbo_bindings::quantize_kernel_name /
// quantize_update_kernel_name / dequantize_kernel_name /
// dequantize_kv_kernel_name.
#define instantiate_turbo_quantize(mode, bits, type, tname, d) \
  instantiate_kernel(#mode "_quantize_" #tname "_" #d, turbo_quantize, type, d, bits)

#define instantiate_turbo_quantize_update(mode, bits, type, tname, d) \
  instantiate_kernel(                                                \
      #mode "_quantize_update_" #tname "_" #d,                       \
      turbo_quantize_update, type, d, bits)

#define instantiate_turbo_dequantize(mode, bits, stype, sname, otype, oname, d) \
  instantiate_kernel(                                                          \
      #mode "_dequantize_" #sname "_" #oname "_" #d,                           \
      turbo_dequantize, stype, otype, d, bits)

#define instantiate_turbo_dequantize_kv(mode, bits, type, tname, d) \
  instantiate_kernel(                                              \
      #mode "_dequantize_kv_" #tname "_" #d,                       \
      turbo_dequantize_kv, type, d, bits)

#define instantiate_turbo_dequantize_out(mode, bits, stype, sname, d)         \
  instantiate_turbo_dequantize(mode, bits, stype, sname, float, float32, d)   \
  instantiate_turbo_dequantize(mode, bits, stype, sname, float16_t, float16, d) \
  instantiate_turbo_dequantize(mode, bits, stype, sname, bfloat16_t, bfloat16, d)

#define instantiate_turbo_types(mode, bits, d)                           \
  instantiate_turbo_quantize(mode, bits, float, float32, d)              \
  instantiate_turbo_quantize(mode, bits, float16_t, float16, d)          \
  instantiate_turbo_quantize(mode, bits, bfloat16_t, bfloat16, d)        \
  instantiate_turbo_quantize_update(mode, bits, float, float32, d)       \
  instantiate_turbo_quantize_update(mode, bits, float16_t, float16, d)   \
  instantiate_turbo_quantize_update(mode, bits, bfloat16_t, bfloat16, d) \
  instantiate_turbo_dequantize_out(mode, bits, float, float32, d)        \
  instantiate_turbo_dequantize_out(mode, bits, float16_t, float16, d)    \
  instantiate_turbo_dequantize_out(mode, bits, bfloat16_t, bfloat16, d)  \
  instantiate_turbo_dequantize_kv(mode, bits, float, float32, d)         \
  instantiate_turbo_dequantize_kv(mode, bits, float16_t, float16, d)     \
  instantiate_turbo_dequantize_kv(mode, bits, bfloat16_t, bfloat16, d)

#define instantiate_turbo_dims(mode, bits) \
  instantiate_turbo_types(mode, bits, 64)  \
  instantiate_turbo_types(mode, bits, 80)  \
  instantiate_turbo_types(mode, bits, 96)  \
  instantiate_turbo_types(mode, bits, 128) \
  instantiate_turbo_types(mode, bits, 192) \
  instantiate_turbo_types(mode, bits, 256)

instantiate_turbo_dims(turbo3, 3)
instantiate_turbo_dims(turbo4, 4)
// clang-format on
