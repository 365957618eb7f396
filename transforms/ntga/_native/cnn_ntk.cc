// The NTGA CNN surrogate's NTK and its gradient, as XLA FFI custom calls
// for the CPU (float32). Same formulas as `transforms/ntga/_cnn_ntk.py` (see its
// module docstring); this file only organises them for the CPU:
//
// * The x1 images are packed in tiles of kLanes images, image index minor:
//   every per-pair quantity is an array [position][kLanes] of Vec (one
//   AVX-512 register), 64-byte aligned.
// * Per x1 tile, the first conv layer runs for a block of x2 images
//   together (Layer1Block: each x1 row is read from L1), then one (x2 image
//   j, x1 tile) pair of loops runs the other layers with the pair's arrays
//   in L1/L2: nothing per pair is written to memory.
// * 5 x 5 windows at stride 2 (the default architecture) are summed with
//   pair sums shared between neighbouring windows (Box5S2, Box5S2T); other
//   filters and strides take the generic loops.
// * Threads (OpenMP) take blocks of x2 images (the tile loop outside the
//   block's images reuses each packed x1 tile from L2); each writes only its
//   own rows of the outputs, so no reductions across threads.
// * The backward pass recomputes the forward for a tile, keeps each ReLU
//   layer's q, t, r, dot, 1/r (the last layer's backward runs inside its
//   forward: its output cotangents are known), and propagates the
//   cotangent back through transposed window sums (gathered: each entry
//   written once, after the ReLU's backward at that position) to the first
//   layer's image pixels, where it is contracted with x1 as it is formed,
//   and summed over the lanes once per x2 image.
// * On Zen 4 a 512-bit store costs about as much of the two FMA pipes as
//   two FMAs (measured: 4 stores + 8 FMAs take 15 cycles, 8 FMAs alone 8),
//   and the ReLU is bound by those pipes: intermediate maps are not stored
//   where the next step can take them from registers (the last ReLU into
//   Flatten's means, the ReLU backward into the window transposes).
// * With 5 x 5 windows at stride 2, the gradient takes two x1 tiles and two
//   x2 images down to the first layer, then contracts the four pairs in one
//   sweep over both images' accumulators (`ContractGroup`), and the first
//   layer's forward keeps up to four (tile, image) pairs in registers
//   (`Layer1RowGroup`).
//
// Per-image quantities (the self-variances v of each conv layer) are
// inputs: they are computed, and differentiated, in JAX.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
// Multiplications by these replace divisions by 2 pi and 4 pi (vector
// division is several times the cost of a multiply).
constexpr float kInvTwoPi = 0.15915494309189535f;
constexpr float kInvFourPi = 0.07957747154594767f;
constexpr float kRTol = 1e-15f;
constexpr float kTiny = 1.17549435e-38f;  // float32 tiny, as jnp.finfo

// One tile's lanes as a GCC / Clang vector: a single AVX-512 register (two
// AVX2 ones elsewhere). Written out, the per-position work keeps its
// accumulators in registers; `#pragma omp simd` loops over float[kLanes]
// arrays went through the stack (a 64-byte store reloaded as two 32-byte
// halves stalls store forwarding).
typedef float Vec __attribute__((vector_size(kLanes * 4)));
typedef float VecU __attribute__((vector_size(kLanes * 4), aligned(4)));

inline Vec Load(const float* p) { return *reinterpret_cast<const VecU*>(p); }
inline void Store(float* p, Vec v) { *reinterpret_cast<VecU*>(p) = v; }
inline Vec Splat(float x) { return Vec{} + x; }
// a > b ? a : b and a < b ? a : b. Written so, GCC emits a compare and a
// blend; vmaxps / vminps compute exactly that (b when either is NaN) in one
// instruction.
#if defined(__AVX512F__)
inline Vec Max(Vec a, Vec b) {
  return reinterpret_cast<Vec>(_mm512_max_ps(reinterpret_cast<__m512>(a),
                                             reinterpret_cast<__m512>(b)));
}
inline Vec Min(Vec a, Vec b) {
  return reinterpret_cast<Vec>(_mm512_min_ps(reinterpret_cast<__m512>(a),
                                             reinterpret_cast<__m512>(b)));
}
// |a|: the sign bit cleared (one AND).
inline Vec Abs(Vec a) {
  return reinterpret_cast<Vec>(_mm512_abs_ps(reinterpret_cast<__m512>(a)));
}
#else
inline Vec Max(Vec a, Vec b) { return a > b ? a : b; }
inline Vec Min(Vec a, Vec b) { return a < b ? a : b; }
inline Vec Abs(Vec a) { return a < 0.f ? -a : a; }
#endif

// 1 / sqrt(x), x > 0: the hardware's 14-bit estimate, which the ReLU
// refines by one Newton step (relative error ~3e-9 before rounding, a few
// ulp after), instead of vsqrtps and vdivps, which issue once per ~12
// cycles on 512-bit vectors. Exact where there is no AVX-512 (the Newton
// step then changes nothing).
inline Vec RSqrt14(Vec x) {
#if defined(__AVX512F__)
  return reinterpret_cast<Vec>(_mm512_rsqrt14_ps(reinterpret_cast<__m512>(x)));
#else
  Vec y;
  for (int k = 0; k < kLanes; ++k) y[k] = 1.f / std::sqrt(x[k]);
  return y;
#endif
}

// 64-byte aligned storage: lanes then never straddle cache lines.
template <typename T>
struct Aligned {
  using value_type = T;
  Aligned() = default;
  template <typename U>
  Aligned(const Aligned<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const Aligned<U>&) const { return true; }
  template <typename U>
  bool operator!=(const Aligned<U>&) const { return false; }
};
using Floats = std::vector<float, Aligned<float>>;

// For a strided window sum out[o] = sum_{0 <= d < k} in[s o + d - lo]: per
// input index i, the outputs o in [lo_o[i], hi_o[i]] whose window holds it
// (the transposed sum gathers them; an empty range has lo_o > hi_o).
void WindowTranspose(int n_in, int n_out, int k, int s, int lo,
                     std::vector<int>* lo_o, std::vector<int>* hi_o) {
  for (int i = 0; i < n_in; ++i) {
    int a = n_out, b = -1;
    for (int o = 0; o < n_out; ++o)
      if (i + lo - s * o >= 0 && i + lo - s * o < k) {
        a = std::min(a, o);
        b = std::max(b, o);
      }
    lo_o->push_back(a);
    hi_o->push_back(b);
  }
}

struct Geometry {
  int H, W, C, kh, kw, s, depth, num_dense;
  float a, b;                    // W_std^2, b_std^2
  int Hp, Wp, lo_h, lo_w;        // first layer's zero-padded input map
  std::vector<int> hl, wl;       // map sizes after conv layer l
  std::vector<int> lo_hl, lo_wl; // SAME pads of conv layer l (l >= 1)
  std::vector<int> voff;         // offsets of layer l in the (n, S) arrays
  int S;
  float dense_gn, dense_gt;      // d K / d (mean n, mean t) of the Dense part
  // Transposed windows of conv layer l (see WindowTranspose), over its
  // input's rows and columns; for l = 0 over the padded map's.
  std::vector<std::vector<int>> th_lo, th_hi, tw_lo, tw_hi;
};

void SamePads(int size, int k, int s, int* out, int* lo) {
  *out = (size + s - 1) / s;
  int total = std::max((*out - 1) * s + k - size, 0);
  *lo = total / 2;
}

Geometry MakeGeometry(int H, int W, int C, int64_t depth, int64_t kh,
                      int64_t kw, int64_t s, float a, float b,
                      int64_t num_dense) {
  Geometry g;
  g.H = H; g.W = W; g.C = C; g.kh = kh; g.kw = kw; g.s = s;
  g.depth = depth; g.num_dense = num_dense; g.a = a; g.b = b;
  int h = H, w = W;
  g.S = 0;
  for (int l = 0; l < g.depth; ++l) {
    int oh, ow, lh, lw;
    SamePads(h, g.kh, g.s, &oh, &lh);
    SamePads(w, g.kw, g.s, &ow, &lw);
    g.lo_hl.push_back(lh);
    g.lo_wl.push_back(lw);
    g.hl.push_back(oh);
    g.wl.push_back(ow);
    g.voff.push_back(g.S);
    g.S += oh * ow;
    h = oh; w = ow;
  }
  g.lo_h = g.lo_hl[0];
  g.lo_w = g.lo_wl[0];
  // Padded map: every window of the first conv lies inside it.
  g.Hp = std::max(H + g.lo_h, (g.hl[0] - 1) * g.s + g.kh);
  g.Wp = std::max(W + g.lo_w, (g.wl[0] - 1) * g.s + g.kw);
  // Dense layers: n' = a n + b, t' = n' + a t, num_dense times; linear in
  // (n, t), so K's derivatives w.r.t. the Flatten means are constants.
  float gn = 0.f, gt = 1.f;
  for (int l = 0; l < g.num_dense; ++l) {
    float gn_in = g.a * (gn + gt);
    float gt_in = g.a * gt;
    gn = gn_in; gt = gt_in;
  }
  g.dense_gn = gn;
  g.dense_gt = gt;
  g.th_lo.resize(g.depth); g.th_hi.resize(g.depth);
  g.tw_lo.resize(g.depth); g.tw_hi.resize(g.depth);
  for (int l = 0; l < g.depth; ++l) {
    const int hi = l == 0 ? g.Hp : g.hl[l - 1];
    const int wi = l == 0 ? g.Wp : g.wl[l - 1];
    const int lo_h = l == 0 ? 0 : g.lo_hl[l];
    const int lo_w = l == 0 ? 0 : g.lo_wl[l];
    WindowTranspose(hi, g.hl[l], g.kh, g.s, lo_h, &g.th_lo[l], &g.th_hi[l]);
    WindowTranspose(wi, g.wl[l], g.kw, g.s, lo_w, &g.tw_lo[l], &g.tw_hi[l]);
  }
  return g;
}

// asin(z) / (2 pi) = z Q(z^2) for 0 <= z <= 1 / sqrt(2), Q of degree 7
// fitted for uniform absolute error (1.4e-8 turns, float32 rounding at
// 0.125 turns), by Horner's rule. The ReLU takes acos from it through the
// smaller of cos theta and sin theta, so no square root of its own is
// needed.
inline Vec AsinTurnsQ(Vec u) {
  Vec p = Splat(2.0779819463e-02f);
  p = p * u - 2.0517343658e-02f;
  p = p * u + 1.6611153765e-02f;
  p = p * u + 9.3051074311e-04f;
  p = p * u + 7.7472055906e-03f;
  p = p * u + 1.1881593366e-02f;
  p = p * u + 2.6527921430e-02f;
  return p * u + 1.5915491987e-01f;
}

// 1/2 - theta / (2 pi), theta = atan2(r, q), with isp = 1 / sqrt(v1 v2) so
// that |cos theta| = |q| isp and sin theta = r isp: acos(|cos|) / 2pi is
// asin(sin) / 2pi where |q| > r, else 1/4 - asin(|cos|) / 2pi, and theta is
// pi - acos(|cos|) where q < 0. So the result is c + sign z Q(z^2), z =
// min(|q|, r) isp, with (c, sign) = (1/2, -1) for q >= 0 and |q| > r, (1/4,
// +1) for q >= 0 and |q| <= r, (0, +1) for q < 0 and |q| > r, (1/4, -1) for
// q < 0 and |q| <= r: one FMA after the polynomial. (On Zen 4, multiplies
// and FMAs share two 256-bit pipes, and they bound the ReLU: this form
// needs the fewest of them.) The sign and c come from sign bits, in
// integer logic (which issues on all four vector pipes): |q| > r exactly
// where r - |q| is negative, so the sign is -1 where the sign bits of
// r - |q| and q differ, and c is 1/4 where r - |q| >= 0, else 1/2 where
// q >= 0, else 0. (Compares into masks and masked moves, the first form,
// took the multiply pipes: MNIST kernel and gradient -2 to -3%.)
#if defined(__AVX512F__)
inline Vec ReluDot(Vec q, Vec aq, Vec r, Vec isp) {
  const __m512i qi = reinterpret_cast<__m512i>(q);
  const Vec z = Min(aq, r) * isp;
  const __m512i di = reinterpret_cast<__m512i>(r - aq);
  const __m512i sign = _mm512_set1_epi32(INT32_MIN);
  // z >= 0, so z | ((di ^ q) & sign) (ternary logic table 0xF8).
  const __m512i zs = _mm512_ternarylogic_epi32(
      reinterpret_cast<__m512i>(z), _mm512_xor_si512(di, qi), sign, 0xF8);
  // All ones where r - |q| < 0 (resp. q < 0), by arithmetic shifts.
  const __m512i gt = _mm512_srai_epi32(di, 31);
  const __m512i neg = _mm512_srai_epi32(qi, 31);
  const __m512i half = _mm512_andnot_si512(
      neg, reinterpret_cast<__m512i>(_mm512_set1_ps(0.5f)));
  // gt ? half : 1/4 (table 0xCA: bitwise select).
  const __m512i c = _mm512_ternarylogic_epi32(
      gt, half, reinterpret_cast<__m512i>(_mm512_set1_ps(0.25f)), 0xCA);
  return reinterpret_cast<Vec>(zs) * AsinTurnsQ(z * z) +
         reinterpret_cast<Vec>(c);
}
#else
inline Vec ReluDot(Vec q, Vec aq, Vec r, Vec isp) {
  const Vec z = (aq < r ? aq : r) * isp;
  const auto gt = aq > r, nn = q >= 0.f;
  const Vec c = gt ? (nn ? Splat(0.5f) : Vec{}) : Splat(0.25f);
  const Vec zs = (gt == nn) ? -z : z;
  return zs * AsinTurnsQ(z * z) + c;
}
#endif

// The 5-wide, stride-2 window sums of the common architecture (5 x 5
// filters, stride 2), along one axis, with pair sums shared between
// neighbouring windows: out[o] = sum_{d < 5} in[2 o + d] over a padded index
// (`get(i)` returns in[i], zero in the padding) costs 3 adds per output
// instead of 4, and reads each input once, not 2.5 times.
template <typename T, typename Get, typename Put>
inline void Box5S2(int n_out, Get get, Put put) {
  T pair = get(0) + get(1);
  T even = get(2);
  for (int o = 0; o < n_out; ++o) {
    const T next = even + get(2 * o + 3);
    const T e2 = get(2 * o + 4);
    put(o, pair + next + e2);
    pair = next;
    even = e2;
  }
}

// Its transpose: for inputs i in [0, n_in) at padded index i + lo,
// out[i] = sum of g[o] over the windows o in [0, n_out) holding it (two or
// three). An even padded index 2m is in windows m-2..m, an odd one 2m+1 in
// m-1..m; with z = g[m-1] + g[m] carried, 1 add per output.
template <typename T, typename Get, typename Put>
inline void Box5S2T(int n_in, int n_out, int lo, Get get, Put put) {
  auto g = [&](int o) -> T { return o >= 0 && o < n_out ? get(o) : T{}; };
  const int first = lo, last = lo + n_in - 1;
  int m = first >> 1;
  T gprev = g(m - 1);
  T zprev = g(m - 2) + gprev;
  for (; 2 * m <= last; ++m) {
    const T gm = g(m);
    const T z = gprev + gm;
    if (2 * m >= first) put(2 * m - lo, zprev + gm);
    if (2 * m + 1 >= first && 2 * m + 1 <= last) put(2 * m + 1 - lo, z);
    zprev = z;
    gprev = gm;
  }
}

// x1 images packed as tiles: x1t[tile][hp][wp][c][lane] on the padded map,
// v1t / is1t[tile][S][lane]. Zero images pad the last tile (their outputs are
// dropped, their cotangents are zero).
struct PackedX1 {
  int n1 = 0, tiles = 0;
  Floats x, v, is;
};

// Fills p (its storage is reused from call to call: `PackedFor` keeps one
// per calling thread, so a chunk's 31 MB (CIFAR-10, 2,000 images) is not
// allocated and page-faulted anew each call). Tiles in parallel; each
// writes every entry of its own tile (padding included), in order: per
// padded pixel and channel the kLanes images' values, read from kLanes
// sequential streams. (The first version scattered image by image with a
// stride of kLanes floats, on one thread: 20 ns per CIFAR-10 kernel entry
// at the chunk of 2,000, ~7% of a kernel-and-gradient pair of calls.)
void PackX1(const Geometry& g, const float* x1, const float* v1, int n1,
            PackedX1* p) {
  p->n1 = n1;
  p->tiles = (n1 + kLanes - 1) / kLanes;
  const size_t map = static_cast<size_t>(g.Hp) * g.Wp * g.C;
  const size_t img = static_cast<size_t>(g.H) * g.W * g.C;
  p->x.resize(p->tiles * map * kLanes);
  p->v.resize(static_cast<size_t>(p->tiles) * g.S * kLanes);
  p->is.resize(p->v.size());
  const int row = g.W * g.C;  // an image row's values
#pragma omp parallel for schedule(static)
  for (int t = 0; t < p->tiles; ++t) {
    float* xt = p->x.data() + t * map * kLanes;
    float* vt = p->v.data() + static_cast<size_t>(t) * g.S * kLanes;
    float* it = p->is.data() + static_cast<size_t>(t) * g.S * kLanes;
    const int real = std::min(kLanes, n1 - t * kLanes);
    const float* xi[kLanes];
    for (int l = 0; l < kLanes; ++l)
      xi[l] = l < real ? x1 + (static_cast<size_t>(t) * kLanes + l) * img
                       : nullptr;
    for (int hp = 0; hp < g.Hp; ++hp) {
      float* xr = xt + static_cast<size_t>(hp) * g.Wp * g.C * kLanes;
      const int h = hp - g.lo_h;
      std::fill(xr, xr + static_cast<size_t>(g.Wp) * g.C * kLanes, 0.f);
      if (h < 0 || h >= g.H) continue;
      float* xo = xr + static_cast<size_t>(g.lo_w) * g.C * kLanes;
      for (int l = 0; l < real; ++l) {
        const float* src = xi[l] + static_cast<size_t>(h) * row;
        for (int e = 0; e < row; ++e) xo[e * kLanes + l] = src[e];
      }
    }
    for (int l = 0; l < kLanes; ++l) {
      for (int q = 0; q < g.S; ++q) {
        // A zero image's self-variances: b at every layer.
        const float v = l < real
                            ? v1[(static_cast<size_t>(t) * kLanes + l) * g.S + q]
                            : g.b;
        vt[q * kLanes + l] = v;
        it[q * kLanes + l] = 1.f / std::sqrt(std::max(v, kTiny));
      }
    }
  }
}

// The packed x1 of one call, in storage kept per calling thread.
const PackedX1& PackedFor(const Geometry& g, const float* x1, const float* v1,
                          int n1) {
  static thread_local PackedX1 p;
  PackX1(g, x1, v1, n1, &p);
  return p;
}

// One x2 image: padded, and its per-position 1 / sqrt(v) and 1 / v.
struct X2Image {
  std::vector<float> xp;         // (Hp, Wp, C)
  std::vector<float> is, w_v;  // (S): 1 / sqrt(v), 1 / (4 pi v)
  const float* v;

  explicit X2Image(const Geometry& g)
      : xp(g.Hp * g.Wp * g.C, 0.f), is(g.S), w_v(g.S), v(nullptr) {}

  void Set(const Geometry& g, const float* x2j, const float* v2j) {
    for (int h = 0; h < g.H; ++h)
      for (int w = 0; w < g.W; ++w)
        for (int c = 0; c < g.C; ++c)
          xp[((h + g.lo_h) * g.Wp + w + g.lo_w) * g.C + c] =
              x2j[(h * g.W + w) * g.C + c];
    v = v2j;
    for (int q = 0; q < g.S; ++q) {
      is[q] = 1.f / std::sqrt(std::max(v2j[q], kTiny));
      w_v[q] = kInvFourPi / v2j[q];
    }
  }
};

// The Run functions give each thread blocks of up to kX2Block x2 images and
// loop over the x1 tiles outside the block's images: a tile's packed x1
// (60 KiB for MNIST, 248 KiB for CIFAR-10) then comes from memory once per
// block and from L2 for the other images, instead of once per (image, tile)
// pair (measured: 8 images, -25% time on MNIST; 16 against 8, with the
// validation chunk of 2,000 whose packed tiles (31 MB for CIFAR-10) stream
// from memory: forward -15% on CIFAR-10, MNIST unchanged). The first layer runs for the
// block's images together, row by row (Layer1Block): each x1 row is then
// read from L1.
constexpr int kX2Block = 16;

// Per-thread arrays for one (x2 image, x1 tile) pair. Layer l's arrays have
// hl[l] * wl[l] positions of kLanes floats.
struct Scratch {
  Floats rows;                                  // (Hp, W1, lanes)
  std::vector<Floats> q, t, r, dot, inv_r;      // per layer
  Floats q0;                  // (kX2Block, H1, W1, lanes): the block's q_1
  Floats l1state;             // (kX2Block, 3, W1, lanes): Layer1Block's rows
  std::vector<const float*> qp;  // layer l's q: q0's image for l = 0
  Floats n_out, tt_out;                         // (h, w, lanes) ReLU outputs
  Floats rn, rt;                                // row window sums
  Floats gn, gtt, gn2, gtt2;                    // backward, ping-pong

  explicit Scratch(const Geometry& g) {
    // Rows of the padding (never written) stay zero.
    rows.assign(g.Hp * g.wl[0] * kLanes, 0.f);
    const int p0 = g.hl[0] * g.wl[0] * kLanes;
    for (int l = 0; l < g.depth; ++l) {
      const int p = g.hl[l] * g.wl[l] * kLanes;
      // Layer 0's q is the block's q0, its t that q: not allocated here.
      q.emplace_back(l == 0 ? 0 : p); t.emplace_back(l == 0 ? 0 : p);
      r.emplace_back(p); dot.emplace_back(p); inv_r.emplace_back(p);
    }
    q0.assign(kX2Block * p0, 0.f);
    l1state.assign(kX2Block * 3 * g.wl[0] * kLanes, 0.f);
    // qp[0] is set per image, to its rows of q0.
    for (int l = 0; l < g.depth; ++l)
      qp.push_back(l == 0 ? nullptr : q[l].data());
    n_out.assign(p0, 0.f);
    tt_out.assign(p0, 0.f);
    int big = g.Hp * g.wl[0] * kLanes;
    for (int l = 1; l < g.depth; ++l)
      big = std::max(big, g.hl[l - 1] * g.wl[l] * kLanes);
    rn.assign(big, 0.f);
    rt.assign(big, 0.f);
    gn.assign(p0, 0.f); gtt.assign(p0, 0.f);
    gn2.assign(p0, 0.f); gtt2.assign(p0, 0.f);
  }
};

// Two maps carried together (the n and tt of a ReLU, or their cotangents).
struct Vec2 {
  Vec a, b;
};
inline Vec2 operator+(Vec2 x, Vec2 y) { return {x.a + y.a, x.b + y.b}; }

// Layer l's t: its own array, except layer 0, whose t equals its q.
inline const float* TIn(const Scratch& sc, int l) {
  return l == 0 ? sc.qp[0] : sc.t[l].data();
}

// The inputs of ReLU layer l that do not change with the position.
struct ReluArgs {
  const float *q, *t, *v1, *is1, *v2, *is2;
  float *r, *dot, *inv_r;
};

inline ReluArgs ReluArgsFor(const Geometry& g, int l, Scratch& sc,
                            const float* v1t, const float* is1t,
                            const X2Image& x2) {
  const int off = g.voff[l];
  return {sc.qp[l], TIn(sc, l), v1t + off * kLanes, is1t + off * kLanes,
          x2.v + off, x2.is.data() + off, sc.r[l].data(), sc.dot[l].data(),
          sc.inv_r[l].data()};
}

// ReLU layer l at position p (kLanes pairs): its outputs n = r / 2pi +
// dot q and tt = t dot, and what the backward pass needs, r, dot and
// inv_r (1 / r, 0 where r <= kRTol). kDiag: `offdiag` is 0 in the lanes
// where the pair is one image (self-kernel diagonal: exactly aligned
// inputs, d = 0), else 1; without kDiag it is all ones and not used.
struct ReluOut {
  Vec n, tt, r, dot, inv_r;
};

template <bool kDiag>
inline ReluOut ReluCore(const ReluArgs& a, int p, Vec offdiag) {
  const int e = p * kLanes;
  const Vec qq = Load(a.q + e);
  Vec d = Load(a.v1 + e) * a.v2[p] - qq * qq;
  if (kDiag) d *= offdiag;
  // r = sqrt(d): h = d y0 from the estimate y0 of 1 / sqrt(d), then one
  // Newton step, r = h (3/2 - h y0 / 2). Where d <= 0, d is taken as
  // float32's tiny: r ~ 1e-19, below kRTol (the derivatives treat it as
  // 0) and 1e-19 of the kernel's scale in n.
  const Vec dm = Max(d, Splat(kTiny));
  const Vec y0 = RSqrt14(dm);
  const Vec h = dm * y0;
  const Vec newton = 1.5f - 0.5f * (h * y0);
  const Vec rr = h * newton;
  const Vec isp = Load(a.is1 + e) * a.is2[p];
  const Vec dd = ReluDot(qq, Abs(qq), rr, isp);
  return {rr * kInvTwoPi + dd * qq, Load(a.t + e) * dd, rr, dd,
          rr > kRTol ? y0 * newton : Vec{}};
}

// ReluCore's outputs; r, dot, inv_r kept for the backward pass if kKeep.
template <bool kKeep, bool kDiag>
inline Vec2 ReluAt(const ReluArgs& a, int p, Vec offdiag) {
  const ReluOut o = ReluCore<kDiag>(a, p, offdiag);
  if (kKeep) {
    const int e = p * kLanes;
    Store(a.r + e, o.r);
    Store(a.dot + e, o.dot);
    Store(a.inv_r + e, o.inv_r);
  }
  return {o.n, o.tt};
}

// The ReLU's backward at one position: from the cotangents gn, gtt of its
// outputs n, tt, those of its inputs q (all of it: t = c box(tt) + q, and
// layer 0's t is q) and t; adds the x2 self-variance's cotangent to accv.
inline Vec2 ReluBack(Vec gn, Vec gtt, Vec q, Vec t, Vec r, Vec dot, Vec inv_r,
                     float w_v, float* accv) {
  const Vec g_t = gtt * dot;
  const Vec gtr = gtt * t * inv_r;
  Store(accv, Load(accv) + (gn * r - gtr * q) * w_v);
  return {gn * dot + gtr * kInvTwoPi + g_t, g_t};
}

// ReluBack at position p of layer l from the kept r, dot, inv_r, into
// gq[p] (and gt[p] for l > 0).
struct BackArgs {
  const float *q, *t, *r, *dot, *inv_r, *w_v;
  float* accv;
  bool first;  // layer 0: no gt
};

inline BackArgs BackArgsFor(const Geometry& g, int l, const Scratch& sc,
                            const X2Image& x2, float* accv_all) {
  return {sc.qp[l], TIn(sc, l), sc.r[l].data(), sc.dot[l].data(),
          sc.inv_r[l].data(), x2.w_v.data() + g.voff[l],
          accv_all + g.voff[l] * kLanes, l == 0};
}

inline void ReluBackAt(const BackArgs& b, int p, Vec gn, Vec gtt, float* gq,
                       float* gt) {
  const int e = p * kLanes;
  const Vec2 o = ReluBack(gn, gtt, Load(b.q + e), Load(b.t + e),
                          Load(b.r + e), Load(b.dot + e), Load(b.inv_r + e),
                          b.w_v[p], b.accv + e);
  Store(gq + e, o.a);
  if (!b.first) Store(gt + e, o.b);
}

// ReLU layer l over all its positions, outputs into n_out, tt_out (the
// generic architectures; with 5 x 5 windows at stride 2 the ReLU runs
// inside the next layer's window sums, `ConvLayer`, or the final mean,
// and its outputs are never stored: on Zen 4 a 512-bit store costs about
// two cycles of the FMA pipes, which bound the ReLU).
template <bool kKeep, bool kDiag>
void Relu(const Geometry& g, int l, Scratch& sc, const float* v1t,
          const float* is1t, const X2Image& x2, Vec offdiag) {
  const int P = g.hl[l] * g.wl[l];
  const ReluArgs a = ReluArgsFor(g, l, sc, v1t, is1t, x2);
  float* n_out = sc.n_out.data();
  float* tt_out = sc.tt_out.data();
  for (int p = 0; p < P; ++p) {
    const Vec2 o = ReluAt<kKeep, kDiag>(a, p, offdiag);
    Store(n_out + p * kLanes, o.a);
    Store(tt_out + p * kLanes, o.b);
  }
}

// First conv layer, one x2 image: q_1 = a / (kh kw C) * box(x1 . x2) + b
// into q (t_1 is not stored: layer 0's t is its q, see TIn).
// KW, CC: the (square) filter size and channel count when known at compile
// time (their short loops unroll), 0 for the run-time values.
template <int KW, int CC>
void Layer1(const Geometry& g, Scratch& sc, const float* x1t,
            const X2Image& x2, float* q) {
  const int W1 = g.wl[0], H1 = g.hl[0];
  const int C = CC > 0 ? CC : g.C;
  const int kw = KW > 0 ? KW : g.kw;
  const int kh = KW > 0 ? KW : g.kh;
  float* rows = sc.rows.data();
  const float* x2p = x2.xp.data();
  const float c1 = g.a / (kh * kw * C);
  // Row sums of the products; only the image's rows (the padding's are 0).
  for (int hp = g.lo_h; hp < g.lo_h + g.H; ++hp) {
    for (int pw = 0; pw < W1; ++pw) {
      Vec acc{};
      for (int dw = 0; dw < kw; ++dw) {
        const int wp = g.s * pw + dw;
        for (int c = 0; c < C; ++c)
          acc += x2p[(hp * g.Wp + wp) * C + c] *
                 Load(x1t + ((hp * g.Wp + wp) * C + c) * kLanes);
      }
      Store(rows + (hp * W1 + pw) * kLanes, acc);
    }
  }
  for (int ph = 0; ph < H1; ++ph) {
    for (int pw = 0; pw < W1; ++pw) {
      Vec acc{};
      for (int dh = 0; dh < kh; ++dh)
        acc += Load(rows + ((g.s * ph + dh) * W1 + pw) * kLanes);
      Store(q + (ph * W1 + pw) * kLanes, c1 * acc + g.b);
    }
  }
}

// N maps carried together in registers (Box5S2 over several (tile, image)
// pairs of the first layer at once).
template <int N>
struct VecN {
  Vec v[N];
};
template <int N>
inline VecN<N> operator+(const VecN<N>& x, const VecN<N>& y) {
  VecN<N> z;
  for (int k = 0; k < N; ++k) z.v[k] = x.v[k] + y.v[k];
  return z;
}

// One padded row hp of the first layer (5 x 5 windows at stride 2) for NT
// tiles (scratches sc[0..NT), packed rows x1r[0..NT)) and NG x2 images
// b0..b0+NG: the NT x NG pixel-product rows are summed over channels and
// windowed together, so each x1 vector loaded serves NG images and each
// x2 pixel NT tiles. The row's window sums are combined with the rows
// before them as in Layer1Block.
template <int CC, int NT, int NG>
inline void Layer1RowGroup(const Geometry& g, Scratch* const* sc,
                           const float* const* x1r,
                           const std::vector<X2Image>& x2, int b0, int hp,
                           bool image_row, int ia, int ib) {
  constexpr int N = NT * NG;
  const int C = CC > 0 ? CC : g.C;
  const int W1 = g.wl[0], H1 = g.hl[0];
  const int P0 = H1 * W1 * kLanes, R = W1 * kLanes;
  const float c1 = g.a / (25 * C);
  const int m = hp >> 1;
  const float* x2r[NG];
  for (int i = 0; i < NG; ++i) x2r[i] = x2[b0 + i].xp.data() + hp * g.Wp * C;
  // Pair k = tile k / NG, image b0 + k % NG.
  float* pa[N];
  const float* pb[N];
  float* e[N];
  float* q[N];
  for (int k = 0; k < N; ++k) {
    Scratch& s = *sc[k / NG];
    const int b = b0 + k % NG;
    float* s3 = s.l1state.data() + b * 3 * R;
    pa[k] = s3 + ia * R;
    pb[k] = s3 + ib * R;
    e[k] = s3 + 2 * R;
    q[k] = s.q0.data() + b * P0 + std::max(m - 2, 0) * R;
  }
  auto prod = [&](int wp) {
    VecN<N> v;
    for (int c = 0; c < C; ++c) {
      for (int t = 0; t < NT; ++t) {
        const Vec x = Load(x1r[t] + (wp * C + c) * kLanes);
        for (int i = 0; i < NG; ++i) {
          const float y = x2r[i][wp * C + c];
          if (c == 0) v.v[t * NG + i] = y * x;
          else v.v[t * NG + i] += y * x;
        }
      }
    }
    return v;
  };
  auto put_even = [&](int pw, const VecN<N>& v) {
    const int o = pw * kLanes;
    for (int k = 0; k < N; ++k) {
      if (m >= 2)
        Store(q[k] + o, c1 * (Load(pa[k] + o) + Load(pb[k] + o) + v.v[k]) +
                            g.b);
      Store(e[k] + o, v.v[k]);
    }
  };
  // PR(m) goes where PR(m-2) was (no longer needed).
  auto put_odd = [&](int pw, const VecN<N>& v) {
    const int o = pw * kLanes;
    for (int k = 0; k < N; ++k) Store(pa[k] + o, Load(e[k] + o) + v.v[k]);
  };
  if (image_row) {
    if (hp % 2 == 0) Box5S2<VecN<N>>(W1, prod, put_even);
    else Box5S2<VecN<N>>(W1, prod, put_odd);
  } else {
    const VecN<N> zero{};
    for (int pw = 0; pw < W1; ++pw) {
      if (hp % 2 == 0) put_even(pw, zero);
      else put_odd(pw, zero);
    }
  }
}

// The first layer for the block's nb x2 images and NT x1 tiles (scratch
// sc[t], packed tile x1t[t]): q_1 of image b into sc[t]->q0[b]. With 5 x 5
// filters at stride 2 (KW = 5, SS = 2), row by row of the padded map (the
// x1 rows stay in L1), for groups of images in turn (Layer1RowGroup: up to
// 4 (tile, image) pairs in registers): each row's window sums (Box5S2
// over the pixel products, summed over channels) are combined at once with
// the rows before them, the column windows as pair sums too: output row
// m - 2 = PR(m-2) + PR(m-1) + row 2m, with PR(k) = row 2k + row 2k+1. Per
// image only three rows are kept (PR(m-2), PR(m-1), the last even row).
// Else one image at a time (Layer1).
template <int KW, int CC, int SS, int NT>
void Layer1Block(const Geometry& g, Scratch* const* sc,
                 const float* const* x1t, const std::vector<X2Image>& x2,
                 int nb) {
  const int W1 = g.wl[0], H1 = g.hl[0];
  const int P0 = H1 * W1 * kLanes;
  if (!(KW == 5 && SS == 2)) {
    for (int t = 0; t < NT; ++t)
      for (int b = 0; b < nb; ++b)
        Layer1<KW, CC>(g, *sc[t], x1t[t], x2[b], sc[t]->q0.data() + b * P0);
    return;
  }
  const int C = CC > 0 ? CC : g.C;
  // Images per group: up to kPairs (tile, image) pairs in registers.
  constexpr int kPairs = CC == 1 ? 2 : 4;
  constexpr int kG = kPairs / NT > 0 ? kPairs / NT : 1;
  int ia = 0, ib = 1;  // which of an image's first two rows hold PR(m-2), PR(m-1)
  for (int hp = 0; hp <= 2 * H1 + 2; ++hp) {
    const bool image_row = hp >= g.lo_h && hp < g.lo_h + g.H;
    const float* x1r[NT];
    for (int t = 0; t < NT; ++t) x1r[t] = x1t[t] + hp * g.Wp * C * kLanes;
    int b = 0;
    for (; b + kG <= nb; b += kG)
      Layer1RowGroup<CC, NT, kG>(g, sc, x1r, x2, b, hp, image_row, ia, ib);
    if (kG > 2 && b + 2 <= nb) {
      Layer1RowGroup<CC, NT, 2>(g, sc, x1r, x2, b, hp, image_row, ia, ib);
      b += 2;
    }
    for (; b < nb; ++b)
      Layer1RowGroup<CC, NT, 1>(g, sc, x1r, x2, b, hp, image_row, ia, ib);
    if (hp % 2 == 1) std::swap(ia, ib);
  }
}

// ReLU layer l - 1 and conv layer l >= 1 on its outputs n, tt:
// q = c box(n) + b, t = c box(tt) + q, with box the separable SAME window
// sum at stride s (rows first, into rn / rt, then columns). With 5 x 5
// windows at stride 2, the row sums take each ReLU output as it is
// computed (Box5S2 reads each input once); else the ReLU's outputs are
// stored first (`Relu`).
template <int KW, int SS, bool kKeep, bool kDiag>
void ConvLayer(const Geometry& g, int l, Scratch& sc, const float* v1t,
               const float* is1t, const X2Image& x2, Vec offdiag) {
  const int hi = g.hl[l - 1], wi = g.wl[l - 1];
  const int ho = g.hl[l], wo = g.wl[l];
  const int lo_h = g.lo_hl[l], lo_w = g.lo_wl[l];
  const float* n = sc.n_out.data();
  const float* tt = sc.tt_out.data();
  float* rn = sc.rn.data();
  float* rt = sc.rt.data();
  if (KW == 5 && SS == 2) {
    const float c = g.a / 25.f;
    float* q = sc.q[l].data();
    float* t = sc.t[l].data();
    auto put_row = [&](int h, int pw, Vec2 v) {
      Store(rn + (h * wo + pw) * kLanes, v.a);
      Store(rt + (h * wo + pw) * kLanes, v.b);
    };
    if (lo_w == 1 && wi == 2 * wo) {
      // Box5S2 written out for this padding (one zero before the row, two
      // after), so that the ReLU's outputs go from registers into the row
      // sums, never stored. (Through Box5S2's bounds-checked lambda, the
      // fused form was slower than storing them: spilled registers.)
      const ReluArgs a = ReluArgsFor(g, l - 1, sc, v1t, is1t, x2);
      auto relu = [&](int p) { return ReluAt<kKeep, kDiag>(a, p, offdiag); };
      for (int h = 0; h < hi; ++h) {
        const int row = h * wi;
        Vec2 pair = relu(row);
        Vec2 even = relu(row + 1);
        for (int o = 0; o < wo - 1; ++o) {
          const Vec2 next = even + relu(row + 2 * o + 2);
          const Vec2 e2 = relu(row + 2 * o + 3);
          put_row(h, o, pair + next + e2);
          pair = next;
          even = e2;
        }
        put_row(h, wo - 1, pair + even);
      }
    } else {
      Relu<kKeep, kDiag>(g, l - 1, sc, v1t, is1t, x2, offdiag);
      for (int h = 0; h < hi; ++h)
        Box5S2<Vec2>(
            wo,
            [&](int ip) -> Vec2 {
              const int w = ip - lo_w;
              if (w < 0 || w >= wi) return Vec2{};
              const int e = (h * wi + w) * kLanes;
              return {Load(n + e), Load(tt + e)};
            },
            [&](int pw, Vec2 v) { put_row(h, pw, v); });
    }
    for (int pw = 0; pw < wo; ++pw)
      Box5S2<Vec2>(
          ho,
          [&](int ip) -> Vec2 {
            const int h = ip - lo_h;
            if (h < 0 || h >= hi) return Vec2{};
            const int e = (h * wo + pw) * kLanes;
            return {Load(rn + e), Load(rt + e)};
          },
          [&](int ph, Vec2 v) {
            const Vec qe = c * v.a + g.b;
            Store(q + (ph * wo + pw) * kLanes, qe);
            Store(t + (ph * wo + pw) * kLanes, c * v.b + qe);
          });
    return;
  }
  Relu<kKeep, kDiag>(g, l - 1, sc, v1t, is1t, x2, offdiag);
  for (int h = 0; h < hi; ++h) {
    for (int pw = 0; pw < wo; ++pw) {
      Vec an{}, at{};
      for (int dw = 0; dw < g.kw; ++dw) {
        const int w = g.s * pw + dw - lo_w;
        if (w < 0 || w >= wi) continue;
        an += Load(n + (h * wi + w) * kLanes);
        at += Load(tt + (h * wi + w) * kLanes);
      }
      Store(rn + (h * wo + pw) * kLanes, an);
      Store(rt + (h * wo + pw) * kLanes, at);
    }
  }
  const float c = g.a / (g.kh * g.kw);
  float* q = sc.q[l].data();
  float* t = sc.t[l].data();
  for (int ph = 0; ph < ho; ++ph) {
    for (int pw = 0; pw < wo; ++pw) {
      Vec an{}, at{};
      for (int dh = 0; dh < g.kh; ++dh) {
        const int h = g.s * ph + dh - lo_h;
        if (h < 0 || h >= hi) continue;
        an += Load(rn + (h * wo + pw) * kLanes);
        at += Load(rt + (h * wo + pw) * kLanes);
      }
      const Vec qe = c * an + g.b;
      Store(q + (ph * wo + pw) * kLanes, qe);
      Store(t + (ph * wo + pw) * kLanes, c * at + qe);
    }
  }
}

// Transpose of ConvLayer's window sums, scaled by c: the cotangents of the
// previous ReLU's outputs from those of q and t (gq, gt), each gathered
// from the windows holding it, then taken through that ReLU's backward
// (`back`, layer l - 1) at once: gn_in, gtt_in (hi, wi, lanes) get the
// cotangents of its q and t, each written once.
template <int KW, int SS>
void ConvLayerT(const Geometry& g, int l, Scratch& sc, const float* gq,
                const float* gt, float* gn_in, float* gtt_in,
                const BackArgs& back) {
  const int hi = g.hl[l - 1], wi = g.wl[l - 1];
  const int wo = g.wl[l];
  const int* th_lo = g.th_lo[l].data();
  const int* th_hi = g.th_hi[l].data();
  const int* tw_lo = g.tw_lo[l].data();
  const int* tw_hi = g.tw_hi[l].data();
  float* rn = sc.rn.data();
  float* rt = sc.rt.data();
  if (KW == 5 && SS == 2) {
    const int ho = g.hl[l];
    const float c = g.a / 25.f;
    for (int pw = 0; pw < wo; ++pw)
      Box5S2T<Vec2>(
          hi, ho, g.lo_hl[l],
          [&](int ph) -> Vec2 {
            const int e = (ph * wo + pw) * kLanes;
            return {Load(gq + e), Load(gt + e)};
          },
          [&](int h, Vec2 v) {
            Store(rn + (h * wo + pw) * kLanes, v.a);
            Store(rt + (h * wo + pw) * kLanes, v.b);
          });
    for (int h = 0; h < hi; ++h)
      Box5S2T<Vec2>(
          wi, wo, g.lo_wl[l],
          [&](int pw) -> Vec2 {
            const int e = (h * wo + pw) * kLanes;
            return {Load(rn + e), Load(rt + e)};
          },
          [&](int w, Vec2 v) {
            ReluBackAt(back, h * wi + w, c * v.a, c * v.b, gn_in, gtt_in);
          });
    return;
  }
  for (int h = 0; h < hi; ++h)
    for (int pw = 0; pw < wo; ++pw) {
      Vec an{}, at{};
      for (int ph = th_lo[h]; ph <= th_hi[h]; ++ph) {
        an += Load(gq + (ph * wo + pw) * kLanes);
        at += Load(gt + (ph * wo + pw) * kLanes);
      }
      Store(rn + (h * wo + pw) * kLanes, an);
      Store(rt + (h * wo + pw) * kLanes, at);
    }
  const float c = g.a / (g.kh * g.kw);
  for (int h = 0; h < hi; ++h)
    for (int w = 0; w < wi; ++w) {
      Vec an{}, at{};
      for (int pw = tw_lo[w]; pw <= tw_hi[w]; ++pw) {
        an += Load(rn + (h * wo + pw) * kLanes);
        at += Load(rt + (h * wo + pw) * kLanes);
      }
      ReluBackAt(back, h * wi + w, c * an, c * at, gn_in, gtt_in);
    }
}

// Forward through all layers for one (x2 image, x1 tile); returns K's lanes.
// kKeep (the backward pass's forward): no K; the ReLUs keep what their
// backward needs, except the last, whose output cotangents are known
// (Flatten's mean spreads K's, gk, evenly): its backward runs at once, into
// gq, gt (the cotangents of its q, t) and accv_all.
template <bool kKeep, bool kDiag, int KW, int CC, int SS>
void ForwardAt(const Geometry& g, Scratch& sc, const float* v1t,
               const float* is1t, const X2Image& x2, Vec offdiag,
               float* k_out, const float* gk, float* accv_all, float* gq,
               float* gt) {
  for (int l = 1; l < g.depth; ++l)
    ConvLayer<KW, SS, kKeep, kDiag>(g, l, sc, v1t, is1t, x2, offdiag);
  const int L = g.depth - 1;
  const int P = g.hl[L] * g.wl[L];
  const ReluArgs a = ReluArgsFor(g, L, sc, v1t, is1t, x2);
  if (kKeep) {
    const Vec an = Load(gk) * (g.dense_gn / P);
    const Vec at = Load(gk) * (g.dense_gt / P);
    const float* w_v = x2.w_v.data() + g.voff[L];
    float* accv = accv_all + g.voff[L] * kLanes;
    for (int p = 0; p < P; ++p) {
      const int e = p * kLanes;
      const ReluOut o = ReluCore<kDiag>(a, p, offdiag);
      const Vec2 b = ReluBack(an, at, Load(a.q + e), Load(a.t + e), o.r,
                              o.dot, o.inv_r, w_v[p], accv + e);
      Store(gq + e, b.a);
      if (L > 0) Store(gt + e, b.b);
    }
    return;
  }
  // The last ReLU, summed into Flatten's means.
  Vec nm{}, tm{};
  for (int p = 0; p < P; ++p) {
    const Vec2 o = ReluAt<false, kDiag>(a, p, offdiag);
    nm += o.a;
    tm += o.b;
  }
  Vec n = nm * (1.f / P), t = tm * (1.f / P);
  for (int d = 0; d < g.num_dense; ++d) {
    n = g.a * n + g.b;
    t = n + g.a * t;
  }
  Store(k_out, t);
}

template <bool kKeep, int KW, int CC, int SS>
void Forward(const Geometry& g, Scratch& sc, const float* x1t,
             const float* v1t, const float* is1t, const X2Image& x2,
             Vec offdiag, float* k_out, const float* gk = nullptr,
             float* accv_all = nullptr, float* gq = nullptr,
             float* gt = nullptr) {
  bool diag = false;
  for (int k = 0; k < kLanes; ++k) diag |= offdiag[k] == 0.f;
  if (diag)
    ForwardAt<kKeep, true, KW, CC, SS>(g, sc, v1t, is1t, x2, offdiag, k_out,
                                       gk, accv_all, gq, gt);
  else
    ForwardAt<kKeep, false, KW, CC, SS>(g, sc, v1t, is1t, x2, offdiag, k_out,
                                        gk, accv_all, gq, gt);
}

// Backward for one (x2 image, x1 tile) with K cotangents gk[lanes], down to
// the first conv layer: accumulates the x2 self-variance cotangents into
// accv (S, lanes) and returns the cotangent of the first layer's q
// (hl[0], wl[0], lanes), held in sc.
template <int KW, int CC, int SS>
const float* BackwardToLayer1(const Geometry& g, Scratch& sc,
                              const float* x1t, const float* v1t,
                              const float* is1t, const X2Image& x2,
                              Vec offdiag, const float* gk,
                              float* accv_all, float* out0 = nullptr) {
  // The cotangent of the first layer's q goes to out0 if given, else to
  // the scratch's ping-pong buffers.
  float* gn = sc.gn.data();
  float* gtt = sc.gtt.data();
  float* gn2 = sc.gn2.data();
  float* gtt2 = sc.gtt2.data();
  // The forward, and the last ReLU's backward: gn, gtt.
  Forward<true, KW, CC, SS>(g, sc, x1t, v1t, is1t, x2, offdiag, nullptr, gk,
                            accv_all, g.depth == 1 && out0 ? out0 : gn, gtt);
  if (g.depth == 1) return out0 ? out0 : gn;
  for (int l = g.depth - 1; l >= 1; --l) {
    // Conv layer l's transpose and ReLU l - 1's backward.
    float* dst = l == 1 && out0 ? out0 : gn2;
    ConvLayerT<KW, SS>(g, l, sc, gn, gtt, dst, gtt2,
                       BackArgsFor(g, l - 1, sc, x2, accv_all));
    gn2 = gn;
    gn = dst;
    std::swap(gtt, gtt2);
  }
  return gn;
}

// The first layer's contraction for one tile: acc (H, W, C, lanes) += the
// x1 pixels times the cotangent gn of q_1 (from `BackwardToLayer1`),
// through the window transposes.
template <int KW, int CC, int SS>
void ContractLayer1(const Geometry& g, Scratch& sc, const float* gn,
                    const float* x1t, float* acc) {
  // First layer: q_1[ph, pw] = c1 sum_{dh, dw, ch} x2p x1p at
  // (s ph + dh, s pw + dw) + b; gn holds its cotangent. Per image row: the
  // column-transposed row g1[pw], then per pixel its row-transposed value,
  // contracted with x1 at once (the padding's cotangents are never needed).
  const int W1 = g.wl[0];
  const int C = CC > 0 ? CC : g.C;
  if (KW == 5 && SS == 2) {
    // The row-transposed windows of all image rows, then per row the
    // column-transposed ones, contracted with x1 as they are formed.
    float* g1 = sc.rn.data();  // (H, W1, lanes)
    for (int pw = 0; pw < W1; ++pw)
      Box5S2T<Vec>(
          g.H, g.hl[0], g.lo_h,
          [&](int ph) { return Load(gn + (ph * W1 + pw) * kLanes); },
          [&](int h, Vec v) { Store(g1 + (h * W1 + pw) * kLanes, v); });
    for (int h = 0; h < g.H; ++h) {
      const float* g1r = g1 + h * W1 * kLanes;
      const float* xr = x1t + (h + g.lo_h) * g.Wp * C * kLanes;
      float* ar = acc + h * g.W * C * kLanes;
      Box5S2T<Vec>(
          g.W, W1, g.lo_w, [&](int pw) { return Load(g1r + pw * kLanes); },
          [&](int w, Vec gm) {
            const float* xt = xr + (w + g.lo_w) * C * kLanes;
            float* a = ar + w * C * kLanes;
            for (int ch = 0; ch < C; ++ch)
              Store(a + ch * kLanes,
                    Load(a + ch * kLanes) + gm * Load(xt + ch * kLanes));
          });
    }
    return;
  }
  const int* th_lo = g.th_lo[0].data();
  const int* th_hi = g.th_hi[0].data();
  const int* tw_lo = g.tw_lo[0].data();
  const int* tw_hi = g.tw_hi[0].data();
  float* g1 = sc.rn.data();  // (W1, lanes)
  for (int h = 0; h < g.H; ++h) {
    const int hp = h + g.lo_h;
    for (int pw = 0; pw < W1; ++pw) {
      Vec a{};
      for (int ph = th_lo[hp]; ph <= th_hi[hp]; ++ph)
        a += Load(gn + (ph * W1 + pw) * kLanes);
      Store(g1 + pw * kLanes, a);
    }
    for (int w = 0; w < g.W; ++w) {
      const int wp = w + g.lo_w;
      Vec gm{};
      for (int pw = tw_lo[wp]; pw <= tw_hi[wp]; ++pw)
        gm += Load(g1 + pw * kLanes);
      const float* xt = x1t + (hp * g.Wp + wp) * C * kLanes;
      float* a = acc + (h * g.W + w) * C * kLanes;
      for (int ch = 0; ch < C; ++ch)
        Store(a + ch * kLanes,
              Load(a + ch * kLanes) + gm * Load(xt + ch * kLanes));
    }
  }
}

// The first layer's contraction for NT tiles and NB x2 images at once, for
// 5 x 5 windows at stride 2: acc[b] (H, W, C, lanes) += sum over tiles t of
// the x1 pixels of tile x1[t] times the cotangent of q_1 (gn[t * NB + b],
// (H1, W1, lanes), from `BackwardToLayer1`), through the window
// transposes: per image row h, the row-transposed cotangents (the sum of
// gn's two or three rows whose windows hold h) of all pairs are formed in
// registers, then column-transposed together (Box5S2T over VecN), so each
// x1 vector loaded serves NB images and each acc entry is read and
// written once per NT tiles. (acc is 196 KB per x2 image for CIFAR-10:
// swept once per tile, it moved more bytes through L2 than the arithmetic
// could hide. The row transposes were stored first, (H, W1) per pair: on
// Zen 4 a 512-bit store costs about two FMAs of the FMA pipes.)
template <int CC, int NT, int NB>
void ContractGroup(const Geometry& g, const float* const* gn,
                   const float* const* x1, float* const* acc) {
  constexpr int N = NT * NB;
  const int W1 = g.wl[0], R = W1 * kLanes;
  const int C = CC > 0 ? CC : g.C;
  for (int h = 0; h < g.H; ++h) {
    const int hp = h + g.lo_h;
    // The windows holding padded row hp: output rows ph0 .. ph0 + rows - 1.
    const int ph0 = g.th_lo[0][hp], rows = g.th_hi[0][hp] - ph0 + 1;
    if (rows <= 0) continue;
    const size_t xoff = static_cast<size_t>(hp) * g.Wp * C * kLanes;
    const size_t aoff = static_cast<size_t>(h) * g.W * C * kLanes;
    const float* gr[N];
    for (int k = 0; k < N; ++k) gr[k] = gn[k] + ph0 * R;
    Box5S2T<VecN<N>>(
        g.W, W1, g.lo_w,
        [&](int pw) {
          VecN<N> v;
          const int o = pw * kLanes;
          for (int k = 0; k < N; ++k) {
            Vec a = Load(gr[k] + o);
            if (rows > 1) a += Load(gr[k] + R + o);
            if (rows > 2) a += Load(gr[k] + 2 * R + o);
            v.v[k] = a;
          }
          return v;
        },
        [&](int w, const VecN<N>& gm) {
          const size_t xo = xoff + static_cast<size_t>(w + g.lo_w) * C * kLanes;
          const size_t ao = aoff + static_cast<size_t>(w) * C * kLanes;
          for (int ch = 0; ch < C; ++ch) {
            Vec xt[NT];
            for (int t = 0; t < NT; ++t) xt[t] = Load(x1[t] + xo + ch * kLanes);
            for (int b = 0; b < NB; ++b) {
              float* a = acc[b] + ao + ch * kLanes;
              Vec s = Load(a);
              for (int t = 0; t < NT; ++t) s += gm.v[t * NB + b] * xt[t];
              Store(a, s);
            }
          }
        });
  }
}

// The architecture, passed as a float32 buffer (not as FFI attributes: this
// XLA:CPU tries to parse a custom call's attribute dictionary as a JSON
// backend config in some programs and aborts):
// [depth, kh, kw, stride, W_std^2, b_std^2, num_dense, symmetric].
struct Params {
  int depth, kh, kw, stride, num_dense;
  float a, b;
  bool symmetric;
};

ffi::Error ReadParams(const ffi::Buffer<ffi::F32>& buf, Params* p) {
  if (buf.element_count() != 8)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "params must have 8 entries");
  const float* v = buf.typed_data();
  p->depth = static_cast<int>(v[0]);
  p->kh = static_cast<int>(v[1]);
  p->kw = static_cast<int>(v[2]);
  p->stride = static_cast<int>(v[3]);
  p->a = v[4];
  p->b = v[5];
  p->num_dense = static_cast<int>(v[6]);
  p->symmetric = v[7] != 0.f;
  if (p->depth < 1 || p->kh < 1 || p->kw < 1 || p->stride < 1 ||
      p->num_dense < 0)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "bad params");
  return ffi::Error::Success();
}

struct Sizes {
  int n1, n2, H, W, C;
};

ffi::Error CheckShapes(const ffi::Buffer<ffi::F32>& x1,
                       const ffi::Buffer<ffi::F32>& x2,
                       const ffi::Buffer<ffi::F32>& v1,
                       const ffi::Buffer<ffi::F32>& v2, Sizes* sz) {
  auto d1 = x1.dimensions(), d2 = x2.dimensions();
  if (d1.size() != 4 || d2.size() != 4)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "x1 and x2 must be (n, H, W, C)");
  for (int i = 1; i < 4; ++i)
    if (d1[i] != d2[i])
      return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                        "x1 and x2 image shapes differ");
  sz->n1 = d1[0]; sz->n2 = d2[0];
  sz->H = d1[1]; sz->W = d1[2]; sz->C = d1[3];
  if (v1.dimensions().size() != 2 || v1.dimensions()[0] != sz->n1 ||
      v2.dimensions().size() != 2 || v2.dimensions()[0] != sz->n2)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "v1, v2 must be (n1, S), (n2, S)");
  return ffi::Error::Success();
}

// What both handlers read from their common arguments, checked.
struct Call {
  Params pr;
  Sizes sz;
  Geometry g;
};

ffi::Error ReadCall(const ffi::Buffer<ffi::F32>& x1,
                    const ffi::Buffer<ffi::F32>& x2,
                    const ffi::Buffer<ffi::F32>& v1,
                    const ffi::Buffer<ffi::F32>& v2,
                    const ffi::Buffer<ffi::F32>& params, Call* c) {
  ffi::Error err = ReadParams(params, &c->pr);
  if (err.failure()) return err;
  err = CheckShapes(x1, x2, v1, v2, &c->sz);
  if (err.failure()) return err;
  const Params& pr = c->pr;
  c->g = MakeGeometry(c->sz.H, c->sz.W, c->sz.C, pr.depth, pr.kh, pr.kw,
                      pr.stride, pr.a, pr.b, pr.num_dense);
  if (v1.dimensions()[1] != c->g.S || v2.dimensions()[1] != c->g.S)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "v has wrong S");
  return ffi::Error::Success();
}

Vec OffDiag(bool symmetric, int tile, int j) {
  Vec mask;
  for (int k = 0; k < kLanes; ++k)
    mask[k] = symmetric && (tile * kLanes + k == j) ? 0.f : 1.f;
  return mask;
}

template <int KW, int CC, int SS>
void RunKernel(const Geometry& g, const PackedX1& p, const Sizes& sz,
               const float* x2d, const float* v2d, bool symmetric,
               float* out);
template <int KW, int CC, int SS>
void RunGrad(const Geometry& g, const PackedX1& p, const Sizes& sz,
             const float* x2d, const float* v2d, bool symmetric,
             const float* gkd, float* gx, float* gv);

// Instances for the common square filters (KW = kh = kw) and channel
// counts (5 x 5 at stride 2 with Box5S2's window sums), else the run-time
// generic one.
#define DISPATCH(fn, g, ...)                                                \
  do {                                                                      \
    const bool sq = (g).kh == (g).kw;                                       \
    if (sq && (g).kw == 5 && (g).s == 2 && (g).C == 1)                      \
      fn<5, 1, 2>((g), __VA_ARGS__);                                        \
    else if (sq && (g).kw == 5 && (g).s == 2 && (g).C == 3)                 \
      fn<5, 3, 2>((g), __VA_ARGS__);                                        \
    else if (sq && (g).kw == 3 && (g).C == 1)                               \
      fn<3, 1, 0>((g), __VA_ARGS__);                                        \
    else if (sq && (g).kw == 3 && (g).C == 3)                               \
      fn<3, 3, 0>((g), __VA_ARGS__);                                        \
    else                                                                    \
      fn<0, 0, 0>((g), __VA_ARGS__);                                        \
  } while (0)

ffi::Error KernelImpl(ffi::Buffer<ffi::F32> x1, ffi::Buffer<ffi::F32> x2,
                      ffi::Buffer<ffi::F32> v1, ffi::Buffer<ffi::F32> v2,
                      ffi::Buffer<ffi::F32> params,
                      ffi::ResultBuffer<ffi::F32> k_out) {
  Call c;
  ffi::Error err = ReadCall(x1, x2, v1, v2, params, &c);
  if (err.failure()) return err;
  const Geometry& g = c.g;
  const Sizes& sz = c.sz;
  const bool symmetric = c.pr.symmetric;
  const PackedX1& p = PackedFor(g, x1.typed_data(), v1.typed_data(), sz.n1);
  DISPATCH(RunKernel, g, p, sz, x2.typed_data(), v2.typed_data(), symmetric,
           k_out->typed_data());
  return ffi::Error::Success();
}

// Small n2 get smaller blocks of x2 images (kX2Block), so that every thread
// still has several. The gradient's per-image accumulators (an image's
// pixels x lanes: 50 KiB for MNIST, 192 KiB for CIFAR-10) are capped at
// kGradAccBytes per block (10 CIFAR-10 images: each x1 tile read from
// memory once per 10 x2 images, not 2 as with a 512 KiB cap: gradient call
// -20% at the validation chunk of 2,000).
constexpr int kGradAccBytes = 2048 * 1024;

int X2BlockSize(int n2, int acc_bytes_per_image = 0) {
  int bs = std::min(kX2Block, n2 / (4 * omp_get_max_threads()));
  if (acc_bytes_per_image > 0)
    bs = std::min(bs, kGradAccBytes / acc_bytes_per_image);
  return std::max(1, bs);
}

template <int KW, int CC, int SS>
void RunKernel(const Geometry& g, const PackedX1& p, const Sizes& sz,
               const float* x2d, const float* v2d, bool symmetric,
               float* out) {
  const int img = sz.H * sz.W * sz.C;
  const int bs = X2BlockSize(sz.n2);
  const int blocks = (sz.n2 + bs - 1) / bs;
#pragma omp parallel
  {
    Scratch sc(g);
    std::vector<X2Image> x2(bs, X2Image(g));
    alignas(64) float kk[kLanes];
#pragma omp for schedule(dynamic, 1)
    for (int blk = 0; blk < blocks; ++blk) {
      const int j0 = blk * bs;
      const int nb = std::min(bs, sz.n2 - j0);
      for (int b = 0; b < nb; ++b)
        x2[b].Set(g, x2d + static_cast<size_t>(j0 + b) * img,
                  v2d + static_cast<size_t>(j0 + b) * g.S);
      for (int t = 0; t < p.tiles; ++t) {
        const size_t p0 = static_cast<size_t>(g.hl[0]) * g.wl[0] * kLanes;
        Scratch* scs[1] = {&sc};
        const float* xs[1] = {
            p.x.data() + static_cast<size_t>(t) * g.Hp * g.Wp * g.C * kLanes};
        Layer1Block<KW, CC, SS, 1>(g, scs, xs, x2, nb);
        for (int b = 0; b < nb; ++b) {
          const int j = j0 + b;
          sc.qp[0] = sc.q0.data() + b * p0;
          Forward<false, KW, CC, SS>(
              g, sc,
              p.x.data() + static_cast<size_t>(t) * g.Hp * g.Wp * g.C * kLanes,
              p.v.data() + static_cast<size_t>(t) * g.S * kLanes,
              p.is.data() + static_cast<size_t>(t) * g.S * kLanes, x2[b],
              OffDiag(symmetric, t, j), kk);
          for (int k = 0; k < kLanes; ++k) {
            const int i = t * kLanes + k;
            if (i < sz.n1) out[static_cast<size_t>(i) * sz.n2 + j] = kk[k];
          }
        }
      }
    }
  }
}

ffi::Error GradImpl(ffi::Buffer<ffi::F32> x1, ffi::Buffer<ffi::F32> x2,
                    ffi::Buffer<ffi::F32> v1, ffi::Buffer<ffi::F32> v2,
                    ffi::Buffer<ffi::F32> gk, ffi::Buffer<ffi::F32> params,
                    ffi::ResultBuffer<ffi::F32> gx2,
                    ffi::ResultBuffer<ffi::F32> gv2) {
  Call c;
  ffi::Error err = ReadCall(x1, x2, v1, v2, params, &c);
  if (err.failure()) return err;
  const Geometry& g = c.g;
  const Sizes& sz = c.sz;
  const bool symmetric = c.pr.symmetric;
  auto dg = gk.dimensions();
  if (dg.size() != 2 || dg[0] != sz.n1 || dg[1] != sz.n2)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "gk must be (n1, n2)");
  const PackedX1& p = PackedFor(g, x1.typed_data(), v1.typed_data(), sz.n1);
  DISPATCH(RunGrad, g, p, sz, x2.typed_data(), v2.typed_data(), symmetric,
           gk.typed_data(), gx2->typed_data(), gv2->typed_data());
  return ffi::Error::Success();
}

template <int KW, int CC, int SS>
void RunGrad(const Geometry& g, const PackedX1& p, const Sizes& sz,
             const float* x2d, const float* v2d, bool symmetric,
             const float* gkd, float* gx, float* gv) {
  const int img = sz.H * sz.W * sz.C;
  const float c1 = g.a / (g.kh * g.kw * sz.C);
  const int acc_size = img * kLanes, accv_size = g.S * kLanes;
  const int bs = X2BlockSize(sz.n2, acc_size * 4);
  const int blocks = (sz.n2 + bs - 1) / bs;
  // 5 x 5 windows at stride 2: two tiles and two x2 images per sweep over
  // acc (see `ContractGroup`); other architectures one of each.
  constexpr bool kPair = KW == 5 && SS == 2;
  const size_t tile_x = static_cast<size_t>(g.Hp) * g.Wp * g.C * kLanes;
  const size_t tile_v = static_cast<size_t>(g.S) * kLanes;
  const size_t p0 = static_cast<size_t>(g.hl[0]) * g.wl[0] * kLanes;
#pragma omp parallel
  {
    Scratch sa(g), sb(g);
    std::vector<X2Image> x2(bs, X2Image(g));
    Floats acc(bs * acc_size), accv(bs * accv_size);
    // (tile, image) cotangents of q_1 for ContractGroup.
    const size_t g1_size = p0;
    Floats gbuf(kPair ? 4 * g1_size : 0);
    alignas(64) float gka[kLanes];
    // Tile t's K cotangents for x2 image j into gk; false if all zero.
    auto cotangents = [&](int t, int j, float* gk) {
      bool any = false;
      for (int k = 0; k < kLanes; ++k) {
        const int i = t * kLanes + k;
        gk[k] = i < sz.n1 ? gkd[static_cast<size_t>(i) * sz.n2 + j] : 0.f;
        any |= gk[k] != 0.f;
      }
      return any;
    };
#pragma omp for schedule(dynamic, 1)
    for (int blk = 0; blk < blocks; ++blk) {
      const int j0 = blk * bs;
      const int nb = std::min(bs, sz.n2 - j0);
      for (int b = 0; b < nb; ++b)
        x2[b].Set(g, x2d + static_cast<size_t>(j0 + b) * img,
                  v2d + static_cast<size_t>(j0 + b) * g.S);
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(accv.begin(), accv.end(), 0.f);
      for (int t = 0; t < p.tiles; t += kPair ? 2 : 1) {
        const bool two = kPair && t + 1 < p.tiles;
        const float* xa = p.x.data() + t * tile_x;
        const float* xb = xa + tile_x;
        Scratch* scs[2] = {&sa, &sb};
        const float* xs[2] = {xa, xb};
        if (two) Layer1Block<KW, CC, SS, 2>(g, scs, xs, x2, nb);
        else Layer1Block<KW, CC, SS, 1>(g, scs, xs, x2, nb);
        if (!kPair) {
          for (int b = 0; b < nb; ++b) {
            const int j = j0 + b;
            sa.qp[0] = sa.q0.data() + b * p0;
            if (!cotangents(t, j, gka)) continue;
            const float* gna = BackwardToLayer1<KW, CC, SS>(
                g, sa, xa, p.v.data() + t * tile_v, p.is.data() + t * tile_v,
                x2[b], OffDiag(symmetric, t, j), gka,
                accv.data() + b * accv_size);
            ContractLayer1<KW, CC, SS>(g, sa, gna, xa,
                                       acc.data() + b * acc_size);
          }
          continue;
        }
        // Two images at a time: each (tile, image) pair down to the first
        // layer, its cotangent kept in gbuf, then one ContractGroup.
        const int nt = two ? 2 : 1;
        for (int b0 = 0; b0 < nb; b0 += 2) {
          const int nbb = std::min(2, nb - b0);
          const float* gns[4];
          bool any = false;
          for (int i = 0; i < nbb; ++i) {
            const int b = b0 + i, j = j0 + b;
            for (int k = 0; k < nt; ++k) {
              Scratch& sc = k == 0 ? sa : sb;
              float* dst = gbuf.data() + (k * 2 + i) * g1_size;
              gns[k * nbb + i] = dst;
              sc.qp[0] = sc.q0.data() + b * p0;
              if (!cotangents(t + k, j, gka)) {
                std::fill(dst, dst + g1_size, 0.f);
                continue;
              }
              BackwardToLayer1<KW, CC, SS>(
                  g, sc, xs[k], p.v.data() + (t + k) * tile_v,
                  p.is.data() + (t + k) * tile_v, x2[b],
                  OffDiag(symmetric, t + k, j), gka,
                  accv.data() + b * accv_size, dst);
              any = true;
            }
          }
          if (!any) continue;
          float* accs[2] = {acc.data() + b0 * acc_size,
                            acc.data() + (b0 + nbb - 1) * acc_size};
          if (nt == 2 && nbb == 2)
            ContractGroup<CC, 2, 2>(g, gns, xs, accs);
          else if (nt == 2)
            ContractGroup<CC, 2, 1>(g, gns, xs, accs);
          else if (nbb == 2)
            ContractGroup<CC, 1, 2>(g, gns, xs, accs);
          else
            ContractGroup<CC, 1, 1>(g, gns, xs, accs);
        }
      }
      for (int b = 0; b < nb; ++b) {
        float* gxj = gx + static_cast<size_t>(j0 + b) * img;
        const float* ab = acc.data() + b * acc_size;
        for (int e = 0; e < img; ++e) {
          float s = 0.f;
          for (int k = 0; k < kLanes; ++k) s += ab[e * kLanes + k];
          gxj[e] = c1 * s;
        }
        float* gvj = gv + static_cast<size_t>(j0 + b) * g.S;
        const float* vb = accv.data() + b * accv_size;
        for (int q = 0; q < g.S; ++q) {
          float s = 0.f;
          for (int k = 0; k < kLanes; ++k) s += vb[q * kLanes + k];
          gvj[q] = s;
        }
      }
    }
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtgaCnnNtk, KernelImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtgaCnnNtkGradX2, GradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
