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

/* Max of x[0:n]; -inf when empty. A NaN may or may not win: the exp sum then is NaN anyway. */
static FX_ATTR REAL FX(fx_max)(const REAL *x, Py_ssize_t n) {
    REAL best = -INFINITY;
#pragma omp simd reduction(max : best)
    for (Py_ssize_t i = 0; i < n; i++) best = x[i] > best ? x[i] : best;
    return best;
}

static FX_ATTR REAL FX(fx_sumexp)(const REAL *x, Py_ssize_t n, REAL shift) {
    REAL total = 0;
#pragma omp simd reduction(+ : total)
    for (Py_ssize_t i = 0; i < n; i++) total += FX(fx_exp)(x[i] - shift);
    return total;
}

/* Rows of at most FX_SHORT elements take plain loops: an `omp simd`
 * reduction spills its lanes to the stack and reloads them, a store-forwarding
 * stall per pass that costs more than a short row's arithmetic (measured in
 * docs/performance.md, "65536 x 10"). Returns S, writes M and, unless out is
 * NULL, exp(x - M). */
static inline FX_ATTR REAL FX(fx_short_row)(const REAL *x, REAL *out, Py_ssize_t n, REAL *shift_out) {
    REAL best = -INFINITY, total = 0;
    for (Py_ssize_t i = 0; i < n; i++) best = x[i] > best ? x[i] : best;
    best = best == -INFINITY ? (REAL)0 : best;
    for (Py_ssize_t i = 0; i < n; i++) {
        REAL e = FX(fx_exp)(x[i] - best);
        if (out != NULL) out[i] = e;
        total += e;
    }
    *shift_out = best;
    return total;
}

/* Online normaliser over L1-sized chunks: returns S, writes M (0 for an all -inf row).
 * Chunks are summed in REAL (vectorised), chunk sums in double: a float running
 * total over 2**19 chunks drifts by ~1e-3. */
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
        total += FX(fx_sumexp)(x + start, len, best == -INFINITY ? (REAL)0 : best);
    }
    *shift_out = best == -INFINITY ? (REAL)0 : best;
    return total;
}

/* out = exp(x - M) (out may be x); returns S (chunk sums added in double), writes M. */
static FX_ATTR double FX(fx_store_exp)(const REAL *x, REAL *out, Py_ssize_t n, REAL *shift_out) {
    if (n <= FX_SHORT) return FX(fx_short_row)(x, out, n, shift_out);
    REAL best = FX(fx_max)(x, n);
    REAL shift = best == -INFINITY ? (REAL)0 : best;
    double total = 0;
    for (Py_ssize_t start = 0; start < n; start += FX_CHUNK) {
        Py_ssize_t len = n - start < FX_CHUNK ? n - start : FX_CHUNK;
        const REAL *chunk = x + start;
        REAL *stored = out + start;
        REAL partial = 0;
#pragma omp simd reduction(+ : partial)
        for (Py_ssize_t i = 0; i < len; i++) {
            REAL e = FX(fx_exp)(chunk[i] - shift);
            stored[i] = e;
            partial += e;
        }
        total += partial;
    }
    *shift_out = shift;
    return total;
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

/* Tile of w <= FX_TILE_MAX positions: x points at x[b, 0, k0], classes `stride` apart.
 * Writes M (0 for all -inf) and S per position; S sums blocks of FX_CLASS_BLOCK
 * classes in REAL (vectorised) and adds the blocks in double. */
static FX_ATTR void FX(fx_tile_stats)(const REAL *x, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w,
                                      REAL *shift, double *total) {
    REAL partial[FX_TILE_MAX];
    for (Py_ssize_t k = 0; k < w; k++) shift[k] = -INFINITY;
    for (Py_ssize_t c = 0; c < n_classes; c++) {
        const REAL *column = x + c * stride;
#pragma omp simd
        for (Py_ssize_t k = 0; k < w; k++) shift[k] = column[k] > shift[k] ? column[k] : shift[k];
    }
    for (Py_ssize_t k = 0; k < w; k++) {
        shift[k] = shift[k] == -INFINITY ? (REAL)0 : shift[k];
        total[k] = 0;
    }
    for (Py_ssize_t c0 = 0; c0 < n_classes; c0 += FX_CLASS_BLOCK) {
        Py_ssize_t c1 = c0 + FX_CLASS_BLOCK < n_classes ? c0 + FX_CLASS_BLOCK : n_classes;
        for (Py_ssize_t k = 0; k < w; k++) partial[k] = 0;
        for (Py_ssize_t c = c0; c < c1; c++) {
            const REAL *column = x + c * stride;
#pragma omp simd
            for (Py_ssize_t k = 0; k < w; k++) partial[k] += FX(fx_exp)(column[k] - shift[k]);
        }
        for (Py_ssize_t k = 0; k < w; k++) total[k] += partial[k];
    }
}

/* out[c, k] = scale[k] * exp(x[c, k] - M[k]) - smooth[k] * weight[c] (out may be x). */
static FX_ATTR void FX(fx_tile_scale)(const REAL *x, REAL *out, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w,
                                      const REAL *shift, const REAL *scale, const REAL *smooth, const REAL *weight) {
    for (Py_ssize_t c = 0; c < n_classes; c++) {
        const REAL *column = x + c * stride;
        REAL *target = out + c * stride;
        REAL w_c = weight == NULL ? (REAL)0 : weight[c];
#pragma omp simd
        for (Py_ssize_t k = 0; k < w; k++) target[k] = FX(fx_exp)(column[k] - shift[k]) * scale[k] - smooth[k] * w_c;
    }
}

#undef FX
#undef FX_NAME3
#undef FX_CAT3
