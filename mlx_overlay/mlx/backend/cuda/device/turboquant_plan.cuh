// Copyright © 2026 TurboQuant-MLX contributors.
//
// Host-side plan of a decode attention launch (kernel, rows per block, split
// count) and the choice of the kernel instantiation, shared by MLX
// (turboquant.cu, turboquant_attn.cuh) and the standalone harness
// (tests/cuda), so that the harness tests and times what MLX runs.

#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "mlx/backend/cuda/device/turboquant_combine.cuh"
#include "mlx/backend/cuda/device/turboquant_decode_tc.cuh"

namespace mlx::core::cu::turbo {

// The decode kernels take at most this many queries per call (MLX's
// turbo::kFusedMaxQueries: longer calls dequantize the cache for MLX's own
// attention).
constexpr int kVectorMaxQL = 8;

// Rows (query heads x positions) per SIMT decode block.
inline int vector_rows_per_block(int rows) {
  return rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : 8;
}

// Blocks of the SIMT decode kernel resident per SM (limited to 2 by its
// registers at D = 128, Nsight Compute on the H200); the tensor-core kernel's
// is vec_tc_blocks_per_sm(D).
constexpr int kVecBlocksPerSm = 2;

// Number of key splits for the vector kernel: as many as fill one wave of
// resident blocks without starting a second (splits * base_blocks <=
// per_sm * num_sms), at least 256 keys each, and no more than either give
// every SM a block (num_sms / base_blocks, rounded up) or give each split
// 1024 keys: a block's fixed cost (tables, queries, merge, its partial row)
// is paid per split. A partial second wave costs a whole wave's time. In
// tests/cuda/sweep_decode.py (H200, D = 128, turbo3/4, B = 1 and 8, Hq/Hkv
// = 28/4 and 32/8, 8K-128K keys, cuda_split_sweep_h200.md) this count was
// the fastest tried, or within 1% of it, at all but four shapes, all turbo3
// (3-5% there; e.g. B = 1, 28/4, 128K keys: 44.8 us at 98 splits, 42.6 us
// at 64), e.g. B = 1, 28/4, turbo4, 128K keys: 98 splits 41.0 us against
// 47.3 us at 32, 42.4 at 64 and 50.6 at 128. per_sm: the kernel's resident
// blocks per SM.
inline int vector_num_splits(int base_blocks, int kL, int num_sms, int per_sm) {
  int resident = per_sm * num_sms;
  if (base_blocks >= resident || kL < 512) {
    return 1;
  }
  int splits = resident / base_blocks;
  int fill = (num_sms + base_blocks - 1) / base_blocks;
  int enough = fill > kL / 1024 ? fill : kL / 1024;
  int max_splits = kL / 256; // at least 256 keys per split
  splits = splits < enough ? splits : enough;
  splits = splits < max_splits ? splits : max_splits;
  splits = splits < kMaxSplits ? splits : kMaxSplits;
  return splits < 1 ? 1 : splits;
}

// The decode launch of one call.
struct DecodePlan {
  bool tc; // turbo_sdpa_vector_tc, else turbo_sdpa_vector
  int nq; // rows per block
  bool masked; // the MASKED instantiation
};

// Whether the tensor-core kernel can read the cache of p: packed code rows
// (row stride = packed_words) and unit-stride scales, so that its loads are
// immediate offsets from one row address (a transposed or strided cache
// takes turbo_sdpa_vector).
inline bool vector_tc_layout(const AttnParams& p, int d, int kb, int vb) {
  return p.k_str[2] == packed_words(kb, d) &&
      p.v_str[2] == packed_words(vb, d) && p.ks_str[2] == 1 && p.vs_str[2] == 1;
}

// Whether plan_decode picks the tensor-core kernel for p (strides set).
inline bool decode_uses_tc(
    const AttnParams& p,
    int d,
    int key_bits,
    int value_bits,
    bool low_precision,
    bool half_scales) {
  return low_precision && half_scales && vector_tc_supported(d) &&
      vector_tc_layout(p, d, key_bits, value_bits);
}

// Whether a fused_rotation call's preparation (query and sink-value
// rotation, per-row sink logits of the key bias, the moving key shift's
// coefficients) runs in the tensor-core kernel's prologue (AttnParams::q_in)
// instead of a turbo_attention_prep launch: the tensor-core kernel and
// queries of its operand type (the scales' dtype). It saves a launch and its
// wait per call.
inline bool decode_preps_in_kernel(
    const DecodePlan& plan,
    bool q_is_scale_type) {
  return plan.tc && q_is_scale_type;
}

// Plans a decode call (qL <= kVectorMaxQL) whose shape, strides, mask_kind
// and causal are set in p; sets p.row_groups, p.keys_per_split and
// p.num_splits. low_precision: the queries were float16/bfloat16 (the
// primitive's flag); with float16/bfloat16 scales and the cache layout of
// vector_tc_layout too, the tensor-core kernel runs where it has the head dim
// (fp16/bf16 operands, float32 accumulation); its splits are whole warp
// iterations (vec_tc_keys). force_splits > 0 replaces the planned split count
// (the harness's sweeps).
inline DecodePlan plan_decode(
    AttnParams& p,
    int d,
    int key_bits,
    int value_bits,
    bool low_precision,
    bool half_scales,
    int num_sms,
    int force_splits = 0) {
  DecodePlan plan;
  const int rows = p.gqa * p.qL;
  plan.tc =
      decode_uses_tc(p, d, key_bits, value_bits, low_precision, half_scales);
  plan.nq = plan.tc ? 8 : vector_rows_per_block(rows);
  // Without an array mask, causality only matters for qL > 1.
  plan.masked = p.mask_kind != kMaskNone || (p.causal && p.qL > 1);
  p.row_groups = (rows + plan.nq - 1) / plan.nq;
  const int splits = force_splits > 0
      ? force_splits
      : vector_num_splits(
            p.B * p.Hkv * p.row_groups,
            p.kL,
            num_sms,
            plan.tc ? vec_tc_blocks_per_sm(d) : kVecBlocksPerSm);
  p.keys_per_split = (p.kL + splits - 1) / splits;
  if (plan.tc) {
    const int kt = vec_tc_keys(d);
    p.keys_per_split = (p.keys_per_split + kt - 1) / kt * kt;
  }
  p.num_splits = (p.kL + p.keys_per_split - 1) / p.keys_per_split;
  return plan;
}

inline dim3 decode_grid(const AttnParams& p) {
  return dim3(p.num_splits, p.Hkv * p.row_groups, p.B);
}

// Raises Kernel's dynamic shared memory limit on the current device, once
// per kernel and device (a cudaFuncSetAttribute call on every launch costs
// host time on every decode step).
template <auto Kernel>
cudaError_t raise_smem_limit(int smem) {
  static std::atomic<uint64_t> done{0}; // one bit per device
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  const uint64_t bit = (e == cudaSuccess && dev < 64) ? 1ull << dev : 0;
  if (bit & done.load(std::memory_order_relaxed)) {
    return cudaSuccess;
  }
  e = cudaFuncSetAttribute(
      reinterpret_cast<const void*>(Kernel),
      cudaFuncAttributeMaxDynamicSharedMemorySize,
      smem);
  if (e == cudaSuccess) {
    done.fetch_or(bit, std::memory_order_relaxed);
  }
  return e;
}

// Calls launch(kernel, threads, smem) with the decode kernel of the plan; the
// decode kernels take the same arguments and grid (decode_grid). Returns the
// error of raising the tensor-core kernel's shared memory limit.
template <int KB, int VB, int D, typename T, typename F>
cudaError_t launch_decode(const DecodePlan& plan, F&& launch) {
  constexpr bool half =
      std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
  if constexpr (half && vector_tc_supported(D)) {
    if (plan.tc) {
      auto run = [&](auto masked) {
        constexpr auto kernel =
            turbo_sdpa_vector_tc<KB, VB, D, 8, masked.value, T>;
        constexpr int smem = vec_tc_smem_bytes(KB, VB, D);
        cudaError_t e = raise_smem_limit<kernel>(smem);
        if (e == cudaSuccess) {
          launch(kernel, kVecTcThreads, smem);
        }
        return e;
      };
      return plan.masked ? run(std::true_type{}) : run(std::false_type{});
    }
  }
  auto run = [&](auto nq) {
    constexpr int cpt = vec_cpt(D, nq.value);
    if (plan.masked) {
      launch(
          turbo_sdpa_vector<KB, VB, D, nq.value, cpt, true, T>, kVecThreads, 0);
    } else {
      launch(
          turbo_sdpa_vector<KB, VB, D, nq.value, cpt, false, T>,
          kVecThreads,
          0);
    }
  };
  switch (plan.nq) {
    case 1:
      run(std::integral_constant<int, 1>{});
      break;
    case 2:
      run(std::integral_constant<int, 2>{});
      break;
    case 4:
      run(std::integral_constant<int, 4>{});
      break;
    default:
      run(std::integral_constant<int, 8>{});
      break;
  }
  return cudaSuccess;
}

} // namespace mlx::core::cu::turbo
