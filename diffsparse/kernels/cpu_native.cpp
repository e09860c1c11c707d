// Block-sparse attention forward for the CPU, reading kept key blocks in place (no gather).
//
// One work item is a (batch, head, query block) row. A row walks its kept key blocks in ascending
// order with an online softmax: S = scale * Q K^T on a (bq x keys) tile (BLAS sgemm; a run of
// consecutive kept blocks is one operand), a running max and sum per query, O = O * corr + P V. PyTorch's CPU flash kernel cuts a 128-query block into
// 32-row pieces below 768 queries; here the whole block is one gemm operand (docs/kernels.md has
// the measurements). Rows go to the threads through one atomic counter: one parallel region per
// call, balanced whatever the row lengths, and a thread the OS deschedules delays one row only.
//
// q (B, H, Sq, D), k (B, H, Sk, D), v (B, H, Sk, Dv): float32, last dim contiguous, any other strides.
// counts (Bm, Hm, nq) int32, indices (Bm, Hm, nq, W) int32 (Bm in {1, B}, Hm in {1, H}).
// Writes out (B, H, Sq, Dv) and lse (B, H, Sq) float32, contiguous (out 0 and lse -inf on rows that
// keep no block). A C entry point, built and loaded with ctypes by cpu_native.py (no Python headers).
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

using Vec = at::vec::Vectorized<float>;

constexpr int64_t kRunKeys = 512;

// BLAS sgemm (column-major), as exported by libtorch_cpu's BLAS (MKL on x86 builds)
extern "C" void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                       const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);

static inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                        const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  sgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
}

static inline float row_max(const float* x, int64_t n) {
  return at::vec::reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, x, n);
}

// x[i] = exp(x[i] - m); returns the sum
static inline float exp_sum(float* x, int64_t n, float m) {
  Vec vm(m), acc(0.f);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    Vec e = (Vec::loadu(x + i) - vm).exp_u20();
    e.store(x + i);
    acc = acc + e;
  }
  float s = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  return s;
}

static inline void scale_row(float* x, int64_t n, float c) {
  at::vec::map([c](Vec a) { return a * Vec(c); }, x, x, n);
}

// Strides in elements. Returns 0.
extern "C" int diffsparse_block_sparse_forward(
    const float* qp, const float* kp, const float* vp, float* op, float* lp, const int32_t* cnt, const int32_t* idx,
    int64_t B, int64_t H, int64_t Sq, int64_t Sk, int64_t D, int64_t Dv,
    int64_t qsb, int64_t qsh, int64_t qss, int64_t ksb, int64_t ksh, int64_t kss, int64_t vsb, int64_t vsh, int64_t vss,
    int64_t Bm, int64_t Hm, int64_t W, int64_t bq, int64_t bk, float sc, int num_threads) {
  const int64_t nq = (Sq + bq - 1) / bq;
  const int64_t rows = B * H * nq;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::atomic<int64_t> next{0};
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, rows)));

  // Kept blocks with consecutive ids are contiguous keys: a run of them is one gemm operand, up to
  // kRunKeys keys (fewer, larger gemms; the score tile stays in cache).
  const int64_t run_blocks = std::max<int64_t>(1, kRunKeys / bk), ld = run_blocks * bk;

#pragma omp parallel num_threads(threads)
  {
    std::vector<float> s_buf(bq * ld), o_buf(bq * Dv), m_buf(bq), l_buf(bq);
    float* S = s_buf.data();
    float* O = o_buf.data();
    float* M = m_buf.data();
    float* L = l_buf.data();
    for (int64_t r = next.fetch_add(1); r < rows; r = next.fetch_add(1)) {
      const int64_t qb = r % nq, bh = r / nq, h = bh % H, b = bh / H;
      const int64_t crow = ((Bm == 1 ? 0 : b) * Hm + (Hm == 1 ? 0 : h)) * nq + qb;
      const int64_t n_blocks = cnt[crow];
      const int64_t q0 = qb * bq, qn = std::min(bq, Sq - q0);
      const float* Q = qp + b * qsb + h * qsh + q0 * qss;
      float* Out = op + ((b * H + h) * Sq + q0) * Dv;
      float* Lse = lp + (b * H + h) * Sq + q0;
      if (n_blocks == 0) {
        std::fill(Out, Out + qn * Dv, 0.f);
        std::fill(Lse, Lse + qn, neg_inf);
        continue;
      }
      std::fill(M, M + qn, neg_inf);
      std::fill(L, L + qn, 0.f);
      std::fill(O, O + qn * Dv, 0.f);
      const int32_t* kept = idx + crow * W;
      for (int64_t t = 0, n = 1; t < n_blocks; t += n) {
        for (n = 1; t + n < n_blocks && n < run_blocks && kept[t + n] == kept[t] + n; ++n) {
        }
        const int64_t k0 = kept[t] * bk, kn = std::min(n * bk, Sk - k0);
        const float* K = kp + b * ksb + h * ksh + k0 * kss;
        const float* V = vp + b * vsb + h * vsh + k0 * vss;
        // S (qn x kn, row-major, ld ld) = scale * Q K^T, as column-major S^T = K Q^T
        gemm('T', 'N', kn, qn, D, sc, K, kss, Q, qss, 0.f, S, ld);
        for (int64_t i = 0; i < qn; ++i) {
          float* s = S + i * ld;
          const float m_new = std::max(M[i], row_max(s, kn));
          const float sum = exp_sum(s, kn, m_new);
          const float corr = M[i] == neg_inf ? 0.f : std::exp(M[i] - m_new);
          L[i] = L[i] * corr + sum;
          M[i] = m_new;
          if (t > 0) scale_row(O + i * Dv, Dv, corr);
        }
        // O (qn x Dv, row-major) += P V, as column-major O^T += V^T P^T
        gemm('N', 'N', Dv, qn, kn, 1.f, V, vss, S, ld, 1.f, O, Dv);
      }
      for (int64_t i = 0; i < qn; ++i) {
        const float inv = 1.f / L[i];
        at::vec::map([inv](Vec a) { return a * Vec(inv); }, Out + i * Dv, O + i * Dv, Dv);
        Lse[i] = M[i] + std::log(L[i]);
      }
    }
  }
  return 0;
}
