// Copyright © 2026 TurboQuant-MLX contributors.
//
// Helpers shared by the TurboQuant CPU kernels.

#pragma once

#include <algorithm>
#include <thread>
#include <vector>

#include "mlx/backend/cpu/copy.h"
#include "mlx/backend/cpu/encoder.h"
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

} // namespace mlx::core::turbo_cpu
