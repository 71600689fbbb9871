// Copyright © 2026 TurboQuant-MLX contributors.
//
// Host-side planning of the attention launches (rows per block, split
// count, query-length limit), shared by MLX and the standalone harness.

#pragma once

#include "mlx/backend/cuda/device/turboquant_decode.cuh"

namespace mlx::core::cu::turbo {

// ---------------------------------------------------------------------------
// Host-side planning shared by MLX and the harness.
// ---------------------------------------------------------------------------

// Rows (query heads x positions) per vector block.
inline int vector_rows_per_block(int rows) {
  return rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : 8;
}

// Blocks of a decode kernel resident per SM (both decode kernels are limited
// to 2 by their registers at D = 128, Nsight Compute on the H200).
constexpr int kVecBlocksPerSm = 2;

// Number of key splits for the vector kernel: as many as fill one wave of
// resident blocks without starting a second (splits * base_blocks <=
// kVecBlocksPerSm * num_sms), at least 256 keys each. A partial second wave
// costs a whole wave's time: in tests/cuda/sweep_decode.py (H200, D = 128,
// turbo3/4) the one-wave count was the fastest of the counts tried at B = 1
// and 8, Hq/Hkv = 28/4 and 32/8, 32K and 128K keys (e.g. B = 1, 28/4, 128K
// keys: 64 splits 51.7 us against 66.5 us at 132), the split-K combine
// included.
inline int vector_num_splits(int base_blocks, int kL, int num_sms) {
  int resident = kVecBlocksPerSm * num_sms;
  if (base_blocks >= resident || kL < 512) {
    return 1;
  }
  int splits = resident / base_blocks;
  int max_splits = kL / 256; // at least 256 keys per split
  splits = splits < max_splits ? splits : max_splits;
  splits = splits < kMaxSplits ? splits : kMaxSplits;
  return splits < 1 ? 1 : splits;
}

// Queries longer than this use the tiled prefill kernel.
constexpr int kVectorMaxQL = 8;

// The TF32 tensor-core prefill (turbo_sdpa_full_tc, head dims <= 128) is
// not yet faster than the SIMT float32 one (H100: 6.7 vs 6.7-6.9 ms at 4K,
// see docs/cuda.md) and rounds operands to TF32, so MLX uses the SIMT kernel;
// the harness tests and times the tensor-core one on request.
constexpr int kTcMaxDim = 128;
constexpr bool kUseTcPrefill = false;

} // namespace mlx::core::cu::turbo
