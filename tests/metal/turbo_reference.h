// Reference implementation of docs/format.md for the Metal harness: a float32
// encoder with the operation order documented in turbo_quantize.h (codes and
// scales must match the kernels bit for bit), and float64 decoding and
// attention on the dequantized (rotated-domain) inputs. Plain C++, written
// from the spec, independent of the kernel sources.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace ref {

static const float kCb3[8] = {-2.1520f, -1.3440f, -0.7560f, -0.2451f,
                              0.2451f,  0.7560f,  1.3440f,  2.1520f};
static const float kCb4[16] = {-2.7326f, -2.0690f, -1.6180f, -1.2562f,
                               -0.9424f, -0.6568f, -0.3881f, -0.1284f,
                               0.1284f,  0.3881f,  0.6568f,  0.9424f,
                               1.2562f,  1.6180f,  2.0690f,  2.7326f};

inline const float* codebook(int bits) { return bits == 4 ? kCb4 : kCb3; }
inline int words(int bits, int D) { return bits == 4 ? D / 8 : D / 16 + (D + 31) / 32; }
inline int pow2_le(int D) { int p = 1; while (p * 2 <= D) p *= 2; return p; }

inline int sign(uint32_t t, uint32_t i) {
  uint32_t h = (i + 1u) * 0x9E3779B1u + t * 0x7F4A7C15u;
  h ^= h >> 16; h *= 0x85EBCA6Bu;
  h ^= h >> 13; h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return (h & 1u) ? -1 : 1;
}

inline uint32_t code(const uint32_t* w, int bits, int D, int i) {
  if (bits == 4) return (w[i / 8] >> (4 * (i % 8))) & 15u;
  uint32_t lo = (w[i / 16] >> (2 * (i % 16))) & 3u;
  uint32_t hi = (w[D / 16 + i / 32] >> (i % 32)) & 1u;
  return lo | (hi << 2);
}

template <typename F>
inline void fwht(F* y, int P) {
  for (int h = 1; h < P; h *= 2)
    for (int i = 0; i < P; i += 2 * h)
      for (int j = i; j < i + h; j++) {
        F a = y[j], b = y[j + h];
        y[j] = a + b;
        y[j + h] = a - b;
      }
}

// float32 encoder: writes W words and returns the float32 scale (before
// rounding to the storage dtype).
inline float encode(const float* x, int D, int bits, uint32_t* w) {
  const int P = pow2_le(D), L = 1 << bits;
  const float* cb = codebook(bits);
  std::vector<float> y(D);
  float ss = 0.0f;
  for (int i = 0; i < D; i++) { volatile float sq = x[i] * x[i]; ss = ss + sq; y[i] = x[i]; }
  float n = std::sqrt(ss);
  bool fin = std::isfinite(n);
  for (int i = 0; i < D; i++) y[i] = n > 0.0f ? y[i] / n : 0.0f;
  float norm = 1.0f / std::sqrt(float(P));
  for (int i = 0; i < D; i++) y[i] = y[i] * float(sign(1, i));
  fwht(y.data(), P);
  for (int i = 0; i < P; i++) y[i] = y[i] * norm;
  for (int i = 0; i < D; i++) y[i] = y[i] * float(sign(2, i));
  fwht(y.data() + (D - P), P);
  for (int i = D - P; i < D; i++) y[i] = y[i] * norm;
  float sd = std::sqrt(float(D));
  std::memset(w, 0, sizeof(uint32_t) * words(bits, D));
  float rr = 0.0f;
  for (int i = 0; i < D; i++) {
    float z = y[i] * sd;
    uint32_t idx = 0;
    for (int j = 0; j < L - 1; j++) {
      float b = (cb[j] + cb[j + 1]) * 0.5f;
      if (z > b) idx++;
    }
    volatile float c2 = cb[idx] * cb[idx];
    rr = rr + c2;
    if (bits == 4) {
      w[i / 8] |= idx << (4 * (i % 8));
    } else {
      w[i / 16] |= (idx & 3u) << (2 * (i % 16));
      w[D / 16 + i / 32] |= (idx >> 2) << (i % 32);
    }
  }
  float rho = std::sqrt(rr);
  return fin ? n / rho : NAN;
}

// float64 decode to the original domain: x = R^T (scale * c[idx]).
inline void decode(const uint32_t* w, double scale, int D, int bits, double* x) {
  const int P = pow2_le(D);
  const float* cb = codebook(bits);
  for (int i = 0; i < D; i++) x[i] = scale * double(cb[code(w, bits, D, i)]);
  double sp = std::sqrt(double(P));
  fwht(x + (D - P), P);
  for (int i = D - P; i < D; i++) x[i] /= sp;
  for (int i = 0; i < D; i++) x[i] *= sign(2, i);
  fwht(x, P);
  for (int i = 0; i < P; i++) x[i] /= sp;
  for (int i = 0; i < D; i++) x[i] *= sign(1, i);
}

} // namespace ref
