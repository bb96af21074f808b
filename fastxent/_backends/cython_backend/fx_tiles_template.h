/* Tiles (class axis not last): included by fx_rows_template.h, which
 * defines REAL, FX(), FX_INTRINSICS, FX_LANES, FX_V and the vector macros.
 *
 * A tile is w positions of one leading index, x[b, :, k0:k0 + w]: each class
 * is a contiguous run of w values, classes `stride` apart. With AVX2 a
 * tile's M and S' come from one sweep (fx_online_step), class by class over
 * a wide tile or by groups of two vectors of positions whose M and S' stay
 * in registers; without AVX2, the portable two-sweep loops below (the
 * maxima, then the sums), which also recompute the positions the sweep
 * cannot (non-finite ones). Both leave each position's maxima out of its
 * sum and count them: S' directly, exact where the maximum dominates.
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
/* Classes ahead that a group prefetches: a group reads one line per class, a
 * stride apart that crosses a page, which the hardware prefetchers do not
 * follow (2x1000x32x32 float32, 2 threads, ns per element: loss 0.67 ->
 * 0.48-0.52 at 8-24 classes ahead; the gradient's sweep 1.8 -> 1.6 with its
 * stores prefetched for writing). */
#define FX_GROUP_AHEAD 16
/* Classes ahead that the class-by-class sweep prefetches: each class is a
 * run of a tile's width, too short for the prefetchers to train on. */
#define FX_TILE_AHEAD 2
#if FX_IS_DOUBLE
#define FX_T_MUL _mm256_mul_pd
#define FX_T_FNMADD _mm256_fnmadd_pd
#else
#define FX_T_MUL _mm256_mul_ps
#define FX_T_FNMADD _mm256_fnmadd_ps
#endif

/* Prefetch the (one or two) lines of a group's FX_GROUP values at p, for writing if `write`. */
static inline FX_ATTR void FX(fx_prefetch_group)(const REAL *p, int write) {
    if (write) {
        __builtin_prefetch(p, 1, 3);
        __builtin_prefetch(p + FX_GROUP - 1, 1, 3);
    } else {
        __builtin_prefetch(p, 0, 3);
        __builtin_prefetch(p + FX_GROUP - 1, 0, 3);
    }
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
        if (c + FX_GROUP_AHEAD < n_classes) {
            FX(fx_prefetch_group)(p + FX_GROUP_AHEAD * stride, 0);
            FX(fx_prefetch_group)(q + FX_GROUP_AHEAD * stride, 1);
        }
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
#undef FX_T_MUL
#undef FX_T_FNMADD
#endif

#if FX_INTRINSICS
/* One sweep instead of two (the maxima, then the sums): each logit read once,
 * M and S' updated together per class (the online normaliser). With x the
 * next class's value and d = x - M, e = exp(-|d|):
 *   d > 0 (a new maximum):  S' = (S' + 1) * e,  M = x
 *   otherwise:              S' = S' + e
 * S' leaves one maximum out and counts the others as 1 each (exp 0 is 1
 * exactly), as the two-sweep sums do; one exp per logit. A tile's classes
 * lie a stride apart that is often a power of two, so they share cache sets
 * and a second sweep read them from L3 (8x21x256x256).
 *
 * Each block of FX_CLASS_BLOCK classes runs in REAL from S' = 0; the blocks
 * add in double, the sum before a block scaled by exp(M before it - M after
 * it) (in REAL). A position
 * with a non-finite M or S' (all -inf, +inf, NaN) is recomputed by the
 * two-sweep loop, whose rules it then follows exactly. Every position takes
 * the same operations in the same order in either layout below (class by
 * class over the tile, or groups in registers), so its result never depends
 * on the tile's width or the path. */
static inline FX_ATTR void FX(fx_online_step)(FX_V x, FX_V *m, FX_V *s) {
    const FX_V sign = FX_SET1(-0.0), zero = FX_SET1(0);
#if FX_IS_DOUBLE
    FX_V d = _mm256_sub_pd(x, *m);
    FX_V e = FX(fx_vexp)(_mm256_or_pd(d, sign));
    FX_V up = _mm256_cmp_pd(d, zero, _CMP_GT_OQ);
    *s = _mm256_blendv_pd(_mm256_add_pd(*s, e), _mm256_fmadd_pd(*s, e, e), up);
    *m = _mm256_max_pd(x, *m); /* the running max second: a NaN x never wins */
#else
    FX_V d = _mm256_sub_ps(x, *m);
    FX_V e = FX(fx_vexp)(_mm256_or_ps(d, sign));
    FX_V up = _mm256_cmp_ps(d, zero, _CMP_GT_OQ);
    *s = _mm256_blendv_ps(_mm256_add_ps(*s, e), _mm256_fmadd_ps(*s, e, e), up);
    *m = _mm256_max_ps(x, *m);
#endif
}

/* rest[k] = rest[k] * exp(start[k] - run[k]) + part[k]: a block's S' (part,
 * relative to the block's final maximum run) added to the blocks before it
 * (relative to start, the maximum before the block). */
static inline FX_ATTR void FX(fx_online_merge)(Py_ssize_t n, double *rest, const REAL *start, const REAL *run,
                                               const REAL *part, int first) {
    if (first) { /* nothing before the first block: a plain, vectorised copy */
        for (Py_ssize_t k = 0; k < n; k++) rest[k] = (double)part[k];
        return;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        double before = rest[k];
        /* The scale in REAL, by fx_exp: a libm exp per position per block cost as much as a block's sweep. */
        if (before != 0 && start[k] != run[k]) before *= (double)FX(fx_exp)(start[k] - run[k]);
        rest[k] = before + (double)part[k];
    }
}

/* Positions whose M or S' is not finite again by the two-sweep loop. */
static inline FX_ATTR void FX(fx_online_fixup)(const REAL *x, Py_ssize_t n_classes, Py_ssize_t stride,
                                              Py_ssize_t w, REAL *shift, double *rest) {
    /* A vector scan first (v - v is NaN exactly where v is not finite): a scalar test per position cost
     * tiles of two classes a fifth of their time. */
    __m256d bad = _mm256_setzero_pd();
    FX_V bad_shift = FX_SET1(0);
    Py_ssize_t k = 0;
    for (; k + FX_LANES <= w; k += FX_LANES) {
        FX_V m = FX_LOAD(shift + k);
        bad_shift = FX_ADD(bad_shift, FX_SUB(m, m));
    }
    for (Py_ssize_t j = 0; j + 4 <= w; j += 4) {
        __m256d r = _mm256_loadu_pd(rest + j);
        bad = _mm256_add_pd(bad, _mm256_sub_pd(r, r));
    }
    int any = _mm256_movemask_pd(_mm256_cmp_pd(bad, bad, _CMP_UNORD_Q)) != 0;
#if FX_IS_DOUBLE
    any |= _mm256_movemask_pd(_mm256_cmp_pd(bad_shift, bad_shift, _CMP_UNORD_Q)) != 0;
#else
    any |= _mm256_movemask_ps(_mm256_cmp_ps(bad_shift, bad_shift, _CMP_UNORD_Q)) != 0;
#endif
    /* past the last full vector of both scans (FX_LANES is a multiple of 4) */
    for (; k < w && !any; k++) any = !isfinite(shift[k]) || !isfinite(rest[k]);
    if (!any) return;
    for (k = 0; k < w; k++)
        if (!isfinite(shift[k]) || !isfinite(rest[k]))
            FX(fx_tile_stats_masked)(x + k, n_classes, stride, 1, shift + k, rest + k);
}

/* The online sweep class by class over the whole tile (w <= FX_TILE_MAX),
 * M and S' kept in arrays (in L1): each class a run of w contiguous logits. */
static FX_ATTR void FX(fx_tile_stats_online)(const REAL *x, Py_ssize_t n_classes, Py_ssize_t stride,
                                             Py_ssize_t w, REAL *shift, double *rest) {
    REAL run[FX_TILE_MAX + FX_LANES], part[FX_TILE_MAX + FX_LANES], start[FX_TILE_MAX + FX_LANES];
    const Py_ssize_t full = w - w % FX_LANES;
    const __m256i mask = FX_TAIL_MASK(w - full);
    const FX_V zero = FX_SET1(0);
    for (Py_ssize_t k = 0; k < full; k += FX_LANES) FX_STORE(run + k, FX_LOAD(x + k));
    if (full < w) FX_STORE(run + full, FX_MASKLOAD(x + full, mask));
    for (Py_ssize_t k = 0; k < w; k++) rest[k] = 0;
    for (Py_ssize_t c0 = 0; c0 < n_classes; c0 += FX_CLASS_BLOCK) {
        Py_ssize_t c1 = c0 + FX_CLASS_BLOCK < n_classes ? c0 + FX_CLASS_BLOCK : n_classes;
        memcpy(start, run, (size_t)w * sizeof(REAL));
        for (Py_ssize_t k = 0; k < w; k += FX_LANES) FX_STORE(part + k, zero);
        for (Py_ssize_t c = c0 == 0 ? 1 : c0; c < c1; c++) {
            const REAL *column = x + c * stride;
            if (c + FX_TILE_AHEAD < n_classes) {
                const char *ahead = (const char *)(column + FX_TILE_AHEAD * stride);
                for (Py_ssize_t b = 0; b < w * (Py_ssize_t)sizeof(REAL); b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
            }
            for (Py_ssize_t k = 0; k < full; k += FX_LANES) {
                FX_V m = FX_LOAD(run + k), s = FX_LOAD(part + k);
                FX(fx_online_step)(FX_LOAD(column + k), &m, &s);
                FX_STORE(run + k, m);
                FX_STORE(part + k, s);
            }
            if (full < w) {
                FX_V m = FX_LOAD(run + full), s = FX_LOAD(part + full);
                FX(fx_online_step)(FX_MASKLOAD(column + full, mask), &m, &s);
                FX_STORE(run + full, m);
                FX_STORE(part + full, s);
            }
        }
        FX(fx_online_merge)(w, rest, start, run, part, c0 == 0);
    }
    memcpy(shift, run, (size_t)w * sizeof(REAL));
    FX(fx_online_fixup)(x, n_classes, stride, w, shift, rest);
}

/* The online sweep over `count` <= FX_GROUP positions, M and S' in registers
 * across the classes: narrow tiles and short strides. */
static inline FX_ATTR void FX(fx_group_online)(const REAL *x, Py_ssize_t n_classes, Py_ssize_t stride,
                                               Py_ssize_t count, REAL *shift, double *rest) {
    const int full = count == FX_GROUP;
    const __m256i mask0 = FX_TAIL_MASK(count), mask1 = FX_TAIL_MASK(count - FX_LANES);
    FX_V m0 = full ? FX_LOAD(x) : FX_MASKLOAD(x, mask0);
    FX_V m1 = full ? FX_LOAD(x + FX_LANES) : FX_MASKLOAD(x + FX_LANES, mask1);
    REAL run[FX_GROUP], part[FX_GROUP], start[FX_GROUP];
    double sums[FX_GROUP] = {0};
    for (Py_ssize_t c0 = 0; c0 < n_classes; c0 += FX_CLASS_BLOCK) {
        Py_ssize_t c1 = c0 + FX_CLASS_BLOCK < n_classes ? c0 + FX_CLASS_BLOCK : n_classes;
        FX_STORE(start, m0);
        FX_STORE(start + FX_LANES, m1);
        FX_V s0 = FX_SET1(0), s1 = s0;
        if (full) {
            for (Py_ssize_t c = c0 == 0 ? 1 : c0; c < c1; c++) {
                const REAL *p = x + c * stride;
                if (c + FX_GROUP_AHEAD < n_classes) FX(fx_prefetch_group)(p + FX_GROUP_AHEAD * stride, 0);
                FX(fx_online_step)(FX_LOAD(p), &m0, &s0);
                FX(fx_online_step)(FX_LOAD(p + FX_LANES), &m1, &s1);
            }
        } else {
            for (Py_ssize_t c = c0 == 0 ? 1 : c0; c < c1; c++) {
                const REAL *p = x + c * stride;
                FX(fx_online_step)(FX_MASKLOAD(p, mask0), &m0, &s0);
                FX(fx_online_step)(FX_MASKLOAD(p + FX_LANES, mask1), &m1, &s1);
            }
        }
        FX_STORE(run, m0);
        FX_STORE(run + FX_LANES, m1);
        FX_STORE(part, s0);
        FX_STORE(part + FX_LANES, s1);
        FX(fx_online_merge)(count, sums, start, run, part, c0 == 0);
    }
    memcpy(shift, run, (size_t)count * sizeof(REAL));
    memcpy(rest, sums, (size_t)count * sizeof(double));
    FX(fx_online_fixup)(x, n_classes, stride, count, shift, rest);
}
#endif

/* Tile of w <= FX_TILE_MAX positions: x points at x[b, 0, k0], classes
 * `stride` apart. Writes M (0 for all -inf) and S' (see fx_rest) per
 * position. */
static FX_ATTR void FX(fx_tile_stats)(const REAL *x, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w,
                                      REAL *shift, double *rest) {
#if FX_INTRINSICS
    if (n_classes == 0) { /* nothing to start the sweep from: the portable loop's M = 0, S' = -1 */
        FX(fx_tile_stats_masked)(x, n_classes, stride, w, shift, rest);
        return;
    }
    /* Groups for narrow tiles and short strides, class by class for a wide
     * tile with a long stride: the split measured for the two-sweep loops
     * (float32, 1 thread, ns per element of loss: 2x1000x32x32 1.0 -> 0.85 by
     * groups; 8x21x256x256 0.77 class by class against 1.03), kept for the
     * one sweep without measuring it again. */
    if (w >= FX_NARROW && stride * (Py_ssize_t)sizeof(REAL) > 4096) {
        FX(fx_tile_stats_online)(x, n_classes, stride, w, shift, rest);
        return;
    }
    Py_ssize_t k = 0;
    for (; k + FX_GROUP <= w; k += FX_GROUP) FX(fx_group_online)(x + k, n_classes, stride, FX_GROUP, shift + k, rest + k);
    if (k < w) FX(fx_group_online)(x + k, n_classes, stride, w - k, shift + k, rest + k);
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
