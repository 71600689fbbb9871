// Copyright © 2026 TurboQuant-MLX authors.

#pragma once

#include <vector>

#include "mlx/array.h"
#include "mlx/primitives.h"
#include "mlx/stream.h"
#include "mlx/turboquant.h"

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
// buffer: inputs {buffer, x (B, H, L, D) [, shift float32 (B or 1, H or 1, L
// or 1, D)] [, freqs (B or 1, H, P) uint32, waves (B or 1, H, 2P, D)
// float32]}, the buffer being the codes (B, H, N, W) uint32 (scales false) or
// the scales (B, H, N, 1) in x's dtype (scales true). The output takes the
// buffer when donatable, with rows offset..offset+L-1 replaced by that part
// of quantize(x) (with shifts: quantize((x - m) rounded to x's dtype), m the
// shift plus the moving shift of the row, in float32).
void quantize_update_gpu(
    const std::vector<array>& inputs,
    array& out,
    QuantizationMode mode,
    int offset,
    bool has_shift,
    bool has_waves,
    bool scales,
    const Stream& s);

// fast::QuantizedKVDequantize::eval_gpu (turboquant.cpp): the cache rows
// dequantized for MLX's own attention, with the optional exact first row and
// the key shifts (inputs and output as turbo::dequantize_kv_cpu in
// mlx/turboquant.h: packed (B, H, L, W) and scales (B, H, L, 1) in out's
// dtype with any strides, then [first] [shift] [freqs, waves] row
// contiguous; out (B, H, F + L, D)).
void dequantize_kv_gpu(
    const std::vector<array>& inputs,
    array& out,
    QuantizationMode mode,
    KVDequantizeLayout layout,
    const Stream& s);

} // namespace mlx::core::turbo
