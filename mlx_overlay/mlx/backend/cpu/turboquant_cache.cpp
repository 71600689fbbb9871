// Copyright © 2026 TurboQuant-MLX contributors.

#include "mlx/fast_primitives.h"
#include "mlx/turboquant.h"

namespace mlx::core::fast {

void QuantizedCacheUpdate::eval_cpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  turbo::quantize_update_cpu(
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
