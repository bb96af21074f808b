/* Short rows with lanes across rows: included by fx_rows_template.h, which
 * defines REAL, FX(), FX_INTRINSICS, FX_LANES, FX_V and the vector macros.
 *
 * A row of a few classes fills a fraction of one vector, and its max, sum
 * and log are horizontal reductions plus a scalar log call: most of the
 * row's time. Here each lane holds one row: a block of FX_LANES rows is
 * loaded row by row and transposed in registers (fx_lanes_columns), so the
 * max, the exps, the sum, S' and log1p(S') are plain vertical operations,
 * FX_LANES rows at once. The gradient (and the softmax) scales the exps the
 * sums stored and transposes them back (fx_lanes_scale); log_softmax shifts
 * the transposed block (fx_rows_shifted).
 */

#if FX_INTRINSICS
#if FX_IS_DOUBLE
#define FX_CMP _mm256_cmp_pd
#define FX_T_MUL _mm256_mul_pd
#define FX_BLEND _mm256_blendv_pd
#define FX_AND _mm256_and_pd
#define FX_ANDNOT2 _mm256_andnot_pd
#define FX_MOVEMASK2 _mm256_movemask_pd
#define FX_ALL_LANES 0xf
#else
#define FX_CMP _mm256_cmp_ps
#define FX_T_MUL _mm256_mul_ps
#define FX_BLEND _mm256_blendv_ps
#define FX_AND _mm256_and_ps
#define FX_ANDNOT2 _mm256_andnot_ps
#define FX_MOVEMASK2 _mm256_movemask_ps
#define FX_ALL_LANES 0xff
#endif

/* log1p(s) for s >= -1 (S' of a row), lane-wise: log(u) of u = 1 + s from
 * the exponent and a polynomial in the mantissa m - 1, m in [sqrt(1/2),
 * sqrt(2)) (Cephes' logf and log), plus (s - (u - 1)) / u, the rounding of
 * 1 + s, so a tiny s keeps its relative accuracy. u = 0 gives -inf, a NaN
 * stays NaN. Accuracy: tests/test_numerics.py (TestVectorLog1p). */
#if FX_IS_DOUBLE
static inline FX_ATTR __m256d FX(fx_vlog1p)(__m256d s) {
    const __m256d one = _mm256_set1_pd(1.0);
    __m256d u = _mm256_add_pd(one, s);
    __m256i bits = _mm256_castpd_si256(u);
    /* The biased exponent as a double: its integer in the low mantissa bits of 2**52, minus 2**52. */
    __m256d e = _mm256_sub_pd(
        _mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(bits, 52), _mm256_set1_epi64x(0x4330000000000000LL))),
        _mm256_set1_pd(4503599627370496.0 + 1023.0));
    __m256d m = _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000fffffffffffffLL)),
                                                    _mm256_set1_epi64x(0x3ff0000000000000LL)));
    __m256d big = _mm256_cmp_pd(m, _mm256_set1_pd(1.4142135623730951), _CMP_GT_OQ);
    m = _mm256_blendv_pd(m, _mm256_mul_pd(m, _mm256_set1_pd(0.5)), big);
    e = _mm256_add_pd(e, _mm256_and_pd(big, one));
    __m256d x = _mm256_sub_pd(m, one), z = _mm256_mul_pd(x, x);
    __m256d p = _mm256_set1_pd(1.01875663804580931796e-4);
    p = _mm256_fmadd_pd(p, x, _mm256_set1_pd(4.97494994976747001425e-1));
    p = _mm256_fmadd_pd(p, x, _mm256_set1_pd(4.70579119878881725854e0));
    p = _mm256_fmadd_pd(p, x, _mm256_set1_pd(1.44989225341610930846e1));
    p = _mm256_fmadd_pd(p, x, _mm256_set1_pd(1.79368678507819816313e1));
    p = _mm256_fmadd_pd(p, x, _mm256_set1_pd(7.70838733755885391666e0));
    __m256d q = _mm256_add_pd(x, _mm256_set1_pd(1.12873587189167450590e1));
    q = _mm256_fmadd_pd(q, x, _mm256_set1_pd(4.52279145837532221105e1));
    q = _mm256_fmadd_pd(q, x, _mm256_set1_pd(8.29875266912776603211e1));
    q = _mm256_fmadd_pd(q, x, _mm256_set1_pd(7.11544750618563894466e1));
    q = _mm256_fmadd_pd(q, x, _mm256_set1_pd(2.31251620126765340583e1));
    __m256d y = _mm256_mul_pd(x, _mm256_div_pd(_mm256_mul_pd(z, p), q));
    y = _mm256_fmadd_pd(e, _mm256_set1_pd(-2.121944400546905827679e-4), y);
    y = _mm256_fnmadd_pd(_mm256_set1_pd(0.5), z, y);
    __m256d r = _mm256_fmadd_pd(e, _mm256_set1_pd(0.693359375), _mm256_add_pd(x, y));
    r = _mm256_add_pd(r, _mm256_div_pd(_mm256_sub_pd(s, _mm256_sub_pd(u, one)), u));
    r = _mm256_blendv_pd(r, _mm256_set1_pd(-INFINITY), _mm256_cmp_pd(u, _mm256_setzero_pd(), _CMP_EQ_OQ));
    return _mm256_blendv_pd(r, s, _mm256_cmp_pd(s, s, _CMP_UNORD_Q));
}
#else
static inline FX_ATTR __m256 FX(fx_vlog1p)(__m256 s) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 u = _mm256_add_ps(one, s);
    __m256i bits = _mm256_castps_si256(u);
    __m256i exponent = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
    __m256 m = _mm256_castsi256_ps(
        _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f800000)));
    __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
    m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
    __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(exponent, _mm256_castps_si256(big)));
    __m256 x = _mm256_sub_ps(m, one), z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(7.0376836292e-2f);
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(-1.1514610310e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.1676998740e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(-1.2420140846e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.4249322787e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(-1.6668057665e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(2.0000714765e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(-2.4999993993e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(3.3333331174e-1f));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, x), z);
    y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
    y = _mm256_fnmadd_ps(_mm256_set1_ps(0.5f), z, y);
    __m256 r = _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(x, y));
    r = _mm256_add_ps(r, _mm256_div_ps(_mm256_sub_ps(s, _mm256_sub_ps(u, one)), u));
    r = _mm256_blendv_ps(r, _mm256_set1_ps(-INFINITY), _mm256_cmp_ps(u, _mm256_setzero_ps(), _CMP_EQ_OQ));
    return _mm256_blendv_ps(r, s, _mm256_cmp_ps(s, s, _CMP_UNORD_Q));
}
#endif

/* Transposes FX_LANES x FX_LANES values in place: r[i] lane j <-> r[j] lane i. */
static inline FX_ATTR void FX(fx_transpose)(FX_V *r) {
#if FX_IS_DOUBLE
    __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
#else
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
#endif
}

/* column[c] = class c of FX_LANES consecutive rows of n classes at x
 * (row-major), for c < n (up to the next multiple of FX_LANES the columns
 * hold junk): blocks of FX_LANES classes loaded row by row and transposed
 * in registers. A gather per class did this before, microcoded on AMD
 * (65536 x 32 float32, stats: 28 -> 14 ns per row). The last block's loads
 * are masked at the row's end. */
static inline FX_ATTR void FX(fx_lanes_columns)(const REAL *x, Py_ssize_t n, FX_V *column) {
    for (Py_ssize_t c0 = 0; c0 < n; c0 += FX_LANES) {
        FX_V *r = column + c0;
        if (c0 + FX_LANES <= n) {
            for (int l = 0; l < FX_LANES; l++) r[l] = FX_LOAD(x + l * n + c0);
        } else {
            /* Past a row's end lie the next rows' first classes (unused lanes): plain loads while they
             * stay inside the block, masked ones where they would pass its end (maybe the array's). */
            const __m256i mask = FX_TAIL_MASK(n - c0);
            for (int l = 0; l < FX_LANES; l++)
#if FX_IS_DOUBLE
                r[l] = l * n + c0 + FX_LANES <= FX_LANES * n ? FX_LOAD(x + l * n + c0)
                                                             : _mm256_maskload_pd(x + l * n + c0, mask);
#else
                r[l] = l * n + c0 + FX_LANES <= FX_LANES * n ? FX_LOAD(x + l * n + c0)
                                                             : _mm256_maskload_ps(x + l * n + c0, mask);
#endif
        }
        FX(fx_transpose)(r);
    }
}

/* M and S' (see fx_rest) of FX_LANES rows of n <= FX_LANE_CLASSES classes
 * at x (row-major), one row per lane; S' also in REAL into `rest_real`, for
 * the log. As fx_shift_sum: S' = S - 1 from S >= 2; lanes below 2 (or not
 * finite) get the sum over all but the maxima plus the ties beyond the
 * first, and a +inf maximum NaN. */
static inline FX_ATTR void FX(fx_lanes_stats)(const REAL *x, Py_ssize_t n, REAL *shift, double *rest,
                                              REAL *rest_real, REAL *exps) {
    FX_V column[FX_LANE_CLASSES + FX_LANES];
    const FX_V zero = FX_SET1(0), minus_inf = FX_SET1(-INFINITY);
    FX(fx_lanes_columns)(x, n, column);
    FX_V m = minus_inf;
    for (Py_ssize_t c = 0; c < n; c++) m = FX_MAX(m, column[c]);
    m = FX_BLEND(m, zero, FX_CMP(m, minus_inf, _CMP_EQ_OQ));
    /* Four sums: shorter dependency chains, and rounding closer to a pairwise sum's. */
    FX_V part[4] = {zero, zero, zero, zero}, e[FX_LANE_CLASSES];
    Py_ssize_t c = 0;
    for (; c < n; c++) {
        e[c] = FX(fx_vexp_short)(FX_SUB(column[c], m));
        part[c % 4] = FX_ADD(part[c % 4], e[c]);
    }
    if (exps != NULL)
        for (c = 0; c < n; c++) FX_STORE(exps + c * FX_LANES, e[c]);
    FX_V total = FX_ADD(FX_ADD(part[0], part[1]), FX_ADD(part[2], part[3]));
    FX_V whole = FX_CMP(total, FX_SET1(2), _CMP_GE_OQ);
    FX_V r = FX_SUB(total, FX_SET1(1));
    if (FX_MOVEMASK2(whole) != FX_ALL_LANES) {
        /* The maximum dominates in some lane (or a lane is not finite). */
        FX_V below = zero, ties = zero;
        for (c = 0; c < n; c++) {
            FX_V q = FX_CMP(column[c], m, _CMP_EQ_OQ);
            below = FX_ADD(below, FX_ANDNOT2(q, e[c]));
            ties = FX_ADD(ties, FX_AND(q, FX_SET1(1)));
        }
        FX_V exact = FX_ADD(below, FX_SUB(ties, FX_SET1(1)));
        exact = FX_BLEND(exact, FX_SET1(NAN), FX_CMP(m, FX_SET1(INFINITY), _CMP_EQ_OQ));
        r = FX_BLEND(exact, r, whole);
    }
    FX_STORE(shift, m);
    FX_STORE(rest_real, r);
#if FX_IS_DOUBLE
    _mm256_storeu_pd(rest, r);
#else
    _mm256_storeu_pd(rest, _mm256_cvtps_pd(_mm256_castps256_ps128(r)));
    _mm256_storeu_pd(rest + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)));
#endif
}

/* Stores v[l] (row l's classes c0 .. c0 + FX_LANES - 1) for the first `valid`
 * of FX_LANES rows of n classes at out. Callers go from the last block of
 * classes to the first: a full-width store spills into the next row's
 * first classes, which later stores overwrite (a masked store costs several
 * plain ones on AMD); a store that would pass the last valid row's end is
 * masked (there lie rows of another block, or the array's end). */
static inline FX_ATTR void FX(fx_lanes_store)(REAL *out, Py_ssize_t n, Py_ssize_t c0, Py_ssize_t valid,
                                              const FX_V *v) {
    if (c0 + FX_LANES <= n) {
        for (Py_ssize_t l = 0; l < valid; l++) FX_STORE(out + l * n + c0, v[l]);
        return;
    }
    const __m256i mask = FX_TAIL_MASK(n - c0);
    for (Py_ssize_t l = 0; l < valid; l++) {
        if (l * n + c0 + FX_LANES <= valid * n)
            FX_STORE(out + l * n + c0, v[l]);
        else
            FX_MASKSTORE(out + l * n + c0, mask, v[l]);
    }
}

/* out[l, :] = exps[:, l] * scale[l] for the first `valid` of FX_LANES rows of
 * n classes, from their exps as fx_lanes_stats stored them (class-major):
 * blocks of FX_LANES classes multiplied, transposed back and stored row by
 * row (fx_lanes_store). No exp again, no permutes; out may be the logits. */
static inline FX_ATTR void FX(fx_lanes_scale)(const REAL *exps, REAL *out, Py_ssize_t n, const REAL *scale,
                                              Py_ssize_t valid) {
    const FX_V a = FX_LOAD(scale), zero = FX_SET1(0);
    for (Py_ssize_t c0 = (n - 1) / FX_LANES * FX_LANES; c0 >= 0; c0 -= FX_LANES) {
        FX_V r[FX_LANES];
        for (int j = 0; j < FX_LANES; j++) r[j] = c0 + j < n ? FX_T_MUL(FX_LOAD(exps + (c0 + j) * FX_LANES), a) : zero;
        FX(fx_transpose)(r);
        FX(fx_lanes_store)(out, n, c0, valid, r);
    }
}
#endif

/* out[k] = log1p(rest[k]) in REAL for k < n (the rests of a tile's positions): vectorised with AVX2. */
static FX_ATTR void FX(fx_log1p_rests)(const double *rest, REAL *out, Py_ssize_t n) {
    Py_ssize_t k = 0;
#if FX_INTRINSICS
#if FX_IS_DOUBLE
    for (; k + 4 <= n; k += 4) _mm256_storeu_pd(out + k, FX(fx_vlog1p)(_mm256_loadu_pd(rest + k)));
#else
    for (; k + 8 <= n; k += 8) {
        __m256 r = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_loadu_pd(rest + k + 4)),
                                   _mm256_cvtpd_ps(_mm256_loadu_pd(rest + k)));
        _mm256_storeu_ps(out + k, FX(fx_vlog1p)(r));
    }
#endif
    /* The tail through the same vector code, padded: libm's log1p there rounded a position differently from
     * fx_vlog1p, so its loss depended on where its tile ended (a slice's, a Dask chunk's). */
    if (k < n) {
        double pad[8] = {0};
        REAL got[8];
        memcpy(pad, rest + k, (size_t)(n - k) * sizeof(double));
        FX(fx_log1p_rests)(pad, got, 8);
        memcpy(out + k, got, (size_t)(n - k) * sizeof(REAL));
    }
#else
    for (; k < n; k++) out[k] = (REAL)log1p(rest[k]);
#endif
}

/* M, S' and log1p(S') (in REAL) of `rows` rows of n classes: FX_LANES rows
 * at a time with AVX2 when n <= FX_LANE_CLASSES (the last rows padded to a
 * full block, so a row's values never depend on where a thread's range
 * starts), else row by row. */
static FX_ATTR void FX(fx_rows_stats)(const REAL *x, Py_ssize_t rows, Py_ssize_t n, REAL *shift, double *rest,
                                      REAL *logs, REAL *exps) {
    Py_ssize_t r = 0;
#if FX_INTRINSICS
    if (n >= 1 && n <= FX_LANE_CLASSES) {
        for (; r + FX_LANES <= rows; r += FX_LANES)
            FX(fx_lanes_stats)(x + r * n, n, shift + r, rest + r, logs + r, exps == NULL ? NULL : exps + r * n);
        if (r < rows) {
            REAL pad[FX_LANES * FX_LANE_CLASSES], pad_shift[FX_LANES], pad_rest_real[FX_LANES];
            double pad_rest[FX_LANES];
            memset(pad, 0, sizeof pad);
            memcpy(pad, x + r * n, (size_t)((rows - r) * n) * sizeof(REAL));
            FX(fx_lanes_stats)(pad, n, pad_shift, pad_rest, pad_rest_real, exps == NULL ? NULL : exps + r * n);
            for (Py_ssize_t l = 0; r < rows; r++, l++) {
                shift[r] = pad_shift[l];
                rest[r] = pad_rest[l];
                logs[r] = pad_rest_real[l];
            }
        }
        /* The logs after every block's sums: independent vectors, whose long
         * polynomial chains overlap (inside each block they did not). */
        Py_ssize_t k = 0;
        for (; k + FX_LANES <= rows; k += FX_LANES) FX_STORE(logs + k, FX(fx_vlog1p)(FX_LOAD(logs + k)));
        if (k < rows) {
            REAL pad_logs[FX_LANES] = {0};
            memcpy(pad_logs, logs + k, (size_t)(rows - k) * sizeof(REAL));
            FX_STORE(pad_logs, FX(fx_vlog1p)(FX_LOAD(pad_logs)));
            memcpy(logs + k, pad_logs, (size_t)(rows - k) * sizeof(REAL));
        }
        return;
    }
#endif
    for (; r < rows; r++) {
        rest[r] = FX(fx_shift_sum)(x + r * n, n, shift + r);
        logs[r] = (REAL)log1p(rest[r]);
    }
}

/* out[r, :] = exp(x[r, :] - shift[r]) * scale[r] for `rows` rows of n
 * classes (out may be x). With AVX2 and n <= FX_LANE_CLASSES, from the exps
 * fx_rows_stats stored (`exps`, its blocks of FX_LANES rows); else computed
 * again from x and shift. */
static FX_ATTR void FX(fx_rows_scale)(const REAL *x, const REAL *exps, REAL *out, Py_ssize_t rows, Py_ssize_t n,
                                      const REAL *shift, const REAL *scale) {
    Py_ssize_t r = 0;
#if FX_INTRINSICS
    if (n >= 1 && n <= FX_LANE_CLASSES && exps != NULL) {
        for (; r + FX_LANES <= rows; r += FX_LANES) FX(fx_lanes_scale)(exps + r * n, out + r * n, n, scale + r, FX_LANES);
        if (r < rows) {
            REAL pad_scale[FX_LANES] = {0};
            memcpy(pad_scale, scale + r, (size_t)(rows - r) * sizeof(REAL));
            FX(fx_lanes_scale)(exps + r * n, out + r * n, n, pad_scale, rows - r);
        }
        return;
    }
#endif
    for (; r < rows; r++)
        for (Py_ssize_t c = 0; c < n; c++) out[r * n + c] = FX(fx_exp)(x[r * n + c] - shift[r]) * scale[r];
}

/* out[r, :] = (x[r, :] - shift[r]) - logs[r] for `rows` rows of n classes
 * (log-softmax; out may be x). With AVX2 and n <= FX_LANE_CLASSES, blocks
 * of FX_LANES rows transposed in, shifted as vectors and transposed back
 * (fx_lanes_store); else row by row. */
static FX_ATTR void FX(fx_rows_shifted)(const REAL *x, REAL *out, Py_ssize_t rows, Py_ssize_t n, const REAL *shift,
                                        const REAL *logs) {
    Py_ssize_t r = 0;
#if FX_INTRINSICS
    if (n >= 1 && n <= FX_LANE_CLASSES) {
        FX_V column[FX_LANE_CLASSES + FX_LANES];
        REAL pad[FX_LANES * FX_LANE_CLASSES], pad_shift[FX_LANES], pad_logs[FX_LANES];
        for (; r < rows; r += FX_LANES) {
            Py_ssize_t valid = rows - r < FX_LANES ? rows - r : FX_LANES;
            const REAL *block = x + r * n, *m_at = shift + r, *l_at = logs + r;
            if (valid < FX_LANES) {  /* a padded copy: the loads read whole blocks */
                memset(pad, 0, sizeof pad);
                memcpy(pad, block, (size_t)(valid * n) * sizeof(REAL));
                memset(pad_shift, 0, sizeof pad_shift);
                memset(pad_logs, 0, sizeof pad_logs);
                memcpy(pad_shift, m_at, (size_t)valid * sizeof(REAL));
                memcpy(pad_logs, l_at, (size_t)valid * sizeof(REAL));
                block = pad, m_at = pad_shift, l_at = pad_logs;
            }
            FX(fx_lanes_columns)(block, n, column);
            const FX_V m = FX_LOAD(m_at), l = FX_LOAD(l_at);
            REAL *target = out + r * n;
            for (Py_ssize_t c0 = (n - 1) / FX_LANES * FX_LANES; c0 >= 0; c0 -= FX_LANES) {
                FX_V v[FX_LANES];
                for (int j = 0; j < FX_LANES; j++) v[j] = FX_SUB(FX_SUB(column[c0 + j], m), l);
                FX(fx_transpose)(v);
                FX(fx_lanes_store)(target, n, c0, valid, v);
            }
        }
        return;
    }
#endif
    for (; r < rows; r++)
        for (Py_ssize_t c = 0; c < n; c++) out[r * n + c] = (x[r * n + c] - shift[r]) - logs[r];
}

#if FX_INTRINSICS
#undef FX_T_MUL
#undef FX_CMP
#undef FX_BLEND
#undef FX_AND
#undef FX_ANDNOT2
#undef FX_MOVEMASK2
#undef FX_ALL_LANES
#endif
