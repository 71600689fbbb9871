// Copyright © 2026 TurboQuant-MLX contributors.

#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/turboquant.h"
#include "mlx/fast_primitives.h"
#include "mlx/turboquant.h"

#include <nvtx3/nvtx3.hpp>

namespace mlx::core::fast {

void QuantizedCacheUpdate::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  nvtx3::scoped_range r("QuantizedCacheUpdate::eval_gpu");
  auto& s = stream();
  auto& enc = cu::get_command_encoder(s);
  turbo_quantize_update_gpu(
      inputs,
      outputs[0],
      turbo::bits(mode_),
      offset_,
      has_shift_,
      has_waves_,
      scales_,
      enc,
      s);
}

} // namespace mlx::core::fast
