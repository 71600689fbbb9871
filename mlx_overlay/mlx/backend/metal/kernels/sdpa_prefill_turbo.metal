// Copyright © 2026 TurboQuant-MLX authors.

// clang-format off
#include "mlx/backend/metal/kernels/utils.h"
#include "mlx/backend/metal/kernels/sdpa_prefill_turbo.h"

// Kernel names must equal turbo_bindings::attn_kernel_name(2, ...).
#define instantiate_sdpa_prefill_turbo(kmode, kb, vmode, vb, stype, sname, dk, dv) \
  instantiate_kernel(                                                         \
      "sdpa_prefill_turbo_" #kmode "_" #vmode "_" #sname "_" #dk "_" #dv,     \
      sdpa_prefill_turbo, stype, dk, dv, kb, vb)

#define instantiate_sdpa_prefill_turbo_modes(stype, sname, dk, dv)            \
  instantiate_sdpa_prefill_turbo(turbo3, 3, turbo3, 3, stype, sname, dk, dv) \
  instantiate_sdpa_prefill_turbo(turbo3, 3, turbo4, 4, stype, sname, dk, dv) \
  instantiate_sdpa_prefill_turbo(turbo4, 4, turbo3, 3, stype, sname, dk, dv) \
  instantiate_sdpa_prefill_turbo(turbo4, 4, turbo4, 4, stype, sname, dk, dv)

#define instantiate_sdpa_prefill_turbo_dims(stype, sname)         \
  instantiate_sdpa_prefill_turbo_modes(stype, sname, 64, 64)      \
  instantiate_sdpa_prefill_turbo_modes(stype, sname, 80, 80)      \
  instantiate_sdpa_prefill_turbo_modes(stype, sname, 96, 96)      \
  instantiate_sdpa_prefill_turbo_modes(stype, sname, 128, 128)    \
  instantiate_sdpa_prefill_turbo_modes(stype, sname, 192, 192)    \
  instantiate_sdpa_prefill_turbo_modes(stype, sname, 192, 128)    \
  instantiate_sdpa_prefill_turbo_modes(stype, sname, 256, 256)

instantiate_sdpa_prefill_turbo_dims(float, float32)
instantiate_sdpa_prefill_turbo_dims(float16_t, float16)
instantiate_sdpa_prefill_turbo_dims(bfloat16_t, bfloat16)
// clang-format on
