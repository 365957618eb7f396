// Times the CNN kernel's two native passes directly, without JAX: the
// forward (RunKernel) and the gradient (RunGrad) of `cnn_ntk.cc`, which is
// compiled into this program (-DSRC="path/to/cnn_ntk.cc"), for an A/B of
// two versions of that file on the same inputs. Run through
// `bench_cnn_native.py`, which builds it with the library's flags.
//
// Usage: cnn_native_harness SHAPE M N2 REPEATS
//   SHAPE: mnist (28 x 28 x 1) or cifar10 (32 x 32 x 3); M x1 images (the
//   validation chunk), N2 x2 images (the block); the default architecture
//   (depth 2, 5 x 5 filters, stride 2, W_std^2 1.76, b_std^2 0.18, 3 dense).
// Prints one line of key=value: microseconds per kernel entry (M x N2
// entries) of the x1 packing, the forward and the gradient (best of
// REPEATS after one warm-up), and checksums of both outputs.

#include SRC

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s mnist|cifar10 M N2 REPEATS\n", argv[0]);
    return 2;
  }
  const std::string shape = argv[1];
  if (shape != "mnist" && shape != "cifar10") {
    std::fprintf(stderr, "unknown shape %s\n", shape.c_str());
    return 2;
  }
  const bool cifar = shape == "cifar10";
  const int m = std::atoi(argv[2]), n2 = std::atoi(argv[3]);
  const int reps = std::atoi(argv[4]);
  if (m < 1 || n2 < 1 || reps < 1) {
    std::fprintf(stderr, "M, N2 and REPEATS must be positive\n");
    return 2;
  }
  const int H = cifar ? 32 : 28, C = cifar ? 3 : 1;
  const Geometry g = MakeGeometry(H, H, C, 2, 5, 5, 2, 1.76f, 0.18f, 3);
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  const size_t img = static_cast<size_t>(H) * H * C;
  std::vector<float> x1(m * img), x2(n2 * img), v1(size_t(m) * g.S),
      v2(size_t(n2) * g.S), gk(size_t(m) * n2), out(size_t(m) * n2),
      gx(n2 * img), gv(size_t(n2) * g.S);
  for (auto& v : x1) v = u(rng);
  for (auto& v : x2) v = u(rng);
  // Self-variances of the right scale (the kernel takes them as inputs).
  for (auto& v : v1) v = 0.5f + u(rng);
  for (auto& v : v2) v = 0.5f + u(rng);
  for (auto& v : gk) v = u(rng) - 0.5f;
  const Sizes sz{m, n2, H, H, C};
  using Clock = std::chrono::steady_clock;
  auto seconds = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  PackedX1 p;
  double pack = 1e30, fwd = 1e30, grad = 1e30;
  for (int r = 0; r <= reps; ++r) {
    const auto t0 = Clock::now();
    PackX1(g, x1.data(), v1.data(), m, &p);
    const auto t1 = Clock::now();
    DISPATCH(RunKernel, g, p, sz, x2.data(), v2.data(), false, out.data());
    const auto t2 = Clock::now();
    DISPATCH(RunGrad, g, p, sz, x2.data(), v2.data(), false, gk.data(),
             gx.data(), gv.data());
    const auto t3 = Clock::now();
    if (r == 0) continue;  // warm-up
    pack = std::min(pack, seconds(t0, t1));
    fwd = std::min(fwd, seconds(t1, t2));
    grad = std::min(grad, seconds(t2, t3));
  }
  double ksum = 0, gsum = 0;
  for (float v : out) ksum += v;
  for (float v : gx) gsum += v;
  const double e = double(m) * n2 / 1e6;
  std::printf(
      "shape=%s m=%d n2=%d pack_us=%.4f fwd_us=%.4f grad_us=%.4f "
      "fwd_grad_us=%.4f k_sum=%.9g gx_sum=%.9g\n",
      shape.c_str(), m, n2, pack / e, fwd / e, grad / e, (fwd + grad) / e,
      ksum, gsum);
  return 0;
}
