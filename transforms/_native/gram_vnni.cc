// The FNN surrogate's Gram matrix against the validation set, in exact
// 8-bit integer arithmetic (AVX-512 VNNI), as an XLA FFI custom call for the
// CPU: the forward product where AMX is missing (`gram_amx.cc`).
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
// VPDPBUSD on a 512-bit register does 64 byte products: on this project's
// 2-core Zen 4 (two 256-bit pipes) it retires one every two cycles, ~470
// G products-and-adds per second per core, twice the float32 FMA rate.
// Measured at (10,000, 512, 3,072): ~35 ms, 97% of that, against ~150 ms
// for XLA's float32 matmul.
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

// One row of C: (acc + 128 colsum) scale, columns under `mask` only.
NTGA_VNNI inline void StoreRow(float* dst, const __mmask16* mask,
                               const __m512i* corr, __m512 scale, __m512i x0,
                               __m512i x1, __m512i x2, __m512i x3) {
  const __m512i xs[4] = {x0, x1, x2, x3};
  for (int t = 0; t < 4; ++t)
    _mm512_mask_storeu_ps(
        dst + 16 * t, mask[t],
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(xs[t], corr[t])),
                      scale));
}

// C rows [r, r + kMr) x group g, stored as float32 (acc + 128 colsum) scale
// to out (ldo = n), rows < m and columns < n only.
NTGA_VNNI void Micro(const int8_t* a, int64_t kp, const PackedV& v, int g,
                     int64_t r, int64_t m, int n, float scale, float* out) {
  const uint8_t* b = v.data + static_cast<int64_t>(g) * v.kq * 256;
#define NTGA_ACC(i) \
  __m512i c##i##0 = _mm512_setzero_si512(), c##i##1 = c##i##0, \
          c##i##2 = c##i##0, c##i##3 = c##i##0;
  NTGA_ACC(0) NTGA_ACC(1) NTGA_ACC(2) NTGA_ACC(3) NTGA_ACC(4) NTGA_ACC(5)
#undef NTGA_ACC
  const int8_t* a0 = a + r * kp;
  for (int64_t q = 0; q < v.kq; ++q, b += 256) {
    const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 64),
                  b2 = _mm512_loadu_si512(b + 128),
                  b3 = _mm512_loadu_si512(b + 192);
#define NTGA_ROW(i)                                                      \
  {                                                                      \
    int32_t w;                                                           \
    std::memcpy(&w, a0 + (i) * kp + q * 4, 4);                           \
    const __m512i ab = _mm512_set1_epi32(w);                             \
    c##i##0 = _mm512_dpbusd_epi32(c##i##0, b0, ab);                      \
    c##i##1 = _mm512_dpbusd_epi32(c##i##1, b1, ab);                      \
    c##i##2 = _mm512_dpbusd_epi32(c##i##2, b2, ab);                      \
    c##i##3 = _mm512_dpbusd_epi32(c##i##3, b3, ab);                      \
  }
    NTGA_ROW(0) NTGA_ROW(1) NTGA_ROW(2) NTGA_ROW(3) NTGA_ROW(4) NTGA_ROW(5)
#undef NTGA_ROW
  }
  const __m512 sc = _mm512_set1_ps(scale);
  const int j0 = g * kGroup;
  __m512i corr[4];
  __mmask16 mask[4];
  for (int t = 0; t < 4; ++t) {
    corr[t] = _mm512_slli_epi32(
        _mm512_loadu_si512(v.colsum + j0 + 16 * t), 7);  // 128 colsum
    const int cols = std::clamp(n - (j0 + 16 * t), 0, 16);
    mask[t] = static_cast<__mmask16>((1u << cols) - 1);
  }
  if (r + 0 < m) {
    float* dst = out + (r + 0) * n + j0;
    StoreRow(dst, mask, corr, sc, c00, c01, c02, c03);
  }
  if (r + 1 < m) {
    float* dst = out + (r + 1) * n + j0;
    StoreRow(dst, mask, corr, sc, c10, c11, c12, c13);
  }
  if (r + 2 < m) {
    float* dst = out + (r + 2) * n + j0;
    StoreRow(dst, mask, corr, sc, c20, c21, c22, c23);
  }
  if (r + 3 < m) {
    float* dst = out + (r + 3) * n + j0;
    StoreRow(dst, mask, corr, sc, c30, c31, c32, c33);
  }
  if (r + 4 < m) {
    float* dst = out + (r + 4) * n + j0;
    StoreRow(dst, mask, corr, sc, c40, c41, c42, c43);
  }
  if (r + 5 < m) {
    float* dst = out + (r + 5) * n + j0;
    StoreRow(dst, mask, corr, sc, c50, c51, c52, c53);
  }
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
    for (int g = 0; g < v.groups; ++g)
      for (int64_t r = r0; r < r1; r += kMr)
        Micro(ap, kp, v, g, r, m, n, scale, out);
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtgaGramVnni, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
