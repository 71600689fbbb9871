// Copyright © 2026 TurboQuant-MLX contributors.
#include "mlx/backend/cuda/turboquant_attn.cuh"

namespace mlx::core::turbo_detail {
template void launch_attention<192>(
    const array&,
    const array&,
    const array&,
    const array&,
    const array&,
    array&,
    const AttnLaunch&,
    int,
    int,
    cu::CommandEncoder&);
} // namespace mlx::core::turbo_detail
