// Exact GELU, x * Phi(x), on bfloat16 and its gradient, as TensorFlow ops.
//
// Why: XLA's CPU code for the formula (fast_layers.gelu) is bound by erf's and exp's
// arithmetic, not by memory, and an AVX-512 evaluation of them was no faster
// (docs/performance.md, "A native GELU"). A bfloat16 input has only 65,536 values, so
// both functions are tables, computed once in double precision:
//   y = round(x Phi(x))                       (a bfloat16 per input value)
//   dx = round(upstream * (Phi(x) + x phi(x)))  (a float32 slope per input value)
// each rounded once to bfloat16, to nearest even as tf.cast rounds. At the infinities they
// take the limits: GELU(+inf) = +inf, GELU(-inf) = -0, slopes 1 and 0; NaN stays NaN.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using tensorflow::int64;
using bf16_bits = uint16_t;

constexpr int64 kBlock = 16384;  // elements per parallel work unit
constexpr int kValues = 1 << 16;  // bfloat16 bit patterns

float to_float(bf16_bits bits) {
  const uint32_t wide = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

// Rounded to nearest even; a NaN stays a (quiet) NaN rather than carrying into the sign.
bf16_bits to_bf16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bf16_bits((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

struct Tables {
  int32_t gelu[kValues];  // bfloat16 bits, widened so they gather 16 at a time
  float slope[kValues];
};

const Tables& tables() {
  // Built on first use, thread-safely (a function-local static), and never changed. In
  // IEEE arithmetic whatever the calling thread's mode: TensorFlow's threads flush
  // subnormal numbers to zero (MXCSR's FTZ and DAZ bits), which would zero the smallest
  // inputs' entries.
  static const Tables* const built = [] {
    const unsigned mode = _mm_getcsr();
    _mm_setcsr(mode & ~(_MM_FLUSH_ZERO_MASK | _MM_DENORMALS_ZERO_MASK));
    auto* t = new Tables;
    for (int bits = 0; bits < kValues; ++bits) {
      const double x = to_float(bf16_bits(bits));
      double y, slope;
      if (std::isinf(x)) {
        y = x > 0 ? x : -0.0, slope = x > 0 ? 1.0 : 0.0;
      } else {
        const double cdf = 0.5 * std::erfc(-x * M_SQRT1_2);
        y = x * cdf, slope = cdf + x * std::exp(-0.5 * x * x) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
      }
      t->gelu[bits] = to_bf16(float(y));
      t->slope[bits] = float(slope);
    }
    _mm_setcsr(mode);
    return t;
  }();
  return *built;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")

__mmask16 tail_mask(int64 left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
}

__m512i bits_of_16(const bf16_bits* p, __mmask16 m) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
}

// y = GELU(x), 16 at a time, gathered from the table by x's bits.
void gelu(const bf16_bits* x, bf16_bits* y, int64 n) {
  const int32_t* table = tables().gelu;
  for (int64 i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512i values =
        _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, bits_of_16(x + i, m), table, 4);
    _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtepi32_epi16(values));
  }
}

// dx = upstream * slope(x), 16 at a time: the slopes gathered by x's bits, the product
// rounded to bfloat16 as to_bf16 rounds.
void gelu_grad(const bf16_bits* x, const bf16_bits* upstream, bf16_bits* dx, int64 n) {
  const float* slope = tables().slope;
  for (int64 i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 s = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, bits_of_16(x + i, m), slope, 4);
    const __m512i up = _mm512_slli_epi32(bits_of_16(upstream + i, m), 16);
    const __m512 product = _mm512_mul_ps(_mm512_castsi512_ps(up), s);
    const __m512i bits = _mm512_castps_si512(product);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
    const __mmask16 nan = _mm512_cmp_ps_mask(product, product, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC00000));
    _mm256_mask_storeu_epi16(dx + i, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
  }
}

#pragma GCC pop_options

bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}

const bf16_bits* bits_of(const tensorflow::Tensor& t) {
  return reinterpret_cast<const bf16_bits*>(t.tensor_data().data());
}

bf16_bits* mutable_bits_of(tensorflow::Tensor* t) {
  return reinterpret_cast<bf16_bits*>(t->flat<tensorflow::bfloat16>().data());
}

// Runs `body(first, count)` over blocks of kBlock elements on the intra-op threads.
template <typename Body>
void in_blocks(tensorflow::OpKernelContext* context, int64 n, Body body) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
  const int64 blocks = (n + kBlock - 1) / kBlock;
  // Cost per block in cycles, roughly: about 1 per element.
  workers->ParallelFor(blocks, kBlock, [&](int64 begin, int64 end) {
    for (int64 b = begin; b < end; ++b) {
      const int64 first = b * kBlock;
      body(first, std::min(kBlock, n - first));
    }
  });
}

#define REQUIRE_AVX512(context)                                                         \
  OP_REQUIRES(context, cpu_has_avx512(),                                                \
              tensorflow::errors::Unimplemented(                                        \
                  "the native GELU needs a CPU with AVX-512 (avx512f, avx512bw and "    \
                  "avx512vl in /proc/cpuinfo); use fast_layers.gelu's XLA path elsewhere"))

class Bf16GeluOp : public tensorflow::OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(tensorflow::OpKernelContext* context) override {
    REQUIRE_AVX512(context);
    const tensorflow::Tensor& x = context->input(0);
    tensorflow::Tensor* y = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    const bf16_bits* in = bits_of(x);
    bf16_bits* out = mutable_bits_of(y);
    in_blocks(context, x.NumElements(),
              [&](int64 first, int64 count) { gelu(in + first, out + first, count); });
  }
};

class Bf16GeluGradOp : public tensorflow::OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(tensorflow::OpKernelContext* context) override {
    REQUIRE_AVX512(context);
    const tensorflow::Tensor& x = context->input(0);
    const tensorflow::Tensor& upstream = context->input(1);
    OP_REQUIRES(context, x.shape() == upstream.shape(),
                tensorflow::errors::InvalidArgument(
                    "x and upstream must have one shape, got ", x.shape().DebugString(),
                    " and ", upstream.shape().DebugString()));
    tensorflow::Tensor* dx = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &dx));
    const bf16_bits* in = bits_of(x);
    const bf16_bits* up = bits_of(upstream);
    bf16_bits* out = mutable_bits_of(dx);
    in_blocks(context, x.NumElements(), [&](int64 first, int64 count) {
      gelu_grad(in + first, up + first, out + first, count);
    });
  }
};

}  // namespace

REGISTER_OP("Bf16Gelu")
    .Input("x: bfloat16")
    .Output("y: bfloat16")
    .SetShapeFn(tensorflow::shape_inference::UnchangedShape);

REGISTER_OP("Bf16GeluGrad")
    .Input("x: bfloat16")
    .Input("upstream: bfloat16")
    .Output("dx: bfloat16")
    .SetShapeFn(tensorflow::shape_inference::UnchangedShape);

REGISTER_KERNEL_BUILDER(Name("Bf16Gelu").Device(tensorflow::DEVICE_CPU), Bf16GeluOp);
REGISTER_KERNEL_BUILDER(Name("Bf16GeluGrad").Device(tensorflow::DEVICE_CPU), Bf16GeluGradOp);
