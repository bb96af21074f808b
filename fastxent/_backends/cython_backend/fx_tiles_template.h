/* Tiles (class axis not last): included by fx_rows_template.h, which
 * defines REAL, FX(), FX_INTRINSICS, FX_LANES, FX_V and the vector macros.
 *
 * A tile is w positions of one leading index, x[b, :, k0:k0 + w]: each class
 * is a contiguous run of w values, classes `stride` apart. The portable
 * loops below run over the positions once per class, keeping per-position
 * sums in arrays; they also serve wide tiles with long strides (see
 * fx_tile_stats). With AVX2, narrow tiles and short strides go by groups of
 * two vectors of positions whose maxima and sums stay in registers across
 * the classes. Both leave each position's maxima out of its sum and count
 * them: S' directly, exact where the maximum dominates.
 */

/* Tile of w <= FX_TILE_MAX positions: x points at x[b, 0, k0], classes `stride` apart.
 * Writes M (0 for all -inf) and S' (see fx_rest) per position into `rest`. S
 * sums blocks of FX_CLASS_BLOCK classes in REAL (vectorised) and adds the
 * blocks in double. */
static FX_ATTR void FX(fx_tile_stats_masked)(const REAL *x, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w,
                                      REAL *shift, double *rest) {
    REAL partial[FX_TILE_MAX], tied[FX_TILE_MAX];
    double ties[FX_TILE_MAX];
    for (Py_ssize_t k = 0; k < w; k++) shift[k] = -INFINITY;
    for (Py_ssize_t c = 0; c < n_classes; c++) {
        const REAL *column = x + c * stride;
#pragma omp simd
        for (Py_ssize_t k = 0; k < w; k++) shift[k] = column[k] > shift[k] ? column[k] : shift[k];
    }
    for (Py_ssize_t k = 0; k < w; k++) {
        shift[k] = shift[k] == -INFINITY ? (REAL)0 : shift[k];
        rest[k] = 0;
        ties[k] = 0;
    }
    /* The maxima stay out of the sum and are counted: a second pass for the
     * positions whose maximum dominates would cost a tile (of one image, say)
     * with any such position twice. */
    for (Py_ssize_t c0 = 0; c0 < n_classes; c0 += FX_CLASS_BLOCK) {
        Py_ssize_t c1 = c0 + FX_CLASS_BLOCK < n_classes ? c0 + FX_CLASS_BLOCK : n_classes;
        for (Py_ssize_t k = 0; k < w; k++) {
            partial[k] = 0;
            tied[k] = 0;
        }
        for (Py_ssize_t c = c0; c < c1; c++) {
            const REAL *column = x + c * stride;
#pragma omp simd
            for (Py_ssize_t k = 0; k < w; k++) {
                REAL e = FX(fx_exp)(column[k] - shift[k]);
                int top = column[k] == shift[k];
                partial[k] += top ? (REAL)0 : e;
                tied[k] += top ? (REAL)1 : (REAL)0;
            }
        }
        for (Py_ssize_t k = 0; k < w; k++) {
            rest[k] += partial[k];
            ties[k] += tied[k];
        }
    }
    for (Py_ssize_t k = 0; k < w; k++) rest[k] = shift[k] == (REAL)INFINITY ? NAN : rest[k] + (ties[k] - 1.0);
}

/* out[c, k] = scale[k] * exp(x[c, k] - M[k]) - smooth[k] * weight[c] (out may be x). */
static FX_ATTR void FX(fx_tile_scale_plain)(const REAL *x, REAL *out, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w,
                                      const REAL *shift, const REAL *scale, const REAL *smooth, const REAL *weight) {
    for (Py_ssize_t c = 0; c < n_classes; c++) {
        const REAL *column = x + c * stride;
        REAL *target = out + c * stride;
        REAL w_c = weight == NULL ? (REAL)0 : weight[c];
#pragma omp simd
        for (Py_ssize_t k = 0; k < w; k++) target[k] = FX(fx_exp)(column[k] - shift[k]) * scale[k] - smooth[k] * w_c;
    }
}


#if FX_INTRINSICS
/* Positions per register-blocked group: two vectors. */
#define FX_GROUP (2 * FX_LANES)
/* Tiles narrower than this go by groups (see fx_tile_stats). */
#define FX_NARROW 128
#if FX_IS_DOUBLE
#define FX_WIDE 2 /* double vectors per group */
#define FX_T_EQ(a, b) _mm256_cmp_pd(a, b, _CMP_EQ_OQ)
#define FX_T_AND _mm256_and_pd
#define FX_T_ANDNOT _mm256_andnot_pd
#define FX_T_BLEND _mm256_blendv_pd
#define FX_T_MUL _mm256_mul_pd
#define FX_T_FNMADD _mm256_fnmadd_pd
#else
#define FX_WIDE 4
#define FX_T_EQ(a, b) _mm256_cmp_ps(a, b, _CMP_EQ_OQ)
#define FX_T_AND _mm256_and_ps
#define FX_T_ANDNOT _mm256_andnot_ps
#define FX_T_BLEND _mm256_blendv_ps
#define FX_T_MUL _mm256_mul_ps
#define FX_T_FNMADD _mm256_fnmadd_ps
#endif

/* acc[] += the lanes of a then b, in double. */
static inline FX_ATTR void FX(fx_widen_add)(__m256d *acc, FX_V a, FX_V b) {
#if FX_IS_DOUBLE
    acc[0] = _mm256_add_pd(acc[0], a);
    acc[1] = _mm256_add_pd(acc[1], b);
#else
    acc[0] = _mm256_add_pd(acc[0], _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
    acc[1] = _mm256_add_pd(acc[1], _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
    acc[2] = _mm256_add_pd(acc[2], _mm256_cvtps_pd(_mm256_castps256_ps128(b)));
    acc[3] = _mm256_add_pd(acc[3], _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1)));
#endif
}

/* Per position of a group: sum[] = the sum of exp(x - M) without the
 * maxima (x == M), ties[] their count, in double, blocks of FX_CLASS_BLOCK
 * classes summed in REAL. Lanes outside the masks load -inf: their exps are
 * 0. `full` (a constant at each call) skips the masks. */
static inline FX_ATTR void FX(fx_group_sums)(const REAL *x, Py_ssize_t n_classes, Py_ssize_t stride, int full,
                                             __m256i mask0, __m256i mask1, FX_V m0, FX_V m1, __m256d *sum,
                                             __m256d *ties) {
    const FX_V zero = FX_SET1(0), one = FX_SET1(1);
    for (int j = 0; j < FX_WIDE; j++) sum[j] = ties[j] = _mm256_setzero_pd();
    for (Py_ssize_t c0 = 0; c0 < n_classes; c0 += FX_CLASS_BLOCK) {
        Py_ssize_t c1 = c0 + FX_CLASS_BLOCK < n_classes ? c0 + FX_CLASS_BLOCK : n_classes;
        FX_V s0 = zero, s1 = zero, t0 = zero, t1 = zero;
        for (Py_ssize_t c = c0; c < c1; c++) {
            const REAL *p = x + c * stride;
            FX_V a = full ? FX_LOAD(p) : FX_MASKLOAD(p, mask0);
            FX_V b = full ? FX_LOAD(p + FX_LANES) : FX_MASKLOAD(p + FX_LANES, mask1);
            FX_V qa = FX_T_EQ(a, m0), qb = FX_T_EQ(b, m1);
            s0 = FX_ADD(s0, FX_T_ANDNOT(qa, FX(fx_vexp)(FX_SUB(a, m0))));
            s1 = FX_ADD(s1, FX_T_ANDNOT(qb, FX(fx_vexp)(FX_SUB(b, m1))));
            t0 = FX_ADD(t0, FX_T_AND(qa, one));
            t1 = FX_ADD(t1, FX_T_AND(qb, one));
        }
        FX(fx_widen_add)(sum, s0, s1);
        FX(fx_widen_add)(ties, t0, t1);
    }
}

/* S' (as fx_tile_stats_masked) of `count` <= FX_GROUP positions whose
 * maxima are m0, m1 (-inf where a position's every logit is), classes
 * `stride` apart from x; writes M (0 for -inf) and S'. Always the masked
 * sums: S' directly, with no second pass for the positions whose maximum
 * dominates (common in a confident model's outputs). */
static inline FX_ATTR void FX(fx_group_rest)(const REAL *x, Py_ssize_t n_classes, Py_ssize_t stride, int full,
                                             Py_ssize_t count, FX_V m0, FX_V m1, REAL *shift, double *rest) {
    const __m256i mask0 = FX_TAIL_MASK(count), mask1 = FX_TAIL_MASK(count - FX_LANES);
    const FX_V zero = FX_SET1(0), minus_inf = FX_SET1(-INFINITY);
    m0 = FX_T_BLEND(m0, zero, FX_T_EQ(m0, minus_inf));
    m1 = FX_T_BLEND(m1, zero, FX_T_EQ(m1, minus_inf));
    __m256d part[FX_WIDE], tied[FX_WIDE], r[FX_WIDE], top[FX_WIDE];
    if (full)
        FX(fx_group_sums)(x, n_classes, stride, 1, mask0, mask1, m0, m1, part, tied);
    else
        FX(fx_group_sums)(x, n_classes, stride, 0, mask0, mask1, m0, m1, part, tied);
#if FX_IS_DOUBLE
    top[0] = m0;
    top[1] = m1;
#else
    top[0] = _mm256_cvtps_pd(_mm256_castps256_ps128(m0));
    top[1] = _mm256_cvtps_pd(_mm256_extractf128_ps(m0, 1));
    top[2] = _mm256_cvtps_pd(_mm256_castps256_ps128(m1));
    top[3] = _mm256_cvtps_pd(_mm256_extractf128_ps(m1, 1));
#endif
    for (int j = 0; j < FX_WIDE; j++) {
        r[j] = _mm256_add_pd(part[j], _mm256_sub_pd(tied[j], _mm256_set1_pd(1.0)));
        r[j] = _mm256_blendv_pd(r[j], _mm256_set1_pd(NAN), _mm256_cmp_pd(top[j], _mm256_set1_pd(INFINITY), _CMP_EQ_OQ));
    }
    if (count == FX_GROUP) {
        FX_STORE(shift, m0);
        FX_STORE(shift + FX_LANES, m1);
        for (int j = 0; j < FX_WIDE; j++) _mm256_storeu_pd(rest + 4 * j, r[j]);
    } else {
        REAL s[FX_GROUP];
        double d[FX_GROUP];
        FX_STORE(s, m0);
        FX_STORE(s + FX_LANES, m1);
        for (int j = 0; j < FX_WIDE; j++) _mm256_storeu_pd(d + 4 * j, r[j]);
        memcpy(shift, s, (size_t)count * sizeof(REAL));
        memcpy(rest, d, (size_t)count * sizeof(double));
    }
}

/* M and S' of `count` <= FX_GROUP positions read in place: many classes,
 * whose tile is a few positions wide. */
static inline FX_ATTR void FX(fx_group_stats)(const REAL *x, Py_ssize_t n_classes, Py_ssize_t stride,
                                              Py_ssize_t count, REAL *shift, double *rest) {
    const int full = count == FX_GROUP;
    const __m256i mask0 = FX_TAIL_MASK(count), mask1 = FX_TAIL_MASK(count - FX_LANES);
    FX_V m0 = FX_SET1(-INFINITY), m1 = m0;
    for (Py_ssize_t c = 0; c < n_classes; c++) {
        const REAL *p = x + c * stride;
        /* The running max second: a NaN never wins, as in the portable loop. */
        m0 = FX_MAX(full ? FX_LOAD(p) : FX_MASKLOAD(p, mask0), m0);
        m1 = FX_MAX(full ? FX_LOAD(p + FX_LANES) : FX_MASKLOAD(p + FX_LANES, mask1), m1);
    }
    if (full)
        FX(fx_group_rest)(x, n_classes, stride, 1, count, m0, m1, shift, rest);
    else
        FX(fx_group_rest)(x, n_classes, stride, 0, count, m0, m1, shift, rest);
}

/* out = scale * exp(x - M) - smooth * weight[c] over `count` <= FX_GROUP positions (see fx_tile_scale). */
static inline FX_ATTR void FX(fx_group_scale)(const REAL *x, REAL *out, Py_ssize_t n_classes, Py_ssize_t stride,
                                              Py_ssize_t count, const REAL *shift, const REAL *scale,
                                              const REAL *smooth, const REAL *weight) {
    const int full = count == FX_GROUP;
    const __m256i mask0 = FX_TAIL_MASK(count), mask1 = FX_TAIL_MASK(count - FX_LANES);
    const FX_V m0 = full ? FX_LOAD(shift) : FX_MASKLOAD(shift, mask0);
    const FX_V m1 = full ? FX_LOAD(shift + FX_LANES) : FX_MASKLOAD(shift + FX_LANES, mask1);
    const FX_V a0 = full ? FX_LOAD(scale) : FX_MASKLOAD(scale, mask0);
    const FX_V a1 = full ? FX_LOAD(scale + FX_LANES) : FX_MASKLOAD(scale + FX_LANES, mask1);
    const FX_V s0 = full ? FX_LOAD(smooth) : FX_MASKLOAD(smooth, mask0);
    const FX_V s1 = full ? FX_LOAD(smooth + FX_LANES) : FX_MASKLOAD(smooth + FX_LANES, mask1);
    for (Py_ssize_t c = 0; c < n_classes; c++) {
        const REAL *p = x + c * stride;
        REAL *q = out + c * stride;
        const FX_V w_c = FX_SET1(weight == NULL ? (REAL)0 : weight[c]);
        FX_V a = full ? FX_LOAD(p) : FX_MASKLOAD(p, mask0);
        FX_V b = full ? FX_LOAD(p + FX_LANES) : FX_MASKLOAD(p + FX_LANES, mask1);
        a = FX_T_FNMADD(s0, w_c, FX_T_MUL(FX(fx_vexp)(FX_SUB(a, m0)), a0));
        b = FX_T_FNMADD(s1, w_c, FX_T_MUL(FX(fx_vexp)(FX_SUB(b, m1)), a1));
        if (full) {
            FX_STORE(q, a);
            FX_STORE(q + FX_LANES, b);
        } else {
            FX_MASKSTORE(q, mask0, a);
            FX_MASKSTORE(q + FX_LANES, mask1, b);
        }
    }
}
#undef FX_WIDE
#undef FX_T_EQ
#undef FX_T_AND
#undef FX_T_ANDNOT
#undef FX_T_BLEND
#undef FX_T_MUL
#undef FX_T_FNMADD
#endif

/* Tile of w <= FX_TILE_MAX positions: x points at x[b, 0, k0], classes
 * `stride` apart. Writes M (0 for all -inf) and S' (see fx_rest) per
 * position. */
static FX_ATTR void FX(fx_tile_stats)(const REAL *x, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w,
                                      REAL *shift, double *rest) {
#if FX_INTRINSICS
    /* Measured in place (float32, 1 thread): groups win on narrow tiles
     * (2x1000x32x32: 1.0 -> 0.85 ns per element of loss) and on short strides
     * (8x21x16x16: 0.95 -> 0.84); with a wide tile and a long stride
     * (8x21x256x256, 16x2x256x256) the class-by-class loops' long runs per
     * class read faster (0.77 against 1.03; 3.1 against 3.5). */
    if (w >= FX_NARROW && stride * (Py_ssize_t)sizeof(REAL) > 4096) {
        FX(fx_tile_stats_masked)(x, n_classes, stride, w, shift, rest);
        return;
    }
    Py_ssize_t k = 0;
    for (; k + FX_GROUP <= w; k += FX_GROUP) FX(fx_group_stats)(x + k, n_classes, stride, FX_GROUP, shift + k, rest + k);
    if (k < w) FX(fx_group_stats)(x + k, n_classes, stride, w - k, shift + k, rest + k);
#else
    FX(fx_tile_stats_masked)(x, n_classes, stride, w, shift, rest);
#endif
}

/* out[c, k] = scale[k] * exp(x[c, k] - M[k]) - smooth[k] * weight[c] (out may be x; weight may be NULL). */
static FX_ATTR void FX(fx_tile_scale)(const REAL *x, REAL *out, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w,
                                      const REAL *shift, const REAL *scale, const REAL *smooth, const REAL *weight) {
#if FX_INTRINSICS
    /* Groups on narrow tiles only: on wide ones the plain loop's long runs
     * per class measure faster (the group's stores to class c and loads of
     * class c + 1 sit at one offset modulo 4 KB when the stride is a power of two). */
    if (w >= FX_NARROW) {
        FX(fx_tile_scale_plain)(x, out, n_classes, stride, w, shift, scale, smooth, weight);
        return;
    }
    Py_ssize_t k = 0;
    for (; k + FX_GROUP <= w; k += FX_GROUP)
        FX(fx_group_scale)(x + k, out + k, n_classes, stride, FX_GROUP, shift + k, scale + k, smooth + k, weight);
    if (k < w) FX(fx_group_scale)(x + k, out + k, n_classes, stride, w - k, shift + k, scale + k, smooth + k, weight);
#else
    FX(fx_tile_scale_plain)(x, out, n_classes, stride, w, shift, scale, smooth, weight);
#endif
}
#if FX_INTRINSICS
#undef FX_GROUP
#undef FX_NARROW
#endif

/* The finish's loops run vectors and a scalar tail: with contraction into
 * FMAs left to the compiler, the two may round one position differently,
 * and a position's loss would depend on the tile's width (a Dask chunk's).
 * Plain multiplies and adds round alike in both. */
#if defined(__clang__)
#define FX_NO_CONTRACT
#define FX_CONTRACT_OFF _Pragma("clang fp contract(off)")
#elif defined(__GNUC__)
#define FX_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#define FX_CONTRACT_OFF
#else
#define FX_NO_CONTRACT
#define FX_CONTRACT_OFF
#endif

/* The gradient half of fx_tile_finish; `has_slope` is a constant at each call
 * (a NULL test inside the loop became a masked load costing 4x the loop). */
static inline FX_ATTR FX_NO_CONTRACT void FX(fx_finish_grad)(Py_ssize_t w, const REAL *shift, const double *rest, const REAL *logs,
                                              const REAL *xy, const double *wy, const double *valid,
                                              const double *weighted, const double *gs, const REAL *slope,
                                              int has_slope, double eps, double smooth_coef, double weight_sum,
                                              double z_coef, REAL *loss, REAL *lse, REAL *scale, REAL *smooth,
                                              double *correction, double *target_grad) {
    FX_CONTRACT_OFF
    const double keep = 1.0 - eps;
#pragma omp simd
    for (Py_ssize_t k = 0; k < w; k++) {
        double log_total = (double)logs[k], row_lse = (double)shift[k] + log_total, total = 1.0 + rest[k];
        double value = keep * wy[k] * ((double)(shift[k] - xy[k]) + log_total);
        if (eps > 0) value = value + smooth_coef * (weight_sum * row_lse - weighted[k]);
        double g = gs[k];
        double a = g * (keep * wy[k] + smooth_coef * weight_sum);
        if (z_coef != 0) a = a + g * 2.0 * z_coef * row_lse;
        REAL smooth_k = (REAL)(g * smooth_coef);
        double slope_k = has_slope ? (double)slope[k] : 1.0;
        double c = g * keep * wy[k];
        /* A target that is the maximum: a / S - c = ((a - c) - c * S') / S, no cancellation. */
        double exact = (((a - c) - c * rest[k]) / total - (double)smooth_k * wy[k]) * slope_k;
        int ok = valid[k] != 0;
        loss[k] = ok ? (REAL)value : (REAL)0;
        lse[k] = ok ? (REAL)row_lse : (REAL)0;
        scale[k] = ok ? (REAL)(a / total) : (REAL)0;
        smooth[k] = ok ? smooth_k : (REAL)0;
        correction[k] = ok ? c * slope_k : 0.0;
        target_grad[k] = xy[k] == shift[k] ? exact : NAN;
    }
}

/* Per position of a tile with index targets, after fx_tile_stats: the loss,
 * the lse and the gradient's per-position factors (scale, smooth, the
 * target's correction, and its exact value where the target is the
 * maximum, else NaN), as the Cython row code computes them. The targets
 * come gathered: xy = z[y], wy = weight[y], valid = 1 or 0 (ignored or
 * out of range); slope is the softcap's at the target, or NULL. Branch-free
 * loops, vectorised: the per-position work of a tile of few classes was
 * as long as its sums. */
static FX_ATTR FX_NO_CONTRACT void FX(fx_tile_finish)(Py_ssize_t w, const REAL *shift, const double *rest, const REAL *logs,
                                       const REAL *xy, const double *wy, const double *valid,
                                       const double *weighted, const double *gs, const REAL *slope, double eps,
                                       double smooth_coef, double weight_sum, double z_coef, int with_grad,
                                       REAL *loss, REAL *lse, REAL *scale, REAL *smooth, double *correction,
                                       double *target_grad) {
    FX_CONTRACT_OFF
    if (with_grad && slope == NULL)
        FX(fx_finish_grad)(w, shift, rest, logs, xy, wy, valid, weighted, gs, slope, 0, eps, smooth_coef, weight_sum,
                           z_coef, loss, lse, scale, smooth, correction, target_grad);
    else if (with_grad)
        FX(fx_finish_grad)(w, shift, rest, logs, xy, wy, valid, weighted, gs, slope, 1, eps, smooth_coef, weight_sum,
                           z_coef, loss, lse, scale, smooth, correction, target_grad);
    if (with_grad) return;
    const double keep = 1.0 - eps;
#pragma omp simd
    for (Py_ssize_t k = 0; k < w; k++) {
        double log_total = (double)logs[k], row_lse = (double)shift[k] + log_total;
        double value = keep * wy[k] * ((double)(shift[k] - xy[k]) + log_total);
        if (eps > 0) value = value + smooth_coef * (weight_sum * row_lse - weighted[k]);
        loss[k] = valid[k] != 0 ? (REAL)value : (REAL)0;
        lse[k] = valid[k] != 0 ? (REAL)row_lse : (REAL)0;
    }
}
