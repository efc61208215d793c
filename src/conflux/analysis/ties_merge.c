/* The TIES disjoint mean of n <= 4 trimmed task vectors in one pass: conflux.analysis.native builds it.
 *
 * Why C: conflux.analysis.merge_kernels' torch steps (weight, sum, elect, agree, sum, divisor, divide) are ~14
 * passes over [n, numel] float32 buffers that do not fit in cache; this loop does them per entry, in the same
 * float32 operations and the same order (a sum over rows adds row 0, 1, 2, 3 in turn, as torch's dim-0 sum
 * does for up to 4 rows), so the result is bitwise the one of the torch steps. Compiled with
 * -ffp-contract=off: a fused multiply-add would round differently.
 */
#include <stdint.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) v8f abs8(v8f x) { return (v8f)((v8i)x & 0x7fffffff); }
static inline __attribute__((always_inline)) v8f one_if(v8i mask) { return (v8f)(mask & (v8i)((v8f){0} + 1.0f)); }

/* In a row whose k-th largest |τ| is thr, keep the first `keep` entries with |τ| == thr and set the others to
 * +0.0, as merge_kernels.trim_in_place does when more entries equal the cut than fit (ties go to the lowest
 * indices, as a stable sort would). Vectors without such an entry, nearly all, cost one compare. */
#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 6)
__attribute__((target_clones("avx2", "default")))
#endif
void conflux_zero_ties_after(float *row, int64_t numel, float thr, int64_t keep) {
    int64_t j = 0;
    for (; j + 8 <= numel; j += 8) {
        v8f x;
        memcpy(&x, row + j, sizeof x);
        v8i tied = abs8(x) == thr;
        uint64_t any[4];
        memcpy(any, &tied, sizeof any);
        if (!(any[0] | any[1] | any[2] | any[3])) continue;
        for (int i = 0; i < 8; i++)
            if (tied[i] && keep-- <= 0) row[j + i] = 0.0f;
    }
    for (; j < numel; j++)
        if ((row[j] < 0 ? -row[j] : row[j]) == thr && keep-- <= 0) row[j] = 0.0f;
}

static inline __attribute__((always_inline)) void merge(const float *rows, const int n, const float *w,
                                                         const float *thr, int64_t numel, float lam,
                                                         float *out) {
    int64_t j = 0;
    for (; j + 8 <= numel; j += 8) { /* the scalar loop below, 8 entries at a time */
        v8f wt[4], mass = {0};
        for (int i = 0; i < n; i++) {
            v8f t;
            memcpy(&t, rows + i * numel + j, sizeof t);
            wt[i] = t * one_if(abs8(t) >= thr[i]) * w[i];
            mass += wt[i];
        }
        v8f elected = one_if(mass >= 0.0f) * 2.0f - 1.0f; /* exact: ±1 */
        v8f merged = {0}, divisor = {0};
        for (int i = 0; i < n; i++) {
            v8f agree = one_if(wt[i] * elected > 0.0f);
            merged += wt[i] * agree;
            divisor += agree * w[i];
        }
        divisor += one_if(divisor == 0.0f);
        v8f result = merged / divisor * lam;
        memcpy(out + j, &result, sizeof result);
    }
    for (; j < numel; j++) {
        float wt[4], mass = 0.0f;
        for (int i = 0; i < n; i++) {
            float t = rows[i * numel + j];
            float m = t < 0 ? -t : t;
            wt[i] = t * (m >= thr[i] ? 1.0f : 0.0f) * w[i]; /* trim (a mask multiply), then weight */
            mass += wt[i];
        }
        float elected = mass >= 0.0f ? 1.0f : -1.0f;
        float merged = 0.0f, divisor = 0.0f;
        for (int i = 0; i < n; i++) {
            float agree = wt[i] * elected > 0.0f ? 1.0f : 0.0f;
            merged += wt[i] * agree;
            divisor += agree * w[i];
        }
        divisor += divisor == 0.0f ? 1.0f : 0.0f;
        out[j] = merged / divisor * lam;
    }
}

/* rows: [n, numel] contiguous float32 task vectors; thr[i]: row i's trim threshold (-inf: no trim). */
#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 6)
__attribute__((target_clones("avx2", "default")))
#endif
int conflux_ties_merge(const float *rows, int n, const float *w, const float *thr, int64_t numel, float lam,
                       float *out) {
    switch (n) { /* a constant row count per loop, so the compiler unrolls it and vectorises over entries */
    case 1: merge(rows, 1, w, thr, numel, lam, out); return 0;
    case 2: merge(rows, 2, w, thr, numel, lam, out); return 0;
    case 3: merge(rows, 3, w, thr, numel, lam, out); return 0;
    case 4: merge(rows, 4, w, thr, numel, lam, out); return 0;
    default: return -1;
    }
}
