// Copyright © 2026 TurboQuant-MLX contributors.
//
// Helpers shared by the TurboQuant CPU kernels.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "mlx/backend/cpu/copy.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/turboquant.h"
#include "mlx/types/half_types.h"

namespace mlx::core::turbo_cpu {

inline array
ensure_contiguous(const array& a, cpu::CommandEncoder& encoder, Stream s) {
  if (a.flags().row_contiguous) {
    return a;
  }
  auto c = contiguous_copy_cpu(a, s);
  encoder.add_temporary(c);
  return c;
}

// Runs f(begin, end) over [0, n) on up to hardware_concurrency threads.
template <typename F>
inline void parallel_for(int64_t n, int64_t work_per_item, F&& f) {
  int64_t max_threads = std::max(1u, std::thread::hardware_concurrency());
  int64_t nt = std::min<int64_t>(max_threads, n);
  // Threads only pay off with enough work per call.
  if (n * work_per_item < (1 << 16)) {
    nt = 1;
  }
  if (nt <= 1) {
    f(0, n);
    return;
  }
  std::vector<std::thread> threads;
  int64_t chunk = (n + nt - 1) / nt;
  for (int64_t t = 1; t < nt; ++t) {
    int64_t b = t * chunk;
    int64_t e = std::min(n, b + chunk);
    if (b < e) {
      threads.emplace_back([&f, b, e]() { f(b, e); });
    }
  }
  f(0, std::min(n, chunk));
  for (auto& t : threads) {
    t.join();
  }
}

template <typename F>
inline void dispatch_float(Dtype t, F&& f) {
  switch (t) {
    case float32:
      f(float{});
      break;
    case float16:
      f(float16_t{});
      break;
    case bfloat16:
      f(bfloat16_t{});
      break;
    default:
      throw std::invalid_argument(
          "[turboquant] Only float32, float16 and bfloat16 are supported.");
  }
}

// cos and sin of 2 pi t / 2^24 for t < 2^24 from two 4096-entry tables
// (t = hi * 2^12 + lo, angle addition), float32 accurate.
struct TurnTables {
  float ch[4096], sh[4096], cl[4096], sl[4096];
};

inline const TurnTables& turn_tables() {
  static const TurnTables tables = [] {
    TurnTables t;
    const double two_pi = 6.283185307179586;
    for (int i = 0; i < 4096; ++i) {
      double hi = two_pi * i / 4096.0;
      double lo = two_pi * i / double(1 << turbo::kKeyWaveBits);
      t.ch[i] = static_cast<float>(std::cos(hi));
      t.sh[i] = static_cast<float>(std::sin(hi));
      t.cl[i] = static_cast<float>(std::cos(lo));
      t.sl[i] = static_cast<float>(std::sin(lo));
    }
    return t;
  }();
  return tables;
}

// phases[p] = cos a_p, phases[P + p] = sin a_p of cached key n,
// a_p = 2 pi ((freqs[p] n) mod 2^24) / 2^24 (the uint32 product wraps
// modulo 2^32, a multiple of 2^24).
inline void key_wave_phases(
    const uint32_t* freqs,
    int P,
    uint32_t n,
    const TurnTables& t,
    float* phases) {
  static_assert(turbo::kKeyWaveBits == 24, "two 12-bit tables");
  for (int p = 0; p < P; ++p) {
    uint32_t turns = (freqs[p] * n) & ((1u << 24) - 1);
    uint32_t hi = turns >> 12, lo = turns & 4095u;
    phases[p] = t.ch[hi] * t.cl[lo] - t.sh[hi] * t.sl[lo];
    phases[P + p] = t.sh[hi] * t.cl[lo] + t.ch[hi] * t.sl[lo];
  }
}

// y[d] += sum_j phases[j] waves[j, d] over the 2P phases of key_wave_phases
// (waves (2P, D) row contiguous): the moving key shift of one row, added plane
// by plane in float32.
inline void add_key_wave_shift(
    const float* phases,
    const float* waves,
    int P,
    int dim,
    float* y) {
  for (int j = 0; j < 2 * P; ++j) {
    for (int d = 0; d < dim; ++d) {
      y[d] += phases[j] * waves[j * dim + d];
    }
  }
}

} // namespace mlx::core::turbo_cpu
