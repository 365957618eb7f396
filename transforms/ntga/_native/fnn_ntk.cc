// The NTGA FNN surrogate's NTK from its Gram matrix, and the kernel's
// cotangents, as XLA FFI custom calls for the CPU (float32). Same recursion
// as `transforms/ntga/_fnn_ntk.py` (see its module docstring):
//
//   g = W^2 c + b^2,  kp = g + W^2 k,  det = a1 a2 - 4 g^2,  r = det^-1/2,
//   k <- kp r 4/pi,   c <- 2/pi atan(2 g r),   a = 1 + 2 q (per example).
//
// XLA:CPU runs that elementwise work single-threaded, as several passes
// whose fusion it decides itself; here it is one pass per call:
//
// * Forward (`NtgaFnnNtk`): c0 (n1, n2), p1 (n1,), p2 (n2,) -> K (n1, n2).
// * Backward (`NtgaFnnNtkBwd`): also K's cotangent -> the cotangents of c0,
//   p1 and p2. It recomputes the layers of 16 pairs in registers and runs
//   them backwards at once, so nothing per pair but c0_bar is written. The
//   norms enter only through the per-example a_l = 1 + 2 q_l(p): a pair's
//   d K / d a1_l is det_bar_l a2_l, so p1_bar_i = sum_l (d a1_l / d p1_i)
//   sum_j det_bar_l a2_l (row sums in registers), and p2_bar likewise
//   (column sums per block of rows).
//
// Blocks of rows go to the threads of XLA's own intra-op pool, which runs
// the step's matmuls too (an OpenMP team of its own, spinning after each
// call, competed with them for this machine's 2 cores: a CIFAR FNN step
// took 1.09 s instead of 0.35 s). Each block sums its own p2_bar columns;
// the blocks' sums are added in block order, so results do not depend on
// which thread ran what. The 16 lanes of a vector are 16 consecutive
// columns j. Per-example terms are computed once per call, in
// double precision, into arrays padded to whole vectors (padding lanes get
// zero images: finite, and they contribute nothing).
//
// Divisions and square roots are replaced by the AVX-512 estimates
// (rsqrt14, rcp14) with one Newton step (relative error ~1e-8, below
// float32 rounding): exact vector division and square root cost ~10x a
// multiply-add here. Other CPUs get plain 1/sqrt and division.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"

namespace ffi = xla::ffi;
using ntga_native::ParallelFor;

namespace {

constexpr int kLanes = 16;
typedef float V __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t M __attribute__((vector_size(kLanes * sizeof(float))));

constexpr float kFourOverPi = 1.2732395447351628f;
constexpr float kTwoOverPi = 0.6366197723675814f;
constexpr double kPi = 3.141592653589793;
constexpr float kTiny = 1e-30f;  // the det clip of `_fnn_ntk._TINY`
// Above this many layers the generic (run-time depth) instance keeps its
// per-layer arrays on the stack with this bound.
constexpr int kMaxDepth = 64;

inline V Splat(float x) { return V{} + x; }

inline V Load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void Store(float* p, V v) { std::memcpy(p, &v, sizeof v); }

// A row segment of at most kLanes floats, zero-padded.
inline V LoadPartial(const float* p, int count) {
  if (count == kLanes) return Load(p);
  V v = Splat(0.f);
  std::memcpy(&v, p, count * sizeof(float));
  return v;
}

inline void StorePartial(float* p, V v, int count) {
  if (count == kLanes) return Store(p, v);
  std::memcpy(p, &v, count * sizeof(float));
}

inline V Fma(V a, V b, V c) {
#if defined(__AVX512F__)
  return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
  return a * b + c;
#endif
}

inline V Max(V x, float floor) {
#if defined(__AVX512F__)
  return (V)_mm512_max_ps((__m512)x, (__m512)Splat(floor));
#else
  return x > floor ? x : Splat(floor);
#endif
}

// 1 / sqrt(x), x > 0.
inline V Rsqrt(V x) {
#if defined(__AVX512F__)
  V y = (V)_mm512_rsqrt14_ps((__m512)x);
  // Newton: y (3 - x y^2) / 2.
  return y * Fma(-0.5f * x, y * y, Splat(1.5f));
#else
  V y;
  for (int k = 0; k < kLanes; ++k) y[k] = 1.f / std::sqrt(x[k]);
  return y;
#endif
}

// 1 / x, x > 0.
inline V Rcp(V x) {
#if defined(__AVX512F__)
  V y = (V)_mm512_rcp14_ps((__m512)x);
  // Newton: y (2 - x y).
  return Fma(Fma(-x, y, Splat(1.f)), y, y);
#else
  return 1.f / x;
#endif
}

inline V Select(M m, V a, V b) { return m ? a : b; }

// arctan, the scheme of `_fastmath._atan_f32` (Cephes atanf: reduction to
// |x| <= tan(pi/8), odd polynomial; ~1e-7 relative).
inline V Atan(V t) {
  const V a = Select(t < 0.f, -t, t);
  const M big = a > 2.414213562373095f;
  const M mid = a > 0.4142135623730950f;  // includes big
  const V num = Select(big, Splat(-1.f), Select(mid, a - 1.f, a));
  const V den = Select(big, a, Select(mid, a + 1.f, Splat(1.f)));
  const V x = Select(mid, num * Rcp(den), a);
  const V offset = Select(big, Splat(1.5707963267948966f),
                          Select(mid, Splat(0.7853981633974483f),
                                 Splat(0.f)));
  const V z = x * x;
  V poly = Fma(Splat(8.05374449538e-2f), z, Splat(-1.38776856032e-1f));
  poly = Fma(poly, z, Splat(1.99777106478e-1f));
  poly = Fma(poly, z, Splat(-3.33329491539e-1f));
  const V res = offset + Fma(poly * z, x, x);
  return Select(t < 0.f, -res, res);
}

// The architecture, passed as a float32 buffer [depth, W_std^2, b_std^2]
// (not as FFI attributes: XLA:CPU tries to parse a custom call's attribute
// dictionary as a JSON backend config in some programs and aborts; see
// cnn_ntk.cc).
struct Params {
  int depth;
  float w2, b2;
};

ffi::Error ReadParams(const ffi::Buffer<ffi::F32>& buf, Params* p) {
  if (buf.element_count() != 3)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "params must have 3 entries");
  const float* v = buf.typed_data();
  p->depth = static_cast<int>(v[0]);
  p->w2 = v[1];
  p->b2 = v[2];
  if (p->depth < 1 || p->depth > kMaxDepth)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "depth must be in [1, 64]");
  return ffi::Error::Success();
}

// Per-example terms of every Erf layer l, arrays [l][n padded to kLanes]
// (zero images after the n real ones):
// a = 1 + 2 q_l, inv_a = 1 / a, s = d a / d p (the forward-mode chain of
// q_{l+1} = W^2 2/pi atan(q_l / sqrt(q_l + 1/4)) + b^2, whose derivative in
// q_l is W^2 / (pi (q_l + 1/2) sqrt(q_l + 1/4))).
struct PerExample {
  int n, stride;
  std::vector<float> a, inv_a, s;

  PerExample(const float* p, int n_, const Params& pr)
      : n(n_), stride((n_ + kLanes - 1) / kLanes * kLanes) {
    a.resize(static_cast<size_t>(pr.depth) * stride);
    inv_a.resize(a.size());
    s.resize(a.size());
    const double w2 = pr.w2, b2 = pr.b2;
    // Padding columns are zero images (p = 0, and c0 = 0 is loaded for
    // them): every quantity stays finite there, so that their lanes (never
    // stored, and multiplied by K_bar = 0) cannot put NaNs into the row
    // sums. (Padding a = 1 let det go negative a layer later: r = 1e15,
    // k overflowing after a few layers, and 0 * inf.)
    for (int i = 0; i < stride; ++i) {
      double q = w2 * (i < n ? p[i] : 0.f) + b2, dq = w2;
      for (int l = 0; l < pr.depth; ++l) {
        const size_t at = static_cast<size_t>(l) * stride + i;
        a[at] = static_cast<float>(1 + 2 * q);
        inv_a[at] = static_cast<float>(1 / (1 + 2 * q));
        s[at] = static_cast<float>(2 * dq);
        const double root = std::sqrt(q + 0.25);
        dq *= w2 / (kPi * (q + 0.5) * root);
        q = w2 * (2 / kPi) * std::atan(q / root) + b2;
      }
    }
  }

  const float* A(int l) const { return a.data() + size_t(l) * stride; }
  const float* InvA(int l) const { return inv_a.data() + size_t(l) * stride; }
  const float* S(int l) const { return s.data() + size_t(l) * stride; }
};

ffi::Error CheckShapes(const ffi::Buffer<ffi::F32>& c0,
                       const ffi::Buffer<ffi::F32>& p1,
                       const ffi::Buffer<ffi::F32>& p2, int* n1, int* n2) {
  auto d = c0.dimensions();
  if (d.size() != 2 || p1.dimensions().size() != 1 ||
      p2.dimensions().size() != 1 || p1.dimensions()[0] != d[0] ||
      p2.dimensions()[0] != d[1])
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "need c0 (n1, n2), p1 (n1,), p2 (n2,)");
  *n1 = d[0];
  *n2 = d[1];
  return ffi::Error::Success();
}

// Rows per block of parallel work: small enough to balance 2 threads over
// one (2,000, 512) chunk, large enough that taking a block costs nothing.
constexpr int kRowsPerBlock = 8;

// Lane vectors per tile: the layer recursion is one long dependency chain
// per vector (~500 cycles of latency for 5 layers), so a tile runs U
// independent chains interleaved, op by op, for the out-of-order core to
// overlap. Measured at (2000, 512), 2 threads: U = 1 -> 4 took the forward
// from 2.75 to 1.55 ns per pair and the backward from 4.3 to 2.2 (U = 2, 3,
// 5, 6, 8 were slower than 4).
constexpr int kForwardU = 4;
constexpr int kBackwardU = 4;

// D > 0: depth fixed at compile time (the layer loops unrolled, the saved
// layers in registers); D == 0: depth read at run time. `count`: valid
// lanes of the last vector (< kLanes only with U == 1, at a row's end).
template <int D, int U>
inline void ForwardTile(const Params& pr, const PerExample& e1,
                        const PerExample& e2, int i, int j, int count,
                        const float* row, float* out) {
  const int depth = D > 0 ? D : pr.depth;
  const V w2 = Splat(pr.w2), b2 = Splat(pr.b2);
  V c[U], k[U];
  for (int u = 0; u < U; ++u) {
    c[u] = LoadPartial(row + j + u * kLanes, count);
    k[u] = Splat(0.f);
  }
  for (int l = 0; l < depth; ++l) {
    const V a1 = Splat(e1.A(l)[i]);
    const float* a2 = e2.A(l) + j;
    for (int u = 0; u < U; ++u) {
      const V g = Fma(w2, c[u], b2);
      const V kp = l == 0 ? g : Fma(w2, k[u], g);
      const V t = g + g;
      const V det = Fma(-t, t, a1 * Load(a2 + u * kLanes));
      const V r = Rsqrt(Max(det, kTiny));
      k[u] = kp * (kFourOverPi * r);
      if (l + 1 < depth) c[u] = kTwoOverPi * Atan(t * r);
    }
  }
  for (int u = 0; u < U; ++u) StorePartial(out + j + u * kLanes, k[u], count);
}

template <int D>
void Forward(ffi::ThreadPool& pool, const Params& pr, const PerExample& e1,
             const PerExample& e2, const float* c0, float* k_out) {
  const int n1 = e1.n, n2 = e2.n;
  constexpr int kTile = kForwardU * kLanes;
  const int blocks = (n1 + kRowsPerBlock - 1) / kRowsPerBlock;
  ParallelFor(pool, blocks, [&](int b) {
    const int end = std::min(n1, (b + 1) * kRowsPerBlock);
    for (int i = b * kRowsPerBlock; i < end; ++i) {
      const float* row = c0 + size_t(i) * n2;
      float* out = k_out + size_t(i) * n2;
      int j = 0;
      for (; j + kTile <= n2; j += kTile)
        ForwardTile<D, kForwardU>(pr, e1, e2, i, j, kLanes, row, out);
      for (; j < n2; j += kLanes)
        ForwardTile<D, 1>(pr, e1, e2, i, j, std::min(kLanes, n2 - j), row,
                          out);
    }
  });
}

// One tile of the backward pass: writes c0_bar, adds row i's per-layer
// sums of det_bar a2 to `row_sum` and the columns' sums of det_bar a1 s2
// to `col`.
template <int D, int U>
inline void BackwardTile(const Params& pr, const PerExample& e1,
                         const PerExample& e2, int i, int j, int count,
                         const float* row, const float* kb_row, float* out,
                         V* row_sum, float* col) {
  const int depth = D > 0 ? D : pr.depth;
  constexpr int kSaved = D > 0 ? D : kMaxDepth;
  const V w2 = Splat(pr.w2), b2 = Splat(pr.b2);
  // Forward through the layers, keeping what the backward needs.
  V g[kSaved][U], kp[kSaved][U], r[kSaved][U], det[kSaved][U];
  V c[U], k[U];
  for (int u = 0; u < U; ++u) {
    c[u] = LoadPartial(row + j + u * kLanes, count);
    k[u] = Splat(0.f);
  }
  for (int l = 0; l < depth; ++l) {
    const V a1 = Splat(e1.A(l)[i]);
    const float* a2 = e2.A(l) + j;
    for (int u = 0; u < U; ++u) {
      g[l][u] = Fma(w2, c[u], b2);
      kp[l][u] = l == 0 ? g[l][u] : Fma(w2, k[u], g[l][u]);
      const V t = g[l][u] + g[l][u];
      det[l][u] = Fma(-t, t, a1 * Load(a2 + u * kLanes));
      r[l][u] = Rsqrt(Max(det[l][u], kTiny));
      if (l + 1 < depth) {
        k[u] = kp[l][u] * (kFourOverPi * r[l][u]);
        c[u] = kTwoOverPi * Atan(t * r[l][u]);
      }
    }
  }
  // And back.
  V kb[U], cb[U], col_sum[U];
  for (int u = 0; u < U; ++u) {
    kb[u] = LoadPartial(kb_row + j + u * kLanes, count);
    cb[u] = Splat(0.f);
    col_sum[u] = Splat(0.f);
  }
  for (int l = depth - 1; l >= 0; --l) {
    const float a1 = e1.A(l)[i];
    const V inv_a1 = Splat(e1.InvA(l)[i] * kTwoOverPi);
    const float *a2 = e2.A(l) + j, *inv_a2 = e2.InvA(l) + j,
                *s2 = e2.S(l) + j;
    for (int u = 0; u < U; ++u) {
      const V kp_bar = kb[u] * (kFourOverPi * r[l][u]);
      V r_bar = kb[u] * (kFourOverPi * kp[l][u]);
      V g_bar = kp_bar;
      if (l + 1 < depth) {
        // c = 2/pi atan(u), u = 2 g r: d atan(u) = du / (1 + u^2), and
        // 1 / (1 + u^2) = det / (a1 a2).
        const V dc = cb[u] * det[l][u] * (inv_a1 * Load(inv_a2 + u * kLanes));
        r_bar = Fma(dc, g[l][u] + g[l][u], r_bar);
        g_bar = Fma(dc, r[l][u] + r[l][u], g_bar);
      }
      // r = det^(-1/2), det = a1 a2 - 4 g^2 (constant where clipped).
      const V det_bar = Select(det[l][u] > kTiny,
                               (-0.5f * r[l][u] * r[l][u]) * (r[l][u] * r_bar),
                               Splat(0.f));
      g_bar = Fma(-8.f * g[l][u], det_bar, g_bar);
      // d det / d a1 = a2, d det / d a2 = a1.
      row_sum[l] = Fma(det_bar, Load(a2 + u * kLanes), row_sum[l]);
      col_sum[u] = Fma(det_bar, a1 * Load(s2 + u * kLanes), col_sum[u]);
      kb[u] = w2 * kp_bar;
      cb[u] = w2 * g_bar;
    }
  }
  for (int u = 0; u < U; ++u) {
    StorePartial(out + j + u * kLanes, cb[u], count);
    Store(col + j + u * kLanes, Load(col + j + u * kLanes) + col_sum[u]);
  }
}

template <int D>
void Backward(ffi::ThreadPool& pool, const Params& pr, const PerExample& e1,
              const PerExample& e2, const float* c0, const float* kbar,
              float* c0_bar, float* p1_bar, float* p2_bar) {
  const int depth = D > 0 ? D : pr.depth;
  constexpr int kSaved = D > 0 ? D : kMaxDepth;
  constexpr int kTile = kBackwardU * kLanes;
  const int n1 = e1.n, n2 = e2.n, stride2 = e2.stride;
  const int blocks = (n1 + kRowsPerBlock - 1) / kRowsPerBlock;
  // Each block's column sums for p2_bar.
  std::vector<float> col(size_t(blocks) * stride2, 0.f);
  ParallelFor(pool, blocks, [&](int b) {
    float* my_col = col.data() + size_t(b) * stride2;
    const int end = std::min(n1, (b + 1) * kRowsPerBlock);
    for (int i = b * kRowsPerBlock; i < end; ++i) {
      const float* row = c0 + size_t(i) * n2;
      const float* kb_row = kbar + size_t(i) * n2;
      float* out = c0_bar + size_t(i) * n2;
      V row_sum[kSaved];
      for (int l = 0; l < depth; ++l) row_sum[l] = Splat(0.f);
      int j = 0;
      for (; j + kTile <= n2; j += kTile)
        BackwardTile<D, kBackwardU>(pr, e1, e2, i, j, kLanes, row, kb_row,
                                    out, row_sum, my_col);
      for (; j < n2; j += kLanes)
        BackwardTile<D, 1>(pr, e1, e2, i, j, std::min(kLanes, n2 - j), row,
                           kb_row, out, row_sum, my_col);
      float p1b = 0.f;
      for (int l = 0; l < depth; ++l) {
        float sum = 0.f;
        for (int k = 0; k < kLanes; ++k) sum += row_sum[l][k];
        p1b += e1.S(l)[i] * sum;
      }
      p1_bar[i] = p1b;
    }
  });
  for (int j = 0; j < n2; ++j) p2_bar[j] = 0.f;
  for (int b = 0; b < blocks; ++b) {
    const float* part = col.data() + size_t(b) * stride2;
    for (int j = 0; j < n2; ++j) p2_bar[j] += part[j];
  }
}

// Instances unrolled for the common depths, else the run-time generic one.
#define DISPATCH(fn, depth, ...)              \
  do {                                        \
    switch (depth) {                          \
      case 1: fn<1>(__VA_ARGS__); break;      \
      case 2: fn<2>(__VA_ARGS__); break;      \
      case 3: fn<3>(__VA_ARGS__); break;      \
      case 4: fn<4>(__VA_ARGS__); break;      \
      case 5: fn<5>(__VA_ARGS__); break;      \
      default: fn<0>(__VA_ARGS__); break;     \
    }                                         \
  } while (0)

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> c0,
                       ffi::Buffer<ffi::F32> p1, ffi::Buffer<ffi::F32> p2,
                       ffi::Buffer<ffi::F32> params,
                       ffi::ResultBuffer<ffi::F32> k_out) {
  Params pr;
  ffi::Error err = ReadParams(params, &pr);
  if (err.failure()) return err;
  int n1, n2;
  err = CheckShapes(c0, p1, p2, &n1, &n2);
  if (err.failure()) return err;
  const PerExample e1(p1.typed_data(), n1, pr), e2(p2.typed_data(), n2, pr);
  DISPATCH(Forward, pr.depth, pool, pr, e1, e2, c0.typed_data(),
           k_out->typed_data());
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> c0,
                        ffi::Buffer<ffi::F32> p1, ffi::Buffer<ffi::F32> p2,
                        ffi::Buffer<ffi::F32> kbar,
                        ffi::Buffer<ffi::F32> params,
                        ffi::ResultBuffer<ffi::F32> c0_bar,
                        ffi::ResultBuffer<ffi::F32> p1_bar,
                        ffi::ResultBuffer<ffi::F32> p2_bar) {
  Params pr;
  ffi::Error err = ReadParams(params, &pr);
  if (err.failure()) return err;
  int n1, n2;
  err = CheckShapes(c0, p1, p2, &n1, &n2);
  if (err.failure()) return err;
  auto d = kbar.dimensions();
  if (d.size() != 2 || d[0] != n1 || d[1] != n2)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "k_bar must be (n1, n2)");
  const PerExample e1(p1.typed_data(), n1, pr), e2(p2.typed_data(), n2, pr);
  DISPATCH(Backward, pr.depth, pool, pr, e1, e2, c0.typed_data(),
           kbar.typed_data(), c0_bar->typed_data(), p1_bar->typed_data(),
           p2_bar->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtgaFnnNtk, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtgaFnnNtkBwd, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
