// Copyright © 2026 TurboQuant-MLX contributors.
//
// Building blocks of the tensor-core decode kernel (turboquant_decode_tc.cuh):
// the fp16 range guards' powers of two, fp16/bf16 packing, the m16n8k16
// mma.sync and movmatrix wrappers, the byte-indexed table lookup (tc_lut),
// vector loads of packed codes and scales (TcCodes, tc_ld_scales), and the
// codes each table entry maps (tc_kentry, tc_ventry, tc_kdim). The kernel's
// design comment says how they fit together.

#pragma once

#include "mlx/backend/cuda/device/turboquant_format.cuh"

namespace mlx::core::cu::turbo {

__device__ inline float tc_pow2(int e) { // e in [-126, 127]
  return __int_as_float((e + 127) << 23);
}

// Unbiased exponent of a positive finite float (subnormals give -127).
__device__ inline int tc_exponent(float x) {
  return int((__float_as_uint(x) >> 23) & 255u) - 127;
}

// The fp16 range guard of a row of A operands: the power of two 2^e that
// brings the row's largest |entry| (amax of the 4 lanes of the group) into
// [2^13, 2^14); 0 for an all-zero or non-finite row.
__device__ inline int tc_row_exponent(float amax) {
  amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
  amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
  if (amax > 0.0f && amax <= FLT_MAX) {
    return min(120, max(-120, 13 - tc_exponent(amax)));
  }
  return 0;
}

// 2^x with one MUFU.EX2 (ex2.approx.ftz: the accuracy of exp2f, whose
// extra instructions only keep results below 2^-126 subnormal; here such
// weights flush to 0, against a largest weight of 1 per row).
__device__ inline float tc_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <typename T>
__device__ inline uint32_t tc_pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

// d += A B on one m16n8k16 tile (T operands, float32 accumulation). Lane
// (g, t) holds A entries (row, cols) (g, 2t..2t+1) in a0, (g + 8, 2t..) in a1,
// (g, 2t + 8..) in a2, (g + 8, 2t + 8..) in a3; B entries (rows, col)
// (2t..2t+1, g) in b0 and (2t + 8.., g) in b1; d = (g, 2t), (g, 2t + 1),
// (g + 8, 2t), (g + 8, 2t + 1).
template <typename T>
__device__ inline void tc_mma(
    float (&d)[4],
    uint32_t a0,
    uint32_t a1,
    uint32_t a2,
    uint32_t a3,
    uint32_t b0,
    uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// The transpose of an 8 x 8 matrix of 16-bit entries held as an A / C
// fragment (lane (g, t): row g, cols 2t, 2t + 1), in the same layout.
__device__ inline uint32_t tc_trans(uint32_t x) {
  uint32_t y;
  asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// Table entry of byte k (0..3) of w: tab holds entry e of the lane at byte
// 256 e + lb (lb < 256, the lane's copy in the key or value half), so one
// PRMT places the byte into the address: PRMT + LDS.
__device__ inline uint32_t
tc_lut(uint32_t tab, uint32_t lb, uint32_t w, int k) {
  const uint32_t off = __byte_perm(w, lb, 0x5504u | (uint32_t(k) << 4));
  uint32_t v;
  asm("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(tab + off));
  return v;
}

// N consecutive words from p; 16- (or 8-) byte vector loads when al (p is
// then aligned to min(16, 4 N) bytes).
template <int N>
__device__ inline void tc_ldg_words(const uint32_t* p, uint32_t* w, bool al) {
  if constexpr (N % 4 == 0) {
    if (al) {
#pragma unroll
      for (int i = 0; i < N / 4; i++) {
        uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + i);
        w[4 * i] = v.x;
        w[4 * i + 1] = v.y;
        w[4 * i + 2] = v.z;
        w[4 * i + 3] = v.w;
      }
      return;
    }
  } else if constexpr (N % 2 == 0) {
    if (al) {
#pragma unroll
      for (int i = 0; i < N / 2; i++) {
        uint2 v = __ldg(reinterpret_cast<const uint2*>(p) + i);
        w[2 * i] = v.x;
        w[2 * i + 1] = v.y;
      }
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < N; i++) {
    w[i] = __ldg(p + i);
  }
}

// The scales of N consecutive keys from p: one 2 N-byte load when al (p is
// then 2 N-byte aligned).
template <int N, typename T>
__device__ inline void tc_ld_scales(const T* p, T (&s)[N], bool al) {
  static_assert(N == 2 || N == 4, "2 or 4 keys per lane");
  if (al) {
    using W = std::conditional_t<N == 4, uint2, uint32_t>;
    const W w = __ldg(reinterpret_cast<const W*>(p));
    memcpy(s, &w, sizeof(W));
  } else {
#pragma unroll
    for (int i = 0; i < N; i++) {
      s[i] = p[i];
    }
  }
}

// The raw words holding coordinates [CPT c, CPT c + CPT) of one packed
// vector (loaded an iteration ahead), and the table indices built from them
// (turbo4: the nibble words themselves; turbo3: kwords, vpair).
template <int BITS, int D, int CPT>
struct TcCodes {
  static constexpr int NW = CPT / 8;
  static constexpr int NLO = CPT >= 16 ? CPT / 16 : 1;
  static constexpr int NHI = CPT >= 32 ? CPT / 32 : 1;
  static constexpr int NR = BITS == 4 ? NW : NLO + NHI;
  uint32_t raw[NR];

  __device__ inline void load(const uint32_t* vec, int c, bool al) {
    if constexpr (BITS == 4) {
      tc_ldg_words<NW>(vec + NW * c, raw, al);
    } else {
      if constexpr (CPT >= 16) {
        tc_ldg_words<NLO>(vec + NLO * c, raw, al);
      } else { // half a word, shifted in vpair()
        raw[0] = __ldg(vec + (c >> 1));
      }
      if constexpr (CPT >= 32) {
        tc_ldg_words<NHI>(vec + D / 16 + NHI * c, raw + NLO, al);
      } else {
        raw[NLO] = __ldg(vec + D / 16 + c / (32 / CPT));
      }
    }
  }
  // Key-side table indices (NW words of 4 bytes): turbo4 the nibble words;
  // turbo3, per low-plane word L (coordinates 16 i ..) and its 16 high bits,
  // byte k of word 2 i + x pairs coordinates a = 16 i + 4 k + 2 x and a + 1
  // as lo2(a) | lo2(a+1) << 2 | hi(a) << 4 | hi(a+1) << 5, bits 6 and 7
  // left as they fall (tc_kentry ignores them; see tc_kdim).
  __device__ inline void kwords(uint32_t (&kw)[NW], int c) const {
    if constexpr (BITS == 4) {
#pragma unroll
      for (int k = 0; k < NW; k++) {
        kw[k] = raw[k];
      }
    } else {
      static_assert(CPT >= 16, "turbo3 key chunks of at least 16");
#pragma unroll
      for (int i = 0; i < CPT / 16; i++) {
        const uint32_t L = raw[i];
        // The high bits' bytes 0 and 1 as bytes 0 and 2 of x; y: nibble k
        // of the 16 high bits in bits 4..7 of byte k.
        const uint32_t h = CPT >= 32 ? (i & 1) : (c & 1);
        const uint32_t x = __byte_perm(
            raw[NLO + (CPT >= 32 ? i >> 1 : 0)], 0u, 0x4140u + 0x202u * h);
        const uint32_t y = ((x << 4) & 0x00FF00FFu) | ((x << 8) & 0xFF00FF00u);
        kw[2 * i] = (L & 0x0F0F0F0Fu) | (y & 0xF0F0F0F0u);
        kw[2 * i + 1] = ((L >> 4) & 0x0F0F0F0Fu) | ((y >> 2) & 0xF0F0F0F0u);
      }
    }
  }
  // turbo3 value-table indices of two keys, this one (a) and o (b): byte m
  // of r[bb][q] is the index of coordinate 16 bb + 4 m + q of the chunk,
  // lo2(a) | lo2(b) << 4 | hi(a) << 3 | hi(b) << 7, bits 2 and 6 left as
  // they fall (tc_ventry ignores them).
  static constexpr int NB = CPT >= 16 ? CPT / 16 : 1;
  __device__ inline void vpair(const TcCodes& o, uint32_t (&r)[NB][4], int c)
      const {
    static_assert(BITS == 3, "turbo3 planes");
#pragma unroll
    for (int bb = 0; bb < NB; bb++) {
      uint32_t la, lb, sel;
      if constexpr (CPT >= 16) {
        la = raw[bb];
        lb = o.raw[bb];
        // Bytes (A, B, A, B) of the high bits' half h of the two keys.
        const uint32_t h = CPT >= 32 ? (bb & 1) : (c & 1);
        sel = 0x5140u + 0x2222u * h;
      } else {
        la = raw[0] >> (16 * (c & 1));
        lb = o.raw[0] >> (16 * (c & 1));
        sel = 0x40u + 0x11u * uint32_t(c & 3); // byte c % 4 of each
      }
      const int hw = NLO + (CPT >= 32 ? bb >> 1 : 0);
      const uint32_t y = __byte_perm(raw[hw], o.raw[hw], sel);
      // Nibbles (a0, a1, b0, b1) of each half to (a0, b0, a1, b1): byte m of
      // z holds the high bits of coordinates 4 m.. of a (bits 0..3) and b.
      const uint32_t z = (y & 0xF00FF00Fu) | ((y << 4) & 0x0F000F00u) |
          ((y >> 4) & 0x00F000F0u);
#pragma unroll
      for (int q = 0; q < 4; q++) {
        const uint32_t a = la >> (2 * q);
        const uint32_t b = q < 2 ? lb << (4 - 2 * q) : lb >> (2 * q - 4);
        const uint32_t t = (a & 0x0F0F0F0Fu) | (b & 0xF0F0F0F0u);
        r[bb][q] = (t & 0x77777777u) | ((z << (3 - q)) & 0x88888888u);
      }
    }
  }
};

// The codes (first, second) of key-table (value-table) entry e.
__host__ __device__ constexpr int2 tc_kentry(int bits, int e) {
  return bits == 4
      ? int2{e & 15, e >> 4}
      : int2{(e & 3) | ((e >> 2) & 4), ((e >> 2) & 3) | ((e >> 3) & 4)};
}
__host__ __device__ constexpr int2 tc_ventry(int bits, int e) {
  return bits == 4
      ? int2{e & 15, e >> 4}
      : int2{(e & 3) | ((e >> 1) & 4), ((e >> 4) & 3) | ((e >> 5) & 4)};
}

// First of the two coordinates (within a lane's key chunk) of key pair p
// (byte p % 4 of kwords word p / 4).
__host__ __device__ constexpr int tc_kdim(int bits, int p) {
  return bits == 4 ? 2 * p : 16 * (p >> 3) + 4 * (p & 3) + 2 * ((p >> 2) & 1);
}

} // namespace mlx::core::cu::turbo
