// Copyright © 2026 TurboQuant-MLX authors.

#include "mlx/backend/metal/turboquant.h"
#include "mlx/fast_primitives.h"

namespace mlx::core::fast {

void QuantizedCacheUpdate::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  turbo::quantize_update_gpu(
      inputs,
      outputs[0],
      mode_,
      offset_,
      has_shift_,
      has_waves_,
      scales_,
      stream());
}

} // namespace mlx::core::fast
