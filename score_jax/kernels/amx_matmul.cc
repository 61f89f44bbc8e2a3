// A bf16 matrix product for x86 CPUs with AMX (Intel Sapphire Rapids and later), called from
// JAX through the XLA FFI: y[M, N] (fp32) = x[M, K] (bf16) times a weight matrix W[K, N]
// (bf16) that is stored ahead of time in the AMX tile order
//
//   tiles[N/16][K/32][16][32],  tiles[j][i][r][2c + p] = W[32i + 2r + p][16j + c],
//
// so that each 16x32 block of W is one contiguous 1 KiB tile (pairs of consecutive K rows
// interleaved, as TDPBF16PS reads them) and the product streams the weights once, in
// order. A decode step multiplies a few rows by each weight, so its matmuls are bound by
// reading the weights: XLA's own CPU kernels rearrange the weights on every call, and this
// one does not. See score_jax/kernels/amx.py for the Python side and the layout's packing.
//
// Work is split over output column panels (32 columns) between the calling thread and a
// few helper threads of this library's own, which spin for a short while after each product
// before they sleep: a decode step issues a few hundred products back to back, each of a
// fraction of a millisecond, and a helper that has to be woken arrives too late to share
// one. Each thread takes a contiguous share of the panels (streaming its part of the
// weights in order) and then helps with the others'; panels are claimed from atomic
// counters, so a late helper just finds less work, and the caller only waits for panels a
// helper has already claimed (never for a helper to start).
//
// SCORE_JAX_AMX_THREADS sets the number of threads per product (the caller included); the
// default is the number of CPUs this process may run on.

#include <immintrin.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kTileRows = 16;     // rows of an A or C tile; K pairs of a B tile
constexpr int kTileK = 32;        // bf16 elements of K per tile row
constexpr int kTileN = 16;        // fp32 output columns per C tile
constexpr int kPanelTiles = 2;    // C tiles side by side in a work unit (32 columns)

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Tiles 0-3: accumulators C[m][n] (tile 2m + n); 4-5: rows of x; 6-7: weight tiles.
void LoadTileConfig(int rows) {
  TileConfig config;
  std::memset(&config, 0, sizeof(config));
  config.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = t < 6 ? rows : kTileRows;
  }
  // GCC does not treat LDTILECFG as reading its operand: keep the stores above alive.
  asm volatile("" : : "r"(&config) : "memory");
  _tile_loadconfig(&config);
}

// Accumulates MT row tiles (starting at x) times NT weight column tiles (starting at w)
// over all of K and stores the MT x NT fp32 tiles at y.
template <int MT, int NT>
void Block(const uint16_t* x, const uint16_t* w, float* y, int64_t k, int64_t n) {
  const int64_t k_tiles = k / kTileK;
  const int64_t x_stride = k * 2;
  const int64_t w_panel = k_tiles * kTileRows * kTileK;  // elements per column tile
  const int64_t y_stride = n * 4;
  _tile_zero(0);
  if constexpr (NT == 2) _tile_zero(1);
  if constexpr (MT == 2) _tile_zero(2);
  if constexpr (MT == 2 && NT == 2) _tile_zero(3);
  for (int64_t i = 0; i < k_tiles; ++i) {
    const uint16_t* xi = x + i * kTileK;
    const uint16_t* wi = w + i * kTileRows * kTileK;
    _tile_loadd(4, xi, x_stride);
    if constexpr (MT == 2) _tile_loadd(5, xi + kTileRows * k, x_stride);
    _tile_loadd(6, wi, 64);
    if constexpr (NT == 2) _tile_loadd(7, wi + w_panel, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NT == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (MT == 2) _tile_dpbf16ps(2, 5, 6);
    if constexpr (MT == 2 && NT == 2) _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, y, y_stride);
  if constexpr (NT == 2) _tile_stored(1, y + kTileN, y_stride);
  if constexpr (MT == 2) _tile_stored(2, y + kTileRows * n, y_stride);
  if constexpr (MT == 2 && NT == 2) _tile_stored(3, y + kTileRows * n + kTileN, y_stride);
}

template <int NT>
void Panel(const uint16_t* x, const uint16_t* w, float* y, int64_t m, int64_t k,
           int64_t n, int64_t first_row, int64_t rows) {
  int64_t r = first_row;
  for (; r + 2 * kTileRows <= first_row + rows; r += 2 * kTileRows) {
    Block<2, NT>(x + r * k, w, y + r * n, k, n);
  }
  if (r < first_row + rows) Block<1, NT>(x + r * k, w, y + r * n, k, n);
}

// One product, split into contiguous shares of column panels (one per thread, so that each
// thread streams its part of the weights in order). A thread works through its own share,
// then helps with the others'; every share has its own claim counter.
struct alignas(64) Share {
  std::atomic<int64_t> next{0};
  int64_t end = 0;
};

struct Problem {
  const uint16_t* x;
  const uint16_t* w;
  float* y;
  int64_t m, k, n;
  int64_t num_panels;  // column panels of kPanelTiles tiles (the last may hold one)
  int num_shares;
  std::unique_ptr<Share[]> shares;
  alignas(64) std::atomic<int64_t> panels_done{0};

  void Split(int threads) {
    num_shares = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, num_panels)));
    shares.reset(new Share[num_shares]);
    for (int s = 0; s < num_shares; ++s) {
      shares[s].next.store(num_panels * s / num_shares, std::memory_order_relaxed);
      shares[s].end = num_panels * (s + 1) / num_shares;
    }
  }
};

// Multiplies the panels of share ``first`` and then of the other shares, claiming each
// panel from its share's counter, until none are left.
void Work(Problem& p, int first) {
  const int64_t full_rows = p.m / kTileRows * kTileRows;
  const int64_t tail_rows = p.m - full_rows;
  const int64_t n_tiles = p.n / kTileN;
  const int64_t w_panel = (p.k / kTileK) * kTileRows * kTileK;
  int loaded_rows = 0;
  int64_t done = 0;
  for (int s = 0; s < p.num_shares; ++s) {
    Share& share = p.shares[(first + s) % p.num_shares];
    for (int64_t panel; (panel = share.next.fetch_add(1)) < share.end;) {
      const int64_t tile = panel * kPanelTiles;
      const uint16_t* w = p.w + tile * w_panel;
      float* y = p.y + tile * kTileN;
      const bool pair = tile + 1 < n_tiles;
      if (full_rows > 0) {
        if (loaded_rows != kTileRows) LoadTileConfig(loaded_rows = kTileRows);
        if (pair) Panel<2>(p.x, w, y, p.m, p.k, p.n, 0, full_rows);
        else Panel<1>(p.x, w, y, p.m, p.k, p.n, 0, full_rows);
      }
      if (tail_rows > 0) {
        if (loaded_rows != tail_rows) LoadTileConfig(loaded_rows = tail_rows);
        if (pair) Block<1, 2>(p.x + full_rows * p.k, w, y + full_rows * p.n, p.k, p.n);
        else Block<1, 1>(p.x + full_rows * p.k, w, y + full_rows * p.n, p.k, p.n);
      }
      ++done;
    }
  }
  if (loaded_rows) _tile_release();
  p.panels_done.fetch_add(done, std::memory_order_release);
}

// Helper threads that run the panels of the latest product alongside its caller.
class Helpers {
 public:
  explicit Helpers(int count) {
    for (int i = 1; i <= count; ++i) threads_.emplace_back([this, i] { Loop(i); });
  }
  // Never joined: the helpers live as long as the process.

  int size() const { return static_cast<int>(threads_.size()); }

  void Offer(std::shared_ptr<Problem> problem) {
    std::atomic_store(&problem_, std::move(problem));
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
    if (sleeping_ > 0) wake_.notify_all();
  }

 private:
  // How long a helper spins for the next product before it sleeps.
  static constexpr std::chrono::microseconds kSpin{200};

  void Loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      int polls = 0;
      while (generation_.load(std::memory_order_acquire) == seen) {
        _mm_pause();
        if (++polls % 64 == 0 && std::chrono::steady_clock::now() - start > kSpin) {
          std::unique_lock<std::mutex> lock(mutex_);
          ++sleeping_;
          wake_.wait(lock, [&] { return generation_.load() != seen; });
          --sleeping_;
        }
      }
      seen = generation_.load(std::memory_order_acquire);
      if (std::shared_ptr<Problem> problem = std::atomic_load(&problem_)) {
        Work(*problem, index % problem->num_shares);
      }
    }
  }

  std::vector<std::thread> threads_;
  std::shared_ptr<Problem> problem_;
  std::atomic<uint64_t> generation_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  int sleeping_ = 0;
};

int ThreadsPerProduct() {
  if (const char* value = std::getenv("SCORE_JAX_AMX_THREADS")) {
    const int threads = std::atoi(value);
    if (threads > 0) return threads;
  }
  cpu_set_t cpus;
  if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0) return std::max(1, CPU_COUNT(&cpus));
  return std::max(1u, std::thread::hardware_concurrency());
}

bool RequestAmxPermission() {
  // Linux hands out the AMX register state only on request (ARCH_REQ_XCOMP_PERM for
  // XFEATURE_XTILEDATA); the grant covers the whole process.
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

ffi::Error AmxMatmul(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> tiles,
                     ffi::ResultBuffer<ffi::F32> y) {
  static const bool permitted = RequestAmxPermission();
  if (!permitted) {
    return ffi::Error(ffi::ErrorCode::kFailedPrecondition,
                      "score_jax AMX matmul: the kernel refused the AMX tile state "
                      "(arch_prctl ARCH_REQ_XCOMP_PERM failed)");
  }
  auto x_dims = x.dimensions();
  auto w_dims = tiles.dimensions();
  auto y_dims = y->dimensions();
  if (x_dims.size() != 2 || w_dims.size() != 4 || y_dims.size() != 2 ||
      w_dims[2] != kTileRows || w_dims[3] != kTileK || x_dims[1] != w_dims[1] * kTileK ||
      y_dims[0] != x_dims[0] || y_dims[1] != w_dims[0] * kTileN) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "score_jax AMX matmul: expected x [M, K], tiles [N/16, K/32, 16, 32] "
                      "and y [M, N]");
  }
  auto problem = std::make_shared<Problem>();
  problem->x = reinterpret_cast<const uint16_t*>(x.typed_data());
  problem->w = reinterpret_cast<const uint16_t*>(tiles.typed_data());
  problem->y = y->typed_data();
  problem->m = x_dims[0];
  problem->k = x_dims[1];
  problem->n = y_dims[1];
  problem->num_panels = (w_dims[0] + kPanelTiles - 1) / kPanelTiles;
  if (problem->m == 0 || problem->num_panels == 0) return ffi::Error::Success();
  if (problem->k == 0) {
    std::memset(problem->y, 0, sizeof(float) * problem->m * problem->n);
    return ffi::Error::Success();
  }
  static Helpers* helpers = new Helpers(ThreadsPerProduct() - 1);
  // Share only products with at least two panels per thread.
  const int threads = static_cast<int>(
      std::min<int64_t>(helpers->size() + 1, problem->num_panels / 2));
  problem->Split(threads);
  if (threads > 1) helpers->Offer(problem);
  Work(*problem, 0);
  while (problem->panels_done.load(std::memory_order_acquire) < problem->num_panels) {
    _mm_pause();
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScoreJaxAmxMatmul, AmxMatmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
