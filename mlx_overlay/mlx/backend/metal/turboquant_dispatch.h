// Copyright © 2026 TurboQuant-MLX authors.
//
// Helpers of the TurboQuant Metal dispatch (turboquant.cpp,
// turboquant_attention.cpp): the mode's bits, temporaries kept alive until
// the command buffer completes, strides and launch sizes.

#pragma once

#include <list>
#include <stdexcept>
#include <vector>

#include "mlx/backend/gpu/copy.h"
#include "mlx/backend/metal/device.h"
#include "mlx/primitives.h"

namespace mlx::core::turbo::metal_dispatch {

inline int mode_bits(QuantizationMode mode) {
  switch (mode) {
    case QuantizationMode::Turbo3:
      return 3;
    case QuantizationMode::Turbo4:
      return 4;
    default:
      throw std::invalid_argument("[turboquant] expected a turbo mode.");
  }
}

// Keeps copies alive until the command buffer completes (a list: references
// handed out stay valid while more copies are added).
struct Copies {
  const Stream& s;
  std::list<array> arrays;
  const array& keep(array a) {
    arrays.push_back(std::move(a));
    return arrays.back();
  }
  // A float32 array allocated for a kernel to write.
  array& temporary(Shape shape) {
    arrays.emplace_back(
        std::move(shape), float32, nullptr, std::vector<array>{});
    arrays.back().set_data(allocator::malloc(arrays.back().nbytes()));
    return arrays.back();
  }
  const array& row_contiguous(const array& a) {
    return a.flags().row_contiguous ? a : keep(contiguous_copy_gpu(a, s));
  }
  const array& last_contiguous(const array& a) {
    return a.strides(-1) == 1 ? a : keep(contiguous_copy_gpu(a, s));
  }
  const array& as_type(const array& a, Dtype t) {
    if (a.dtype() == t) {
      return a;
    }
    array out(a.shape(), t, nullptr, {});
    copy_gpu(
        a,
        out,
        a.flags().row_contiguous ? CopyType::Vector : CopyType::General,
        s);
    return keep(std::move(out));
  }
  void finish(metal::CommandEncoder& enc) {
    for (auto& a : arrays) {
      enc.add_temporary(a);
    }
  }
};

// Strides of (B, H, L, ...) in elements, 0 for broadcast (size-1) axes.
inline void bhl_strides(const array& a, int64_t* out) {
  for (int i = 0; i < 3; ++i) {
    out[i] = a.shape(i) > 1 ? int64_t(a.strides(i)) : 0;
  }
}

inline MTL::Size to_size(const unsigned* d) {
  return MTL::Size(d[0], d[1], d[2]);
}

} // namespace mlx::core::turbo::metal_dispatch
