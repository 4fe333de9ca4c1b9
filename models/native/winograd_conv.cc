// A 3x3 stride-1 "same" convolution, channels last, by Winograd's minimal filtering
// F(2x2, 3x3), as TensorFlow ops:
//   WinogradConv3x3(input, filter)             -> the float32 convolution
//                                                 (input_gradient=false), or its input
//                                                 gradient (true: `input` is the output's
//                                                 gradient, `filter` the forward conv's);
//   WinogradConv3x3FilterGrad(input, out_backprop) -> the float32 filter gradient;
//   Bf16WinogradConv3x3(input, filter)         -> the bfloat16 convolution (at the end).
//
// Why: a direct conv does 9 multiply-adds per output pixel and channel pair, and oneDNN's
// already run close to the CPU's float32 and bfloat16 rates (docs/performance.md,
// "Winograd convolutions"). F(2x2, 3x3) computes each 2x2 block of
// outputs from a 4x4 input tile with 16 multiply-adds instead of 36, so the same result
// costs fewer operations.
//
// Each tile of the input is transformed (V = B^T d B, 16 values per channel), the filter
// once (U = G g G^T, 16 values per channel pair), and the 16 positions become 16 matrix
// products over the channels: M[p] = V[p] x U[p]. The output is A^T M A per tile. The
// products run in register blocks of 6 tiles x 64 filters (24 zmm accumulators) over
// blocks of kTileBlock tiles whose transforms stay in the core's L2 cache; each thread
// takes a share of the blocks.
//
// The filter gradient is the same map's adjoint: dg = G^T (sum over tiles of
// V ⊙ A dy A^T) G, so it runs the input transform, a transform of the output's gradient,
// and 16 products over the tiles (register blocks of 6 channels x 64 filters).
//
// In float32 the arithmetic differs from the direct sum only in rounding: the transforms
// add and halve, so results match tf.nn.conv2d's to float32's accuracy (tested per layer
// shape). The bfloat16 op rounds V and U to bfloat16 too, so its error is a few times the
// stock bfloat16 conv's (measured in docs/performance.md, bounded in the tests).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using tensorflow::int64;

constexpr int kRows = 6;   // tiles (forward) or channels (filter gradient) per register block
constexpr int kCols = 64;  // filters per register block: 4 zmm of 16 float32
// Tiles per block: the block's transforms (16 positions x tiles x channels, twice) stay
// near the core's L2; the block sizes measured are in docs/performance.md.
constexpr int kTileBlock = 48;

// A stride-1 "same" 3x3 conv of `in` channels into `out`, over 2x2 output tiles.
struct Geometry {
  int images, height, width, in, out;
  int tile_rows() const { return (height + 1) / 2; }
  int tile_cols() const { return (width + 1) / 2; }
  int64 tiles() const { return int64(images) * tile_rows() * tile_cols(); }
  int64 blocks() const { return (tiles() + kTileBlock - 1) / kTileBlock; }
  int out_blocks() const { return (out + kCols - 1) / kCols; }
  int64 out_padded() const { return int64(out_blocks()) * kCols; }
  int in_blocks() const { return (in + kRows - 1) / kRows; }
  int64 in_padded() const { return int64(in_blocks()) * kRows; }
  int in_pairs() const { return (in + 1) / 2; }
  // Values of the transformed filter, [16][out block][in][64].
  int64 filter_values() const { return 16 * int64(in) * out_padded(); }
  // Values of one block's transformed outputs (or output gradients), [16][tile][out padded].
  int64 out_values() const { return 16 * int64(kTileBlock) * out_padded(); }
};

// Where tile `tile` lies: its image and its top-left output pixel.
struct Tile {
  int image, row, col;
  Tile(const Geometry& g, int64 tile) {
    const int64 per_image = int64(g.tile_rows()) * g.tile_cols();
    image = int(tile / per_image);
    const int rest = int(tile % per_image);
    row = 2 * (rest / g.tile_cols());
    col = 2 * (rest % g.tile_cols());
  }
};

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

// The first `n` of 16 lanes (all of them for n >= 16, none for n <= 0).
inline __mmask16 lanes(int n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

using bf16_bits = uint16_t;

// 16 values as float32 lanes: float32 as is, bfloat16 widened (exactly) on load and rounded
// to nearest even on store.
inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16(const bf16_bits* p, __mmask16 m) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline void store16(float* p, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }
inline void store16(bf16_bits* p, __mmask16 m, __m512 v) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}

// out[0..3] = G t for one column of three taps: t0, (t0 + t1 + t2) / 2, (t0 - t1 + t2) / 2, t2.
inline void filter_column(__m512 t0, __m512 t1, __m512 t2, __m512* out) {
  const __m512 half = _mm512_set1_ps(0.5f), ends = _mm512_add_ps(t0, t2);
  out[0] = t0;
  out[1] = _mm512_mul_ps(half, _mm512_add_ps(ends, t1));
  out[2] = _mm512_mul_ps(half, _mm512_sub_ps(ends, t1));
  out[3] = t2;
}

// values[p] = (G g G^T)[p] for a 3x3 filter tile `tap`, 16 filters a lane.
inline void filter_tile(const __m512 (&tap)[3][3], __m512* values) {
  __m512 rows[4][3];  // G g, by columns
  for (int j = 0; j < 3; ++j) {
    __m512 column[4];
    filter_column(tap[0][j], tap[1][j], tap[2][j], column);
    for (int i = 0; i < 4; ++i) rows[i][j] = column[i];
  }
  for (int i = 0; i < 4; ++i) filter_column(rows[i][0], rows[i][1], rows[i][2], values + 4 * i);
}

// U[p][out block][c][64] = (G g G^T)[p] for input channels [first, last). `filter` is
// [3][3][in][out], or with `input_gradient` the forward conv's [3][3][out][in], taken
// rotated by 180 degrees with its channel axes swapped (the input gradient is a "same"
// conv of the output's gradient with that filter).
void transform_filter(const Geometry& g, const float* filter, bool input_gradient, float* u,
                      int64 first, int64 last) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64 c = first; c < last; ++c) {
    for (int f0 = 0; f0 < g.out; f0 += 16) {
      const __mmask16 m = lanes(g.out - f0);
      __m512 tap[3][3];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
          if (!input_gradient) {
            tap[i][j] = load16(filter + ((int64(i) * 3 + j) * g.in + c) * g.out + f0, m);
          } else {
            const float* base = filter + (int64(2 - i) * 3 + (2 - j)) * g.out * g.in + c;
            const __m512i at = _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32(f0), lane),
                                                  _mm512_set1_epi32(g.in));
            tap[i][j] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, at, base, 4);
          }
        }
      __m512 values[16];
      filter_tile(tap, values);
      for (int p = 0; p < 16; ++p) {
        float* to = u + ((p * g.out_blocks() + f0 / kCols) * g.in + c) * kCols + f0 % kCols;
        _mm512_storeu_ps(to, _mm512_maskz_mov_ps(m, values[p]));
      }
    }
  }
}

// d0 - d2, d1 + d2, d2 - d1, d1 - d3: B^T applied to four values along one axis.
inline void input_column(const __m512* d, __m512* out) {
  out[0] = _mm512_sub_ps(d[0], d[2]);
  out[1] = _mm512_add_ps(d[1], d[2]);
  out[2] = _mm512_sub_ps(d[2], d[1]);
  out[3] = _mm512_sub_ps(d[1], d[3]);
}

// V[p][t][c] = (B^T d B)[p] for the tiles [first, first + count) of one block, rows `row`
// values apart; rows past `count` are zero. The 4x4 input tile of output tile (r, s)
// starts at input pixel (r - 1, s - 1): pixels off the map are the padding's zeros.
template <typename T>
void transform_input(const Geometry& g, const T* x, int64 first, int count, T* v, int64 row) {
  const int64 position = int64(kTileBlock) * row;
  for (int t = 0; t < kTileBlock; ++t) {
    if (t >= count) {
      for (int p = 0; p < 16; ++p) std::memset(v + p * position + t * row, 0, g.in * sizeof(T));
      continue;
    }
    const Tile tile(g, first + t);
    const T* image = x + int64(tile.image) * g.height * g.width * g.in;
    for (int c0 = 0; c0 < g.in; c0 += 16) {
      const __mmask16 m = lanes(g.in - c0);
      __m512 d[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          const int r = tile.row - 1 + i, s = tile.col - 1 + j;
          const bool inside = r >= 0 && r < g.height && s >= 0 && s < g.width;
          d[j][i] = inside ? load16(image + (int64(r) * g.width + s) * g.in + c0, m)
                           : _mm512_setzero_ps();
        }
      __m512 rows[4][4];  // B^T d, by columns: rows[j] is column j
      for (int j = 0; j < 4; ++j) input_column(d[j], rows[j]);
      for (int i = 0; i < 4; ++i) {
        const __m512 across[4] = {rows[0][i], rows[1][i], rows[2][i], rows[3][i]};
        __m512 values[4];
        input_column(across, values);
        for (int j = 0; j < 4; ++j)
          store16(v + (i * 4 + j) * position + t * row + c0, m, values[j]);
      }
    }
  }
}

// m[0..6)[0..16 kV) = sum over `depth` of v[i][c] * u[c][..]: 6 rows of v, `v_row` apart.
template <int kV>
__attribute__((noinline)) void product_block(const float* v, int64 v_row, const float* u,
                                             int depth, float* m, int64 m_row) {
  __m512 acc[kRows][kV];
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < kV; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int c = 0; c < depth; ++c) {
    __m512 b[kV];
    for (int j = 0; j < kV; ++j) b[j] = _mm512_loadu_ps(u + int64(c) * kCols + 16 * j);
    for (int i = 0; i < kRows; ++i) {
      const __m512 a = _mm512_set1_ps(v[i * v_row + c]);
      for (int j = 0; j < kV; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < kV; ++j) _mm512_storeu_ps(m + i * m_row + 16 * j, acc[i][j]);
}

// s[0..6)[..] += sum over `tiles` of v[t][0..6) * z[t][..]: the filter gradient's block.
template <int kV>
__attribute__((noinline)) void product_over_tiles(const float* v, int64 v_row, const float* z,
                                                  int64 z_row, int tiles, float* s,
                                                  int64 s_row) {
  __m512 acc[kRows][kV];
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < kV; ++j) acc[i][j] = _mm512_loadu_ps(s + i * s_row + 16 * j);
  for (int t = 0; t < tiles; ++t) {
    __m512 b[kV];
    for (int j = 0; j < kV; ++j) b[j] = _mm512_loadu_ps(z + t * z_row + 16 * j);
    for (int i = 0; i < kRows; ++i) {
      const __m512 a = _mm512_set1_ps(v[t * v_row + i]);
      for (int j = 0; j < kV; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < kV; ++j) _mm512_storeu_ps(s + i * s_row + 16 * j, acc[i][j]);
}

// `block` instantiated for the 1-4 vectors of filters left in output block `ob`.
template <template <int> class Call, typename... Args>
void by_width(const Geometry& g, int ob, Args... args) {
  switch (std::min(kCols, g.out - ob * kCols + 15) / 16) {
    case 1: return Call<1>::run(args...);
    case 2: return Call<2>::run(args...);
    case 3: return Call<3>::run(args...);
    default: return Call<4>::run(args...);
  }
}
template <int kV>
struct ProductBlock {
  template <typename... Args>
  static void run(Args... args) { product_block<kV>(args...); }
};
template <int kV>
struct ProductOverTiles {
  template <typename... Args>
  static void run(Args... args) { product_over_tiles<kV>(args...); }
};

// M[p] = V[p] x U[p] for one block: V [16][tile][in], M [16][tile][out padded].
void multiply(const Geometry& g, const float* v, const float* u, float* m) {
  const int64 out = g.out_padded();
  for (int p = 0; p < 16; ++p)
    for (int ob = 0; ob < g.out_blocks(); ++ob) {
      const float* up = u + (int64(p) * g.out_blocks() + ob) * g.in * kCols;
      for (int t = 0; t < kTileBlock; t += kRows)
        by_width<ProductBlock>(g, ob, v + (int64(p) * kTileBlock + t) * g.in, int64(g.in), up,
                               g.in, m + (int64(p) * kTileBlock + t) * out + ob * kCols, out);
    }
}

// a0 + a1 + a2, a1 - a2 - a3: A^T applied to four values along one axis.
inline void output_column(const __m512* a, __m512* out) {
  out[0] = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), a[2]);
  out[1] = _mm512_sub_ps(_mm512_sub_ps(a[1], a[2]), a[3]);
}

// y's 2x2 outputs of the tiles [first, first + count) from M: A^T M A; the outputs past
// the map's edge (an odd height or width) are dropped.
template <typename T>
void transform_output(const Geometry& g, const float* m, int64 first, int count, T* y) {
  const int64 out = g.out_padded(), position = int64(kTileBlock) * out;
  for (int t = 0; t < count; ++t) {
    const Tile tile(g, first + t);
    T* image = y + int64(tile.image) * g.height * g.width * g.out;
    for (int f0 = 0; f0 < g.out; f0 += 16) {
      const __mmask16 lane = lanes(g.out - f0);
      __m512 columns[4][4];  // columns[j][i] = M[i][j]
      for (int p = 0; p < 16; ++p)
        columns[p % 4][p / 4] = _mm512_loadu_ps(m + p * position + t * out + f0);
      __m512 rows[4][2];  // A^T M, by columns
      for (int j = 0; j < 4; ++j) output_column(columns[j], rows[j]);
      for (int i = 0; i < 2 && tile.row + i < g.height; ++i) {
        const __m512 across[4] = {rows[0][i], rows[1][i], rows[2][i], rows[3][i]};
        __m512 values[2];
        output_column(across, values);
        for (int j = 0; j < 2 && tile.col + j < g.width; ++j)
          store16(image + (int64(tile.row + i) * g.width + tile.col + j) * g.out + f0, lane,
                  values[j]);
      }
    }
  }
}

// z0 = d0, d0 + d1, d0 - d1, -d1: A applied to two values along one axis.
inline void gradient_column(__m512 d0, __m512 d1, __m512* out) {
  out[0] = d0;
  out[1] = _mm512_add_ps(d0, d1);
  out[2] = _mm512_sub_ps(d0, d1);
  out[3] = _mm512_sub_ps(_mm512_setzero_ps(), d1);
}

// Z[p][t][f] = (A dy A^T)[p] for the tiles [first, first + count): the output gradient's
// 2x2 block per tile, zero off the map and past `count`.
void transform_gradient(const Geometry& g, const float* dy, int64 first, int count,
                        float* z) {
  const int64 out = g.out_padded(), position = int64(kTileBlock) * out;
  for (int t = 0; t < kTileBlock; ++t) {
    if (t >= count) {
      for (int p = 0; p < 16; ++p) std::memset(z + p * position + t * out, 0, out * 4);
      continue;
    }
    const Tile tile(g, first + t);
    const float* image = dy + int64(tile.image) * g.height * g.width * g.out;
    for (int f0 = 0; f0 < out; f0 += 16) {
      const __mmask16 m = lanes(g.out - f0);
      __m512 d[2][2];
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) {
          const int r = tile.row + i, s = tile.col + j;
          d[i][j] = r < g.height && s < g.width
                        ? load16(image + (int64(r) * g.width + s) * g.out + f0, m)
                        : _mm512_setzero_ps();
        }
      __m512 rows[2][4];  // A dy, by columns
      for (int j = 0; j < 2; ++j) gradient_column(d[0][j], d[1][j], rows[j]);
      for (int i = 0; i < 4; ++i) {
        __m512 values[4];
        gradient_column(rows[0][i], rows[1][i], values);
        for (int j = 0; j < 4; ++j)
          _mm512_storeu_ps(z + (i * 4 + j) * position + t * out + f0, values[j]);
      }
    }
  }
}

// S[p] += V[p]^T x Z[p] for one block: V [16][tile][in padded], Z [16][tile][out padded],
// S [16][in padded][out padded].
void multiply_over_tiles(const Geometry& g, const float* v, const float* z, float* s) {
  const int64 out = g.out_padded(), in = g.in_padded();
  for (int p = 0; p < 16; ++p)
    for (int ob = 0; ob < g.out_blocks(); ++ob)
      for (int ib = 0; ib < g.in_blocks(); ++ib)
        by_width<ProductOverTiles>(g, ob, v + int64(p) * kTileBlock * in + ib * kRows, in,
                                   z + int64(p) * kTileBlock * out + ob * kCols, out,
                                   kTileBlock, s + (int64(p) * in + ib * kRows) * out + ob * kCols,
                                   out);
}

// (t0 + (t1 + t2) / 2, (t1 - t2) / 2, (t1 + t2) / 2 + t3): G^T applied along one axis.
inline void filter_gradient_column(const __m512* t, __m512* out) {
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 sum = _mm512_mul_ps(half, _mm512_add_ps(t[1], t[2]));
  out[0] = _mm512_add_ps(t[0], sum);
  out[1] = _mm512_mul_ps(half, _mm512_sub_ps(t[1], t[2]));
  out[2] = _mm512_add_ps(sum, t[3]);
}

// dW[i][j][c][f] for channels [first, last) = G^T (the shards' S summed) G.
void finish_filter_gradient(const Geometry& g, const float* sums, int shards, int64 shard,
                            float* dw, int64 first, int64 last) {
  const int64 out = g.out_padded(), in = g.in_padded();
  for (int64 c = first; c < last; ++c)
    for (int f0 = 0; f0 < g.out; f0 += 16) {
      __m512 columns[4][4];  // columns[j][i] = S[i][j]
      for (int p = 0; p < 16; ++p) {
        __m512 total = _mm512_setzero_ps();
        for (int s = 0; s < shards; ++s)
          total = _mm512_add_ps(total, _mm512_loadu_ps(sums + s * shard + (p * in + c) * out + f0));
        columns[p % 4][p / 4] = total;
      }
      __m512 rows[4][3];  // G^T S, by columns
      for (int j = 0; j < 4; ++j) filter_gradient_column(columns[j], rows[j]);
      for (int i = 0; i < 3; ++i) {
        const __m512 across[4] = {rows[0][i], rows[1][i], rows[2][i], rows[3][i]};
        __m512 values[3];
        filter_gradient_column(across, values);
        for (int j = 0; j < 3; ++j)
          _mm512_mask_storeu_ps(dw + ((int64(i) * 3 + j) * g.in + c) * g.out + f0,
                                lanes(g.out - f0), values[j]);
      }
    }
}


// The bfloat16 forward conv: the same transforms, with V and U rounded to bfloat16 and the
// products as AVX512-BF16 dot products (vdpbf16ps), which multiply pairs of bfloat16 along
// the contraction and add both into one float32 lane. So the channels go in pairs:
// V [16][tile][2 x pairs] (a tile's channel pair side by side) and
// U [16][out block][pair][64][2].

// U for channel pairs [first, last): G g G^T in float32, rounded once.
void transform_filter_pairs(const Geometry& g, const bf16_bits* filter, bf16_bits* u,
                            int64 first, int64 last) {
  // Element 2i of a packed pair row is the even channel's filter i, 2i + 1 the odd one's.
  alignas(64) int16_t order[32];
  for (int i = 0; i < 16; ++i) order[2 * i] = i, order[2 * i + 1] = 16 + i;
  const __m512i interleave = _mm512_load_si512(order);
  for (int64 q = first; q < last; ++q)
    for (int f0 = 0; f0 < g.out; f0 += 16) {
      const __mmask16 m = lanes(g.out - f0);
      __m512 values[2][16];
      for (int h = 0; h < 2; ++h) {
        const int64 c = 2 * q + h;
        __m512 tap[3][3];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j)
            tap[i][j] = c < g.in ? load16(filter + ((int64(i) * 3 + j) * g.in + c) * g.out + f0, m)
                                 : _mm512_setzero_ps();
        filter_tile(tap, values[h]);
      }
      for (int p = 0; p < 16; ++p) {
        const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(values[1][p], values[0][p]);
        const int64 row = (int64(p) * g.out_blocks() + f0 / kCols) * g.in_pairs() + q;
        bf16_bits* to = u + row * 2 * kCols + 2 * (f0 % kCols);
        _mm512_storeu_si512(to, _mm512_permutexvar_epi16(interleave, both));
      }
    }
}

// m[0..6)[0..16 kV) = sum over `pairs` channel pairs of v[i][pair] . u[pair][..].
template <int kV>
__attribute__((noinline)) void pair_product_block(const bf16_bits* v, int64 v_row,
                                                  const bf16_bits* u, int pairs, float* m,
                                                  int64 m_row) {
  __m512 acc[kRows][kV];
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < kV; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int q = 0; q < pairs; ++q) {
    __m512bh b[kV];
    for (int j = 0; j < kV; ++j)
      b[j] = (__m512bh)_mm512_loadu_si512(u + int64(q) * 2 * kCols + 32 * j);
    for (int i = 0; i < kRows; ++i) {
      int32_t pair;
      std::memcpy(&pair, v + i * v_row + 2 * q, sizeof pair);
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      for (int j = 0; j < kV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], a, b[j]);
    }
  }
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < kV; ++j) _mm512_storeu_ps(m + i * m_row + 16 * j, acc[i][j]);
}
template <int kV>
struct PairProductBlock {
  template <typename... Args>
  static void run(Args... args) { pair_product_block<kV>(args...); }
};

// M[p] = V[p] x U[p] for one block, in channel pairs.
void multiply_pairs(const Geometry& g, const bf16_bits* v, const bf16_bits* u, float* m) {
  const int64 out = g.out_padded(), row = 2 * int64(g.in_pairs());
  for (int p = 0; p < 16; ++p)
    for (int ob = 0; ob < g.out_blocks(); ++ob) {
      const bf16_bits* up = u + (int64(p) * g.out_blocks() + ob) * g.in_pairs() * 2 * kCols;
      for (int t = 0; t < kTileBlock; t += kRows)
        by_width<PairProductBlock>(g, ob, v + (int64(p) * kTileBlock + t) * row, row, up,
                                   g.in_pairs(), m + (int64(p) * kTileBlock + t) * out + ob * kCols,
                                   out);
    }
}

#pragma GCC pop_options

tensorflow::Status check_nhwc(const tensorflow::Tensor& a, const tensorflow::Tensor& b,
                              const char* names) {
  if (!__builtin_cpu_supports("avx512f"))
    return tensorflow::errors::Unimplemented(
        "the Winograd conv ops need a CPU with AVX-512 (avx512f in /proc/cpuinfo); use "
        "tf.nn.conv2d elsewhere");
  if (a.dims() != 4 || b.dims() != 4)
    return tensorflow::errors::InvalidArgument(names, " must both be rank 4 (NHWC and ",
                                               "HWIO), got ranks ", a.dims(), " and ",
                                               b.dims());
  return tensorflow::OkStatus();
}

// Threads of the CPU device, and how many shards of `blocks` to give them.
int shards_for(tensorflow::OpKernelContext* context, int64 blocks) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
  return int(std::max<int64>(1, std::min<int64>(workers->NumThreads(), blocks)));
}

// A forward op's filter: 3x3, its axis `in_axis` (2 for the conv; 3 for the input
// gradient, which reads the forward filter's outputs as its inputs) matching x's channels.
tensorflow::Status check_filter(const tensorflow::Tensor& x, const tensorflow::Tensor& filter,
                                int in_axis) {
  if (filter.dim_size(0) == 3 && filter.dim_size(1) == 3 &&
      filter.dim_size(in_axis) == x.dim_size(3))
    return tensorflow::OkStatus();
  return tensorflow::errors::InvalidArgument(
      "expected a 3x3 filter whose ", in_axis == 3 ? "output" : "input",
      " channels match the input's ", x.dim_size(3), ", got filter ",
      filter.shape().DebugString());
}

// block(shard, first tile, tile count) over every block of tiles, each of `shards` threads
// taking a contiguous share (one unit per shard: a cost this high makes ParallelFor give
// each its own thread).
template <typename Block>
void over_tile_blocks(tensorflow::OpKernelContext* context, const Geometry& g, int shards,
                      Block block) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
  workers->ParallelFor(shards, int64(1) << 40, [&](int64 begin, int64 end) {
    for (int64 s = begin; s < end; ++s)
      for (int64 b = g.blocks() * s / shards; b < g.blocks() * (s + 1) / shards; ++b) {
        const int64 first = b * kTileBlock;
        block(s, first, int(std::min<int64>(kTileBlock, g.tiles() - first)));
      }
  });
}

class WinogradConv3x3Op : public tensorflow::OpKernel {
 public:
  explicit WinogradConv3x3Op(tensorflow::OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("input_gradient", &input_gradient_));
  }

  void Compute(tensorflow::OpKernelContext* context) override {
    const tensorflow::Tensor& x = context->input(0);
    const tensorflow::Tensor& filter = context->input(1);
    OP_REQUIRES_OK(context, check_nhwc(x, filter, "input and filter"));
    // The forward filter is [3][3][in][out]; the input gradient's input is the output's
    // gradient, so it reads the forward filter's out as its in.
    const int in_axis = input_gradient_ ? 3 : 2;
    OP_REQUIRES_OK(context, check_filter(x, filter, in_axis));
    const Geometry g{int(x.dim_size(0)), int(x.dim_size(1)), int(x.dim_size(2)),
                     int(x.dim_size(3)), int(filter.dim_size(5 - in_axis))};
    tensorflow::Tensor* y = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, {g.images, g.height, g.width, g.out}, &y));
    if (g.tiles() == 0 || g.out == 0) return;
    auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
    // From TensorFlow's allocator, which keeps freed buffers (no fresh pages per call).
    tensorflow::Tensor u_buffer, scratch;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT,
                                                   {g.filter_values()}, &u_buffer));
    float* u = u_buffer.flat<float>().data();
    std::memset(u, 0, g.filter_values() * sizeof(float));  // the padded filters stay 0
    const float* w = filter.flat<float>().data();
    workers->ParallelFor(g.in, int64(g.out) * 200, [&](int64 first, int64 last) {
      transform_filter(g, w, input_gradient_, u, first, last);
    });
    const int shards = shards_for(context, g.blocks());
    const int64 shard = 16 * int64(kTileBlock) * g.in + g.out_values();
    OP_REQUIRES_OK(context,
                   context->allocate_temp(tensorflow::DT_FLOAT, {shards * shard}, &scratch));
    const float* xd = x.flat<float>().data();
    float* yd = y->flat<float>().data();
    float* buffers = scratch.flat<float>().data();
    over_tile_blocks(context, g, shards, [&](int64 s, int64 first, int count) {
      float* v = buffers + s * shard;
      float* m = v + 16 * int64(kTileBlock) * g.in;
      transform_input(g, xd, first, count, v, g.in);
      multiply(g, v, u, m);
      transform_output(g, m, first, count, yd);
    });
  }

 private:
  bool input_gradient_;
};

class WinogradConv3x3FilterGradOp : public tensorflow::OpKernel {
 public:
  explicit WinogradConv3x3FilterGradOp(tensorflow::OpKernelConstruction* context)
      : OpKernel(context) {}

  void Compute(tensorflow::OpKernelContext* context) override {
    const tensorflow::Tensor& x = context->input(0);
    const tensorflow::Tensor& dy = context->input(1);
    OP_REQUIRES_OK(context, check_nhwc(x, dy, "input and out_backprop"));
    for (int d = 0; d < 3; ++d)
      OP_REQUIRES(context, x.dim_size(d) == dy.dim_size(d),
                  tensorflow::errors::InvalidArgument(
                      "a stride-1 'same' conv keeps N, H and W: input ",
                      x.shape().DebugString(), " against out_backprop ",
                      dy.shape().DebugString()));
    const Geometry g{int(x.dim_size(0)), int(x.dim_size(1)), int(x.dim_size(2)),
                     int(x.dim_size(3)), int(dy.dim_size(3))};
    tensorflow::Tensor* dw = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, {3, 3, g.in, g.out}, &dw));
    if (g.in == 0 || g.out == 0) return;
    const int shards = shards_for(context, g.blocks());
    const int64 sums = 16 * g.in_padded() * g.out_padded();
    const int64 inputs = 16 * int64(kTileBlock) * g.in_padded();
    const int64 shard = sums + inputs + g.out_values();
    tensorflow::Tensor scratch;
    OP_REQUIRES_OK(context,
                   context->allocate_temp(tensorflow::DT_FLOAT, {shards * shard}, &scratch));
    float* buffers = scratch.flat<float>().data();
    // The sums start at 0, and the padded channels of V are never written: they stay 0.
    std::memset(buffers, 0, shards * shard * sizeof(float));
    const float* xd = x.flat<float>().data();
    const float* yd = dy.flat<float>().data();
    over_tile_blocks(context, g, shards, [&](int64 s, int64 first, int count) {
      float* partial = buffers + s * shard;
      float* v = partial + sums;
      float* z = v + inputs;
      transform_input(g, xd, first, count, v, g.in_padded());
      transform_gradient(g, yd, first, count, z);
      multiply_over_tiles(g, v, z, partial);
    });
    float* out = dw->flat<float>().data();
    auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
    workers->ParallelFor(g.in, int64(g.out) * 100 * shards, [&](int64 first, int64 last) {
      finish_filter_gradient(g, buffers, shards, shard, out, first, last);
    });
  }
};


class Bf16WinogradConv3x3Op : public tensorflow::OpKernel {
 public:
  explicit Bf16WinogradConv3x3Op(tensorflow::OpKernelConstruction* context)
      : OpKernel(context) {}

  void Compute(tensorflow::OpKernelContext* context) override {
    OP_REQUIRES(context, __builtin_cpu_supports("avx512bf16"),
                tensorflow::errors::Unimplemented(
                    "Bf16WinogradConv3x3 needs a CPU with AVX512-BF16 (avx512_bf16 in "
                    "/proc/cpuinfo); use tf.nn.conv2d elsewhere"));
    const tensorflow::Tensor& x = context->input(0);
    const tensorflow::Tensor& filter = context->input(1);
    OP_REQUIRES_OK(context, check_nhwc(x, filter, "input and filter"));
    OP_REQUIRES_OK(context, check_filter(x, filter, 2));
    const Geometry g{int(x.dim_size(0)), int(x.dim_size(1)), int(x.dim_size(2)),
                     int(x.dim_size(3)), int(filter.dim_size(3))};
    tensorflow::Tensor* y = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, {g.images, g.height, g.width, g.out}, &y));
    if (g.tiles() == 0 || g.out == 0) return;
    auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
    const int64 row = 2 * int64(g.in_pairs());
    tensorflow::Tensor u_buffer, scratch;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_UINT16,
                                                   {16 * row * g.out_padded()}, &u_buffer));
    auto* u = u_buffer.flat<uint16_t>().data();
    const auto* w = reinterpret_cast<const bf16_bits*>(filter.tensor_data().data());
    workers->ParallelFor(g.in_pairs(), int64(g.out) * 400, [&](int64 first, int64 last) {
      transform_filter_pairs(g, w, u, first, last);
    });
    const int shards = shards_for(context, g.blocks());
    // V in bfloat16 (an odd channel count's last pair padded with a zero), then M in float32.
    const int64 v_values = 16 * int64(kTileBlock) * row;
    const int64 shard_bytes = v_values * 2 + g.out_values() * 4;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_UINT8,
                                                   {shards * shard_bytes}, &scratch));
    auto* bytes = scratch.flat<uint8_t>().data();
    std::memset(bytes, 0, shards * shard_bytes);
    const auto* xd = reinterpret_cast<const bf16_bits*>(x.tensor_data().data());
    auto* yd = reinterpret_cast<bf16_bits*>(const_cast<char*>(y->tensor_data().data()));
    over_tile_blocks(context, g, shards, [&](int64 s, int64 first, int count) {
      auto* v = reinterpret_cast<bf16_bits*>(bytes + s * shard_bytes);
      auto* m = reinterpret_cast<float*>(bytes + s * shard_bytes + v_values * 2);
      transform_input(g, xd, first, count, v, row);
      multiply_pairs(g, v, u, m);
      transform_output(g, m, first, count, yd);
    });
  }
};

// The ops' shapes: NHWC input and 3x3 HWIO filter -> NHWC output whose channels are the
// filter's axis `channels` (3, its outputs; 2, its inputs, for the input gradient).
tensorflow::Status conv_shape(tensorflow::shape_inference::InferenceContext* c, int channels) {
  tensorflow::shape_inference::ShapeHandle x, filter;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &filter));
  c->set_output(0, c->MakeShape({c->Dim(x, 0), c->Dim(x, 1), c->Dim(x, 2),
                                 c->Dim(filter, channels)}));
  return tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("WinogradConv3x3")
    .Input("input: float")
    .Input("filter: float")
    .Attr("input_gradient: bool = false")
    .Output("output: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      bool input_gradient;
      TF_RETURN_IF_ERROR(c->GetAttr("input_gradient", &input_gradient));
      return conv_shape(c, input_gradient ? 2 : 3);
    });

REGISTER_KERNEL_BUILDER(Name("WinogradConv3x3").Device(tensorflow::DEVICE_CPU),
                        WinogradConv3x3Op);

REGISTER_OP("WinogradConv3x3FilterGrad")
    .Input("input: float")
    .Input("out_backprop: float")
    .Output("filter_grad: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle x, dy;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &dy));
      c->set_output(0, c->MakeShape({3, 3, c->Dim(x, 3), c->Dim(dy, 3)}));
      return tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("WinogradConv3x3FilterGrad").Device(tensorflow::DEVICE_CPU),
                        WinogradConv3x3FilterGradOp);

REGISTER_OP("Bf16WinogradConv3x3")
    .Input("input: bfloat16")
    .Input("filter: bfloat16")
    .Output("output: bfloat16")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) { return conv_shape(c, 3); });

REGISTER_KERNEL_BUILDER(Name("Bf16WinogradConv3x3").Device(tensorflow::DEVICE_CPU),
                        Bf16WinogradConv3x3Op);
