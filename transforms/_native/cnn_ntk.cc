// The NTGA CNN surrogate's NTK and its gradient, as XLA FFI custom calls
// for the CPU (float32). Same formulas as `transforms/_cnn_ntk.py` (see its
// module docstring); this file only organises them for the CPU:
//
// * The x1 images are packed in tiles of kLanes images, image index minor:
//   every per-pair quantity is an array [position][kLanes], and the loops
//   over the lanes are what the compiler vectorises (one AVX-512 register).
// * One (x2 image j, x1 tile) pair of loops runs all layers with a tile's
//   arrays in L1/L2: nothing per pair is written to memory.
// * Threads (OpenMP) take x2 images; each writes only its own rows of the
//   outputs, so no reductions across threads.
// * The backward pass recomputes the forward for a tile, keeps each ReLU
//   layer's q, t, r, dot, 1/r, and propagates the cotangent back through
//   transposed window sums to the padded first-layer map, where it is
//   contracted with x1 and summed over the lanes once per x2 image.
//
// Per-image quantities (the self-variances v of each conv layer) are
// inputs: they are computed, and differentiated, in JAX.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kPi = 3.141592653589793f;
// Multiplications by these replace divisions by 2 pi and 4 pi (vector
// division is several times the cost of a multiply).
constexpr float kInvTwoPi = 0.15915494309189535f;
constexpr float kInvFourPi = 0.07957747154594767f;
constexpr float kRTol = 1e-15f;
constexpr float kTiny = 1.17549435e-38f;  // float32 tiny, as jnp.finfo

struct Geometry {
  int H, W, C, kh, kw, s, depth, num_dense;
  float a, b;                    // W_std^2, b_std^2
  int Hp, Wp, lo_h, lo_w;        // first layer's zero-padded input map
  std::vector<int> hl, wl;       // map sizes after conv layer l
  std::vector<int> lo_hl, lo_wl; // SAME pads of conv layer l (l >= 1)
  std::vector<int> voff;         // offsets of layer l in the (n, S) arrays
  int S;
  float dense_gn, dense_gt;      // d K / d (mean n, mean t) of the Dense part
  // First layer, per padded column wp: the outputs pw whose window holds it.
  std::vector<int> pw_lo, pw_hi;
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
  for (int wp = 0; wp < g.Wp; ++wp) {
    int lo = g.wl[0], hi = -1;
    for (int pw = 0; pw < g.wl[0]; ++pw)
      if (wp - g.s * pw >= 0 && wp - g.s * pw < g.kw) {
        lo = std::min(lo, pw);
        hi = std::max(hi, pw);
      }
    g.pw_lo.push_back(lo);
    g.pw_hi.push_back(hi);
  }
  return g;
}

inline float Acos01(float x) {
  float p = -1.44145895e-03f;
  p = p * x + 7.24538158e-03f;
  p = p * x - 1.78089023e-02f;
  p = p * x + 3.13354212e-02f;
  p = p * x - 5.03127697e-02f;
  p = p * x + 8.89992629e-02f;
  p = p * x - 2.14599892e-01f;
  p = p * x + 1.57079631e+00f;
  return std::sqrt(1.f - x) * p;
}

// x1 images packed as tiles: x1t[tile][hp][wp][c][lane] on the padded map,
// v1t / is1t[tile][S][lane]. Zero images pad the last tile (their outputs are
// dropped, their cotangents are zero).
struct PackedX1 {
  int n1, tiles;
  std::vector<float> x, v, is;
};

PackedX1 PackX1(const Geometry& g, const float* x1, const float* v1, int n1) {
  PackedX1 p;
  p.n1 = n1;
  p.tiles = (n1 + kLanes - 1) / kLanes;
  const int map = g.Hp * g.Wp * g.C;
  p.x.assign(static_cast<size_t>(p.tiles) * map * kLanes, 0.f);
  p.v.assign(static_cast<size_t>(p.tiles) * g.S * kLanes, 0.f);
  p.is.assign(p.v.size(), 0.f);
  for (int i = 0; i < p.tiles * kLanes; ++i) {
    const int t = i / kLanes, l = i % kLanes;
    float* xt = p.x.data() + static_cast<size_t>(t) * map * kLanes;
    float* vt = p.v.data() + static_cast<size_t>(t) * g.S * kLanes;
    float* it = p.is.data() + static_cast<size_t>(t) * g.S * kLanes;
    if (i < n1) {
      const float* xi = x1 + static_cast<size_t>(i) * g.H * g.W * g.C;
      for (int h = 0; h < g.H; ++h)
        for (int w = 0; w < g.W; ++w)
          for (int c = 0; c < g.C; ++c)
            xt[(((h + g.lo_h) * g.Wp + w + g.lo_w) * g.C + c) * kLanes + l] =
                xi[(h * g.W + w) * g.C + c];
    }
    for (int q = 0; q < g.S; ++q) {
      // A zero image's self-variances: b at every layer.
      float v = i < n1 ? v1[static_cast<size_t>(i) * g.S + q] : g.b;
      vt[q * kLanes + l] = v;
      it[q * kLanes + l] = 1.f / std::sqrt(std::max(v, kTiny));
    }
  }
  return p;
}

// Per-thread arrays for one (x2 image, x1 tile) pair. Layer l's arrays have
// hl[l] * wl[l] positions of kLanes floats.
struct Scratch {
  std::vector<float> x2p;                      // (Hp, Wp, C) padded x2 image
  std::vector<float> rows;                     // (Hp, W1, lanes)
  std::vector<std::vector<float>> q, t, r, dot, inv_r;  // per layer
  std::vector<float> n_out, tt_out;            // (h, w, lanes) ReLU outputs
  std::vector<float> rn, rt;                   // row window sums, layer >= 1
  std::vector<float> gq, gt_, gn, gtt, g1, g2; // backward
  std::vector<float> gmap;                     // (Hp, Wp, lanes)
  std::vector<float> acc;                      // (Hp, Wp, C, lanes)
  std::vector<float> accv;                     // (S, lanes)

  explicit Scratch(const Geometry& g) {
    x2p.assign(g.Hp * g.Wp * g.C, 0.f);
    rows.assign(g.Hp * g.wl[0] * kLanes, 0.f);
    const int p0 = g.hl[0] * g.wl[0] * kLanes;
    for (int l = 0; l < g.depth; ++l) {
      const int p = g.hl[l] * g.wl[l] * kLanes;
      q.emplace_back(p); t.emplace_back(p); r.emplace_back(p);
      dot.emplace_back(p); inv_r.emplace_back(p);
    }
    n_out.assign(p0, 0.f);
    tt_out.assign(p0, 0.f);
    int big = 0;
    for (int l = 1; l < g.depth; ++l)
      big = std::max(big, g.hl[l - 1] * g.wl[l] * kLanes);
    rn.assign(big, 0.f);
    rt.assign(big, 0.f);
    const int pmax = std::max(p0, g.Hp * g.wl[0] * kLanes);
    gq.assign(pmax, 0.f); gt_.assign(pmax, 0.f); gn.assign(pmax, 0.f);
    gtt.assign(pmax, 0.f); g1.assign(std::max(pmax, big), 0.f);
    g2.assign(std::max(pmax, big), 0.f);
    gmap.assign(g.Hp * g.Wp * kLanes, 0.f);
    acc.assign(g.Hp * g.Wp * g.C * kLanes, 0.f);
    accv.assign(g.S * kLanes, 0.f);
  }
};

void PadX2(const Geometry& g, const float* x2j, float* x2p) {
  std::fill(x2p, x2p + g.Hp * g.Wp * g.C, 0.f);
  for (int h = 0; h < g.H; ++h)
    for (int w = 0; w < g.W; ++w)
      for (int c = 0; c < g.C; ++c)
        x2p[((h + g.lo_h) * g.Wp + w + g.lo_w) * g.C + c] =
            x2j[(h * g.W + w) * g.C + c];
}

// ReLU layer l, elementwise over positions x lanes: fills r, dot, inv_r and
// the outputs n = r / 2pi + dot q, tt = t dot.
// `offdiag[lane]` is 0 where the pair is one image (self-kernel diagonal:
// exactly aligned inputs, d = 0), else 1. Templated so that the lane loop
// has no branches (GCC vectorises only straight-line loop bodies).
template <bool kKeep>
void Relu(const Geometry& g, int l, Scratch& sc, const float* v1t,
          const float* is1t, const float* v2j, const float* is2j,
          const float* offdiag) {
  const int P = g.hl[l] * g.wl[l];
  const float* q = sc.q[l].data();
  const float* t = sc.t[l].data();
  float* r = sc.r[l].data();
  float* dot = sc.dot[l].data();
  float* inv_r = sc.inv_r[l].data();
  float* n_out = sc.n_out.data();
  float* tt_out = sc.tt_out.data();
  const int off = g.voff[l];
  for (int p = 0; p < P; ++p) {
    const float v2 = v2j[off + p], is2 = is2j[off + p];
    const float* v1 = v1t + (off + p) * kLanes;
    const float* is1 = is1t + (off + p) * kLanes;
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) {
      const int e = p * kLanes + k;
      const float qq = q[e];
      const float d = (v1[k] * v2 - qq * qq) * offdiag[k];
      const float rr = std::sqrt(std::max(d, 0.f));
      const float x = std::min(std::fabs(qq) * (is1[k] * is2), 1.f);
      const float ac = d > 0.f ? Acos01(x) : 0.f;
      const float th = qq >= 0.f ? ac : kPi - ac;
      const float dd = 0.5f - th * kInvTwoPi;
      n_out[e] = rr * kInvTwoPi + dd * qq;
      tt_out[e] = t[e] * dd;
      if (kKeep) {
        r[e] = rr;
        dot[e] = dd;
        const bool live = rr > kRTol;
        inv_r[e] = live ? 1.f / (live ? rr : 1.f) : 0.f;
      }
    }
  }
}

// First conv layer: q_1 = a / (kh kw C) * box(x1 . x2) + b, t_1 = q_1.
// KW, CC: the (square) filter size and channel count when known at compile
// time (5 x 5 filters on 1 or 3 channels: their short loops unroll), 0 for
// the run-time values.
template <int KW, int CC>
void Layer1(const Geometry& g, Scratch& sc, const float* x1t) {
  const int W1 = g.wl[0], H1 = g.hl[0];
  const int C = CC > 0 ? CC : g.C;
  const int kw = KW > 0 ? KW : g.kw;
  const int kh = KW > 0 ? KW : g.kh;
  float* rows = sc.rows.data();
  const float* x2p = sc.x2p.data();
  for (int hp = 0; hp < g.Hp; ++hp) {
    for (int pw = 0; pw < W1; ++pw) {
      float acc[kLanes] = {0};
      for (int dw = 0; dw < kw; ++dw) {
        const int wp = g.s * pw + dw;
        for (int c = 0; c < C; ++c) {
          const float xv = x2p[(hp * g.Wp + wp) * C + c];
          const float* xt = x1t + ((hp * g.Wp + wp) * C + c) * kLanes;
#pragma omp simd
          for (int k = 0; k < kLanes; ++k) acc[k] += xv * xt[k];
        }
      }
      std::memcpy(rows + (hp * W1 + pw) * kLanes, acc, sizeof(acc));
    }
  }
  const float c1 = g.a / (kh * kw * C);
  float* q = sc.q[0].data();
  float* t = sc.t[0].data();
  for (int ph = 0; ph < H1; ++ph) {
    for (int pw = 0; pw < W1; ++pw) {
      float acc[kLanes] = {0};
      for (int dh = 0; dh < kh; ++dh) {
        const float* rr = rows + ((g.s * ph + dh) * W1 + pw) * kLanes;
#pragma omp simd
        for (int k = 0; k < kLanes; ++k) acc[k] += rr[k];
      }
      float* qe = q + (ph * W1 + pw) * kLanes;
      float* te = t + (ph * W1 + pw) * kLanes;
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) {
        qe[k] = c1 * acc[k] + g.b;
        te[k] = qe[k];
      }
    }
  }
}

// Separable SAME window sum (stride s) of a (hi, wi, lanes) map onto
// (ho, wo, lanes): rows first (into `tmp`, (hi, wo, lanes)), then columns.
void BoxSum(const Geometry& g, int l, const float* in, float* tmp,
            float* out) {
  const int hi = g.hl[l - 1], wi = g.wl[l - 1];
  const int ho = g.hl[l], wo = g.wl[l];
  const int lo_h = g.lo_hl[l], lo_w = g.lo_wl[l];
  for (int h = 0; h < hi; ++h) {
    for (int pw = 0; pw < wo; ++pw) {
      float acc[kLanes] = {0};
      for (int dw = 0; dw < g.kw; ++dw) {
        const int w = g.s * pw + dw - lo_w;
        if (w < 0 || w >= wi) continue;
        const float* src = in + (h * wi + w) * kLanes;
#pragma omp simd
        for (int k = 0; k < kLanes; ++k) acc[k] += src[k];
      }
      std::memcpy(tmp + (h * wo + pw) * kLanes, acc, sizeof(acc));
    }
  }
  for (int ph = 0; ph < ho; ++ph) {
    for (int pw = 0; pw < wo; ++pw) {
      float acc[kLanes] = {0};
      for (int dh = 0; dh < g.kh; ++dh) {
        const int h = g.s * ph + dh - lo_h;
        if (h < 0 || h >= hi) continue;
        const float* src = tmp + (h * wo + pw) * kLanes;
#pragma omp simd
        for (int k = 0; k < kLanes; ++k) acc[k] += src[k];
      }
      std::memcpy(out + (ph * wo + pw) * kLanes, acc, sizeof(acc));
    }
  }
}

// Transpose of BoxSum: cotangent of `in` (hi, wi, lanes) from that of `out`.
void BoxSumT(const Geometry& g, int l, const float* gout, float* tmp,
             float* gin) {
  const int hi = g.hl[l - 1], wi = g.wl[l - 1];
  const int ho = g.hl[l], wo = g.wl[l];
  const int lo_h = g.lo_hl[l], lo_w = g.lo_wl[l];
  std::fill(tmp, tmp + hi * wo * kLanes, 0.f);
  for (int ph = 0; ph < ho; ++ph)
    for (int dh = 0; dh < g.kh; ++dh) {
      const int h = g.s * ph + dh - lo_h;
      if (h < 0 || h >= hi) continue;
      for (int pw = 0; pw < wo; ++pw) {
        const float* src = gout + (ph * wo + pw) * kLanes;
        float* dst = tmp + (h * wo + pw) * kLanes;
#pragma omp simd
        for (int k = 0; k < kLanes; ++k) dst[k] += src[k];
      }
    }
  std::fill(gin, gin + hi * wi * kLanes, 0.f);
  for (int h = 0; h < hi; ++h)
    for (int pw = 0; pw < wo; ++pw)
      for (int dw = 0; dw < g.kw; ++dw) {
        const int w = g.s * pw + dw - lo_w;
        if (w < 0 || w >= wi) continue;
        const float* src = tmp + (h * wo + pw) * kLanes;
        float* dst = gin + (h * wi + w) * kLanes;
#pragma omp simd
        for (int k = 0; k < kLanes; ++k) dst[k] += src[k];
      }
}

// Forward through all layers for one (x2 image, x1 tile); returns K's lanes.
template <bool kKeep, int KW, int CC>
void Forward(const Geometry& g, Scratch& sc, const float* x1t,
             const float* v1t, const float* is1t, const float* v2j,
             const float* is2j, const float* offdiag, float* k_out) {
  Layer1<KW, CC>(g, sc, x1t);
  Relu<kKeep>(g, 0, sc, v1t, is1t, v2j, is2j, offdiag);
  for (int l = 1; l < g.depth; ++l) {
    const int P = g.hl[l] * g.wl[l];
    float* q = sc.q[l].data();
    float* t = sc.t[l].data();
    BoxSum(g, l, sc.n_out.data(), sc.rn.data(), q);
    BoxSum(g, l, sc.tt_out.data(), sc.rt.data(), t);
    const float c = g.a / (g.kh * g.kw);
    for (int e = 0; e < P * kLanes; ++e) {
      q[e] = c * q[e] + g.b;
      t[e] = c * t[e] + q[e];
    }
    Relu<kKeep>(g, l, sc, v1t, is1t, v2j, is2j, offdiag);
  }
  const int L = g.depth - 1;
  const int P = g.hl[L] * g.wl[L];
  float nm[kLanes] = {0}, tm[kLanes] = {0};
  for (int p = 0; p < P; ++p) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) {
      nm[k] += sc.n_out[p * kLanes + k];
      tm[k] += sc.tt_out[p * kLanes + k];
    }
  }
  for (int k = 0; k < kLanes; ++k) {
    float n = nm[k] / P, t = tm[k] / P;
    for (int d = 0; d < g.num_dense; ++d) {
      n = g.a * n + g.b;
      t = n + g.a * t;
    }
    k_out[k] = t;
  }
}

// Backward for one (x2 image, x1 tile) with K cotangents gk[lanes]:
// accumulates the first-layer contraction into sc.acc and the x2
// self-variance cotangents into sc.accv.
template <int KW, int CC>
void Backward(const Geometry& g, Scratch& sc, const float* x1t,
              const float* v1t, const float* is1t, const float* v2j,
              const float* is2j, const float* offdiag, const float* gk) {
  float kk[kLanes];
  Forward<true, KW, CC>(g, sc, x1t, v1t, is1t, v2j, is2j, offdiag, kk);
  int L = g.depth - 1;
  int P = g.hl[L] * g.wl[L];
  float* gn = sc.gn.data();
  float* gtt = sc.gtt.data();
  for (int p = 0; p < P; ++p)
    for (int k = 0; k < kLanes; ++k) {
      gn[p * kLanes + k] = gk[k] * g.dense_gn / P;
      gtt[p * kLanes + k] = gk[k] * g.dense_gt / P;
    }
  const float c = g.a / (g.kh * g.kw);
  for (int l = L; l >= 0; --l) {
    P = g.hl[l] * g.wl[l];
    const float* q = sc.q[l].data();
    const float* t_in = sc.t[l].data();
    const float* r = sc.r[l].data();
    const float* dot = sc.dot[l].data();
    const float* inv_r = sc.inv_r[l].data();
    float* gq = sc.gq.data();
    float* gt = sc.gt_.data();
    float* accv = sc.accv.data() + g.voff[l] * kLanes;
    for (int p = 0; p < P; ++p) {
      const float inv_v2 = 1.f / v2j[g.voff[l] + p];
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) {
        const int e = p * kLanes + k;
        const float g_t = gtt[e] * dot[e];
        const float gtr = gtt[e] * t_in[e] * inv_r[e];
        gq[e] = gn[e] * dot[e] + gtr * kInvTwoPi + g_t;
        gt[e] = g_t;
        accv[p * kLanes + k] +=
            (gn[e] * r[e] - gtr * q[e]) * (kInvFourPi * inv_v2);
      }
    }
    if (l > 0) {
      BoxSumT(g, l, gq, sc.g1.data(), gn);
      BoxSumT(g, l, gt, sc.g2.data(), gtt);
      const int Pp = g.hl[l - 1] * g.wl[l - 1];
      for (int e = 0; e < Pp * kLanes; ++e) {
        gn[e] *= c;
        gtt[e] *= c;
      }
    }
  }
  // First layer: q_1[ph, pw] = c1 sum_{dh, dw, ch} x2p x1p at
  // (s ph + dh, s pw + dw) + b; gq holds its cotangent.
  const int H1 = g.hl[0], W1 = g.wl[0];
  const int C = CC > 0 ? CC : g.C;
  const int kh = KW > 0 ? KW : g.kh;
  const float* gq = sc.gq.data();
  float* g1 = sc.g1.data();  // (Hp, W1, lanes): column transpose
  std::fill(g1, g1 + g.Hp * W1 * kLanes, 0.f);
  for (int ph = 0; ph < H1; ++ph)
    for (int dh = 0; dh < kh; ++dh) {
      const int hp = g.s * ph + dh;
      for (int pw = 0; pw < W1; ++pw) {
        const float* src = gq + (ph * W1 + pw) * kLanes;
        float* dst = g1 + (hp * W1 + pw) * kLanes;
#pragma omp simd
        for (int k = 0; k < kLanes; ++k) dst[k] += src[k];
      }
    }
  // Row transpose onto the padded map: g2[hp, s pw + dw] += g1[hp, pw].
  const int kw = KW > 0 ? KW : g.kw;
  float* g2 = sc.gmap.data();  // (Hp, Wp, lanes)
  std::fill(g2, g2 + g.Hp * g.Wp * kLanes, 0.f);
  for (int hp = 0; hp < g.Hp; ++hp)
    for (int pw = 0; pw < W1; ++pw) {
      const float* src = g1 + (hp * W1 + pw) * kLanes;
      for (int dw = 0; dw < kw; ++dw) {
        float* dst = g2 + (hp * g.Wp + g.s * pw + dw) * kLanes;
#pragma omp simd
        for (int k = 0; k < kLanes; ++k) dst[k] += src[k];
      }
    }
  // Contraction with x1, lane by lane (summed over lanes once per x2 image).
  float* acc = sc.acc.data();
  const int positions = g.Hp * g.Wp;
  for (int pos = 0; pos < positions; ++pos) {
    const float* gv = g2 + pos * kLanes;
    for (int ch = 0; ch < C; ++ch) {
      const float* xt = x1t + (pos * C + ch) * kLanes;
      float* a = acc + (pos * C + ch) * kLanes;
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) a[k] += gv[k] * xt[k];
    }
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

void Is2(const Geometry& g, const float* v2j, float* is2) {
  for (int q = 0; q < g.S; ++q)
    is2[q] = 1.f / std::sqrt(std::max(v2j[q], kTiny));
}

void OffDiag(bool symmetric, int tile, int j, float* mask) {
  for (int k = 0; k < kLanes; ++k)
    mask[k] = symmetric && (tile * kLanes + k == j) ? 0.f : 1.f;
}

template <int KW, int CC>
void RunKernel(const Geometry& g, const PackedX1& p, const Sizes& sz,
               const float* x2d, const float* v2d, bool symmetric,
               float* out);
template <int KW, int CC>
void RunGrad(const Geometry& g, const PackedX1& p, const Sizes& sz,
             const float* x2d, const float* v2d, bool symmetric,
             const float* gkd, float* gx, float* gv);

// Instances for the common square filters (KW = kh = kw) and channel
// counts, else the run-time generic one.
#define DISPATCH(fn, g, ...)                                      \
  do {                                                            \
    if ((g).kh == (g).kw && (g).kw == 5 && (g).C == 1) fn<5, 1>((g), __VA_ARGS__);    \
    else if ((g).kh == (g).kw && (g).kw == 5 && (g).C == 3) fn<5, 3>((g), __VA_ARGS__); \
    else if ((g).kh == (g).kw && (g).kw == 3 && (g).C == 1) fn<3, 1>((g), __VA_ARGS__); \
    else if ((g).kh == (g).kw && (g).kw == 3 && (g).C == 3) fn<3, 3>((g), __VA_ARGS__); \
    else fn<0, 0>((g), __VA_ARGS__);                              \
  } while (0)

ffi::Error KernelImpl(ffi::Buffer<ffi::F32> x1, ffi::Buffer<ffi::F32> x2,
                      ffi::Buffer<ffi::F32> v1, ffi::Buffer<ffi::F32> v2,
                      ffi::Buffer<ffi::F32> params,
                      ffi::ResultBuffer<ffi::F32> k_out) {
  Params pr;
  ffi::Error err = ReadParams(params, &pr);
  if (err.failure()) return err;
  Sizes sz;
  err = CheckShapes(x1, x2, v1, v2, &sz);
  if (err.failure()) return err;
  const Geometry g = MakeGeometry(sz.H, sz.W, sz.C, pr.depth, pr.kh, pr.kw,
                                  pr.stride, pr.a, pr.b, pr.num_dense);
  const bool symmetric = pr.symmetric;
  if (v1.dimensions()[1] != g.S)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "v has wrong S");
  const PackedX1 p = PackX1(g, x1.typed_data(), v1.typed_data(), sz.n1);
  DISPATCH(RunKernel, g, p, sz, x2.typed_data(), v2.typed_data(), symmetric,
           k_out->typed_data());
  return ffi::Error::Success();
}

template <int KW, int CC>
void RunKernel(const Geometry& g, const PackedX1& p, const Sizes& sz,
               const float* x2d, const float* v2d, bool symmetric,
               float* out) {
  const int img = sz.H * sz.W * sz.C;
#pragma omp parallel
  {
    Scratch sc(g);
    std::vector<float> is2(g.S);
    float kk[kLanes];
    float mask[kLanes];
#pragma omp for schedule(dynamic, 1)
    for (int j = 0; j < sz.n2; ++j) {
      PadX2(g, x2d + static_cast<size_t>(j) * img, sc.x2p.data());
      const float* v2j = v2d + static_cast<size_t>(j) * g.S;
      Is2(g, v2j, is2.data());
      for (int t = 0; t < p.tiles; ++t) {
        OffDiag(symmetric, t, j, mask);
        Forward<false, KW, CC>(g, sc,
                p.x.data() + static_cast<size_t>(t) * g.Hp * g.Wp * g.C *
                                 kLanes,
                p.v.data() + static_cast<size_t>(t) * g.S * kLanes,
                p.is.data() + static_cast<size_t>(t) * g.S * kLanes, v2j,
                is2.data(), mask, kk);
        for (int k = 0; k < kLanes; ++k) {
          const int i = t * kLanes + k;
          if (i < sz.n1) out[static_cast<size_t>(i) * sz.n2 + j] = kk[k];
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
  Params pr;
  ffi::Error err = ReadParams(params, &pr);
  if (err.failure()) return err;
  Sizes sz;
  err = CheckShapes(x1, x2, v1, v2, &sz);
  if (err.failure()) return err;
  const Geometry g = MakeGeometry(sz.H, sz.W, sz.C, pr.depth, pr.kh, pr.kw,
                                  pr.stride, pr.a, pr.b, pr.num_dense);
  const bool symmetric = pr.symmetric;
  if (v1.dimensions()[1] != g.S)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "v has wrong S");
  auto dg = gk.dimensions();
  if (dg.size() != 2 || dg[0] != sz.n1 || dg[1] != sz.n2)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "gk must be (n1, n2)");
  const PackedX1 p = PackX1(g, x1.typed_data(), v1.typed_data(), sz.n1);
  DISPATCH(RunGrad, g, p, sz, x2.typed_data(), v2.typed_data(), symmetric,
           gk.typed_data(), gx2->typed_data(), gv2->typed_data());
  return ffi::Error::Success();
}

template <int KW, int CC>
void RunGrad(const Geometry& g, const PackedX1& p, const Sizes& sz,
             const float* x2d, const float* v2d, bool symmetric,
             const float* gkd, float* gx, float* gv) {
  const int img = sz.H * sz.W * sz.C;
  const float c1 = g.a / (g.kh * g.kw * sz.C);
#pragma omp parallel
  {
    Scratch sc(g);
    std::vector<float> is2(g.S);
    float gkl[kLanes];
    float mask[kLanes];
#pragma omp for schedule(dynamic, 1)
    for (int j = 0; j < sz.n2; ++j) {
      PadX2(g, x2d + static_cast<size_t>(j) * img, sc.x2p.data());
      const float* v2j = v2d + static_cast<size_t>(j) * g.S;
      Is2(g, v2j, is2.data());
      std::fill(sc.acc.begin(), sc.acc.end(), 0.f);
      std::fill(sc.accv.begin(), sc.accv.end(), 0.f);
      for (int t = 0; t < p.tiles; ++t) {
        bool any = false;
        for (int k = 0; k < kLanes; ++k) {
          const int i = t * kLanes + k;
          gkl[k] = i < sz.n1 ? gkd[static_cast<size_t>(i) * sz.n2 + j] : 0.f;
          any |= gkl[k] != 0.f;
        }
        if (!any) continue;
        OffDiag(symmetric, t, j, mask);
        Backward<KW, CC>(g, sc,
                 p.x.data() + static_cast<size_t>(t) * g.Hp * g.Wp * g.C *
                                  kLanes,
                 p.v.data() + static_cast<size_t>(t) * g.S * kLanes,
                 p.is.data() + static_cast<size_t>(t) * g.S * kLanes, v2j,
                 is2.data(), mask, gkl);
      }
      float* gxj = gx + static_cast<size_t>(j) * img;
      for (int h = 0; h < g.H; ++h)
        for (int w = 0; w < g.W; ++w)
          for (int ch = 0; ch < g.C; ++ch) {
            const float* av =
                sc.acc.data() +
                (((h + g.lo_h) * g.Wp + w + g.lo_w) * g.C + ch) * kLanes;
            float s = 0.f;
            for (int k = 0; k < kLanes; ++k) s += av[k];
            gxj[(h * g.W + w) * g.C + ch] = c1 * s;
          }
      float* gvj = gv + static_cast<size_t>(j) * g.S;
      for (int q = 0; q < g.S; ++q) {
        float s = 0.f;
        for (int k = 0; k < kLanes; ++k) s += sc.accv[q * kLanes + k];
        gvj[q] = s;
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
