// The bfloat16 weight gradient of a stride-1 "same" convolution with an odd square
// kernel, channels last, as a TensorFlow op: dW[i, j, c, f] = sum over images n and
// pixels (h, w) of x[n, h + i - k/2, w + j - k/2, c] * dy[n, h, w, f], accumulated in
// float32 by AVX512-BF16 dot products (vdpbf16ps).
//
// Why: TensorFlow 2.21's oneDNN (v3.7) runs this as its older jit_bf16 backward-weights
// kernel, well below the forward convolution's speed on CPUs with AVX512-BF16 and no AMX
// (docs/performance.md, "A native weight gradient").
//
// vdpbf16ps multiplies pairs of bfloat16 along the contraction and adds both products
// into one float32 lane, so the contraction runs over pairs of images: pixel (h, w) of
// images 2q and 2q + 1. A kernel offset (i, j) shifts the pixel, never the pair, so each
// offset is a plain matrix product of two packed operands:
//   x  -> [channel block][pair][h][w][6 channels][2 images]
//   dy -> [64-filter block][pair][h][w][64 filters][2 images]
// For each offset only the output pixels whose tap falls inside the image are summed: the
// zero padding's products are never computed (on a 3x3 map, 40% of them).
// A register block of 6 channels x 64 filters (24 zmm accumulators) runs over a chunk of
// image pairs about the size of the core's L2 cache. Each thread takes a share of the pairs
// into its own float32 sums, added at the end.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using tensorflow::int64;
using bf16_bits = uint16_t;

constexpr int kChannelBlock = 6;  // accumulator rows
constexpr int kFilterBlock = 64;  // accumulator columns: 4 zmm of 16 float32
// bfloat16 values of one packed pixel (a pair of images) in an x and a dy block.
constexpr int64 kXPixel = 2 * kChannelBlock, kDyPixel = 2 * kFilterBlock;
// Packed operands of one chunk: about a core's L2 (1 MB on Zen 4). Larger chunks reload
// the accumulators less often; 1 MB measured 2-3% faster than 512 KB over airbench94's
// layers, and 2-4 MB no faster.
constexpr int64 kChunkBytes = 1024 * 1024;

struct Geometry {
  int images, height, width, channels, filters, kernel;
  int64 pixels() const { return int64(height) * width; }
  int channel_blocks() const { return (channels + kChannelBlock - 1) / kChannelBlock; }
  int filter_blocks() const { return (filters + kFilterBlock - 1) / kFilterBlock; }
  int64 padded_channels() const { return int64(channel_blocks()) * kChannelBlock; }
  int64 padded_filters() const { return int64(filter_blocks()) * kFilterBlock; }
  int64 sums() const { return int64(kernel) * kernel * padded_channels() * padded_filters(); }
  // Values of one block of `pairs` packed pairs: the stride between x's channel blocks and
  // between dy's filter blocks.
  int64 x_block(int pairs) const { return pairs * pixels() * kXPixel; }
  int64 dy_block(int pairs) const { return pairs * pixels() * kDyPixel; }
  // Image pairs per chunk: the packed x and dy of a chunk fill at most kChunkBytes.
  int chunk_pairs() const {
    const int64 pair_bytes = 4 * pixels() * (padded_channels() + padded_filters());
    return int(std::max<int64>(1, kChunkBytes / pair_bytes));
  }
  // bfloat16 values of a thread's packed chunk and its two interleaved pixel rows.
  int64 scratch() const {
    return 2 * chunk_pairs() * pixels() * (padded_channels() + padded_filters()) +
           2 * (padded_channels() + padded_filters());
  }
};

// The output pixels [first, last) along one axis of `size` that kernel tap `offset`
// (-k/2 .. k/2) reads inside the image: "same" padding contributes only zeros, so the
// products with it are skipped rather than computed.
struct Span {
  int first, last;
  Span(int size, int offset) : first(std::max(0, -offset)), last(std::min(size, size - offset)) {}
  int length() const { return std::max(0, last - first); }
};

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")
// acc[6][64] += sum over `pairs` x `rows` x `cols` pixels of x_pair[c] . dy_pair[f]. `x`
// points at the block's first pixel shifted by the kernel offset, `dy` at the filter
// block's first pixel; both advance by their own pair and row strides.
template <int kVectors>
__attribute__((noinline)) void block_product(const bf16_bits* x, int64 x_pair, int64 x_row,
                                             const bf16_bits* dy, int64 dy_pair,
                                             int64 dy_row, int pairs, int rows, int cols,
                                             float* acc, int64 acc_row) {
  __m512 c[kChannelBlock][kVectors];
  for (int i = 0; i < kChannelBlock; ++i)
    for (int j = 0; j < kVectors; ++j) c[i][j] = _mm512_loadu_ps(acc + i * acc_row + 16 * j);
  for (int q = 0; q < pairs; ++q) {
    for (int h = 0; h < rows; ++h) {
      const bf16_bits* xr = x + q * x_pair + h * x_row;
      const bf16_bits* yr = dy + q * dy_pair + h * dy_row;
      for (int w = 0; w < cols; ++w) {
        const bf16_bits* yp = yr + w * kDyPixel;
        __m512bh y[kVectors];
        for (int j = 0; j < kVectors; ++j) y[j] = (__m512bh)_mm512_loadu_si512(yp + 32 * j);
        const bf16_bits* xp = xr + w * kXPixel;
        for (int i = 0; i < kChannelBlock; ++i) {
          int32_t pair;
          std::memcpy(&pair, xp + 2 * i, sizeof pair);
          const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
          for (int j = 0; j < kVectors; ++j) c[i][j] = _mm512_dpbf16_ps(c[i][j], a, y[j]);
        }
      }
    }
  }
  for (int i = 0; i < kChannelBlock; ++i)
    for (int j = 0; j < kVectors; ++j) _mm512_storeu_ps(acc + i * acc_row + 16 * j, c[i][j]);
}

// block_product over the first `vectors` x 16 filters of a block (a last, narrower block).
template <typename... Args>
void block_product_of(int vectors, Args... args) {
  switch (vectors) {
    case 1: return block_product<1>(args...);
    case 2: return block_product<2>(args...);
    case 3: return block_product<3>(args...);
    default: return block_product<4>(args...);
  }
}

// out[2c] = a[c], out[2c + 1] = b[c]: two images' values of a pixel as pairs (b may be
// null: an odd batch's missing last image, zeros), 16 pairs at a time.
inline void interleave(const bf16_bits* a, const bf16_bits* b, int n, bf16_bits* out) {
  for (int c = 0; c < n; c += 16) {
    const __mmask16 m = n - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - c)) - 1);
    const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, a + c));
    const __m512i hi = b == nullptr ? _mm512_setzero_si512()
                                    : _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, b + c));
    _mm512_mask_storeu_epi32(out + 2 * c, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
}

// Packs pairs [first, first + pairs) as the header describes; `x_row` and `y_row` hold one
// pixel's interleaved values (2 x padded C and 2 x padded F). Their values past C and F
// are left unset: they reach only the sums of padded channels and filters, never returned.
void pack(const Geometry& g, const bf16_bits* x, const bf16_bits* dy, int first, int pairs,
          bf16_bits* xp, bf16_bits* yp, bf16_bits* x_row, bf16_bits* y_row) {
  const int64 pixels = g.pixels();
  const int64 x_block = g.x_block(pairs), y_block = g.dy_block(pairs);
  for (int q = 0; q < pairs; ++q) {
    const int n = 2 * (first + q);
    const bool odd_out = n + 1 >= g.images;
    const bf16_bits* x0 = x + n * pixels * g.channels;
    const bf16_bits* y0 = dy + n * pixels * g.filters;
    for (int64 pixel = 0; pixel < pixels; ++pixel) {
      const bf16_bits* xa = x0 + pixel * g.channels;
      interleave(xa, odd_out ? nullptr : xa + pixels * g.channels, g.channels, x_row);
      bf16_bits* xd = xp + (int64(q) * pixels + pixel) * kXPixel;
      for (int cb = 0; cb < g.channel_blocks(); ++cb)
        std::memcpy(xd + cb * x_block, x_row + cb * kXPixel, kXPixel * sizeof(bf16_bits));
      const bf16_bits* ya = y0 + pixel * g.filters;
      interleave(ya, odd_out ? nullptr : ya + pixels * g.filters, g.filters, y_row);
      bf16_bits* yd = yp + (int64(q) * pixels + pixel) * kDyPixel;
      for (int fb = 0; fb < g.filter_blocks(); ++fb)
        std::memcpy(yd + fb * y_block, y_row + fb * kDyPixel, kDyPixel * sizeof(bf16_bits));
    }
  }
}

// The weight gradient of pairs [first, last) into `sums` ([k][k][padded C][padded F]),
// with `scratch` (g.scratch() values) for the packed chunks.
void accumulate(const Geometry& g, const bf16_bits* x, const bf16_bits* dy, int first,
                int last, float* sums, bf16_bits* scratch) {
  std::fill(sums, sums + g.sums(), 0.0f);
  const int chunk = g.chunk_pairs();
  bf16_bits* xp = scratch;
  bf16_bits* yp = xp + int64(chunk) * g.pixels() * 2 * g.padded_channels();
  bf16_bits* x_row = yp + int64(chunk) * g.pixels() * 2 * g.padded_filters();
  bf16_bits* y_row = x_row + 2 * g.padded_channels();
  for (int start = first; start < last; start += chunk) {
    const int pairs = std::min(chunk, last - start);
    const int64 xb = g.x_block(pairs), yb = g.dy_block(pairs);
    pack(g, x, dy, start, pairs, xp, yp, x_row, y_row);
    for (int fb = 0; fb < g.filter_blocks(); ++fb) {
      const int vectors = std::min(kFilterBlock, g.filters - fb * kFilterBlock + 15) / 16;
      for (int i = 0; i < g.kernel; ++i) {
        const Span rows(g.height, i - g.kernel / 2);
        for (int j = 0; j < g.kernel; ++j) {
          const Span cols(g.width, j - g.kernel / 2);
          if (rows.length() == 0 || cols.length() == 0) continue;  // a tap past the map
          // Output pixel (h, w) meets input pixel (h + i - k/2, w + j - k/2).
          const int64 out_first = int64(rows.first) * g.width + cols.first;
          const int64 in_first = out_first + int64(i - g.kernel / 2) * g.width + j - g.kernel / 2;
          for (int cb = 0; cb < g.channel_blocks(); ++cb) {
            float* acc = sums + ((int64(i) * g.kernel + j) * g.padded_channels() +
                                 int64(cb) * kChannelBlock) * g.padded_filters() +
                         int64(fb) * kFilterBlock;
            block_product_of(vectors, xp + cb * xb + in_first * kXPixel, g.pixels() * kXPixel,
                             g.width * kXPixel, yp + fb * yb + out_first * kDyPixel,
                             g.pixels() * kDyPixel, g.width * kDyPixel, pairs, rows.length(),
                             cols.length(), acc, g.padded_filters());
          }
        }
      }
    }
  }
}

#pragma GCC pop_options

class Bf16ConvFilterGradOp : public tensorflow::OpKernel {
 public:
  explicit Bf16ConvFilterGradOp(tensorflow::OpKernelConstruction* context)
      : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("kernel_size", &kernel_));
    OP_REQUIRES(context, kernel_ % 2 == 1,
                tensorflow::errors::InvalidArgument(
                    "kernel_size must be odd (a 'same' kernel centred on the pixel), got ",
                    kernel_));
  }

  void Compute(tensorflow::OpKernelContext* context) override {
    OP_REQUIRES(context, __builtin_cpu_supports("avx512bf16"),
                tensorflow::errors::Unimplemented(
                    "Bf16ConvFilterGrad needs a CPU with AVX512-BF16 (avx512_bf16 in "
                    "/proc/cpuinfo); use tf.raw_ops.Conv2DBackpropFilter elsewhere"));
    const tensorflow::Tensor& x = context->input(0);
    const tensorflow::Tensor& dy = context->input(1);
    OP_REQUIRES(context, x.dims() == 4 && dy.dims() == 4,
                tensorflow::errors::InvalidArgument(
                    "input and out_backprop must be NHWC (rank 4), got ranks ", x.dims(),
                    " and ", dy.dims()));
    for (int d = 0; d < 3; ++d) {
      OP_REQUIRES(context, x.dim_size(d) == dy.dim_size(d),
                  tensorflow::errors::InvalidArgument(
                      "a stride-1 'same' conv keeps N, H and W: input ",
                      x.shape().DebugString(), " against out_backprop ",
                      dy.shape().DebugString()));
    }
    const Geometry g{int(x.dim_size(0)), int(x.dim_size(1)), int(x.dim_size(2)),
                     int(x.dim_size(3)), int(dy.dim_size(3)), kernel_};
    tensorflow::Tensor* out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, {kernel_, kernel_, g.channels, g.filters}, &out));
    const int pairs = (g.images + 1) / 2;
    auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
    const int shards = std::max(1, std::min(workers->NumThreads(), pairs));
    // From TensorFlow's allocator, which keeps freed buffers: fresh pages on every call
    // would fault in megabytes per step.
    tensorflow::Tensor sums, scratch;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT,
                                                   {shards, g.sums()}, &sums));
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_UINT16,
                                                   {shards, g.scratch()}, &scratch));
    float* partial = sums.flat<float>().data();
    bf16_bits* packed = scratch.flat<uint16_t>().data();
    const auto* xd = reinterpret_cast<const bf16_bits*>(x.tensor_data().data());
    const auto* yd = reinterpret_cast<const bf16_bits*>(dy.tensor_data().data());
    // One unit per shard: a cost this high makes ParallelFor give each its own thread.
    workers->ParallelFor(shards, int64(1) << 40, [&](int64 begin, int64 end) {
      for (int64 s = begin; s < end; ++s) {
        accumulate(g, xd, yd, int(pairs * s / shards), int(pairs * (s + 1) / shards),
                   partial + s * g.sums(), packed + s * g.scratch());
      }
    });
    // The shards' sums added, padding dropped: one unit per (kernel offset, channel).
    float* o = out->flat<float>().data();
    const int64 rows = int64(kernel_) * kernel_ * g.channels;
    workers->ParallelFor(rows, int64(g.filters) * shards * 4, [&](int64 begin, int64 end) {
      for (int64 r = begin; r < end; ++r) {
        const int64 ij = r / g.channels, c = r % g.channels;
        const float* in = partial + (ij * g.padded_channels() + c) * g.padded_filters();
        float* orow = o + r * g.filters;
        std::copy(in, in + g.filters, orow);
        for (int s = 1; s < shards; ++s)
          for (int f = 0; f < g.filters; ++f) orow[f] += in[s * g.sums() + f];
      }
    });
  }

 private:
  int kernel_;
};

}  // namespace

REGISTER_OP("Bf16ConvFilterGrad")
    .Input("input: bfloat16")
    .Input("out_backprop: bfloat16")
    .Attr("kernel_size: int")
    .Output("filter_grad: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      int kernel;
      TF_RETURN_IF_ERROR(c->GetAttr("kernel_size", &kernel));
      tensorflow::shape_inference::ShapeHandle x, dy;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &dy));
      c->set_output(0, c->MakeShape({kernel, kernel, c->Dim(x, 3), c->Dim(dy, 3)}));
      return tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("Bf16ConvFilterGrad").Device(tensorflow::DEVICE_CPU),
                        Bf16ConvFilterGradOp);
