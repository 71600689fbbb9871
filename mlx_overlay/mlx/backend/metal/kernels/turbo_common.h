// Copyright © 2026 TurboQuant-MLX authors.
//
// Shared pieces of the TurboQuant kernels: codebooks, rotation signs, code
// extraction and the lane layout (docs/format.md).

#pragma once

#include <metal_stdlib>

#include "mlx/backend/metal/kernels/turbo_bindings.h"

using namespace metal;

// Lloyd-Max centroids of N(0, 1) (docs/format.md section 2).
constexpr constant static float turbo_cb3[8] = {
    -2.1520f, -1.3440f, -0.7560f, -0.2451f, 0.2451f, 0.7560f, 1.3440f, 2.1520f};
constexpr constant static float turbo_cb4[16] = {
    -2.7326f, -2.0690f, -1.6180f, -1.2562f, -0.9424f, -0.6568f,
    -0.3881f, -0.1284f, 0.1284f,  0.3881f,  0.6568f,  0.9424f,
    1.2562f,  1.6180f,  2.0690f,  2.7326f};

template <int BITS>
METAL_FUNC float turbo_centroid(uint code) {
  return BITS == 4 ? turbo_cb4[code] : turbo_cb3[code];
}

// Packed words per vector.
template <int BITS, int D>
struct TurboLayout {
  static_assert(BITS == 3 || BITS == 4, "turbo3 or turbo4");
  static_assert(D % 16 == 0, "head dim must be a multiple of 16");
  static constant constexpr const int words = BITS == 4 ? D / 8 : D / 16 + (D + 31) / 32;
};

// Code of coordinate i of one vector whose words start at w.
template <int BITS, int D, typename P>
METAL_FUNC uint turbo_code(P w, int i) {
  if (BITS == 4) {
    return (w[i >> 3] >> (uint(i & 7) * 4u)) & 0xFu;
  } else {
    uint lo = (w[i >> 4] >> (uint(i & 15) * 2u)) & 0x3u;
    uint hi = (w[D / 16 + (i >> 5)] >> uint(i & 31)) & 0x1u;
    return lo | (hi << 2);
  }
}

// Lanes of a SIMD-group that own a contiguous run of E coordinates each:
// E = D / 32 when D is a multiple of 32, else the smallest divisor of D above
// D / 32 (D = 80: 20 lanes of 4).
template <int D>
struct TurboLanes {
  static constant constexpr const int E = (D % 32 == 0) ? D / 32 : (D + 31) / 32 + 1;
  static constant constexpr const int lanes = D / E;
  static_assert(D % E == 0 && lanes <= 32, "unsupported head dim");
};

// Rotation sign s_t[i] (docs/format.md section 1), +1 or -1.
METAL_FUNC float turbo_sign(uint t, uint i) {
  uint h = (i + 1u) * 0x9E3779B1u + t * 0x7F4A7C15u;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return (h & 1u) ? -1.0f : 1.0f;
}

// Largest power of two <= D.
template <int D>
struct TurboPow2 {
  static constant constexpr const int P = D >= 256 ? 256 : D >= 128 ? 128 : 64;
};

// fl32(sqrt(D)) and 1.0f / fl32(sqrt(P)) as correctly rounded float32
// constants (what the CPU encoder computes with std::sqrt and a division), so
// the encoder does not depend on the precision of the GPU's sqrt and divide.
template <int D>
struct TurboConsts {
  static constant constexpr const float sqrt_d = D == 64 ? 8.0f
      : D == 80                                          ? 8.94427204f
      : D == 96                                          ? 9.79795933f
      : D == 128                                         ? 11.3137083f
      : D == 192                                         ? 13.8564062f
                                                         : 16.0f;
  static constant constexpr const float inv_sqrt_p = TurboPow2<D>::P == 64
      ? 0.125f
      : TurboPow2<D>::P == 128 ? 0.0883883461f
                               : 0.0625f;
};

// In-place fast Walsh-Hadamard transform of y[0:P] (unnormalized), butterfly
// span ascending 1, 2, ..., P/2. The order is part of the bit-exactness
// contract with the CPU encoder.
template <int P>
METAL_FUNC void turbo_fwht(thread float* y) {
  for (int h = 1; h < P; h <<= 1) {
    for (int i = 0; i < P; i += 2 * h) {
      for (int j = i; j < i + h; j++) {
        float a = y[j];
        float b = y[j + h];
        y[j] = a + b;
        y[j + h] = a - b;
      }
    }
  }
}

// Angle of a moving key shift's plane of frequency `freq` at cache row i
// (docs/format.md section 7): 2 pi ((freq i) mod 2^24) / 2^24 from exact
// integer turns (the uint32 product wraps modulo 2^32, a multiple of 2^24),
// centered to [-pi, pi) before the one float32 rounding of the product.
METAL_FUNC float turbo_wave_angle(uint freq, uint i) {
  int turns = int((freq * i) << 8) >> 8;
  return float(turns) * (6.283185307179586f / 16777216.0f);
}
