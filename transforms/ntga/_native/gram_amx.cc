// The FNN surrogate's Gram matrix against the validation set, and its
// gradient, on Intel AMX (bf16 tiles), as XLA FFI custom calls for the CPU.
//
// The validation images are 8-bit: x_val = u / 255 with integer u in
// [0, 255], which bfloat16 holds exactly. The other operand (the attacked
// block's images, or the Gram matrix's cotangent) is float32, split into
// three bfloat16 parts, hi + mid + lo, which together carry its 24-bit
// significand ("bf16x3", as oneDNN's f32:bf16x3 mode). A bf16 x bf16 product
// is exact in float32 and the tiles accumulate in float32, so the result has
// the rounding of a float32 GEMM, at AMX's bf16 rate (3 products per
// float32 one, each ~8x cheaper than AVX-512 float32 work here).
//
// * Forward (`NtgaGramAmx`): u (m, d) bf16, tiled and zero-padded to
//   multiples of 32, x (n, d) f32 -> c0 = u x^T / (255 d), (m, n).
// * Backward (`NtgaGramAmxBwd`): ut = u^T (d, m) bf16, tiled and padded
//   likewise, dc (m, n) f32 -> dc^T u / (255 d), (n, d), computed as
//   (u^T dc)^T: the same kernel, with the exact operand on the left.
//
// Both are C (rows, N) = A (rows, K) B (K, N) with A exact bf16 (a tile row
// is 32 consecutive k, as AMX wants its A operand) and B packed
// per call into AMX's "VNNI" layout (pairs of consecutive k interleaved per
// column), one copy per part: [N/16 column panels][3 parts][K/2][16][2].
//
// A is laid out in tiles once per validation set (`NtgaAmxTileU8`), so that
// each tile load reads 1 KB of consecutive memory. Blocking: a task is up
// to kMaxRowsPerTask rows of C, accumulated in a per-thread float32 buffer
// over blocks of kDepth k; within a block, each 32 x 32 block of C is held
// in four tiles, and per 32 k the kernel loads two A tiles and, per part,
// two B tiles, for four tile products each. Tasks go to the threads of
// XLA's own intra-op pool (as in `fnn_ntk.cc`; an OpenMP team spinning
// after each call competed with XLA's matmuls for the cores).
//
// AMX must be enabled for the process (`NtgaAmxInit`, called from Python
// before the first call: CPUID, then Linux's ARCH_REQ_XCOMP_PERM); the
// handlers return an error if it was not.

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cpuid.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"

namespace ffi = xla::ffi;
using ntga_native::ParallelFor;

namespace {

// Rows of C per task, at most (8 panels of 32; fewer when there are few
// rows, so that both threads get work), and k per block. Each 32 x 32 block
// of C stays in tiles for kDepth k: storing and reloading the accumulators
// drains the tile pipeline, which at 128 k per block halved the rate (1.1
// against 2.5 TFLOP/s per core with all operands in L1). A task's A block
// (256 x 1024 bf16, 512 KB) and a column pair's B block (3 parts x 32
// columns x 1024, 192 KB) stay in L2. Measured on this project's 2-core
// machine at (10,000, 512, 3,072): ~1.4 TFLOP/s (bf16) per core; the
// tile products alone run at 3.3.
constexpr int kMaxRowsPerTask = 256;
constexpr int kDepth = 1024;
constexpr int kParts = 3;          // hi, mid, lo

std::atomic<int> amx_ready{0};

// Round to nearest even (finite inputs; NaN is not expected here).
inline uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float FromBf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// x = hi + mid + lo (+ a remainder below float32 precision): each
// difference is exact in float32, since it drops the leading bits only.
inline void Split(float x, uint16_t* hi, uint16_t* mid, uint16_t* lo) {
  *hi = ToBf16(x);
  const float r1 = x - FromBf16(*hi);
  *mid = ToBf16(r1);
  *lo = ToBf16(r1 - FromBf16(*mid));
}


// B (K, N) packed: panel p (16 columns), part, k-pair kh -> 32 values.
struct Packed {
  uint16_t* data;
  int64_t kh;  // K / 2, K padded to a multiple of 32
  int np;      // N padded to a multiple of 32
  uint16_t* At(int panel, int part, int64_t k) const {
    return data + ((static_cast<int64_t>(panel) * kParts + part) * kh +
                   k / 2) * 32;
  }
};

// The packed operand's memory, kept per calling thread between calls: a
// fresh 30 MB allocation per call cost as much in page faults as the
// packing itself.
uint16_t* PackBuffer(size_t count) {
  thread_local std::vector<uint16_t> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

typedef float VF __attribute__((vector_size(64)));
typedef uint32_t VU __attribute__((vector_size(64)));

// `Split` on 16 lanes, each part returned as float32 whose low 16 bits are
// zero (its bf16 value, in place).
inline void SplitV(VF x, VU* hi, VU* mid, VU* lo) {
  auto round = [](VF v) {
    VU u;
    std::memcpy(&u, &v, 64);
    return (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  };
  auto as_float = [](VU u) {
    VF v;
    std::memcpy(&v, &u, 64);
    return v;
  };
  *hi = round(x);
  const VF r1 = x - as_float(*hi);
  *mid = round(r1);
  *lo = round(r1 - as_float(*mid));
}

// Packs B(k, j) = b[k * n + j] (row-major (K, N): the backward's dc) for
// k < k_real (zero up to kp): one 64-byte tile row per part per k-pair,
// 16 columns at once.
Packed PackRows(ffi::ThreadPool& pool, const float* b, int64_t k_real,
                int64_t kp, int n) {
  Packed p;
  p.kh = kp / 2;
  p.np = (n + 31) / 32 * 32;
  p.data = PackBuffer(static_cast<size_t>(p.np / 16) * kParts * p.kh * 32);
  constexpr int kPairsPerTask = 512;
  const int64_t chunks = (p.kh + kPairsPerTask - 1) / kPairsPerTask;
  ParallelFor(pool, static_cast<int>(chunks * (p.np / 16)), [&](int t) {
    const int panel = static_cast<int>(t % (p.np / 16));
    const int64_t h0 = (t / (p.np / 16)) * kPairsPerTask;
    const int64_t h1 = std::min<int64_t>(p.kh, h0 + kPairsPerTask);
    const int j0 = panel * 16, jn = std::max(0, std::min(16, n - j0));
    auto row = [&](int64_t k) {
      VF v = {};
      if (k < k_real) std::memcpy(&v, b + k * n + j0, jn * sizeof(float));
      return v;
    };
    for (int64_t h = h0; h < h1; ++h) {
      VU e[kParts], o[kParts];
      SplitV(row(2 * h), &e[0], &e[1], &e[2]);
      SplitV(row(2 * h + 1), &o[0], &o[1], &o[2]);
      for (int part = 0; part < kParts; ++part) {
        // Tile row word j: (B(2h+1, j) << 16) | B(2h, j), bf16 each.
        const VU w = o[part] | (e[part] >> 16);
        std::memcpy(p.At(panel, part, 2 * h), &w, 64);
      }
    }
  });
  return p;
}

// Packs B(k, j) = b[j * k_real + k] (the forward's x (n, d), read as x^T),
// zero for k >= k_real up to kp and for j >= n up to the panel's end.
Packed PackCols(ffi::ThreadPool& pool, const float* b, int64_t k_real,
                int64_t kp, int n) {
  Packed p;
  p.kh = kp / 2;
  p.np = (n + 31) / 32 * 32;
  p.data = PackBuffer(static_cast<size_t>(p.np / 16) * kParts * p.kh * 32);
  ParallelFor(pool, p.np / 16, [&](int panel) {
    uint16_t* part[kParts] = {p.At(panel, 0, 0), p.At(panel, 1, 0),
                              p.At(panel, 2, 0)};
    for (int jj = 0; jj < 16; ++jj) {
      const int j = panel * 16 + jj;
      for (int64_t k = 0; k < kp; ++k) {
        uint16_t v[kParts] = {0, 0, 0};
        if (j < n && k < k_real) Split(b[j * k_real + k], &v[0], &v[1], &v[2]);
        const int64_t o = (k / 2) * 32 + 2 * jj + (k & 1);
        for (int q = 0; q < kParts; ++q) part[q][o] = v[q];
      }
    }
  });
  return p;
}

struct TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Tiles 0-3: C (2 x 2 blocks of 16 x 16 float32); 4-5: A (16 rows x 32
// bf16); 6-7: B (16 k-pairs x 16 columns x 2). All 16 rows of 64 bytes.
void LoadTileConfig() {
  alignas(64) TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

// A (rows_p, kp) in tiles: [rows_p / 16][kp / 32][16][32], so that each
// tile load reads 1 KB of consecutive memory (row-major A, with rows 6 KB
// apart, made every tile load touch 16 pages).
inline const uint16_t* ATile(const uint16_t* a, int64_t kp, int64_t row,
                             int64_t k) {
  return a + ((row / 16) * (kp / 32) + k / 32) * 512;
}

// C (rows, n) * scale = A (rows_p, kp) B, for rows <= rows_p (a multiple of
// 32), written at out[i * ldo + j], or at out[j * ldo + i] if `transpose`.
void Gemm(ffi::ThreadPool& pool, const uint16_t* a, int64_t rows, int64_t kp,
          const Packed& b, int n, float scale, float* out, int64_t ldo,
          bool transpose) {
  const int64_t spread = (rows + 2 * pool.num_threads() + 1) /
                         (2 * pool.num_threads() + 2);
  const int kRowsPerTask = static_cast<int>(
      std::clamp<int64_t>((spread + 31) / 32 * 32, 32, kMaxRowsPerTask));
  const int tasks = static_cast<int>((rows + kRowsPerTask - 1) / kRowsPerTask);
  const int np = b.np;
  ParallelFor(pool, tasks, [&](int task) {
    const int64_t r0 = static_cast<int64_t>(task) * kRowsPerTask;
    const int task_rows = static_cast<int>(std::min<int64_t>(kRowsPerTask,
                                                             rows - r0));
    const int panels = (task_rows + 31) / 32;
    thread_local std::vector<float> acc;
    acc.resize(static_cast<size_t>(kMaxRowsPerTask) * np);
    float* c_all = acc.data();
    const int64_t ldc = np * sizeof(float);
    LoadTileConfig();
    for (int64_t k0 = 0; k0 < kp; k0 += kDepth) {
      const int64_t k1 = std::min<int64_t>(kp, k0 + kDepth);
      for (int jp = 0; jp < np / 32; ++jp) {
        for (int ip = 0; ip < panels; ++ip) {
          const int64_t row = r0 + 32 * ip;
          float* c = c_all + static_cast<int64_t>(32 * ip) * np + 32 * jp;
          if (k0 == 0) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
          } else {
            _tile_loadd(0, c, ldc);
            _tile_loadd(1, c + 16, ldc);
            _tile_loadd(2, c + 16 * np, ldc);
            _tile_loadd(3, c + 16 * np + 16, ldc);
          }
          for (int64_t k = k0; k < k1; k += 32) {
            _tile_loadd(4, ATile(a, kp, row, k), 64);
            _tile_loadd(5, ATile(a, kp, row + 16, k), 64);
            for (int part = 0; part < kParts; ++part) {
              // Each B tile's load right before its two products: the
              // next load into a tile waits for its last reader.
              _tile_loadd(6, b.At(2 * jp, part, k), 64);
              _tile_dpbf16ps(0, 4, 6);
              _tile_dpbf16ps(2, 5, 6);
              _tile_loadd(7, b.At(2 * jp + 1, part, k), 64);
              _tile_dpbf16ps(1, 4, 7);
              _tile_dpbf16ps(3, 5, 7);
            }
          }
          _tile_stored(0, c, ldc);
          _tile_stored(1, c + 16, ldc);
          _tile_stored(2, c + 16 * np, ldc);
          _tile_stored(3, c + 16 * np + 16, ldc);
        }
      }
    }
    _tile_release();
    if (!transpose) {
      for (int i = 0; i < task_rows; ++i) {
        const float* src = c_all + static_cast<int64_t>(i) * np;
        float* dst = out + (r0 + i) * ldo;
        for (int j = 0; j < n; ++j) dst[j] = src[j] * scale;
      }
    } else {
      for (int j = 0; j < n; ++j) {
        float* dst = out + j * ldo + r0;
        for (int i = 0; i < task_rows; ++i)
          dst[i] = c_all[static_cast<int64_t>(i) * np + j] * scale;
      }
    }
  });
}

// Dimensions of a tiled A: (rows_p, kp) from [rows_p/16][kp/32][16][32].
bool TiledDims(ffi::Span<const int64_t> dims, int64_t* rows_p, int64_t* kp) {
  if (dims.size() != 4 || dims[2] != 16 || dims[3] != 32 || dims[0] % 2)
    return false;
  *rows_p = dims[0] * 16;
  *kp = dims[1] * 32;
  return true;
}

ffi::Error NotReady() {
  return ffi::Error(ffi::ErrorCode::kFailedPrecondition,
                    "AMX is not enabled for this process (NtgaAmxInit)");
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> u,
                       ffi::Buffer<ffi::F32> x,
                       ffi::ResultBuffer<ffi::F32> c0) {
  if (!amx_ready.load()) return NotReady();
  int64_t mp, kp;
  auto xd = x.dimensions();
  auto cd = c0->dimensions();
  if (!TiledDims(u.dimensions(), &mp, &kp) || xd.size() != 2 ||
      cd.size() != 2 || kp < xd[1] || kp >= xd[1] + 32 || cd[0] > mp ||
      cd[1] != xd[0])
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "gram_amx: want u tiled (mp, kp), x (n, d), c0 (m, n); "
                      "kp = d rounded up to a multiple of 32, m <= mp");
  const int64_t m = cd[0], d = xd[1];
  const int n = static_cast<int>(xd[0]);
  if (m == 0 || n == 0) return ffi::Error::Success();
  Packed b = PackCols(pool, x.typed_data(), d, kp, n);
  Gemm(pool, reinterpret_cast<const uint16_t*>(u.typed_data()), m, kp, b, n,
       1.0f / (255.0f * static_cast<float>(d)), c0->typed_data(), n,
       /*transpose=*/false);
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> ut,
                        ffi::Buffer<ffi::F32> dc,
                        ffi::ResultBuffer<ffi::F32> dx) {
  if (!amx_ready.load()) return NotReady();
  int64_t dp, mp;
  auto cd = dc.dimensions();
  auto xd = dx->dimensions();
  if (!TiledDims(ut.dimensions(), &dp, &mp) || cd.size() != 2 ||
      xd.size() != 2 || mp < cd[0] || mp >= cd[0] + 32 || xd[1] > dp ||
      xd[0] != cd[1])
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "gram_amx_bwd: want ut tiled (dp, mp), dc (m, n), "
                      "dx (n, d); mp = m rounded up to a multiple of 32, "
                      "d <= dp");
  const int64_t m = cd[0], d = xd[1];
  const int n = static_cast<int>(cd[1]);
  if (d == 0 || n == 0) return ffi::Error::Success();
  if (m == 0) {
    std::memset(dx->typed_data(), 0, sizeof(float) * n * d);
    return ffi::Error::Success();
  }
  Packed b = PackRows(pool, dc.typed_data(), m, mp, n);
  Gemm(pool, reinterpret_cast<const uint16_t*>(ut.typed_data()), d, mp, b, n,
       1.0f / (255.0f * static_cast<float>(d)), dx->typed_data(), d,
       /*transpose=*/true);
  return ffi::Error::Success();
}

}  // namespace

// 1 if this CPU has AMX-BF16 and Linux grants this process the tile data
// state (once per process, for all its threads), else 0.
extern "C" int NtgaAmxInit() {
  if (amx_ready.load()) return 1;
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
  const bool tile = (edx >> 24) & 1, bf16 = (edx >> 22) & 1;
  if (!tile || !bf16) return 0;
  constexpr long kReqXcompPerm = 0x1023, kGetXcompPerm = 0x1022;
  constexpr int kXtiledata = 18;
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) != 0) return 0;
  unsigned long perm = 0;
  if (syscall(SYS_arch_prctl, kGetXcompPerm, &perm) != 0 ||
      !((perm >> kXtiledata) & 1))
    return 0;
  amx_ready.store(1);
  return 1;
}

// The 8-bit pixels u (m, d) as both tiled bf16 operands: a = u padded to
// (mp, kp) and at = u^T padded to (kp, mp) (mp, kp: m, d rounded up to
// multiples of 32), each as [rows/16][cols/32][16][32] (see `ATile`).
// Plain C (ctypes), once per validation set; numpy's strided transpose and
// XLA's took 0.3-1 s for CIFAR-10's 10,000 images, this ~0.1 s.
extern "C" void NtgaAmxTileU8(const uint8_t* u, int64_t m, int64_t d,
                              uint16_t* a, uint16_t* at) {
  const int64_t mp = (m + 31) / 32 * 32, kp = (d + 31) / 32 * 32;
  uint16_t table[256];
  for (int v = 0; v < 256; ++v) table[v] = ToBf16(static_cast<float>(v));
  auto pixel = [&](int64_t r, int64_t c) -> uint16_t {
    return r < m && c < d ? table[u[r * d + c]] : 0;
  };
  for (int64_t r0 = 0; r0 < mp; r0 += 32) {
    for (int64_t c0 = 0; c0 < kp; c0 += 32) {
      // a: tiles (r/16, c/32), rows r of 32 consecutive c.
      for (int64_t r = r0; r < r0 + 32; ++r) {
        uint16_t* dst = a + ((r / 16) * (kp / 32) + c0 / 32) * 512 +
                        (r % 16) * 32;
        for (int64_t c = 0; c < 32; ++c) dst[c] = pixel(r, c0 + c);
      }
      // at: tiles (c/16, r/32), rows c of 32 consecutive r.
      for (int64_t c = c0; c < c0 + 32; ++c) {
        uint16_t* dst = at + ((c / 16) * (mp / 32) + r0 / 32) * 512 +
                        (c % 16) * 32;
        for (int64_t r = 0; r < 32; ++r) dst[r] = pixel(r0 + r, c);
      }
    }
  }
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtgaGramAmx, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtgaGramAmxBwd, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
