// Copyright © 2026 TurboQuant-MLX authors.

// clang-format off
#include "mlx/backend/metal/kernels/utils.h"
#include "mlx/backend/metal/kernels/sdpa_vector_turbo.h"

// Kernel names must equal turbo_bindings::attn_kernel_name / agg_kernel_name.
#define instantiate_sdpa_vector_turbo(kmode, kb, vmode, vb, stype, sname, dk, dv) \
  instantiate_kernel(                                                        \
      "sdpa_vector_turbo_" #kmode "_" #vmode "_" #sname "_" #dk "_" #dv,     \
      sdpa_vector_turbo, stype, dk, dv, kb, vb)                              \
  instantiate_kernel(                                                        \
      "sdpa_vector_turbo_2pass_1_" #kmode "_" #vmode "_" #sname "_" #dk "_" #dv, \
      sdpa_vector_turbo_2pass_1, stype, dk, dv, kb, vb)

#define instantiate_sdpa_vector_turbo_modes(stype, sname, dk, dv)            \
  instantiate_sdpa_vector_turbo(turbo3, 3, turbo3, 3, stype, sname, dk, dv) \
  instantiate_sdpa_vector_turbo(turbo3, 3, turbo4, 4, stype, sname, dk, dv) \
  instantiate_sdpa_vector_turbo(turbo4, 4, turbo3, 3, stype, sname, dk, dv) \
  instantiate_sdpa_vector_turbo(turbo4, 4, turbo4, 4, stype, sname, dk, dv)

#define instantiate_sdpa_vector_turbo_dims(stype, sname)         \
  instantiate_sdpa_vector_turbo_modes(stype, sname, 64, 64)      \
  instantiate_sdpa_vector_turbo_modes(stype, sname, 80, 80)      \
  instantiate_sdpa_vector_turbo_modes(stype, sname, 96, 96)      \
  instantiate_sdpa_vector_turbo_modes(stype, sname, 128, 128)    \
  instantiate_sdpa_vector_turbo_modes(stype, sname, 192, 192)    \
  instantiate_sdpa_vector_turbo_modes(stype, sname, 192, 128)    \
  instantiate_sdpa_vector_turbo_modes(stype, sname, 256, 256)

instantiate_sdpa_vector_turbo_dims(float, float32)
instantiate_sdpa_vector_turbo_dims(float16_t, float16)
instantiate_sdpa_vector_turbo_dims(bfloat16_t, bfloat16)

#define instantiate_sdpa_vector_turbo_aggregation(dv) \
  instantiate_kernel("sdpa_vector_turbo_2pass_2_" #dv, sdpa_vector_turbo_2pass_2, dv)

instantiate_sdpa_vector_turbo_aggregation(64)
instantiate_sdpa_vector_turbo_aggregation(80)
instantiate_sdpa_vector_turbo_aggregation(96)
instantiate_sdpa_vector_turbo_aggregation(128)
instantiate_sdpa_vector_turbo_aggregation(192)
instantiate_sdpa_vector_turbo_aggregation(256)
// fused_rotation: the decode preparation (per query type and dim pair) and
// the output rotation (per output type and value dim); names as
// turbo_bindings::prep_kernel_name / rotate_out_kernel_name.
#define instantiate_turbo_rotation(type, tname, dk, dv)                   \
  instantiate_kernel(                                                    \
      "turbo_attention_prep_" #tname "_" #dk "_" #dv,                    \
      turbo_attention_prep, type, dk, dv)

#define instantiate_turbo_rotation_dims(type, tname)                      \
  instantiate_turbo_rotation(type, tname, 64, 64)                        \
  instantiate_turbo_rotation(type, tname, 80, 80)                        \
  instantiate_turbo_rotation(type, tname, 96, 96)                        \
  instantiate_turbo_rotation(type, tname, 128, 128)                      \
  instantiate_turbo_rotation(type, tname, 192, 192)                      \
  instantiate_turbo_rotation(type, tname, 192, 128)                      \
  instantiate_turbo_rotation(type, tname, 256, 256)                      \
  instantiate_kernel("turbo_rotate_out_" #tname "_64", turbo_rotate_out, type, 64)   \
  instantiate_kernel("turbo_rotate_out_" #tname "_80", turbo_rotate_out, type, 80)   \
  instantiate_kernel("turbo_rotate_out_" #tname "_96", turbo_rotate_out, type, 96)   \
  instantiate_kernel("turbo_rotate_out_" #tname "_128", turbo_rotate_out, type, 128) \
  instantiate_kernel("turbo_rotate_out_" #tname "_192", turbo_rotate_out, type, 192) \
  instantiate_kernel("turbo_rotate_out_" #tname "_256", turbo_rotate_out, type, 256)

instantiate_turbo_rotation_dims(float, float32)
instantiate_turbo_rotation_dims(float16_t, float16)
instantiate_turbo_rotation_dims(bfloat16_t, bfloat16)
// clang-format on
