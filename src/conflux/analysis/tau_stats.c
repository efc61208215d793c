/* Every statistic of a task vector τ = a − b in one pass: conflux.analysis.native compiles and loads this.
 *
 * Why C: each numpy/torch pass over τ costs 0.1-0.2 ns an entry even in cache, and the statistics took ~10
 * of them plus the widening, while reading a bf16 pair costs ~0.4 ns an entry; one fused loop does them all
 * while the entry is in a register. GCC/Clang vector extensions keep it portable (8 float32 lanes: one AVX2
 * register, two SSE/NEON ones); on x86-64 the CPU picks at run time between the plain build, an AVX2 build
 * (the band's entries packed by a table of permutations) and an AVX-512 loop (16 lanes, comparisons into mask
 * registers, vcompressps): ~0.32 and ~0.16 ns per bf16 entry. A cached library never executes an instruction
 * the CPU lacks. The plain build is for other architectures (NEON on aarch64); on an x86 without AVX2 (before
 * 2013) it is correct but ~5 ns an entry, slower than the numpy path.
 *
 * Accuracy: each lane sums BLOCK / 8 = 64 (AVX-512: 32) entries in float32, every block's lane sums are added
 * in float64. A float32 sum of m terms errs by at most ~m·2⁻²⁴ of the sum of magnitudes, so Σ τ² (all terms
 * positive) is within ~4e-6 relative in the worst case and ~1e-8 typically, and Σ τ within that share of
 * Σ |τ|; counts, the maximum and the band are exact.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define X86 1
#else
#define X86 0
#endif

/* The pass is compiled twice from the PASS_BODY section below (this file includes itself): plain vector code
 * for any CPU, and with AVX2 the band's entries packed by a permutation instead of a branch per vector. */
#ifndef PASS_BODY

#define BLOCK 512 /* entries per float32 partial sum, flushed to float64 */

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint16_t v8h __attribute__((vector_size(16)));

/* Results; the layout is mirrored by conflux.analysis.native.TauSums. A non-NULL tau_out receives τ as float32
 * (a merge needs τ itself and gets its trim's band from the same pass). */
typedef struct {
    double sum;         /* Σ (τ − shift) */
    double sum_squares; /* Σ (τ − shift)² */
    double above_squares; /* Σ τ² over |τ| > hi */
    double max_abs;     /* max |τ| (NaN entries are not seen: the sums are NaN then) */
    int64_t positive;   /* τ > 0 */
    int64_t zero;       /* τ == 0 */
    int64_t above;      /* |τ| > hi */
    int64_t band;       /* lo <= |τ| <= hi: entries written to band[] (up to its capacity) */
} tau_sums;

enum { KIND_NONE = 0, KIND_F32 = 1, KIND_BF16 = 2 };
/* The (a, b) dtype pairs every pass is specialised for, listed once for both dispatchers (an X-macro):
 * b = KIND_NONE when a is already tau. */
#define DTYPE_PAIRS(X)                                                                                  \
    X(KIND_F32, KIND_NONE)                                                                              \
    X(KIND_F32, KIND_F32)                                                                               \
    X(KIND_BF16, KIND_BF16)                                                                             \
    X(KIND_BF16, KIND_F32)                                                                              \
    X(KIND_F32, KIND_BF16)                                                                              \
    X(KIND_BF16, KIND_NONE)

#if X86 /* pack_order[m]: the lanes set in the 8-bit mask m first; pack_count[m]: how many */
static int32_t pack_order[256][8];
static int32_t pack_count[256];

__attribute__((constructor)) static void fill_pack_tables(void) {
    for (int m = 0; m < 256; m++) {
        int c = 0;
        for (int j = 0; j < 8; j++)
            if (m >> j & 1) pack_order[m][c++] = j;
        for (int j = c; j < 8; j++) pack_order[m][j] = 0;
        pack_count[m] = c;
    }
}
#endif

static inline __attribute__((always_inline)) v8f load8(const void *p, int64_t i, int kind) {
    v8f f;
    if (kind == KIND_BF16) { /* bf16 is the top half of a float32: widening is a 16-bit shift */
        v8h h;
        memcpy(&h, (const uint16_t *)p + i, sizeof h);
        v8u w = __builtin_convertvector(h, v8u) << 16;
        memcpy(&f, &w, sizeof f);
    } else {
        memcpy(&f, (const float *)p + i, sizeof f);
    }
    return f;
}

static inline __attribute__((always_inline)) float load1(const void *p, int64_t i, int kind) {
    if (kind == KIND_BF16) {
        uint32_t w = (uint32_t)((const uint16_t *)p)[i] << 16;
        float f;
        memcpy(&f, &w, sizeof f);
        return f;
    }
    return ((const float *)p)[i];
}

#define PASS_BODY
#define PASS_NAME pass_plain
#define DISPATCH_NAME dispatch_plain
#define PASS_TARGET
#define AVX2_APPEND 0
#include "tau_stats.c" /* this file: the PASS_BODY section below */
#undef PASS_NAME
#undef DISPATCH_NAME
#undef PASS_TARGET
#undef AVX2_APPEND
#if X86
#define PASS_NAME pass_avx2
#define DISPATCH_NAME dispatch_avx2
#define PASS_TARGET __attribute__((target("avx2")))
#define AVX2_APPEND 1
#include "tau_stats.c" /* this file: the PASS_BODY section below */
#endif

#if X86 /* AVX-512: 16 lanes, comparisons into mask registers, the band packed by vcompressps */
#define A512 __attribute__((target("avx512f,popcnt")))

static inline __attribute__((always_inline)) A512 __m512 load16(const void *p, int64_t i, int kind) {
    if (kind == KIND_BF16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)((const uint16_t *)p + i))), 16));
    return _mm512_loadu_ps((const float *)p + i);
}

/* The unshifted pass over the first n − n mod 16 entries (the caller finishes the rest). */
static inline __attribute__((always_inline)) A512 void pass512(const void *a, int a_kind, const void *b,
                                                               int b_kind, int64_t n, float lo, float hi,
                                                               float *band, int64_t capacity, float *tau_out,
                                                               tau_sums *out) {
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi), zero = _mm512_setzero_ps();
    double sum = 0, squares = 0, above_squares = 0;
    int64_t positive = 0, zeros = 0, above = 0, in_band = 0;
    __m512 largest = zero;
    float lanes[3][16];
    for (int64_t i = 0; i < n;) {
        int64_t end = i + BLOCK < n ? i + BLOCK : n;
        __m512 s = zero, s2 = zero, a2 = zero;
        for (; i < end; i += 16) {
            __m512 t = load16(a, i, a_kind);
            if (b_kind != KIND_NONE) t = _mm512_sub_ps(t, load16(b, i, b_kind));
            if (tau_out) _mm512_storeu_ps(tau_out + i, t);
            __m512 mag = _mm512_abs_ps(t), square = _mm512_mul_ps(t, t);
            s = _mm512_add_ps(s, t);
            s2 = _mm512_add_ps(s2, square);
            positive += __builtin_popcount(_mm512_cmp_ps_mask(t, zero, _CMP_GT_OQ));
            zeros += __builtin_popcount(_mm512_cmp_ps_mask(t, zero, _CMP_EQ_OQ));
            __mmask16 up = _mm512_cmp_ps_mask(mag, vhi, _CMP_GT_OQ);
            above += __builtin_popcount(up);
            a2 = _mm512_mask_add_ps(a2, up, a2, square);
            largest = _mm512_max_ps(mag, largest); /* a NaN τ leaves it as it was (the sums show the NaN) */
            __mmask16 kept = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(mag, vlo, _CMP_GE_OQ), mag, vhi, _CMP_LE_OQ);
            _mm512_storeu_ps(band + (in_band < capacity ? in_band : capacity), _mm512_maskz_compress_ps(kept, mag));
            in_band += __builtin_popcount(kept);
        }
        _mm512_storeu_ps(lanes[0], s);
        _mm512_storeu_ps(lanes[1], s2);
        _mm512_storeu_ps(lanes[2], a2);
        for (int j = 0; j < 16; j++) {
            sum += lanes[0][j];
            squares += lanes[1][j];
            above_squares += lanes[2][j];
        }
    }
    _mm512_storeu_ps(lanes[0], largest);
    float top = 0;
    for (int j = 0; j < 16; j++) top = lanes[0][j] > top ? lanes[0][j] : top;
    *out = (tau_sums){sum, squares, above_squares, top, positive, zeros, above, in_band};
}

static A512 int dispatch_avx512(const void *a, int a_kind, const void *b, int b_kind, int64_t n, float lo,
                                float hi, float *band, int64_t capacity, float *tau_out, tau_sums *out) {
#define CASE(ka, kb)                                                                                    \
    if (a_kind == ka && b_kind == kb) {                                                                 \
        pass512(a, ka, b, kb, n, lo, hi, band, capacity, tau_out, out);                                 \
        return 0;                                                                                       \
    }
    DTYPE_PAIRS(CASE)
#undef CASE
    return -1;
}
#endif

/* $CONFLUX_KERNEL_ISA = plain or avx2 caps the instruction set (the tests run every build on one machine). */
static int allowed(const char *isa) {
    const char *cap = getenv("CONFLUX_KERNEL_ISA");
    if (cap == NULL || cap[0] == 0) return 1;
    return strcmp(cap, "plain") != 0 && (strcmp(cap, "avx2") != 0 || strcmp(isa, "avx2") == 0);
}

static int dispatch(const void *a, int a_kind, const void *b, int b_kind, int64_t n, float shift, float lo,
                    float hi, float *band, int64_t capacity, float *tau_out, tau_sums *out) {
#if X86
    if (__builtin_cpu_supports("avx2") && allowed("avx2"))
        return dispatch_avx2(a, a_kind, b, b_kind, n, shift, lo, hi, band, capacity, tau_out, out);
#endif
    return dispatch_plain(a, a_kind, b, b_kind, n, shift, lo, hi, band, capacity, tau_out, out);
}

int conflux_tau_stats(const void *a, int a_kind, const void *b, int b_kind, int64_t n, float shift, float lo,
                      float hi, float *band, int64_t capacity, float *tau_out, tau_sums *out) {
#if X86
    /* The AVX-512 loop takes whole vectors of 16 (unshifted); the AVX2 or plain loop finishes the rest. */
    int64_t whole = n - n % 16;
    if (shift == 0.0f && whole > 0 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("popcnt") &&
        allowed("avx512")) {
        tau_sums head, rest;
        if (dispatch_avx512(a, a_kind, b, b_kind, whole, lo, hi, band, capacity, tau_out, &head)) return -1;
        int64_t used = head.band < capacity ? head.band : capacity, size_a = a_kind == KIND_BF16 ? 2 : 4;
        const char *b_rest = b ? (const char *)b + whole * (b_kind == KIND_BF16 ? 2 : 4) : NULL;
        if (dispatch((const char *)a + whole * size_a, a_kind, b_rest, b_kind, n - whole, shift, lo, hi, band + used,
                     capacity - used, tau_out ? tau_out + whole : NULL, &rest))
            return -1;
        *out = (tau_sums){head.sum + rest.sum, head.sum_squares + rest.sum_squares,
                          head.above_squares + rest.above_squares,
                          head.max_abs > rest.max_abs ? head.max_abs : rest.max_abs, head.positive + rest.positive,
                          head.zero + rest.zero, head.above + rest.above, head.band + rest.band};
        return 0;
    }
#endif
    return dispatch(a, a_kind, b, b_kind, n, shift, lo, hi, band, capacity, tau_out, out);
}

#else /* PASS_BODY: the pass for one target */

static inline __attribute__((always_inline)) PASS_TARGET void PASS_NAME(
    const void *a, int a_kind, const void *b, int b_kind, const int shifted, int64_t n, float shift, float lo,
    float hi, float *band, int64_t capacity, float *tau_out, tau_sums *out) {
    const v8u sign = (v8u){0} + 0x7fffffffu;
    const v8f vshift = (v8f){0} + shift, vlo = (v8f){0} + lo, vhi = (v8f){0} + hi;
    double sum = 0, squares = 0, above_squares = 0;
    int64_t positive = 0, zero = 0, above = 0, in_band = 0;
    v8f largest = (v8f){0};
    int64_t i = 0;
    while (i + 8 <= n) {
        int64_t end = i + BLOCK <= n ? i + BLOCK : n - (n - i) % 8;
        v8f s = {0}, s2 = {0}, a2 = {0};
        v8i pos = {0}, zer = {0}, abv = {0};
        for (; i < end; i += 8) {
            v8f t = load8(a, i, a_kind);
            if (b_kind != KIND_NONE) t -= load8(b, i, b_kind);
            if (tau_out) memcpy(tau_out + i, &t, sizeof t);
            v8u bits;
            memcpy(&bits, &t, sizeof bits);
            bits &= sign;
            v8f mag;
            memcpy(&mag, &bits, sizeof mag);
            v8f square = t * t; /* = |τ|², exactly */
            if (shifted) { /* the second pass of a τ whose mean is far from 0 */
                v8f d = t - vshift;
                s += d;
                s2 += d * d;
            } else {
                s += t;
                s2 += square;
            }
            pos -= t > 0; /* a true comparison is −1 in every lane */
            zer -= t == 0;
            v8i is_above = mag > vhi;
            abv -= is_above;
            a2 += (v8f)((v8i)square & is_above);
#if AVX2_APPEND
            largest = (v8f)_mm256_max_ps((__m256)mag, (__m256)largest); /* a NaN τ leaves it as it was */
#else
            v8i larger = mag > largest; /* C has no vector ?: — a bitwise select */
            largest = (v8f)(((v8i)mag & larger) | ((v8i)largest & ~larger));
#endif
            v8i kept = (mag >= vlo) & (mag <= vhi);
#if AVX2_APPEND /* pack the band's lanes to the front (a table of permutations), store all 8 */
            __m256 m256;
            memcpy(&m256, &kept, sizeof m256);
            int lanes = _mm256_movemask_ps(m256);
            __m256i order = _mm256_loadu_si256((const __m256i *)pack_order[lanes]);
            memcpy(&m256, &mag, sizeof m256);
            _mm256_storeu_ps(band + (in_band < capacity ? in_band : capacity),
                             _mm256_permutevar8x32_ps(m256, order));
            in_band += pack_count[lanes];
#else
            uint64_t any[4];
            memcpy(any, &kept, sizeof any);
            if (any[0] | any[1] | any[2] | any[3]) {
                for (int j = 0; j < 8; j++) { /* branch-free append; band[capacity..] is spill space */
                    band[in_band < capacity ? in_band : capacity] = mag[j];
                    in_band += kept[j] & 1;
                }
            }
#endif
        }
        for (int j = 0; j < 8; j++) {
            sum += s[j];
            squares += s2[j];
            above_squares += a2[j];
            positive += pos[j];
            zero += zer[j];
            above += abv[j];
        }
    }
    float top = 0;
    for (int j = 0; j < 8; j++) top = largest[j] > top ? largest[j] : top;
    for (; i < n; i++) { /* the last n mod 8 entries */
        float t = load1(a, i, a_kind) - (b_kind != KIND_NONE ? load1(b, i, b_kind) : 0.0f);
        if (tau_out) tau_out[i] = t;
        float mag = t < 0 ? -t : t, d = t - shift;
        sum += d;
        squares += (double)d * d;
        positive += t > 0;
        zero += t == 0;
        if (mag > hi) {
            above++;
            above_squares += (double)mag * mag;
        } else if (mag >= lo) {
            band[in_band < capacity ? in_band : capacity] = mag;
            in_band++;
        }
        top = mag > top ? mag : top;
    }
    *out = (tau_sums){sum, squares, above_squares, top, positive, zero, above, in_band};
}


/* One specialised loop per dtype pair and shift: the kinds are constants inside each call. */
static PASS_TARGET int DISPATCH_NAME(const void *a, int a_kind, const void *b, int b_kind, int64_t n,
                                     float shift, float lo, float hi, float *band, int64_t capacity, float *tau_out,
                                     tau_sums *out) {
#define CASE(ka, kb)                                                                                    \
    if (a_kind == ka && b_kind == kb) {                                                                 \
        if (shift == 0.0f)                                                                              \
            PASS_NAME(a, ka, b, kb, 0, n, shift, lo, hi, band, capacity, tau_out, out);                 \
        else                                                                                            \
            PASS_NAME(a, ka, b, kb, 1, n, shift, lo, hi, band, capacity, tau_out, out);                 \
        return 0;                                                                                       \
    }
    DTYPE_PAIRS(CASE)
#undef CASE
    return -1;
}
#endif
