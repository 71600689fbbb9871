// Copyright © 2026 TurboQuant-MLX contributors.
//
// Host entry points of the TurboQuant CUDA kernels (device code in
// device/turboquant_*.cuh, one file per kernel family; launches in
// turboquant*.cu).

#pragma once

#include "mlx/array.h"
#include "mlx/backend/cuda/device.h"
#include "mlx/turboquant.h"

#include <optional>

namespace mlx::core {

// True when the head dimension is one the kernels are built for.
bool turbo_cuda_supported_dim(int d);

// a when its rows are contiguous, else a contiguous copy that enc keeps
// alive until its kernels have run.
array turbo_row_dense(const array& a, cu::CommandEncoder& enc, const Stream& s);

// x (..., D) -> packed (..., W) uint32 and scales (..., 1) in x.dtype().
// All arrays row contiguous, outputs allocated.
void turbo_quantize_gpu(
    const array& x,
    array& packed,
    array& scales,
    int bits,
    cu::CommandEncoder& enc);

// fast::QuantizedCacheUpdate: inputs the buffer (packed codes, or the
// scales when `scales`), x[, shift][, freqs, waves] (mlx/fast_primitives.h);
// out is the updated buffer (the input's buffer when donatable).
void turbo_quantize_update_gpu(
    const std::vector<array>& inputs,
    array& out,
    int bits,
    int offset,
    bool has_shift,
    bool has_waves,
    bool scales,
    cu::CommandEncoder& enc,
    const Stream& s);

// packed (..., W), scales (..., 1) -> x (..., D) in x.dtype() (original
// domain). All arrays row contiguous, output allocated.
void turbo_dequantize_gpu(
    const array& packed,
    const array& scales,
    array& x,
    int bits,
    cu::CommandEncoder& enc,
    const Stream& s);

// fast::QuantizedKVDequantize (inputs and output as turbo::dequantize_kv_cpu
// in mlx/turboquant.h); allocates out.
void turbo_dequantize_kv_gpu(
    const std::vector<array>& inputs,
    array& out,
    int bits,
    turbo::KVDequantizeLayout layout,
    cu::CommandEncoder& enc,
    const Stream& s);

// x (N rows of D, row contiguous) -> y = R x (forward) or R^T x (inverse),
// computed in float32, stored in y.dtype(); y allocated.
void turbo_rotate_gpu(
    const array& x,
    array& y,
    bool inverse,
    cu::CommandEncoder& enc);

// Decode preparation with fused_rotation, one launch: q (B, Hq, qL, D) and
// the sink values sv ((B or 1), Hkv, 1, D), both in T and row contiguous,
// rotated into float32 q_rot / sv_rot; with row_sinks (B, Hq, qL) float32,
// each query row's sink logit sinks[h] (0 without) - scale * q . (key_shift
// - first_key) (each (B or 1, Hkv, 1, D) in T, row contiguous, optional);
// with waves (the moving key shift's (B or 1, Hkv, 2P, D), float32, row
// contiguous), each query row's 2P coefficients scale log2(e) q . waves[i]
// into wave_coef (B, Hq, qL, 2P) float32.
void turbo_attention_prep_gpu(
    const array& q,
    array& q_rot,
    const std::optional<array>& sv,
    array* sv_rot,
    const std::optional<array>& sinks,
    const std::optional<array>& key_shift,
    const std::optional<array>& first_key,
    array* row_sinks,
    const std::optional<array>& waves,
    array* wave_coef,
    float scale,
    cu::CommandEncoder& enc);

// The decode preparation inside the tensor-core kernel: fused_rotation's
// key bias, (B or 1, Hkv, 1, D) in the queries' dtype, and the moving key
// shift's waves, (B or 1, Hkv, 2P, D) float32, all row contiguous and
// optional, read by the kernel with the queries as given.
struct TurboKernelPrep {
  std::optional<array> key_shift;
  std::optional<array> first_key;
  std::optional<array> waves;
};

// Whether a fused_rotation decode call on these inputs (laid out as
// turbo_sdpa_gpu takes them) prepares its queries and sink values inside the
// tensor-core kernel (device/turboquant_plan.cuh, decode_preps_in_kernel)
// rather than in a turbo_attention_prep_gpu launch.
bool turbo_sdpa_preps_in_kernel(
    const array& q,
    const array& k,
    const array& k_scales,
    const array& v,
    const array& v_scales,
    int key_bits,
    int value_bits,
    bool low_precision);

// Decode attention on the packed cache (qL <= turbo::kFusedMaxQueries);
// inputs as in the kernel contract of docs/format.md, already laid out with
// contiguous last dimensions. With final_out (fused_rotation; out is then a
// row-contiguous float32 temporary), the output is also rotated back into
// *final_out in its dtype.
// sinks: float32 logits per head (Hq) or per row (B, Hq, qL), contiguous.
// sink_values (decode only): float32 (B or 1, Hkv, 1, D), row contiguous, in
// the rotated domain: the sinks' values (none: value 0).
// wave_coef / wave_freqs: the moving key shift, the coefficients of
// turbo_attention_prep_gpu and the frequencies (B or 1, Hkv, P) uint32, row
// contiguous (both or neither).
// kprep (turbo_sdpa_preps_in_kernel): q is the queries as given (their dtype,
// last axis dense), sinks per head or none, sink_values as given (the
// queries' dtype), and the kernel prepares them with kprep's inputs;
// wave_coef is then unused (the coefficients come from kprep->waves).
void turbo_sdpa_gpu(
    const array& q,
    const array& k,
    const array& k_scales,
    const array& v,
    const array& v_scales,
    const std::optional<array>& mask,
    const std::optional<array>& sinks,
    const std::optional<array>& sink_values,
    const std::optional<array>& wave_coef,
    const std::optional<array>& wave_freqs,
    array& out,
    float scale,
    bool do_causal,
    int key_bits,
    int value_bits,
    bool low_precision,
    array* final_out,
    const TurboKernelPrep* kprep,
    cu::CommandEncoder& enc);

} // namespace mlx::core
