// Work sharing on XLA's intra-op thread pool, for the native kernels that
// run inside XLA:CPU programs (`fnn_ntk.cc`, `gram_amx.cc`). XLA's own pool,
// rather than OpenMP: OpenMP's idle threads spin and took both cores from
// the XLA matmuls that run beside these kernels (a step 3x slower).

#ifndef NTGA_TFDS_NATIVE_PARALLEL_FOR_H_
#define NTGA_TFDS_NATIVE_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ntga_native {

// Runs body(b) for every b in [0, blocks), on the calling thread and on
// XLA's intra-op pool, and returns when all are done. Work is taken from a
// shared counter, so the caller never waits for a pool thread that has not
// started (the pool may be busy, or be running this very call); a task
// that starts late finds no work left and only touches the shared state it
// owns a reference to.
void ParallelFor(xla::ffi::ThreadPool& pool, int blocks,
                 const std::function<void(int)>& body) {
  struct State {
    std::atomic<int> next{0}, done{0};
    const std::function<void(int)>* body;
    int blocks;
  };
  auto state = std::make_shared<State>();
  state->body = &body;
  state->blocks = blocks;
  auto work = [](State& st) {
    for (int b; (b = st.next.fetch_add(1)) < st.blocks;) {
      (*st.body)(b);
      st.done.fetch_add(1, std::memory_order_release);
    }
  };
  const int helpers =
      static_cast<int>(std::min<int64_t>(pool.num_threads(), blocks - 1));
  for (int t = 0; t < helpers; ++t)
    pool.Schedule([state, work] { work(*state); });
  work(*state);
  while (state->done.load(std::memory_order_acquire) < blocks)
    std::this_thread::yield();
}

}  // namespace ntga_native

#endif  // NTGA_TFDS_NATIVE_PARALLEL_FOR_H_
