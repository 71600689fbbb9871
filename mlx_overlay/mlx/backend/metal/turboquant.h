// Copyright © 2026 TurboQuant-MLX authors.

#pragma once

#include <vector>

#include "mlx/array.h"
#include "mlx/primitives.h"
#include "mlx/stream.h"

namespace mlx::core::turbo {

// fast::Quantize::eval_gpu for QuantizationMode::Turbo3 / Turbo4
// (mlx/backend/metal/turboquant.cpp): quantize x -> {packed, scales}, or
// dequantize {packed, scales} -> x (original domain).
void quantize_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs,
    QuantizationMode mode,
    bool dequantize,
    const Stream& s);

} // namespace mlx::core::turbo
