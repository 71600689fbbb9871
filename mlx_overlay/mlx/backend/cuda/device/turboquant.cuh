// Copyright © 2026 TurboQuant-MLX contributors.
//
// Device code for TurboQuant (turbo3 / turbo4) KV-cache attention on CUDA,
// by kernel family:
//   turboquant_format.cuh     constants, codebooks, signs, packing, rotation
//   turboquant_codec.cuh      turbo_encode, turbo_decode, turbo_rotate,
//                             turbo_attention_prep
//   turboquant_decode.cuh     AttnParams, mask / sink helpers,
//                             turbo_sdpa_vector (SIMT decode)
//   turboquant_combine.cuh    turbo_sdpa_combine (split-K second pass)
//   turboquant_tc_ops.cuh     the tensor-core decode's building blocks (MMA
//                             wrappers, table lookups, packed-code loads)
//   turboquant_decode_tc.cuh  turbo_sdpa_vector_tc (tensor-core decode)
//   turboquant_plan.cuh       host-side decode launch plan, shared by MLX
//                             and the standalone harness
// This header includes them all.

#pragma once

#include "mlx/backend/cuda/device/turboquant_codec.cuh"
#include "mlx/backend/cuda/device/turboquant_combine.cuh"
#include "mlx/backend/cuda/device/turboquant_decode.cuh"
#include "mlx/backend/cuda/device/turboquant_decode_tc.cuh"
#include "mlx/backend/cuda/device/turboquant_plan.cuh"
