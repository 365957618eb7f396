// The FNN surrogate's Gram matrix against the validation set and its
// gradient, in 8-bit integer arithmetic (AVX-512 VNNI), as XLA FFI custom
// calls for the CPU, where AMX is missing (`gram_amx.cc`). The forward
// (`NtgaGramVnni`) is described here; the backward (`NtgaGramVnniBwd`, the
// cotangent in three 8-bit digits per column) at `PackDigitPanel` and
// `BackwardImpl`.
//
// Both operands are on the 8-bit grid: the validation images x_val = u / 255
// always, and the attacked block x = v / 255 at the attack's defaults (the
// clean images, moved by whole levels: eps and the step are multiples of
// 1/255). Python checks the block (`_gram`) and calls this only then. So
//
//   c0 = x_val x^T / d = (u v^T) / (255^2 d),
//
// and u v^T is a sum of integer products, computed exactly in int32 by
// VPDPBUSD (unsigned bytes times signed bytes, four per 32-bit lane). Its
// unsigned operand is v (0..255) and its signed one u - 128, prepared once
// per validation set (`_gram.prepare`), so
//
//   u v^T = (u - 128) v^T + 128 sum_k v,
//
// the second term one integer per block image. The result is exact until
// the one conversion to float32 and the scaling: no float32 GEMM's
// accumulated rounding. |u v^T| <= 255^2 d fits in int32 for d <= 32768,
// which `_gram.prepare` checks.
//
// VPDPBUSD on a 512-bit register does 64 byte products and their sums: on
// this project's 2-core Zen 4 it retires one per cycle per core (3.66 G/s
// measured: 469 G integer operations per second, a multiply and an add
// counted as two), four times the float32 FMA rate (117 GFLOP/s per core).
// Measured at (10,000, 512, 3,072): ~35 ms, 97% of that, against ~150 ms
// for XLA's float32 matmul; the backward, three such products, ~95 ms.
//
// Layout:
// * a = u - 128: int8 (mp, kp), row-major, rows padded to a multiple of kMr
//   and columns to a multiple of 4 with zeros (`_gram.prepare`).
// * v packed per call: [np / 64 groups][kp / 4 quads][4 panels][16 lanes][4]
//   bytes: per group and quad, four 64-byte registers, each 16 block images
//   by 4 consecutive k, as VPDPBUSD wants them.
// A micro-kernel holds kMr x 64 of C in 24 registers across all of k: per
// quad, 4 loads of v and kMr broadcasts of 4 bytes of a, 24 products. A
// group of v (64 images x kp bytes: 192 KB for CIFAR-10) stays in L2 while a
// task's kRowsPerTask rows pass over it. Tasks go to XLA's intra-op pool.
//
// Only the kernel functions are compiled for AVX-512 VNNI (target
// attributes); `NtgaVnniReady` asks the CPU first, from Python.

#include <immintrin.h>
#include <cpuid.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"

namespace ffi = xla::ffi;
using ntga_native::ParallelFor;

#define NTGA_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

namespace {

constexpr int kMr = 6;            // rows of C per micro-kernel (NtgaVnniMr)
constexpr int kGroup = 64;        // columns of C per micro-kernel
constexpr int kRowsPerTask = 48;  // 8 micro-kernels per group per task
constexpr int64_t kMaxDepth = 32768;

// The packed block's memory, kept per calling thread between calls (as in
// `gram_amx.cc`: a fresh allocation per call costs page faults).
template <typename T>
T* Buffer(std::vector<T>* buffer, size_t count) {
  if (buffer->size() < count) buffer->resize(count);
  return buffer->data();
}

struct PackedV {
  const uint8_t* data;  // [np / 64][kq][4][16][4]
  const int32_t* colsum;  // sum_k v[j][k], np entries (0 past n)
  int64_t kq;
  int groups;
};

// Packs the 16 block images of `panel16` (see the layout above): v =
// rint(255 x), clamped to [0, 255], and their sums over k. x (n, d)
// row-major float32.
NTGA_VNNI void PackPanel(const float* x, int n, int64_t d, int64_t kp,
                         int64_t kq, int panel16, uint8_t* data,
                         int32_t* colsum) {
  const int g = panel16 / 4, panel = panel16 % 4;
  const __m512 s255 = _mm512_set1_ps(255.0f);
  const __m512i zero = _mm512_setzero_si512(), top = _mm512_set1_epi32(255);
  for (int lane = 0; lane < 16; ++lane) {
    const int j = panel16 * 16 + lane;
    // Destination of k = 4 q + b: ((g kq + q) 4 + panel) 64 + lane 4 + b.
    uint8_t* dst = data + (static_cast<int64_t>(g) * kq * 4 + panel) * 64 +
                   lane * 4;
    int64_t sum = 0;
    for (int64_t k0 = 0; k0 < kp; k0 += 16) {
      alignas(16) uint8_t bytes[16] = {0};
      if (j < n && k0 < d) {
        const int64_t len = std::min<int64_t>(16, d - k0);
        const __mmask16 mask = static_cast<__mmask16>((1u << len) - 1);
        const __m512 xs = _mm512_maskz_loadu_ps(mask, x + j * d + k0);
        __m512i q = _mm512_cvt_roundps_epi32(
            _mm512_mul_ps(xs, s255),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm512_min_epi32(_mm512_max_epi32(q, zero), top);
        sum += _mm512_reduce_add_epi32(q);
        _mm_store_si128(reinterpret_cast<__m128i*>(bytes),
                        _mm512_cvtepi32_epi8(q));
      }
      const int64_t kend = std::min<int64_t>(16, kp - k0);
      for (int64_t b = 0; b < kend; b += 4)
        std::memcpy(dst + ((k0 + b) / 4) * 256, bytes + b, 4);
    }
    colsum[j] = static_cast<int32_t>(sum);
  }
}

PackedV PackV(ffi::ThreadPool& pool, const float* x, int n, int64_t d,
              int64_t kp) {
  thread_local std::vector<uint8_t> data_buf;
  thread_local std::vector<int32_t> sum_buf;
  PackedV p;
  p.kq = kp / 4;
  p.groups = (n + kGroup - 1) / kGroup;
  const int np = p.groups * kGroup;
  uint8_t* data = Buffer(&data_buf, static_cast<size_t>(np) * kp);
  int32_t* colsum = Buffer(&sum_buf, static_cast<size_t>(np));
  const int64_t kq = p.kq;
  ParallelFor(pool, np / 16, [&](int panel16) {
    PackPanel(x, n, d, kp, kq, panel16, data, colsum);
  });
  p.data = data;
  p.colsum = colsum;
  return p;
}

// acc[i][j] (+)= sum over kq quads of the int8 row a[i * lda + 4 q ..]
// times the packed panel's column j, for i < kMr, j < 64 (int32, exact);
// `add`: onto acc's values, else from zero.
NTGA_VNNI void MicroAcc(const int8_t* a, int64_t lda, const uint8_t* panel,
                        int64_t kq, int32_t* acc, bool add) {
#define NTGA_ACC(i)                                                      \
  __m512i c##i##0 = _mm512_setzero_si512(), c##i##1 = c##i##0,           \
          c##i##2 = c##i##0, c##i##3 = c##i##0;                          \
  if (add) {                                                             \
    c##i##0 = _mm512_loadu_si512(acc + (i) * kGroup);                    \
    c##i##1 = _mm512_loadu_si512(acc + (i) * kGroup + 16);               \
    c##i##2 = _mm512_loadu_si512(acc + (i) * kGroup + 32);               \
    c##i##3 = _mm512_loadu_si512(acc + (i) * kGroup + 48);               \
  }
  NTGA_ACC(0) NTGA_ACC(1) NTGA_ACC(2) NTGA_ACC(3) NTGA_ACC(4) NTGA_ACC(5)
#undef NTGA_ACC
  const uint8_t* b = panel;
  for (int64_t q = 0; q < kq; ++q, b += 256) {
    const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 64),
                  b2 = _mm512_loadu_si512(b + 128),
                  b3 = _mm512_loadu_si512(b + 192);
#define NTGA_ROW(i)                                                      \
  {                                                                      \
    int32_t w;                                                           \
    std::memcpy(&w, a + (i) * lda + q * 4, 4);                           \
    const __m512i ab = _mm512_set1_epi32(w);                             \
    c##i##0 = _mm512_dpbusd_epi32(c##i##0, b0, ab);                      \
    c##i##1 = _mm512_dpbusd_epi32(c##i##1, b1, ab);                      \
    c##i##2 = _mm512_dpbusd_epi32(c##i##2, b2, ab);                      \
    c##i##3 = _mm512_dpbusd_epi32(c##i##3, b3, ab);                      \
  }
    NTGA_ROW(0) NTGA_ROW(1) NTGA_ROW(2) NTGA_ROW(3) NTGA_ROW(4) NTGA_ROW(5)
#undef NTGA_ROW
  }
#define NTGA_STORE(i)                                       \
  _mm512_storeu_si512(acc + (i) * kGroup, c##i##0);         \
  _mm512_storeu_si512(acc + (i) * kGroup + 16, c##i##1);    \
  _mm512_storeu_si512(acc + (i) * kGroup + 32, c##i##2);    \
  _mm512_storeu_si512(acc + (i) * kGroup + 48, c##i##3);
  NTGA_STORE(0) NTGA_STORE(1) NTGA_STORE(2) NTGA_STORE(3) NTGA_STORE(4)
  NTGA_STORE(5)
#undef NTGA_STORE
}

const uint8_t* Panel(const PackedV& v, int g) {
  return v.data + static_cast<int64_t>(g) * v.kq * 256;
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> a,
                       ffi::Buffer<ffi::F32> x,
                       ffi::ResultBuffer<ffi::F32> c0) {
  auto ad = a.dimensions();
  auto xd = x.dimensions();
  auto cd = c0->dimensions();
  if (ad.size() != 2 || xd.size() != 2 || cd.size() != 2 ||
      ad[0] % kMr || ad[1] % 4 || ad[1] < xd[1] || ad[1] >= xd[1] + 4 ||
      cd[0] > ad[0] || cd[1] != xd[0] || xd[1] > kMaxDepth)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "gram_vnni: want a (mp, kp) int8, x (n, d), c0 (m, n); "
                      "kp = d rounded up to a multiple of 4, mp a multiple "
                      "of 6 and >= m, d <= 32768");
  const int64_t m = cd[0], d = xd[1], kp = ad[1];
  const int n = static_cast<int>(xd[0]);
  if (m == 0 || n == 0) return ffi::Error::Success();
  const PackedV v = PackV(pool, x.typed_data(), n, d, kp);
  const float scale = 1.0f / (255.0f * 255.0f * static_cast<float>(d));
  const int8_t* ap = a.typed_data();
  float* out = c0->typed_data();
  const int tasks = static_cast<int>((m + kRowsPerTask - 1) / kRowsPerTask);
  ParallelFor(pool, tasks, [&](int task) {
    const int64_t r0 = static_cast<int64_t>(task) * kRowsPerTask;
    const int64_t r1 = std::min<int64_t>(m, r0 + kRowsPerTask);
    alignas(64) int32_t acc[kMr * kGroup];
    for (int g = 0; g < v.groups; ++g) {
      const int j0 = g * kGroup, cols = std::min(kGroup, n - j0);
      for (int64_t r = r0; r < r1; r += kMr) {
        MicroAcc(ap + r * kp, kp, Panel(v, g), v.kq, acc, false);
        // c0 = (u v^T) scale = ((u - 128) v^T + 128 sum_k v) scale.
        for (int64_t i = 0; i < std::min<int64_t>(kMr, m - r); ++i) {
          float* dst = out + (r + i) * n + j0;
          for (int j = 0; j < cols; ++j)
            dst[j] = static_cast<float>(acc[i * kGroup + j] +
                                        128 * v.colsum[j0 + j]) * scale;
        }
      }
    }
  });
  return ffi::Error::Success();
}

// The backward product's unsigned operand: the cotangent dc (m, n) in three
// base-256 digits. Per column b, q = rint(dc[v, b] s_b) with s_b =
// kQMax / max_v |dc[v, b]| (|q| <= kQMax + 1 < 2^23 after the float32
// product's rounding; clamped all the same), and q + kOff =
// e0 + 256 e1 + 65536 e2 with kOff = 2^23, so every digit is 0..255. Rows
// past m are all-zero digits (they must add nothing). `inv_scale[b]` is
// s_b (0 for a zero column, NaN where the column is not finite).
constexpr int kDigits = 3;
constexpr float kQMax = 8388606.0f;  // 2^23 - 2
constexpr int32_t kOff = 1 << 23;

struct PackedDigits {
  PackedV digit[kDigits];
  const float* inv_scale;  // s_b, np entries
};

NTGA_VNNI void PackDigitPanel(const float* dc, int64_t m, int n, int64_t kq,
                              int panel16, uint8_t* const* data,
                              int32_t* const* colsum, float* inv_scale) {
  const int g = panel16 / 4, panel = panel16 % 4, j0 = panel16 * 16;
  const int cols = std::clamp(n - j0, 0, 16);
  const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1);
  // max |dc| per column, and which columns hold a NaN or an infinity.
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int64_t v = 0; v < m && cols > 0; ++v) {
    const __m512 x = _mm512_maskz_loadu_ps(mask, dc + v * n + j0);
    // x - x is NaN exactly where x is NaN or infinite.
    bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(x, x), _mm512_setzero_ps(),
                              _CMP_NEQ_UQ);
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(x));
  }
  const __mmask16 zero = _mm512_cmp_ps_mask(vmax, _mm512_setzero_ps(),
                                            _CMP_EQ_OQ);
  __m512 s = _mm512_div_ps(_mm512_set1_ps(kQMax), vmax);
  s = _mm512_mask_mov_ps(s, static_cast<__mmask16>(zero | bad),
                         _mm512_setzero_ps());
  _mm512_storeu_ps(inv_scale + j0,
                   _mm512_mask_mov_ps(s, bad, _mm512_set1_ps(NAN)));
  const __m512i off = _mm512_set1_epi32(kOff), byte = _mm512_set1_epi32(255);
  const __m512i lo = _mm512_setzero_si512(),
                hi = _mm512_set1_epi32((1 << 24) - 1);
  __m512i sum[kDigits] = {_mm512_setzero_si512(), _mm512_setzero_si512(),
                          _mm512_setzero_si512()};
  const int64_t base = (static_cast<int64_t>(g) * kq * 4 + panel) * 64;
  for (int64_t q = 0; q < kq; ++q) {
    __m512i word[kDigits] = {_mm512_setzero_si512(), _mm512_setzero_si512(),
                             _mm512_setzero_si512()};
    for (int r = 0; r < 4; ++r) {
      const int64_t v = 4 * q + r;
      if (v >= m) break;
      const __m512 x = _mm512_maskz_loadu_ps(mask, dc + v * n + j0);
      const __m512i qi = _mm512_min_epi32(
          _mm512_max_epi32(
              _mm512_add_epi32(
                  _mm512_cvt_roundps_epi32(
                      _mm512_mul_ps(x, s),
                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                  off),
              lo),
          hi);
      for (int p = 0; p < kDigits; ++p) {
        const __m512i e = _mm512_and_si512(_mm512_srli_epi32(qi, 8 * p), byte);
        sum[p] = _mm512_add_epi32(sum[p], e);
        word[p] = _mm512_or_si512(word[p], _mm512_slli_epi32(e, 8 * r));
      }
    }
    for (int p = 0; p < kDigits; ++p)
      _mm512_storeu_si512(data[p] + base + q * 256, word[p]);
  }
  for (int p = 0; p < kDigits; ++p)
    _mm512_storeu_si512(colsum[p] + j0, sum[p]);
}

PackedDigits PackDigits(ffi::ThreadPool& pool, const float* dc, int64_t m,
                        int n, int64_t mp) {
  thread_local std::vector<uint8_t> data_buf;
  thread_local std::vector<int32_t> sum_buf;
  thread_local std::vector<float> scale_buf;
  PackedDigits p;
  const int64_t kq = mp / 4;
  const int groups = (n + kGroup - 1) / kGroup, np = groups * kGroup;
  const size_t bytes = static_cast<size_t>(np) * mp;
  uint8_t* data = Buffer(&data_buf, kDigits * bytes);
  int32_t* sums = Buffer(&sum_buf, static_cast<size_t>(kDigits) * np);
  float* inv_scale = Buffer(&scale_buf, static_cast<size_t>(np));
  uint8_t* datas[kDigits];
  int32_t* colsums[kDigits];
  for (int d = 0; d < kDigits; ++d) {
    datas[d] = data + d * bytes;
    colsums[d] = sums + d * np;
    p.digit[d] = PackedV{datas[d], colsums[d], kq, groups};
  }
  ParallelFor(pool, np / 16, [&](int panel16) {
    PackDigitPanel(dc, m, n, kq, panel16, datas, colsums, inv_scale);
  });
  p.inv_scale = inv_scale;
  return p;
}

// dx (n, d) = dc^T u / (255 d), from at = (u - 128)^T (dp, mp) int8 and
// usum[k] = sum_v u[v, k]: per digit, the exact (u - 128)^T e_p in int32,
// then in double (exact: every term below 2^53)
//   u^T q = sum_p 256^p ((u - 128)^T e_p + 128 sum_v e_p) - kOff usum,
// times 1 / (s_b 255 d), rounded once to float32.
ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> at,
                        ffi::Buffer<ffi::S32> usum, ffi::Buffer<ffi::F32> dc,
                        ffi::ResultBuffer<ffi::F32> dx) {
  auto ad = at.dimensions();
  auto cd = dc.dimensions();
  auto xd = dx->dimensions();
  if (ad.size() != 2 || cd.size() != 2 || xd.size() != 2 ||
      usum.element_count() != xd[1] || ad[0] % kMr || ad[1] % 4 ||
      ad[0] < xd[1] || ad[0] >= xd[1] + kMr || ad[1] < cd[0] ||
      ad[1] >= cd[0] + 4 || xd[0] != cd[1] || cd[0] > kMaxDepth)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "gram_vnni_bwd: want at (dp, mp) int8, usum (d,), dc "
                      "(m, n), dx (n, d); dp = d rounded up to a multiple "
                      "of 6, mp = m rounded up to a multiple of 4, "
                      "m <= 32768");
  const int64_t m = cd[0], d = xd[1], mp = ad[1];
  const int n = static_cast<int>(cd[1]);
  float* out = dx->typed_data();
  if (d == 0 || n == 0) return ffi::Error::Success();
  if (m == 0) {
    std::memset(out, 0, sizeof(float) * d * n);
    return ffi::Error::Success();
  }
  const PackedDigits e = PackDigits(pool, dc.typed_data(), m, n, mp);
  const int groups = e.digit[0].groups;
  // Per column: 1 / (s_b 255 d), 0 for a zero column, NaN if not finite.
  std::vector<double> scale(static_cast<size_t>(groups) * kGroup);
  for (size_t j = 0; j < scale.size(); ++j) {
    const float s = e.inv_scale[j];
    scale[j] = s > 0 ? 1.0 / (static_cast<double>(s) * 255.0 *
                              static_cast<double>(d))
                     : (std::isnan(s) ? NAN : 0.0);
  }
  const int8_t* ap = at.typed_data();
  const int32_t* us = usum.typed_data();
  // Per task: kRowsPerTask rows of dx^T, one group of 64 columns at a
  // time, the reduction over v in blocks of kBwdQuads quads, so that the
  // three digit panels' block (3 x 128 KB) stays in L2 while the task's
  // micro-kernels pass over it, and each micro-kernel's rows of at
  // (6 x 2 KB) in L1 (unblocked, the 10,000-long reduction ran at ~80%).
  constexpr int64_t kBwdQuads = 512;
  constexpr int kMicros = kRowsPerTask / kMr;
  const int64_t kq = e.digit[0].kq;
  const int tasks = static_cast<int>((d + kRowsPerTask - 1) / kRowsPerTask);
  ParallelFor(pool, tasks, [&](int task) {
    const int64_t r0 = static_cast<int64_t>(task) * kRowsPerTask;
    const int64_t r1 = std::min<int64_t>(d, r0 + kRowsPerTask);
    thread_local std::vector<int32_t> acc_buf;
    int32_t* acc = Buffer(&acc_buf, static_cast<size_t>(kMicros) * kDigits *
                                        kMr * kGroup);
    auto acc_of = [&](int micro, int p) {
      return acc + (static_cast<int64_t>(micro) * kDigits + p) * kMr * kGroup;
    };
    for (int g = 0; g < groups; ++g) {
      const int j0 = g * kGroup, cols = std::min(kGroup, n - j0);
      for (int64_t q0 = 0; q0 < kq; q0 += kBwdQuads) {
        const int64_t len = std::min(kBwdQuads, kq - q0);
        for (int64_t r = r0; r < r1; r += kMr)
          for (int p = 0; p < kDigits; ++p)
            MicroAcc(ap + r * mp + 4 * q0, mp,
                     Panel(e.digit[p], g) + q0 * 256, len,
                     acc_of(static_cast<int>((r - r0) / kMr), p), q0 > 0);
      }
      // Written as dx (n, d): per column, the task's rows are consecutive.
      for (int j = 0; j < cols; ++j) {
        double corr = 0.0, w = 1.0;
        for (int p = 0; p < kDigits; ++p, w *= 256.0)
          corr += w * 128.0 * e.digit[p].colsum[j0 + j];
        float* dst = out + static_cast<int64_t>(j0 + j) * d;
        for (int64_t k = r0; k < r1; ++k) {
          const int micro = static_cast<int>((k - r0) / kMr);
          const int i = static_cast<int>((k - r0) % kMr);
          double t = corr - static_cast<double>(kOff) * us[k];
          w = 1.0;
          for (int p = 0; p < kDigits; ++p, w *= 256.0)
            t += w * acc_of(micro, p)[i * kGroup + j];
          dst[k] = static_cast<float>(t * scale[j0 + j]);
        }
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// 1 if this CPU has AVX-512 F, BW and VNNI (and the OS saves the AVX-512
// state), else 0.
extern "C" int NtgaVnniReady() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
}

// The micro-kernel's rows: `_gram.prepare` pads a's rows to a multiple.
extern "C" int NtgaVnniMr() { return kMr; }

// The backward's signed operand from the 8-bit pixels u (m, d): at[k][v] =
// u[v][k] - 128 for k < d, v < m, zero elsewhere up to (dp, mp) (d rounded
// up to a multiple of kMr, m to a multiple of 4), and usum[k] = sum_v
// u[v][k]. Plain C (ctypes), once per validation set, in 64 x 64 blocks.
extern "C" void NtgaVnniTransposeU8(const uint8_t* u, int64_t m, int64_t d,
                                    int8_t* at, int32_t* usum) {
  const int64_t dp = (d + kMr - 1) / kMr * kMr, mp = (m + 3) / 4 * 4;
  std::memset(at, 0, static_cast<size_t>(dp) * mp);
  std::memset(usum, 0, sizeof(int32_t) * d);
  constexpr int64_t kB = 64;
  for (int64_t v0 = 0; v0 < m; v0 += kB)
    for (int64_t k0 = 0; k0 < d; k0 += kB)
      for (int64_t k = k0; k < std::min(d, k0 + kB); ++k) {
        int32_t sum = 0;
        for (int64_t v = v0; v < std::min(m, v0 + kB); ++v) {
          const uint8_t x = u[v * d + k];
          at[k * mp + v] = static_cast<int8_t>(x ^ 0x80);
          sum += x;
        }
        usum[k] += sum;
      }
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtgaGramVnni, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtgaGramVnniBwd, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
