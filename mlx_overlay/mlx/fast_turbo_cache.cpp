// Copyright © 2026 TurboQuant-MLX contributors.
//
// fast::quantized_cache_update: an append to a TurboQuant cache (quantize the
// new vectors, minus the key shifts, into rows of the packed buffers) as one
// node per buffer.

#include <sstream>

#include "mlx/fast.h"
#include "mlx/fast_primitives.h"
#include "mlx/ops.h"
#include "mlx/turboquant.h"

namespace mlx::core::fast {

namespace {

constexpr std::string_view kTag = "quantized_cache_update";

[[noreturn]] void fail(const std::string& what) {
  std::ostringstream msg;
  msg << "[" << kTag << "] " << what;
  throw std::invalid_argument(msg.str());
}

std::string shape_str(const array& a) {
  std::ostringstream s;
  s << a.shape();
  return s.str();
}

} // namespace

std::vector<array> quantized_cache_update(
    const array& packed,
    const array& scales,
    const array& x,
    int offset,
    const std::string& mode,
    const std::optional<array>& shift,
    const std::optional<array>& shift_freqs,
    const std::optional<array>& shift_waves,
    StreamOrDevice s_) {
  auto qmode = turbo::parse_mode(kTag, mode);
  int nbits = turbo::bits(qmode);
  if (x.ndim() != 4 || packed.ndim() != 4 || scales.ndim() != 4) {
    fail(
        "packed, scales and x must be 4D ([B, N_kv, N, W], [B, N_kv, N, 1], "
        "[B, N_kv, T, D]) but got shapes " +
        shape_str(packed) + ", " + shape_str(scales) + " and " + shape_str(x) +
        ".");
  }
  if (!issubdtype(x.dtype(), floating) || x.dtype() == float64) {
    fail("x must be float32, float16 or bfloat16.");
  }
  int dim = x.shape(-1);
  turbo::check_dim(kTag, dim);
  if (packed.dtype() != uint32) {
    fail("packed must be uint32 (the codes from mx.quantize).");
  }
  if (scales.dtype() != x.dtype()) {
    fail("scales must have the dtype of x.");
  }
  int rows = packed.shape(2);
  int width = turbo::packed_width(dim, nbits);
  if (packed.shape(0) != x.shape(0) || packed.shape(1) != x.shape(1) ||
      packed.shape(-1) != width) {
    std::ostringstream msg;
    msg << "packed must have shape [" << x.shape(0) << ", " << x.shape(1)
        << ", N, " << width << "] for x of shape " << x.shape() << " and mode '"
        << mode << "' but got " << packed.shape() << ".";
    fail(msg.str());
  }
  if (scales.shape() != Shape{x.shape(0), x.shape(1), rows, 1}) {
    fail(
        "scales must have shape [B, N_kv, N, 1] matching packed " +
        shape_str(packed) + " but got " + shape_str(scales) + ".");
  }
  int len = x.shape(2);
  if (offset < 0 || offset > rows - len) {
    std::ostringstream msg;
    msg << "offset " << offset << " with " << len
        << " new rows does not fit a cache of " << rows << " rows.";
    fail(msg.str());
  }
  auto s = to_stream(s_);
  std::vector<array> inputs = {packed, scales, x};
  if (shift) {
    if (!issubdtype(shift->dtype(), floating)) {
      fail("shift must be floating point.");
    }
    // A shift of 4 axes ending in D whose other axes are x's or 1 (a key
    // shift per head) goes as it is: the kernels read size-1 axes with
    // stride 0. Anything else is broadcast to x's shape.
    auto sh = astype(*shift, float32, s);
    bool as_is = sh.ndim() == 4 && sh.shape(3) == dim;
    for (int i = 0; as_is && i < 3; ++i) {
      as_is = sh.shape(i) == 1 || sh.shape(i) == x.shape(i);
    }
    if (!as_is) {
      try {
        sh = broadcast_to(sh, x.shape(), s);
      } catch (const std::invalid_argument&) {
        fail(
            "shift of shape " + shape_str(*shift) +
            " does not broadcast to x's shape " + shape_str(x) + ".");
      }
    }
    inputs.push_back(std::move(sh));
  }
  // The moving key shift (docs/format.md, section 7): frequencies (B or 1,
  // N_kv, P) uint32 and waves (B or 1, N_kv, 2P, D); new vector l is at
  // cache row offset + l.
  if (shift_freqs.has_value() != shift_waves.has_value()) {
    fail("shift_freqs and shift_waves must be given together.");
  }
  if (shift_freqs) {
    const auto& f = *shift_freqs;
    const auto& w = *shift_waves;
    const int B = x.shape(0);
    const int H = x.shape(1);
    if (f.ndim() != 3 || (f.shape(0) != 1 && f.shape(0) != B) ||
        f.shape(1) != H || f.shape(2) < 1 || f.shape(2) > turbo::kMaxKeyWaves) {
      std::ostringstream msg;
      msg << "shift_freqs with shape " << f.shape() << " expected shape (" << B
          << " or 1, " << H << ", P) with 1 <= P <= " << turbo::kMaxKeyWaves
          << ".";
      fail(msg.str());
    }
    if (f.dtype() != uint32) {
      std::ostringstream msg;
      msg << "shift_freqs must be uint32 (turns of 2^-24 per row) but got "
          << f.dtype() << ".";
      fail(msg.str());
    }
    const int P = f.shape(2);
    if (w.ndim() != 4 || w.shape(0) != f.shape(0) || w.shape(1) != H ||
        w.shape(2) != 2 * P || w.shape(3) != dim) {
      std::ostringstream msg;
      msg << "shift_waves with shape " << w.shape() << " expected shape ("
          << f.shape(0) << ", " << H << ", " << 2 * P << ", " << dim
          << ") for shift_freqs of shape " << f.shape() << ".";
      fail(msg.str());
    }
    if (!issubdtype(w.dtype(), floating)) {
      fail("shift_waves must be floating point.");
    }
    inputs.push_back(f);
    inputs.push_back(astype(w, float32, s));
  }
  if (len == 0) {
    return {packed, scales};
  }

  // One node per buffer, each with a single output: MLX donates an input
  // buffer to the output of a single-output primitive (as SliceUpdate's),
  // while the outputs of a multi-output one keep each other alive until the
  // kernels finish, which would copy a cache buffer on every pipelined step.
  // Both nodes encode the vectors; a decode step has a few of them.
  const bool has_shift = shift.has_value();
  const bool has_waves = shift_freqs.has_value();
  auto update = [&](int part) {
    auto fallback = [qmode, offset, part, has_shift, has_waves, s](
                        const std::vector<array>& in) {
      auto y = in[1];
      if (has_shift || has_waves) {
        std::optional<array> m;
        if (has_shift) {
          m = in[2];
        }
        if (has_waves) {
          const auto& f = in[2 + has_shift];
          const auto& w = in[3 + has_shift];
          auto rows = turbo::key_wave_shift(f, w, offset, y.shape(2), s);
          m = m ? add(*m, rows, s) : rows;
        }
        y = astype(subtract(astype(y, float32, s), *m, s), y.dtype(), s);
      }
      auto q = turbo::quantize(y, qmode, s)[part];
      Shape start = {0, 0, offset, 0};
      Shape stop = in[0].shape();
      stop[2] = offset + q.shape(2);
      return std::vector<array>{
          slice_update(in[0], q, std::move(start), std::move(stop), s)};
    };
    std::vector<array> in = {inputs[part]};
    in.insert(in.end(), inputs.begin() + 2, inputs.end());
    if (s.device != Device::cpu && !turbo::gpu_quantize_supported()) {
      return fallback(in)[0];
    }
    auto shape = in[0].shape();
    auto dtype = in[0].dtype();
    return array(
        std::move(shape),
        dtype,
        std::make_shared<QuantizedCacheUpdate>(
            s, fallback, qmode, offset, has_shift, has_waves, part == 1),
        std::move(in));
  };
  return {update(0), update(1)};
}

bool QuantizedCacheUpdate::is_equivalent(const Primitive& other) const {
  const auto& o = static_cast<const QuantizedCacheUpdate&>(other);
  return mode_ == o.mode_ && offset_ == o.offset_ &&
      has_shift_ == o.has_shift_ && has_waves_ == o.has_waves_ &&
      scales_ == o.scales_;
}

std::vector<Shape> QuantizedCacheUpdate::output_shapes(
    const std::vector<array>& inputs) {
  return {inputs[0].shape()};
}

} // namespace mlx::core::fast
