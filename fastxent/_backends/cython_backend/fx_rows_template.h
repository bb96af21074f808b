/* Row primitives of the Cython backend, instantiated per float type and ISA.
 *
 * Included by fx_simd.h with REAL (float or double), SUF (f32 or f64),
 * ISA (generic or avx2) and FX_ATTR (the target attribute, or nothing)
 * defined. Every loop is written for `#pragma omp simd`: gcc vectorises the
 * reductions without -ffast-math, which would break the -inf / NaN rules.
 * The exp polynomial is the Numba backend's (see _simd.py there).
 */

#define FX_CAT3(a, b, c) a##_##b##_##c
#define FX_NAME3(a, b, c) FX_CAT3(a, b, c)
#define FX(name) FX_NAME3(name, SUF, ISA)

/* exp(x) for x <= 0; exactly 0 below the floor (-inf included), NaN stays NaN. */
static inline FX_ATTR REAL FX(fx_exp)(REAL x) {
#if FX_IS_DOUBLE
    const double floor_ = -709.0, log2e = 1.4426950408889634, magic = 6755399441056767.0;
    const double hi = -0.6931471803691238, lo = -1.9082149292705877e-10;
    x = x < floor_ ? floor_ : x;
    double n = x * log2e + magic, scale;
    int64_t bits;
    /* memcpy is the portable bit cast; a union initialiser becomes a memset that blocks vectorisation. */
    memcpy(&bits, &n, sizeof bits);
    bits <<= 52;
    memcpy(&scale, &bits, sizeof scale);
    n -= magic;
    double t = n * hi + x;
    t = n * lo + t;
    double p = 1.0 / 6227020800.0;
    p = p * t + 1.0 / 479001600.0;
    p = p * t + 1.0 / 39916800.0;
    p = p * t + 1.0 / 3628800.0;
    p = p * t + 1.0 / 362880.0;
    p = p * t + 1.0 / 40320.0;
    p = p * t + 1.0 / 5040.0;
    p = p * t + 1.0 / 720.0;
    p = p * t + 1.0 / 120.0;
    p = p * t + 1.0 / 24.0;
    p = p * t + 1.0 / 6.0;
    p = p * t + 0.5;
    p = p * t + 1.0;
    return (t * p) * scale + scale;
#else
    const float floor_ = -88.0f, log2e = 1.44269502f, magic = 12583039.0f;
    const float hi = -0.693145752f, lo = -1.42860677e-06f;
    x = x < floor_ ? floor_ : x;
    float n = x * log2e + magic, scale;
    int32_t bits;
    memcpy(&bits, &n, sizeof bits);
    bits <<= 23;
    memcpy(&scale, &bits, sizeof scale);
    n -= magic;
    float t = n * hi + x;
    t = n * lo + t;
    float p = 0.00828929059f * t + 0.0418978221f;
    p = p * t + 0.166676521f;
    p = p * t + 0.499991506f;
    p = p * t + 0.999999701f;
    t *= scale;
    return t * p + scale;
#endif
}

#if defined(FX_AVX2) || (defined(__AVX2__) && defined(__FMA__))
#define FX_INTRINSICS 1
#endif

/* With AVX2, the row loops below are written with intrinsics: two vector
 * accumulators, a masked tail, and a butterfly reduction in a fixed order.
 * gcc's `omp simd` reductions spill their lanes to the stack at the end of
 * every loop, which costs a medium row (tens to hundreds of classes) more
 * than its arithmetic. The order of a row's sum depends only on the row's
 * length, never on the thread count. Without AVX2, `omp simd` loops. */
#if FX_INTRINSICS && FX_IS_DOUBLE
#define FX_LANES 4
#define FX_V __m256d
#define FX_LOAD _mm256_loadu_pd
#define FX_STORE _mm256_storeu_pd
#define FX_SET1 _mm256_set1_pd
#define FX_MAX _mm256_max_pd
#define FX_ADD _mm256_add_pd
#define FX_SUB _mm256_sub_pd
#define FX_TAIL_MASK(k) _mm256_cmpgt_epi64(_mm256_set1_epi64x(k), _mm256_setr_epi64x(0, 1, 2, 3))
#define FX_MASKLOAD(p, m) _mm256_blendv_pd(FX_SET1(-INFINITY), _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m))
#define FX_MASKSTORE _mm256_maskstore_pd
#elif FX_INTRINSICS
#define FX_LANES 8
#define FX_V __m256
#define FX_LOAD _mm256_loadu_ps
#define FX_STORE _mm256_storeu_ps
#define FX_SET1 _mm256_set1_ps
#define FX_MAX _mm256_max_ps
#define FX_ADD _mm256_add_ps
#define FX_SUB _mm256_sub_ps
#define FX_TAIL_MASK(k) _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define FX_MASKLOAD(p, m) _mm256_blendv_ps(FX_SET1(-INFINITY), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m))
#define FX_MASKSTORE _mm256_maskstore_ps
#endif

#if FX_INTRINSICS
#if FX_IS_DOUBLE
/* fx_exp on 4 lanes: the same operations, so the same values. */
static inline FX_ATTR __m256d FX(fx_vexp)(__m256d x) {
    x = _mm256_max_pd(_mm256_set1_pd(-709.0), x); /* keeps a NaN x, as fx_exp's select does */
    __m256d n = _mm256_fmadd_pd(x, _mm256_set1_pd(1.4426950408889634), _mm256_set1_pd(6755399441056767.0));
    __m256d scale = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(n), 52));
    n = _mm256_sub_pd(n, _mm256_set1_pd(6755399441056767.0));
    __m256d t = _mm256_fmadd_pd(n, _mm256_set1_pd(-0.6931471803691238), x);
    t = _mm256_fmadd_pd(n, _mm256_set1_pd(-1.9082149292705877e-10), t);
    static const double c[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                               1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,     1.0 / 120.0,
                               1.0 / 24.0,        1.0 / 6.0,        0.5,             1.0};
    __m256d p = _mm256_fmadd_pd(_mm256_set1_pd(1.0 / 6227020800.0), t, _mm256_set1_pd(c[0]));
    for (int i = 1; i < 12; i++) p = _mm256_fmadd_pd(p, t, _mm256_set1_pd(c[i]));
    return _mm256_fmadd_pd(_mm256_mul_pd(t, p), scale, scale);
}

/* exp on 4 lanes as fx_vexp, the polynomial by Estrin's scheme: a chain of 4
 * FMAs after t**8 instead of Horner's 12, so that the exps of a block of
 * short rows overlap instead of waiting on each other (65536 x 32 float64
 * loss: 1.89 -> 1.68 ns per element). Within an ulp of fx_vexp, not equal
 * to it; slower than it on long rows, whose exps are independent anyway
 * (1000 classes: 1.50 -> 1.63). */
static inline FX_ATTR __m256d FX(fx_vexp_short)(__m256d x) {
    x = _mm256_max_pd(_mm256_set1_pd(-709.0), x);
    __m256d n = _mm256_fmadd_pd(x, _mm256_set1_pd(1.4426950408889634), _mm256_set1_pd(6755399441056767.0));
    __m256d scale = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(n), 52));
    n = _mm256_sub_pd(n, _mm256_set1_pd(6755399441056767.0));
    __m256d t = _mm256_fmadd_pd(n, _mm256_set1_pd(-0.6931471803691238), x);
    t = _mm256_fmadd_pd(n, _mm256_set1_pd(-1.9082149292705877e-10), t);
    /* p(t) = sum t**k / (k + 1)! for k <= 12 */
    __m256d t2 = _mm256_mul_pd(t, t), t4 = _mm256_mul_pd(t2, t2), t8 = _mm256_mul_pd(t4, t4);
    __m256d q0 = _mm256_fmadd_pd(t, _mm256_set1_pd(0.5), _mm256_set1_pd(1.0));
    __m256d q1 = _mm256_fmadd_pd(t, _mm256_set1_pd(1.0 / 24.0), _mm256_set1_pd(1.0 / 6.0));
    __m256d q2 = _mm256_fmadd_pd(t, _mm256_set1_pd(1.0 / 720.0), _mm256_set1_pd(1.0 / 120.0));
    __m256d q3 = _mm256_fmadd_pd(t, _mm256_set1_pd(1.0 / 40320.0), _mm256_set1_pd(1.0 / 5040.0));
    __m256d q4 = _mm256_fmadd_pd(t, _mm256_set1_pd(1.0 / 3628800.0), _mm256_set1_pd(1.0 / 362880.0));
    __m256d q5 = _mm256_fmadd_pd(t, _mm256_set1_pd(1.0 / 479001600.0), _mm256_set1_pd(1.0 / 39916800.0));
    __m256d r0 = _mm256_fmadd_pd(q1, t2, q0), r1 = _mm256_fmadd_pd(q3, t2, q2), r2 = _mm256_fmadd_pd(q5, t2, q4);
    __m256d s0 = _mm256_fmadd_pd(r1, t4, r0);
    __m256d s1 = _mm256_fmadd_pd(_mm256_set1_pd(1.0 / 6227020800.0), t4, r2);
    __m256d p = _mm256_fmadd_pd(s1, t8, s0);
    return _mm256_fmadd_pd(_mm256_mul_pd(t, p), scale, scale);
}

#else
/* fx_exp on 8 lanes: the same operations, so the same values. */
static inline FX_ATTR __m256 FX(fx_vexp)(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-88.0f), x); /* keeps a NaN x, as fx_exp's select does */
    __m256 n = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269502f), _mm256_set1_ps(12583039.0f));
    __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(n), 23));
    n = _mm256_sub_ps(n, _mm256_set1_ps(12583039.0f));
    __m256 t = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693145752f), x);
    t = _mm256_fmadd_ps(n, _mm256_set1_ps(-1.42860677e-06f), t);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0.00828929059f), t, _mm256_set1_ps(0.0418978221f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.166676521f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.499991506f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.999999701f));
    t = _mm256_mul_ps(t, scale);
    return _mm256_fmadd_ps(t, p, scale);
}

/* float32's polynomial is short: its Horner chain is no bottleneck. */
static inline FX_ATTR __m256 FX(fx_vexp_short)(__m256 x) { return FX(fx_vexp)(x); }

#endif

/* Every lane of v holds the max (the sum) of v's lanes, combined in a fixed order. */
static inline FX_ATTR REAL FX(fx_hmax)(FX_V v) {
#if FX_IS_DOUBLE
    v = _mm256_max_pd(v, _mm256_permute2f128_pd(v, v, 1));
    v = _mm256_max_pd(v, _mm256_permute_pd(v, 5));
    return _mm256_cvtsd_f64(v);
#else
    v = _mm256_max_ps(v, _mm256_permute2f128_ps(v, v, 1));
    v = _mm256_max_ps(v, _mm256_permute_ps(v, 0x4e));
    v = _mm256_max_ps(v, _mm256_permute_ps(v, 0xb1));
    return _mm256_cvtss_f32(v);
#endif
}

static inline FX_ATTR REAL FX(fx_hsum)(FX_V v) {
#if FX_IS_DOUBLE
    v = _mm256_add_pd(v, _mm256_permute2f128_pd(v, v, 1));
    v = _mm256_add_pd(v, _mm256_permute_pd(v, 5));
    return _mm256_cvtsd_f64(v);
#else
    v = _mm256_add_ps(v, _mm256_permute2f128_ps(v, v, 1));
    v = _mm256_add_ps(v, _mm256_permute_ps(v, 0x4e));
    v = _mm256_add_ps(v, _mm256_permute_ps(v, 0xb1));
    return _mm256_cvtss_f32(v);
#endif
}

/* Max of x[0:n]; -inf when empty. A NaN may or may not win: the exp sum then is NaN anyway. */
static FX_ATTR REAL FX(fx_max)(const REAL *x, Py_ssize_t n) {
    FX_V m0 = FX_SET1(-INFINITY), m1 = m0;
    Py_ssize_t i = 0;
    for (; i + 2 * FX_LANES <= n; i += 2 * FX_LANES) {
        m0 = FX_MAX(m0, FX_LOAD(x + i));
        m1 = FX_MAX(m1, FX_LOAD(x + i + FX_LANES));
    }
    if (i + FX_LANES <= n) {
        m0 = FX_MAX(m0, FX_LOAD(x + i));
        i += FX_LANES;
    }
    if (i < n) m1 = FX_MAX(m1, FX_MASKLOAD(x + i, FX_TAIL_MASK(n - i)));
    return FX(fx_hmax)(FX_MAX(m0, m1));
}

#if FX_IS_DOUBLE
#define FX_IOTA _mm256_setr_epi64x(0, 1, 2, 3)
#define FX_ISET1 _mm256_set1_epi64x
#define FX_IEQ _mm256_cmpeq_epi64
#define FX_EQ(a, b) _mm256_cmp_pd(a, b, _CMP_EQ_OQ)
#define FX_MOVEMASK _mm256_movemask_pd
#define FX_AS_REAL _mm256_castsi256_pd
#define FX_ANDNOT _mm256_andnot_pd
#else
#define FX_IOTA _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
#define FX_ISET1(k) _mm256_set1_epi32((int)(k))
#define FX_IEQ _mm256_cmpeq_epi32
#define FX_EQ(a, b) _mm256_cmp_ps(a, b, _CMP_EQ_OQ)
#define FX_MOVEMASK _mm256_movemask_ps
#define FX_AS_REAL _mm256_castsi256_ps
#define FX_ANDNOT _mm256_andnot_ps
#endif

/* Index of the first element of x[0:n] equal to value (-1 if none): a scan
 * that stops at the first match, cheaper than tracking an argmax. */
static FX_ATTR Py_ssize_t FX(fx_find)(const REAL *x, Py_ssize_t n, REAL value) {
    const FX_V v = FX_SET1(value);
    Py_ssize_t i = 0;
    for (; i + FX_LANES <= n; i += FX_LANES) {
        int hits = FX_MOVEMASK(FX_EQ(FX_LOAD(x + i), v));
        if (hits) return i + __builtin_ctz((unsigned)hits);
    }
    for (; i < n; i++)
        if (x[i] == value) return i;
    return -1;
}

/* Adds exp(x - shift) of the full vectors in [start, stop) into t0, t1, and stores them into out unless NULL. */
static inline FX_ATTR void FX(fx_exp_range)(const REAL *x, REAL *out, Py_ssize_t start, Py_ssize_t stop, FX_V s,
                                            FX_V *t0, FX_V *t1) {
    Py_ssize_t i = start;
    for (; i + 2 * FX_LANES <= stop; i += 2 * FX_LANES) {
        FX_V e0 = FX(fx_vexp)(FX_SUB(FX_LOAD(x + i), s));
        FX_V e1 = FX(fx_vexp)(FX_SUB(FX_LOAD(x + i + FX_LANES), s));
        if (out != NULL) {
            FX_STORE(out + i, e0);
            FX_STORE(out + i + FX_LANES, e1);
        }
        *t0 = FX_ADD(*t0, e0);
        *t1 = FX_ADD(*t1, e1);
    }
    if (i < stop) {
        FX_V e0 = FX(fx_vexp)(FX_SUB(FX_LOAD(x + i), s));
        if (out != NULL) FX_STORE(out + i, e0);
        *t0 = FX_ADD(*t0, e0);
    }
}

/* exp(x - shift) of the one vector at i, of which `count` lanes are in the row
 * (the rest read as -inf); lane `skip` (if >= 0) is left out of what it adds to t. */
static inline FX_ATTR void FX(fx_exp_vector)(const REAL *x, REAL *out, Py_ssize_t i, Py_ssize_t count, FX_V s,
                                             Py_ssize_t skip, FX_V *t) {
    __m256i mask = FX_TAIL_MASK(count);
    FX_V e = FX(fx_vexp)(FX_SUB(FX_MASKLOAD(x + i, mask), s));
    if (out != NULL) FX_MASKSTORE(out + i, mask, e);
    if (skip >= 0) e = FX_ANDNOT(FX_AS_REAL(FX_IEQ(FX_IOTA, FX_ISET1(skip))), e);
    *t = FX_ADD(*t, e);
}

/* sum(exp(x - shift)) over all of x[0:n] (S, the maxima included), and
 * exp(x - shift) into out unless it is NULL (out may be x). */
static inline FX_ATTR REAL FX(fx_sumexp_whole)(const REAL *x, REAL *out, Py_ssize_t n, REAL shift) {
    const FX_V s = FX_SET1(shift);
    FX_V t0 = FX_SET1(0), t1 = t0;
    Py_ssize_t full = n - n % FX_LANES;
    FX(fx_exp_range)(x, out, 0, full, s, &t0, &t1);
    if (full < n) FX(fx_exp_vector)(x, out, full, n - full, s, -1, &t1);
    return FX(fx_hsum)(FX_ADD(t0, t1));
}

/* sum(exp(x - shift)) over x[0:n] but for the element at `skip` (none if
 * skip < 0 or >= n); exp(x - shift) of every element into out unless it is
 * NULL (out may be x). Leaving the first maximum (exp 1) out of the sum
 * keeps what the rest of the row adds relatively accurate when one class
 * dominates. */
static inline FX_ATTR REAL FX(fx_sumexp_store)(const REAL *x, REAL *out, Py_ssize_t n, REAL shift, Py_ssize_t skip) {
    if (skip < 0 || skip >= n) return FX(fx_sumexp_whole)(x, out, n, shift);
    const FX_V s = FX_SET1(shift);
    FX_V t0 = FX_SET1(0), t1 = t0;
    Py_ssize_t full = n - n % FX_LANES, at = skip - skip % FX_LANES;
    FX(fx_exp_range)(x, out, 0, at, s, &t0, &t1);
    FX(fx_exp_vector)(x, out, at, n - at < FX_LANES ? n - at : FX_LANES, s, skip - at, &t1);
    if (at + FX_LANES < full) FX(fx_exp_range)(x, out, at + FX_LANES, full, s, &t0, &t1);
    if (full < n && full > at) FX(fx_exp_vector)(x, out, full, n - full, s, -1, &t1);
    return FX(fx_hsum)(FX_ADD(t0, t1));
}
#undef FX_IOTA
#undef FX_ISET1
#undef FX_IEQ
#undef FX_EQ
#undef FX_MOVEMASK
#undef FX_AS_REAL
#undef FX_ANDNOT
#else
/* Max of x[0:n]; -inf when empty. A NaN may or may not win: the exp sum then is NaN anyway. */
static FX_ATTR REAL FX(fx_max)(const REAL *x, Py_ssize_t n) {
    REAL best = -INFINITY;
#pragma omp simd reduction(max : best)
    for (Py_ssize_t i = 0; i < n; i++) best = x[i] > best ? x[i] : best;
    return best;
}

/* sum(exp(x - shift)) over all of x[0:n], and exp(x - shift) into out unless it is NULL (out may be x). */
static inline FX_ATTR REAL FX(fx_sumexp_whole)(const REAL *x, REAL *out, Py_ssize_t n, REAL shift) {
    REAL total = 0;
    if (out == NULL) {
#pragma omp simd reduction(+ : total)
        for (Py_ssize_t i = 0; i < n; i++) total += FX(fx_exp)(x[i] - shift);
    } else {
#pragma omp simd reduction(+ : total)
        for (Py_ssize_t i = 0; i < n; i++) {
            REAL e = FX(fx_exp)(x[i] - shift);
            out[i] = e;
            total += e;
        }
    }
    return total;
}

/* As the AVX2 versions above: the first index of value (-1 if none), and the sum but for `skip`. */
static FX_ATTR Py_ssize_t FX(fx_find)(const REAL *x, Py_ssize_t n, REAL value) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (x[i] == value) return i;
    return -1;
}

static inline FX_ATTR REAL FX(fx_sumexp_store)(const REAL *x, REAL *out, Py_ssize_t n, REAL shift, Py_ssize_t skip) {
    REAL total = 0;
#pragma omp simd reduction(+ : total)
    for (Py_ssize_t i = 0; i < n; i++) {
        REAL e = FX(fx_exp)(x[i] - shift);
        if (out != NULL) out[i] = e;
        total += i == skip ? (REAL)0 : e;
    }
    return total;
}
#endif

/* S' = the sum of exp(x - M) over every element but the first maximum, from
 * the sum over the elements below the maximum and how many equal it (ties).
 * The row's S is 1 + S'; log1p(S') and S' / (1 + S') stay relatively
 * accurate when the maximum dominates (S' below one ulp of 1). A row of
 * -inf has no maximum: S' = -1 (S = 0). A +inf maximum makes S' NaN, as
 * exp(inf - inf) made S before. */
static inline FX_ATTR double FX(fx_rest)(double below, Py_ssize_t ties, REAL shift) {
    if (shift == (REAL)INFINITY) return NAN;
    return below + (double)(ties - 1);
}


/* Rows of at most FX_SHORT elements. A loop per element, or an `omp simd`
 * reduction (which spills its lanes to the stack, a store-forwarding stall
 * per pass), costs more than a short row's arithmetic. With AVX2 the row is
 * loaded masked into a fixed number of vectors padded with -inf: the max,
 * the exps and the sum are a few vector instructions each, with butterfly
 * reductions in a fixed order. Without AVX2, plain loops. Returns S' (see
 * fx_rest; from S >= 2 as S - 1, as fx_shift_sum), writes M and, unless out
 * is NULL, exp(x - M). */
#if FX_INTRINSICS
#if FX_IS_DOUBLE
static inline FX_ATTR double FX(fx_short_row)(const REAL *x, REAL *out, Py_ssize_t n, REAL *shift_out) {
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256d minus_inf = _mm256_set1_pd(-INFINITY);
    __m256d v[4], e[4];
    __m256i mask[4];
    for (int j = 0; j < 4; j++) {
        mask[j] = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n - 4 * j), lane);
        v[j] = _mm256_blendv_pd(minus_inf, _mm256_maskload_pd(x + 4 * j, mask[j]), _mm256_castsi256_pd(mask[j]));
    }
    __m256d m = _mm256_max_pd(_mm256_max_pd(v[0], v[1]), _mm256_max_pd(v[2], v[3]));
    m = _mm256_max_pd(m, _mm256_permute2f128_pd(m, m, 1));
    m = _mm256_max_pd(m, _mm256_permute_pd(m, 5));
    REAL best = _mm256_cvtsd_f64(m);
    best = best == -INFINITY ? (REAL)0 : best;
    const __m256d shift = _mm256_set1_pd(best);
    __m256d s = _mm256_setzero_pd();
    for (int j = 0; j < 4; j++) {
        e[j] = FX(fx_vexp)(_mm256_sub_pd(v[j], shift));
        if (out != NULL) _mm256_maskstore_pd(out + 4 * j, mask[j], e[j]);
        s = _mm256_add_pd(s, e[j]);
    }
    *shift_out = best;
    double total = FX(fx_hsum)(s);
    if (total >= 2.0) return total - 1.0;
    /* The maximum dominates (or the row is not finite): sum all but the maxima, and count them. */
    s = _mm256_setzero_pd();
    __m256i count = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        __m256d q = _mm256_cmp_pd(v[j], shift, _CMP_EQ_OQ);
        s = _mm256_add_pd(s, _mm256_andnot_pd(q, e[j]));
        count = _mm256_add_epi64(count, _mm256_castpd_si256(q));
    }
    int64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, count);
    return FX(fx_rest)(FX(fx_hsum)(s), -(lanes[0] + lanes[1] + lanes[2] + lanes[3]), best);
}
#else
static inline FX_ATTR double FX(fx_short_row)(const REAL *x, REAL *out, Py_ssize_t n, REAL *shift_out) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 minus_inf = _mm256_set1_ps(-INFINITY);
    __m256i low_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lane);
    __m256i high_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n - 8), lane);
    __m256 low = _mm256_blendv_ps(minus_inf, _mm256_maskload_ps(x, low_mask), _mm256_castsi256_ps(low_mask));
    __m256 high = _mm256_blendv_ps(minus_inf, _mm256_maskload_ps(x + 8, high_mask), _mm256_castsi256_ps(high_mask));
    __m256 m = _mm256_max_ps(low, high);
    m = _mm256_max_ps(m, _mm256_permute2f128_ps(m, m, 1));
    m = _mm256_max_ps(m, _mm256_permute_ps(m, 0x4e));
    m = _mm256_max_ps(m, _mm256_permute_ps(m, 0xb1));
    REAL best = _mm256_cvtss_f32(m);
    best = best == -INFINITY ? (REAL)0 : best;
    const __m256 shift = _mm256_set1_ps(best);
    __m256 e_low = FX(fx_vexp)(_mm256_sub_ps(low, shift));
    __m256 e_high = _mm256_setzero_ps();
    if (out != NULL) _mm256_maskstore_ps(out, low_mask, e_low);
    if (n > 8) {
        e_high = FX(fx_vexp)(_mm256_sub_ps(high, shift));
        if (out != NULL) _mm256_maskstore_ps(out + 8, high_mask, e_high);
    }
    *shift_out = best;
    float total = FX(fx_hsum)(_mm256_add_ps(e_low, e_high));
    if (total >= 2.0f) return (double)total - 1.0;
    /* The maximum dominates (or the row is not finite): sum all but the
     * maxima, one bit each in a movemask (counted only when two or more). */
    __m256 q_low = _mm256_cmp_ps(low, shift, _CMP_EQ_OQ), q_high = _mm256_cmp_ps(high, shift, _CMP_EQ_OQ);
    __m256 s = _mm256_add_ps(_mm256_andnot_ps(q_low, e_low), _mm256_andnot_ps(q_high, e_high));
    unsigned ties = (unsigned)_mm256_movemask_ps(q_low) | ((unsigned)_mm256_movemask_ps(q_high) << 8);
    return FX(fx_rest)(FX(fx_hsum)(s), (ties & (ties - 1)) ? __builtin_popcount(ties) : ties != 0, best);
}
#endif
#else
static inline FX_ATTR double FX(fx_short_row)(const REAL *x, REAL *out, Py_ssize_t n, REAL *shift_out) {
    REAL best = -INFINITY, total = 0;
    Py_ssize_t ties = 0;
    for (Py_ssize_t i = 0; i < n; i++) best = x[i] > best ? x[i] : best;
    best = best == -INFINITY ? (REAL)0 : best;
    for (Py_ssize_t i = 0; i < n; i++) {
        REAL e = FX(fx_exp)(x[i] - best);
        if (out != NULL) out[i] = e;
        total += x[i] == best ? (REAL)0 : e;
        ties += x[i] == best;
    }
    *shift_out = best;
    return FX(fx_rest)(total, ties, best);
}
#endif

/* S' from the sum over every element but the first maximum (`first`, -1
 * when the row has none: all -inf or NaN, then S = 0 and S' = -1, or NaN). */
static inline FX_ATTR double FX(fx_rest_of)(double others, Py_ssize_t first, REAL best) {
    if (best == (REAL)INFINITY) return NAN;
    return first < 0 ? others - 1.0 : others;
}

/* S' of a row whose exps e[0:n] are known and whose S came out below 2: the
 * sum of every exp but the ones equal to 1 (the maxima: two of them would
 * have made S >= 2, so this is the first maximum), plus one for each further
 * tie. All -inf: S' = -1; a NaN or +inf row: NaN (from e). */
static FX_ATTR double FX(fx_rest_from_exps)(const REAL *e, Py_ssize_t n) {
    double others = 0;
    Py_ssize_t ones = 0;
    for (Py_ssize_t start = 0; start < n; start += FX_CHUNK) {
        Py_ssize_t stop = n - start < FX_CHUNK ? n : start + FX_CHUNK;
        REAL part = 0;
#pragma omp simd reduction(+ : part, ones)
        for (Py_ssize_t i = start; i < stop; i++) {
            part += e[i] == (REAL)1 ? (REAL)0 : e[i];
            ones += e[i] == (REAL)1;
        }
        others += part;
    }
    return others + (double)(ones - 1);
}

/* The exact S' of a row whose maximum `best` is known: one pass that leaves
 * out its first occurrence (found by a scan that stops at it). */
static FX_ATTR double FX(fx_shift_sum_exact)(const REAL *x, Py_ssize_t n, REAL best) {
    Py_ssize_t first = best == -INFINITY ? -1 : FX(fx_find)(x, n, best);
    REAL shift = first < 0 ? (REAL)0 : best;
    double others = 0;
    for (Py_ssize_t start = 0; start < n; start += FX_CHUNK) {
        Py_ssize_t len = n - start < FX_CHUNK ? n - start : FX_CHUNK;
        others += FX(fx_sumexp_store)(x + start, NULL, len, shift, first - start);
    }
    return FX(fx_rest_of)(others, first, best);
}

/* Online normaliser over L1-sized chunks: returns S' (see fx_rest), writes M
 * (0 for an all -inf row). Chunks are summed in REAL (vectorised), chunk sums
 * in double: a float running total over 2**19 chunks drifts by ~1e-3.
 * S is summed with the maximum's exp (1) in it; from S >= 2, S' = S - 1 is
 * relatively accurate (within 2 ulps of S), so only a row whose maximum
 * dominates (S < 2, or a non-finite row) pays for the exact second pass. */
static FX_ATTR double FX(fx_shift_sum)(const REAL *x, Py_ssize_t n, REAL *shift_out) {
    REAL best = -INFINITY;
    double total = 0;
    if (n <= FX_SHORT) return FX(fx_short_row)(x, NULL, n, shift_out);
    for (Py_ssize_t start = 0; start < n; start += FX_CHUNK) {
        Py_ssize_t len = n - start < FX_CHUNK ? n - start : FX_CHUNK;
        REAL chunk_max = FX(fx_max)(x + start, len);
        if (chunk_max > best) {
            total *= FX(fx_exp)(best - chunk_max);
            best = chunk_max;
        }
        total += FX(fx_sumexp_whole)(x + start, NULL, len, best == -INFINITY ? (REAL)0 : best);
    }
    *shift_out = best == -INFINITY ? (REAL)0 : best;
    return total >= 2.0 ? total - 1.0 : FX(fx_shift_sum_exact)(x, n, best);
}

/* out = exp(x - M) (out may be x); returns S' (chunk sums added in double),
 * writes M. As fx_shift_sum, S' = S - 1 from S >= 2, else from the exps. */
static FX_ATTR double FX(fx_store_exp)(const REAL *x, REAL *out, Py_ssize_t n, REAL *shift_out) {
    if (n <= FX_SHORT) return FX(fx_short_row)(x, out, n, shift_out);
    REAL best = FX(fx_max)(x, n);
    REAL shift = best == -INFINITY ? (REAL)0 : best;
    double total = 0;
    for (Py_ssize_t start = 0; start < n; start += FX_CHUNK) {
        Py_ssize_t len = n - start < FX_CHUNK ? n - start : FX_CHUNK;
        total += FX(fx_sumexp_whole)(x + start, out + start, len, shift);
    }
    *shift_out = shift;
    return total >= 2.0 ? total - 1.0 : FX(fx_rest_from_exps)(out, n);
}

/* S' (see fx_rest) and M of `rows` consecutive rows of n elements, and their
 * exps into out unless it is NULL. One call for many rows lets the rows' dependency chains
 * (max, exp, sum, and the call itself) overlap: a row of tens of classes is
 * otherwise dominated by them. */
static FX_ATTR void FX(fx_rows_sums)(const REAL *x, REAL *out, Py_ssize_t rows, Py_ssize_t n, REAL *shift,
                                     double *rest) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        if (n <= FX_SHORT)
            rest[r] = FX(fx_short_row)(x + r * n, out == NULL ? NULL : out + r * n, n, shift + r);
        else if (out == NULL)
            rest[r] = FX(fx_shift_sum)(x + r * n, n, shift + r);
        else
            rest[r] = FX(fx_store_exp)(x + r * n, out + r * n, n, shift + r);
    }
}

/* out = scale * out - smooth * w (w may be NULL when smooth is 0). */
static FX_ATTR void FX(fx_scale)(REAL *out, Py_ssize_t n, REAL scale, REAL smooth, const REAL *w) {
    if (smooth == 0 || w == NULL) {
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++) out[i] *= scale;
    } else {
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++) out[i] = out[i] * scale - smooth * w[i];
    }
}

/* out = (x - M) - log(S) (out may be x). */
static FX_ATTR void FX(fx_shifted)(const REAL *x, REAL *out, Py_ssize_t n, REAL shift, REAL log_total) {
#pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) out[i] = (x[i] - shift) - log_total;
}

#include "fx_tiles_template.h"
#include "fx_lanes_template.h"

#undef FX
#undef FX_NAME3
#undef FX_CAT3
#undef FX_INTRINSICS
#undef FX_LANES
#undef FX_V
#undef FX_LOAD
#undef FX_STORE
#undef FX_SET1
#undef FX_MAX
#undef FX_ADD
#undef FX_SUB
#undef FX_TAIL_MASK
#undef FX_MASKLOAD
#undef FX_MASKSTORE
