// Two kernels for a sampler's decode steps on x86 CPUs with AMX (Intel Xeon since Sapphire
// Rapids), called from JAX through the XLA FFI (score_jax/kernels/amx.py is the Python side).
// A decode step multiplies a few rows by every weight and attends over the whole KV cache,
// so it is bound by reading memory; XLA's CPU kernels rearrange their operands on every call,
// and these read them in place.
//
// ScoreJaxAmxMatmul: y[M, N] (fp32) = x[M, K] (bf16) times a weight W[K, N] (bf16) stored
// ahead of time in the AMX tile order
//
//   tiles[N/16][K/32][16][32],  tiles[j][i][r][2c + p] = W[32i + 2r + p][16j + c],
//
// so that each 16x32 block of W is one contiguous 1 KiB tile (pairs of consecutive K rows
// interleaved, as TDPBF16PS reads them) and the product streams the weights once, in order.
//
// ScoreJaxAmxDecodeAttention: one new token's grouped-query attention over a bf16 cache
// [B, K, S, Dh]: writes the token's key and value into their slot (in place: the caches are
// aliased to the outputs), then for each (batch row, KV head) the logits of its G query heads
// against the cached keys (AMX, key rows loaded straight from the cache), the soft cap, bias
// and softmax in fp32, the weights rounded to bf16, and their product with the cached values
// (AVX-512, fp32 accumulation).
//
// Work is split into units (column panels of 32 outputs; (batch row, KV head) pairs) shared
// by the calling thread and a few helper threads of this library's own, which spin for a
// short while after each job before they sleep: a decode step issues a few hundred jobs back
// to back, each of a fraction of a millisecond, and a helper that has to be woken arrives too
// late to share one. Each thread takes a contiguous share of the units (streaming its part of
// the memory in order) and then helps with the others'; units are claimed from atomic
// counters, so a late helper just finds less work, and the caller only waits for units a
// helper has already claimed (never for a helper to start).
//
// SCORE_JAX_AMX_THREADS sets the number of threads per job (the caller included); the
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
#include <cmath>
#include <cstring>
#include <limits>
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

// Work that threads share: ``num_units`` independent units (column panels of a product, or
// (batch, key/value head) pairs of an attention step), split into contiguous shares (one
// per thread, so that each thread streams its part of the memory in order). A thread works
// through its own share, then helps with the others'; every share has its own claim counter.
struct alignas(64) Share {
  std::atomic<int64_t> next{0};
  int64_t end = 0;
};

class Job {
 public:
  virtual ~Job() = default;

  // Runs one unit on the calling thread. ``tile_rows`` is the row count of the tile
  // configuration this thread has loaded (0: none); a unit loads the one it needs.
  virtual void Run(int64_t unit, int& tile_rows) = 0;

  void Split(int64_t units, int threads) {
    num_units_ = units;
    num_shares_ = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, units)));
    shares_.reset(new Share[num_shares_]);
    for (int s = 0; s < num_shares_; ++s) {
      shares_[s].next.store(units * s / num_shares_, std::memory_order_relaxed);
      shares_[s].end = units * (s + 1) / num_shares_;
    }
  }

  // Runs the units of share ``first`` and then of the others until none are left.
  void Work(int first) {
    int tile_rows = 0;
    int64_t done = 0;
    for (int s = 0; s < num_shares_; ++s) {
      Share& share = shares_[(first + s) % num_shares_];
      for (int64_t unit; (unit = share.next.fetch_add(1)) < share.end; ++done) {
        Run(unit, tile_rows);
      }
    }
    if (tile_rows) _tile_release();
    units_done_.fetch_add(done, std::memory_order_release);
  }

  int num_shares() const { return num_shares_; }
  int64_t num_units() const { return num_units_; }

  bool finished() const {
    return units_done_.load(std::memory_order_acquire) >= num_units_;
  }

 private:
  int64_t num_units_ = 0;
  int num_shares_ = 1;
  std::unique_ptr<Share[]> shares_;
  alignas(64) std::atomic<int64_t> units_done_{0};
};

void UseTileRows(int rows, int& loaded) {
  if (loaded != rows) LoadTileConfig(loaded = rows);
}

// y = x times tiles; a unit is one column panel of kPanelTiles tiles (the last may hold one).
class MatmulJob : public Job {
 public:
  MatmulJob(const uint16_t* x, const uint16_t* w, float* y, int64_t m, int64_t k, int64_t n)
      : x_(x), w_(w), y_(y), m_(m), k_(k), n_(n) {}

  static int64_t Panels(int64_t n) { return (n / kTileN + kPanelTiles - 1) / kPanelTiles; }

  void Run(int64_t panel, int& tile_rows) override {
    const int64_t full_rows = m_ / kTileRows * kTileRows;
    const int64_t tail_rows = m_ - full_rows;
    const int64_t tile = panel * kPanelTiles;
    const uint16_t* w = w_ + tile * (k_ / kTileK) * kTileRows * kTileK;
    float* y = y_ + tile * kTileN;
    const bool pair = tile + 1 < n_ / kTileN;
    if (full_rows > 0) {
      UseTileRows(kTileRows, tile_rows);
      if (pair) Panel<2>(x_, w, y, m_, k_, n_, 0, full_rows);
      else Panel<1>(x_, w, y, m_, k_, n_, 0, full_rows);
    }
    if (tail_rows > 0) {
      UseTileRows(static_cast<int>(tail_rows), tile_rows);
      if (pair) Block<1, 2>(x_ + full_rows * k_, w, y + full_rows * n_, k_, n_);
      else Block<1, 1>(x_ + full_rows * k_, w, y + full_rows * n_, k_, n_);
    }
  }

 private:
  const uint16_t* x_;
  const uint16_t* w_;
  float* y_;
  int64_t m_, k_, n_;
};

// e^x for 16 floats: 2^n e^r with n = round(x / ln 2) and |r| <= ln(2) / 2, e^r from its
// degree-6 Taylor polynomial (relative error about 1e-7); x below -104 gives 0.
__m512 Exp(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);   // ln 2, high part
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);         // ln 2, low part
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// One decode step of grouped-query attention over a KV cache, for every (batch row, KV head):
// the new token's key and value written into their cache slot, then the G query heads' logits against all S cached keys (AMX, reading the cache in place),
// soft-capped, biased, softmaxed in fp32, rounded to bf16, then times the cached values
// (AVX-512, fp32 accumulation). Computes what layers.Attention computes with XLA.
class AttentionJob : public Job {
 public:
  AttentionJob(const uint16_t* q, uint16_t* keys, uint16_t* values, const uint16_t* new_keys,
               const uint16_t* new_values, int64_t slot, const float* bias, float* out,
               int64_t kv_heads, int64_t groups, int64_t slots, int64_t head_dim, float softcap)
      : q_(q), keys_(keys), values_(values), new_keys_(new_keys), new_values_(new_values),
        slot_(slot), bias_(bias), out_(out), kv_heads_(kv_heads), groups_(groups),
        slots_(slots), head_dim_(head_dim), softcap_(softcap) {}

  void Run(int64_t unit, int& tile_rows) override {
    const int64_t b = unit / kv_heads_;
    const int64_t g_count = groups_, s_count = slots_, dh = head_dim_;
    const uint16_t* q = q_ + unit * g_count * dh;
    uint16_t* keys = keys_ + unit * s_count * dh;
    uint16_t* values = values_ + unit * s_count * dh;
    const float* bias = bias_ + b * s_count;
    float* out = out_ + unit * g_count * dh;
    // The new token's key and value go into their slot first (the cache is updated in place).
    std::memcpy(keys + slot_ * dh, new_keys_ + unit * dh, dh * 2);
    std::memcpy(values + slot_ * dh, new_values_ + unit * dh, dh * 2);

    // Logits: for 16 slots at a time, keys [16, Dh] (an A tile per 32 of Dh, loaded straight
    // from the cache) times the queries as a B tile [Dh pairs, 16 columns], G of them used.
    alignas(64) uint16_t q_tiles[4][kTileRows * kTileK];
    const int64_t k_tiles = dh / kTileK;
    std::memset(q_tiles, 0, sizeof(q_tiles));
    for (int64_t i = 0; i < k_tiles; ++i)
      for (int64_t r = 0; r < kTileRows; ++r)
        for (int64_t g = 0; g < g_count; ++g)
          for (int p = 0; p < 2; ++p)
            q_tiles[i][r * kTileK + 2 * g + p] = q[g * dh + i * kTileK + 2 * r + p];
    UseTileRows(kTileRows, tile_rows);
    _tile_loadd(4, q_tiles[0], 64);
    if (k_tiles > 1) _tile_loadd(5, q_tiles[1], 64);
    if (k_tiles > 2) _tile_loadd(6, q_tiles[2], 64);
    if (k_tiles > 3) _tile_loadd(7, q_tiles[3], 64);
    thread_local std::vector<float> logits;  // [S, 16]
    logits.resize(s_count * kTileN);
    for (int64_t s = 0; s < s_count; s += kTileRows) {
      const uint16_t* k_rows = keys + s * dh;
      const char* v_rows = reinterpret_cast<const char*>(values + s * dh);
      for (int line = 0; line < 2 * dh * kTileRows / 64; ++line)
        _mm_prefetch(v_rows + line * 64, _MM_HINT_T0);
      _tile_zero(0);
      _tile_loadd(2, k_rows, dh * 2);
      _tile_dpbf16ps(0, 2, 4);
      if (k_tiles > 1) { _tile_loadd(3, k_rows + kTileK, dh * 2); _tile_dpbf16ps(0, 3, 5); }
      if (k_tiles > 2) { _tile_loadd(2, k_rows + 2 * kTileK, dh * 2); _tile_dpbf16ps(0, 2, 6); }
      if (k_tiles > 3) { _tile_loadd(3, k_rows + 3 * kTileK, dh * 2); _tile_dpbf16ps(0, 3, 7); }
      _tile_stored(0, logits.data() + s * kTileN, kTileN * 4);
    }

    // Softmax over the slots, per query head, into bf16 weights [G, S] (S is a multiple of 16).
    thread_local std::vector<float> weights;
    weights.resize(g_count * s_count);
    for (int64_t g = 0; g < g_count; ++g) {
      float* w = weights.data() + g * s_count;
      for (int64_t s = 0; s < s_count; ++s) {
        float x = logits[s * kTileN + g];
        if (softcap_ > 0) x = softcap_ * std::tanh(x / softcap_);
        w[s] = x + bias[s];
      }
      __m512 max = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
      for (int64_t s = 0; s < s_count; s += 16) max = _mm512_max_ps(max, _mm512_loadu_ps(w + s));
      const __m512 row_max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t s = 0; s < s_count; s += 16) {
        const __m512 e = Exp(_mm512_sub_ps(_mm512_loadu_ps(w + s), row_max));
        _mm512_storeu_ps(w + s, e);
        sum = _mm512_add_ps(sum, e);
      }
      const __m512 scale = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
      for (int64_t s = 0; s < s_count; s += 16) {
        // Rounded to bf16 (nearest even) and back, as the XLA path casts the weights.
        const __m256i bits = reinterpret_cast<__m256i>(
            _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(w + s), scale)));
        _mm512_storeu_ps(w + s, _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)));
      }
    }

    // Output: weights [G, S] times values [S, Dh], 16 fp32 lanes of Dh at a time; each value
    // row is converted once for all G heads. Meanwhile the next unit's keys are prefetched.
    const int64_t vectors = dh / 16;
    __m512 acc[kTileN][8];  // [G][Dh / 16], Dh <= 128
    for (int64_t g = 0; g < g_count; ++g)
      for (int64_t j = 0; j < vectors; ++j) acc[g][j] = _mm512_setzero_ps();
    const char* next_keys = reinterpret_cast<const char*>(keys + s_count * dh);
    const bool prefetch = unit + 1 < num_units();
    for (int64_t s = 0; s < s_count; ++s) {
      if (prefetch && s % 16 == 0)
        for (int line = 0; line < 2 * dh * 16 / 64; ++line)
          _mm_prefetch(next_keys + (s * dh * 2) + line * 64, _MM_HINT_T0);
      const uint16_t* v = values + s * dh;
      __m512 value[8];
      for (int64_t j = 0; j < vectors; ++j) {
        const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 16 * j));
        value[j] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
      }
      for (int64_t g = 0; g < g_count; ++g) {
        const __m512 weight = _mm512_set1_ps(weights[g * s_count + s]);
        for (int64_t j = 0; j < vectors; ++j)
          acc[g][j] = _mm512_fmadd_ps(weight, value[j], acc[g][j]);
      }
    }
    for (int64_t g = 0; g < g_count; ++g)
      for (int64_t j = 0; j < vectors; ++j) _mm512_storeu_ps(out + g * dh + 16 * j, acc[g][j]);
  }

 private:
  const uint16_t* q_;
  uint16_t* keys_;
  uint16_t* values_;
  const uint16_t* new_keys_;
  const uint16_t* new_values_;
  int64_t slot_;
  const float* bias_;
  float* out_;
  int64_t kv_heads_, groups_, slots_, head_dim_;
  float softcap_;
};

// Helper threads that run the units of the latest job alongside its caller.
class Helpers {
 public:
  explicit Helpers(int count) {
    for (int i = 1; i <= count; ++i) threads_.emplace_back([this, i] { Loop(i); });
  }
  // Never joined: the helpers live as long as the process.

  int size() const { return static_cast<int>(threads_.size()); }

  void Offer(std::shared_ptr<Job> job) {
    std::atomic_store(&job_, std::move(job));
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
    if (sleeping_ > 0) wake_.notify_all();
  }

 private:
  // How long a helper spins for the next job before it sleeps.
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
      if (std::shared_ptr<Job> job = std::atomic_load(&job_)) {
        job->Work(index % job->num_shares());
      }
    }
  }

  std::vector<std::thread> threads_;
  std::shared_ptr<Job> job_;
  std::atomic<uint64_t> generation_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  int sleeping_ = 0;
};

int ThreadsPerJob() {
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

// Runs ``job``'s units on this thread and, when there are at least ``min_per_thread`` units
// per thread, on the helpers too; returns when every unit is done.
ffi::Error RunJob(std::shared_ptr<Job> job, int64_t units, int64_t min_per_thread) {
  static const bool permitted = RequestAmxPermission();
  if (!permitted) {
    return ffi::Error(ffi::ErrorCode::kFailedPrecondition,
                      "score_jax AMX kernels: the process was refused the AMX tile state "
                      "(arch_prctl ARCH_REQ_XCOMP_PERM failed)");
  }
  static Helpers* helpers = new Helpers(ThreadsPerJob() - 1);
  const int threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(helpers->size() + 1, units / min_per_thread)));
  job->Split(units, threads);
  if (threads > 1) helpers->Offer(job);
  job->Work(0);
  while (!job->finished()) _mm_pause();
  return ffi::Error::Success();
}

ffi::Error AmxMatmul(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> tiles,
                     ffi::ResultBuffer<ffi::F32> y) {
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
  const int64_t m = x_dims[0], k = x_dims[1], n = y_dims[1];
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::memset(y->typed_data(), 0, sizeof(float) * m * n);
    return ffi::Error::Success();
  }
  auto job = std::make_shared<MatmulJob>(reinterpret_cast<const uint16_t*>(x.typed_data()),
                                         reinterpret_cast<const uint16_t*>(tiles.typed_data()),
                                         y->typed_data(), m, k, n);
  // Share only products with at least two panels per thread.
  return RunJob(job, MatmulJob::Panels(n), 2);
}

ffi::Error AmxDecodeAttention(ffi::Buffer<ffi::BF16> q, ffi::Buffer<ffi::BF16> keys,
                              ffi::Buffer<ffi::BF16> values, ffi::Buffer<ffi::BF16> new_keys,
                              ffi::Buffer<ffi::BF16> new_values, ffi::Buffer<ffi::F32> bias,
                              ffi::Buffer<ffi::S32> slot, ffi::ResultBuffer<ffi::F32> out,
                              ffi::ResultBuffer<ffi::BF16> keys_out,
                              ffi::ResultBuffer<ffi::BF16> values_out, float softcap) {
  auto q_dims = q.dimensions();      // [B, K, G, Dh]
  auto k_dims = keys.dimensions();   // [B, K, S, Dh]
  auto v_dims = values.dimensions();
  auto nk_dims = new_keys.dimensions();  // [B, K, Dh]
  auto nv_dims = new_values.dimensions();
  auto b_dims = bias.dimensions();   // [B, S]
  if (q_dims.size() != 4 || k_dims.size() != 4 || v_dims.size() != 4 || b_dims.size() != 2 ||
      nk_dims.size() != 3 || nv_dims.size() != 3 || slot.dimensions().size() != 0 ||
      k_dims[0] != q_dims[0] || k_dims[1] != q_dims[1] || k_dims[3] != q_dims[3] ||
      v_dims[0] != k_dims[0] || v_dims[1] != k_dims[1] || v_dims[2] != k_dims[2] ||
      v_dims[3] != k_dims[3] || b_dims[0] != q_dims[0] || b_dims[1] != k_dims[2] ||
      nk_dims[0] != q_dims[0] || nk_dims[1] != q_dims[1] || nk_dims[2] != q_dims[3] ||
      nv_dims[0] != nk_dims[0] || nv_dims[1] != nk_dims[1] || nv_dims[2] != nk_dims[2] ||
      q_dims[2] > kTileN || q_dims[3] % kTileK != 0 || q_dims[3] > 4 * kTileK ||
      k_dims[2] % kTileRows != 0) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "score_jax AMX attention: expected q [B, K, G <= 16, Dh], keys and "
                      "values [B, K, S, Dh] with S a multiple of 16 and Dh one of 32, 64, 96, "
                      "128, new keys and values [B, K, Dh], bias [B, S] and a scalar slot");
  }
  if (keys_out->typed_data() != keys.typed_data() ||
      values_out->typed_data() != values.typed_data()) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "score_jax AMX attention: the caches must be aliased to the outputs");
  }
  const int64_t batch = q_dims[0], kv_heads = q_dims[1], slots = k_dims[2];
  const int64_t index = *slot.typed_data();
  if (index < 0 || index >= slots) {
    return ffi::Error(ffi::ErrorCode::kOutOfRange,
                      "score_jax AMX attention: the slot is outside the cache");
  }
  if (batch * kv_heads == 0) return ffi::Error::Success();
  auto job = std::make_shared<AttentionJob>(
      reinterpret_cast<const uint16_t*>(q.typed_data()),
      reinterpret_cast<uint16_t*>(keys_out->typed_data()),
      reinterpret_cast<uint16_t*>(values_out->typed_data()),
      reinterpret_cast<const uint16_t*>(new_keys.typed_data()),
      reinterpret_cast<const uint16_t*>(new_values.typed_data()), index, bias.typed_data(),
      out->typed_data(), kv_heads, q_dims[2], slots, q_dims[3], softcap);
  return RunJob(job, batch * kv_heads, 2);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScoreJaxAmxMatmul, AmxMatmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScoreJaxAmxDecodeAttention, AmxDecodeAttention,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()   // q
                                  .Arg<ffi::Buffer<ffi::BF16>>()   // keys (aliased)
                                  .Arg<ffi::Buffer<ffi::BF16>>()   // values (aliased)
                                  .Arg<ffi::Buffer<ffi::BF16>>()   // new keys
                                  .Arg<ffi::Buffer<ffi::BF16>>()   // new values
                                  .Arg<ffi::Buffer<ffi::F32>>()    // bias
                                  .Arg<ffi::Buffer<ffi::S32>>()    // slot
                                  .Ret<ffi::Buffer<ffi::F32>>()    // out
                                  .Ret<ffi::Buffer<ffi::BF16>>()   // keys
                                  .Ret<ffi::Buffer<ffi::BF16>>()   // values
                                  .Attr<float>("softcap"));
