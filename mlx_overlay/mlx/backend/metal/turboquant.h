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

// fast::QuantizedCacheUpdate::eval_gpu (turboquant_cache.cpp), one node per
// buffer: inputs {buffer, x (B, H, L, D) [, shift float32 broadcast to x's
// shape]}, the buffer being the codes (B, H, N, W) uint32 (scales false) or
// the scales (B, H, N, 1) in x's dtype (scales true). The output takes the
// buffer when donatable, with rows offset..offset+L-1 replaced by that part
// of quantize(x) (with a shift: quantize((x - shift) rounded to x's dtype)).
void quantize_update_gpu(
    const std::vector<array>& inputs,
    array& out,
    QuantizationMode mode,
    int offset,
    bool scales,
    const Stream& s);

} // namespace mlx::core::turbo
