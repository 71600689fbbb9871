// Copyright © 2026 TurboQuant-MLX authors.
//
// Bindings shared by the TurboQuant Metal kernels, the host dispatch
// (mlx/backend/metal/turboquant.cpp) and the Linux verification harness
// (tests/metal): buffer indices, function-constant indices, the parameter
// structs, kernel names and launch geometry. Everything the host and a kernel
// must agree on lives here and nowhere else.
//
// The first part is valid MSL and C++; the second part (names, launch
// geometry) is host-only C++.

#pragma once

#ifndef __METAL_VERSION__
#include <cstdint>
#endif

// ---------------------------------------------------------------------------
// Attention (sdpa_vector_turbo, sdpa_vector_turbo_2pass_1)
#define TURBO_ATTN_BUF_Q 0
#define TURBO_ATTN_BUF_K 1
#define TURBO_ATTN_BUF_KS 2
#define TURBO_ATTN_BUF_V 3
#define TURBO_ATTN_BUF_VS 4
#define TURBO_ATTN_BUF_OUT 5
#define TURBO_ATTN_BUF_PARAMS 6
#define TURBO_ATTN_BUF_BMASK 7
#define TURBO_ATTN_BUF_FMASK 8
#define TURBO_ATTN_BUF_SINKS 9 // (Hq) float32, or (B, Hq, qL) with ROW_SINKS
#define TURBO_ATTN_BUF_SUMS 10 // 2-pass, first pass only
#define TURBO_ATTN_BUF_MAXS 11 // 2-pass, first pass only
#define TURBO_ATTN_BUF_SINK_VALUES 12 // (B, Hkv, V) float32, rotated
// The moving key shift (decode): per query row the 2P coefficients
// scale * q . waves[i] (B, Hq, qL, 2P) float32 (cos planes, then sin), and
// the frequencies (B or 1, Hkv, P) uint32 in turns of 2^-24 per key.
#define TURBO_ATTN_BUF_WAVE_COEF 13
#define TURBO_ATTN_BUF_WAVE_FREQS 14

// 2-pass aggregation (sdpa_vector_turbo_2pass_2)
#define TURBO_AGG_BUF_PARTIALS 0
#define TURBO_AGG_BUF_SUMS 1
#define TURBO_AGG_BUF_MAXS 2
#define TURBO_AGG_BUF_OUT 3
#define TURBO_AGG_BUF_BLOCKS 4

// Function constants of the attention kernels
#define TURBO_FC_HAS_MASK 40
#define TURBO_FC_DO_CAUSAL 41
#define TURBO_FC_BOOL_MASK 42
#define TURBO_FC_FLOAT_MASK 43
#define TURBO_FC_HAS_SINKS 44
#define TURBO_FC_SINK_VALUES 45
#define TURBO_FC_KEY_WAVES 46

// Sinks per query row (B, Hq, qL) instead of per head (Hq): the logits the
// preparation kernel writes with the exact transforms' key bias.
#define TURBO_FC_ROW_SINKS 47

// Decode preparation (turbo_attention_prep; fused_rotation, one launch per
// call): one SIMD-group per row rotates the query rows and the sink value
// rows into float32 and, from the queries as given, writes each query row's
// sink logit with the key bias and the moving key shift's coefficients.
#define TURBO_PREP_BUF_Q 0 // (B, Hq, qL, Dk) T, row contiguous
#define TURBO_PREP_BUF_Q_ROT 1 // (B, Hq, qL, Dk) float32: R q
#define TURBO_PREP_BUF_PARAMS 2
#define TURBO_PREP_BUF_SV 3 // (B or 1, Hkv, 1, Dv) T, only with SINK_VALUES
#define TURBO_PREP_BUF_SV_ROT 4 // (B, Hkv, 1, Dv) float32: R v, the same
#define TURBO_PREP_BUF_SINKS 5 // (Hq) float32, only with HAS_SINKS
#define TURBO_PREP_BUF_KEY_SHIFT 6 // (B or 1, Hkv, 1, Dk) T, with KEY_SHIFT
#define TURBO_PREP_BUF_FIRST_KEY 7 // the same, only with FIRST_KEY
#define TURBO_PREP_BUF_ROW_SINKS 8 // (B, Hq, qL) float32, only with ROW_SINKS
#define TURBO_PREP_BUF_WAVES 9 // (B or 1, Hkv, 2P, Dk) float32, with KEY_WAVES
#define TURBO_PREP_BUF_WAVE_COEF 10 // (B, Hq, qL, 2P) float32, the same
// Function constants of the preparation only (it also reads HAS_SINKS,
// SINK_VALUES, KEY_WAVES and ROW_SINKS): the key bias's terms are present.
#define TURBO_FC_KEY_SHIFT 48
#define TURBO_FC_FIRST_KEY 49

// Output rotation (turbo_rotate_out; fused_rotation): rows of D float32 ->
// R^T x in T, one SIMD-group per row.
#define TURBO_ROT_BUF_IN 0
#define TURBO_ROT_BUF_OUT 1
#define TURBO_ROT_BUF_NROWS 2

// Quantize: x -> (packed, scales); dequantize: (packed, scales) -> x
#define TURBO_Q_BUF_IN 0
#define TURBO_Q_BUF_PACKED 1
#define TURBO_Q_BUF_SCALES 2
#define TURBO_Q_BUF_NVEC 3
#define TURBO_DQ_BUF_PACKED 0
#define TURBO_DQ_BUF_SCALES 1
#define TURBO_DQ_BUF_OUT 2
#define TURBO_DQ_BUF_NVEC 3
// Cache update: rows offset..offset+L-1 of the codes or of the scales <-
// quantize(x - shift - moving shift); one of the two buffers is bound (the
// one written)
#define TURBO_QU_BUF_X 0
#define TURBO_QU_BUF_PACKED 1 // only with TURBO_FC_UPDATE_CODES
#define TURBO_QU_BUF_SCALES 2 // only with TURBO_FC_UPDATE_SCALES
#define TURBO_QU_BUF_PARAMS 3
#define TURBO_QU_BUF_SHIFT 4 // float32, only with TURBO_FC_UPDATE_SHIFT
#define TURBO_QU_BUF_FREQS 5 // (B or 1, H, P) uint32, only with UPDATE_WAVES
#define TURBO_QU_BUF_WAVES 6 // (B or 1, H, 2P, D) float32, the same
// Function constants of the cache update kernel: a shift is subtracted; the
// node writes the scales (fast::QuantizedCacheUpdate's scales_) or the codes;
// the moving shift of the cache row is subtracted.
// The host always sets UPDATE_CODES = !UPDATE_SCALES: each gates the buffer
// argument it writes (a declared constant, not a derived one, so that the
// argument attribute names a function constant).
#define TURBO_FC_UPDATE_SHIFT 50
#define TURBO_FC_UPDATE_SCALES 51
#define TURBO_FC_UPDATE_CODES 52
#define TURBO_FC_UPDATE_WAVES 56

// Cache dequantize for the attention of many queries
// (fast::QuantizedKVDequantize): output (B, H, F + L, D) row contiguous in
// the scales' dtype T, F = 1 with TURBO_FC_KVDQ_FIRST. Every input after the
// scales is row contiguous, one block per (b, h).
#define TURBO_KVDQ_BUF_PACKED 0 // (B, H, L, W) uint32, (b, h, l) strides
#define TURBO_KVDQ_BUF_SCALES 1 // (B, H, L, 1) T, (b, h, l) strides
#define TURBO_KVDQ_BUF_OUT 2
#define TURBO_KVDQ_BUF_PARAMS 3
#define TURBO_KVDQ_BUF_FIRST 4 // (B, H, 1, D) T, only with KVDQ_FIRST
#define TURBO_KVDQ_BUF_SHIFT 5 // (B, H, 1, D) float32, only with KVDQ_SHIFT
#define TURBO_KVDQ_BUF_FREQS 6 // (B, H, P) uint32, only with KVDQ_WAVES
#define TURBO_KVDQ_BUF_WAVES 7 // (B, H, 2P, D) float32, only with KVDQ_WAVES
// Function constants of the cache dequantize kernel: row 0 of each (b, h) is
// first; the constant shift is added; the moving shift is added.
#define TURBO_FC_KVDQ_FIRST 53
#define TURBO_FC_KVDQ_SHIFT 54
#define TURBO_FC_KVDQ_WAVES 55
// Most planes P of the moving shift (turbo::kMaxKeyWaves).
#define TURBO_KVDQ_MAX_WAVES 32

// Threads per threadgroup
#define TURBO_ATTN_SIMDS 32 // 1-pass: 32 SIMD-groups of 32 lanes
#define TURBO_SIMD_WIDTH 32
#define TURBO_Q_THREADS 64 // (de)quantize: one thread per vector
#define TURBO_PREFILL_BQ 8 // prefill: queries (SIMD-groups) per threadgroup
#define TURBO_PREFILL_BK 32 // prefill: keys per tile (one per lane)
#define TURBO_ROW_SIMDS 4 // preparation / output rotation: rows per threadgroup

// Strides are in elements (uint32 words for codes). Index 0: batch,
// 1: (kv) head, 2: sequence; for the mask 3 is the key position.
struct TurboAttnParams {
  int B;
  int Hq;
  int Hkv;
  int qL;
  int kL;
  int gqa_factor;
  int blocks; // 2-pass only: number of key blocks (multiple of 32)
  float scale;
  int64_t k_strides[3];
  int64_t ks_strides[3];
  int64_t v_strides[3];
  int64_t vs_strides[3];
  int64_t m_strides[4];
  int64_t wf_b_stride; // moving key shift: frequencies' batch stride, or 0
  int waves; // moving key shift: planes P (0: none)
};

// Decode preparation: rows v < n_q are the query rows (b, h, i), v = (b Hq
// + h) qL + i; rows n_q <= v < n_q + n_sv are the sink value rows (b, kvh),
// r = v - n_q = b Hkv + kvh, n_sv = B Hkv. The per-kv-head inputs (sink
// values, key shift, first key, waves) have a batch axis of B or 1: the
// *_b flags are 1 when it is B, 0 when the batch shares one.
struct TurboPrepParams {
  int Hq;
  int qL;
  int Hkv;
  int gqa_factor;
  float scale;
  int waves; // planes P of the moving key shift (0 without it)
  int64_t n_q;
  int64_t n_sv;
  int sv_b;
  int key_shift_b;
  int first_key_b;
  int waves_b;
};

// Cache update: vector v < nvec = B * H * L is (b, h, l) with
// v = (b * H + h) * L + l; x (B, H, L, D) and the shift are read with their
// (b, h, l) strides in elements (last axis contiguous, 0 for broadcast axes);
// the output is the row-contiguous codes (B, H, N, W) or scales (B, H, N, 1),
// row (b * H + h) * N + offset + l. The moving shift's frequencies and waves
// (row contiguous) of (b, h) are block wave_b * b * H + h (wave_b 0 when
// the batch shares them).
struct TurboQuantUpdateParams {
  int H;
  int L;
  int N;
  int offset;
  int64_t nvec;
  int64_t x_strides[3];
  int64_t shift_strides[3];
  int waves; // planes P of the moving shift (0 without it)
  int wave_b; // 1: frequencies and waves per batch entry, 0: shared
};

// Cache dequantize: output row v < nrows = B * H * (F + L) is row r = v %
// (F + L) of block bh = v / (F + L) = b * H + h (F from the function
// constant TURBO_FC_KVDQ_FIRST); the code row of r >= F is l = r - F, read
// with the (b, h, l) strides in elements (uint32 words for the codes).
struct TurboKVDequantizeParams {
  int H;
  int L;
  int waves; // planes P of the moving shift (0 without it)
  int64_t nrows;
  int64_t packed_strides[3];
  int64_t scales_strides[3];
};

// ---------------------------------------------------------------------------
#ifndef __METAL_VERSION__
#include <string>

namespace turbo_bindings {

// Packed uint32 words per vector (docs/format.md section 4).
inline int words(int bits, int D) {
  return bits == 4 ? D / 8 : D / 16 + (D + 31) / 32;
}

inline const char* mode_name(int bits) {
  return bits == 4 ? "turbo4" : "turbo3";
}

// Supported (key dim, value dim) pairs of the attention kernels.
inline bool attn_dims_supported(int Dk, int Dv) {
  auto ok = [](int d) {
    return d == 64 || d == 80 || d == 96 || d == 128 || d == 192 || d == 256;
  };
  return (Dk == Dv && ok(Dk)) || (Dk == 192 && Dv == 128);
}
inline bool quant_dim_supported(int D) {
  return D == 64 || D == 80 || D == 96 || D == 128 || D == 192 || D == 256;
}

// type strings as MLX's get_type_string: float32, float16, bfloat16
inline std::string attn_kernel_name(
    int pass, // 0: 1-pass, 1: 2-pass first pass, 2: prefill
    int kbits,
    int vbits,
    const std::string& scale_type,
    int Dk,
    int Dv) {
  // pass 2: tiled prefill kernel
  std::string n = pass == 0 ? "sdpa_vector_turbo_"
      : pass == 1           ? "sdpa_vector_turbo_2pass_1_"
                            : "sdpa_prefill_turbo_";
  n += mode_name(kbits);
  n += "_";
  n += mode_name(vbits);
  n += "_" + scale_type + "_" + std::to_string(Dk) + "_" + std::to_string(Dv);
  return n;
}
inline std::string agg_kernel_name(int Dv) {
  return "sdpa_vector_turbo_2pass_2_" + std::to_string(Dv);
}
// Decode preparation: T is the queries' type (float32, float16, bfloat16).
inline std::string prep_kernel_name(const std::string& type, int Dk, int Dv) {
  return "turbo_attention_prep_" + type + "_" + std::to_string(Dk) + "_" +
      std::to_string(Dv);
}
// Pipeline cache key of the preparation: its name and its five constants.
inline std::string prep_hash_name(
    const std::string& kname,
    bool sinks,
    bool sink_values,
    bool key_shift,
    bool first_key,
    bool waves) {
  return kname + (sinks ? "_sinks" : "") + (sink_values ? "_sv" : "") +
      (key_shift ? "_shift" : "") + (first_key ? "_first" : "") +
      (waves ? "_waves" : "");
}
inline std::string rotate_out_kernel_name(const std::string& type, int D) {
  return "turbo_rotate_out_" + type + "_" + std::to_string(D);
}
inline std::string
quantize_kernel_name(int bits, const std::string& type, int D) {
  return std::string(mode_name(bits)) + "_quantize_" + type + "_" +
      std::to_string(D);
}
inline std::string
quantize_update_kernel_name(int bits, const std::string& type, int D) {
  return std::string(mode_name(bits)) + "_quantize_update_" + type + "_" +
      std::to_string(D);
}
// Pipeline cache key of the update kernel: its name and its function
// constants (UPDATE_CODES is !UPDATE_SCALES).
inline std::string quantize_update_hash_name(
    const std::string& kname,
    bool shift,
    bool scales,
    bool waves) {
  return kname + (shift ? "_shift" : "_noshift") +
      (scales ? "_scales" : "_codes") + (waves ? "_waves" : "_nowaves");
}
inline std::string dequantize_kernel_name(
    int bits,
    const std::string& scale_type,
    const std::string& out_type,
    int D) {
  return std::string(mode_name(bits)) + "_dequantize_" + scale_type + "_" +
      out_type + "_" + std::to_string(D);
}

// The cache dequantize kernel; its output and scales share the type.
inline std::string
dequantize_kv_kernel_name(int bits, const std::string& type, int D) {
  return std::string(mode_name(bits)) + "_dequantize_kv_" + type + "_" +
      std::to_string(D);
}
// Pipeline cache key of the cache dequantize kernel: its name and the three
// function constants.
inline std::string dequantize_kv_hash_name(
    const std::string& kname,
    bool first,
    bool shift,
    bool waves) {
  return kname + (first ? "_first" : "_nofirst") +
      (shift ? "_shift" : "_noshift") + (waves ? "_waves" : "_nowaves");
}

struct Dims {
  unsigned grid[3];
  unsigned group[3];
};

// 1-pass: one threadgroup of 32 SIMD-groups per (batch*head, query).
inline Dims attn_1pass_dims(int B, int Hq, int qL) {
  return {
      {unsigned(B * Hq), unsigned(qL), 1u},
      {unsigned(TURBO_ATTN_SIMDS * TURBO_SIMD_WIDTH), 1u, 1u}};
}
// 2-pass first pass: one SIMD-group per (query head of the group, query),
// one threadgroup per (kv head, batch, key block).
inline Dims attn_2pass_1_dims(int B, int Hkv, int gqa, int qL, int blocks) {
  return {
      {unsigned(Hkv), unsigned(B), unsigned(blocks)},
      {unsigned(TURBO_SIMD_WIDTH), unsigned(gqa), unsigned(qL)}};
}
inline Dims attn_2pass_2_dims(int B, int Hq, int qL) {
  return attn_1pass_dims(B, Hq, qL);
}

// Prefill: one threadgroup of TURBO_PREFILL_BQ SIMD-groups per block of
// queries of one (batch, head).
inline Dims attn_prefill_dims(int B, int Hq, int qL) {
  return {
      {unsigned((qL + TURBO_PREFILL_BQ - 1) / TURBO_PREFILL_BQ),
       unsigned(Hq),
       unsigned(B)},
      {unsigned(TURBO_PREFILL_BQ * TURBO_SIMD_WIDTH), 1u, 1u}};
}
// Queries per call above which the prefill kernel replaces the vector ones.
inline bool attn_use_prefill(int qL) {
  return qL > 8;
}

// Whether the 2-pass path can run (threadgroup of 32 * gqa * qL threads).
inline bool attn_2pass_fits(int gqa, int qL) {
  return gqa * qL * TURBO_SIMD_WIDTH <= 1024;
}

// MLX's routing rule for the 2-pass vector kernel (devc: last letter of the
// GPU architecture name, 'd' and 's' are the large parts).
inline bool attn_use_2pass(int kL, int Hq, int Hkv, int qL, char devc) {
  int gqa = Hq / Hkv;
  if (!attn_2pass_fits(gqa, qL)) {
    return false;
  }
  return ((devc == 'd' || devc == 's') && kL >= 1024) ||
      (Hkv < Hq && kL >= 4096);
}

// Number of key blocks of the 2-pass kernel (a multiple of 32, the
// aggregation consumes them in SIMD-width chunks). Same policy as MLX.
inline int attn_2pass_blocks(int kL, int n_simds, char devc) {
  int blocks;
  if (devc == 's') {
    blocks = 64;
    if (kL > 1024 && n_simds > 4) {
      blocks = kL <= 8192 ? 128 : kL <= 32768 ? 256 : kL <= 65536 ? 512 : 1024;
    }
  } else if (devc == 'd') {
    blocks = 128;
    if (n_simds <= 2 && kL > 8192) {
      blocks = 256;
    } else if (n_simds >= 6) {
      if (kL >= 16384 && kL < 65536) {
        blocks = 512;
      } else if (kL >= 65536) {
        blocks = 1024;
      }
    }
  } else {
    blocks = n_simds >= 4 ? 64 : 32;
  }
  return blocks;
}

// Preparation and output rotation: one SIMD-group per row.
inline Dims row_dims(int64_t nrows) {
  return {
      {unsigned((nrows + TURBO_ROW_SIMDS - 1) / TURBO_ROW_SIMDS), 1u, 1u},
      {unsigned(TURBO_ROW_SIMDS * TURBO_SIMD_WIDTH), 1u, 1u}};
}

inline Dims quantize_dims(int64_t nvec) {
  return {
      {unsigned((nvec + TURBO_Q_THREADS - 1) / TURBO_Q_THREADS), 1u, 1u},
      {unsigned(TURBO_Q_THREADS), 1u, 1u}};
}

} // namespace turbo_bindings
#endif
