# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython kernels with their own thread pool: no JIT start-up, small per-call cost.

Layers, as in scikit-learn's ``_loss``: vectorised C primitives (fx_simd.h,
with run-time AVX2 dispatch), per-row and per-tile ``noexcept nogil``
functions here, ``*_units`` functions that run a contiguous range of rows or
tiles with their own scratch (allocated once per range), and entry points
that describe the call as a ``Job`` and run its units either in a plain loop
on one thread or in chunks on fx_pool.h's threads, which the caller never
waits for unless they have started a chunk (why not an OpenMP region: see
fx_pool.h). Rows are independent and sums over rows are taken in row order
afterwards, so results do not depend on the thread count. Inputs were
validated in Python before the ``nogil`` block.

The parallel build is still switched by OpenMP support (``FASTXENT_USE_OPENMP``,
``OPENMP`` below), which setup.py probes for; its threads are the pool's.

Soft-capped rows are first written capped into scratch, then run through
the same primitives; the gradient is multiplied by the cap's slope.
"""

cimport numpy as cnp
from libc.math cimport INFINITY, NAN, exp, fabs, isfinite, isnan, log, log1p, log1pf, logf, tanh
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import os

cnp.import_array()

cdef extern from "fx_simd.h" nogil:
    ctypedef struct fx_table_f32:
        double (*shift_sum)(const float *, Py_ssize_t, float *) noexcept nogil
        double (*store_exp)(const float *, float *, Py_ssize_t, float *) noexcept nogil
        void (*scale)(float *, Py_ssize_t, float, float, const float *) noexcept nogil
        void (*shifted)(const float *, float *, Py_ssize_t, float, float) noexcept nogil
        void (*tile_stats)(const float *, Py_ssize_t, Py_ssize_t, Py_ssize_t, float *, double *) noexcept nogil
        void (*tile_scale)(const float *, float *, Py_ssize_t, Py_ssize_t, Py_ssize_t, const float *,
                           const float *, const float *, const float *) noexcept nogil
        void (*rows_sums)(const float *, float *, Py_ssize_t, Py_ssize_t, float *, double *) noexcept nogil
        void (*rows_stats)(const float *, Py_ssize_t, Py_ssize_t, float *, double *, float *, float *) noexcept nogil
        void (*rows_scale)(const float *, const float *, float *, Py_ssize_t, Py_ssize_t, const float *,
                           const float *) noexcept nogil
        void (*log1p_rests)(const double *, float *, Py_ssize_t) noexcept nogil
        void (*rows_shifted)(const float *, float *, Py_ssize_t, Py_ssize_t, const float *,
                             const float *) noexcept nogil
        void (*tile_finish)(Py_ssize_t, const float *, const double *, const float *, const float *, const double *,
                            const double *, const double *, const double *, const float *, double, double, double,
                            double, int, float *, float *, float *, float *, double *, double *) noexcept nogil
    ctypedef struct fx_table_f64:
        double (*shift_sum)(const double *, Py_ssize_t, double *) noexcept nogil
        double (*store_exp)(const double *, double *, Py_ssize_t, double *) noexcept nogil
        void (*scale)(double *, Py_ssize_t, double, double, const double *) noexcept nogil
        void (*shifted)(const double *, double *, Py_ssize_t, double, double) noexcept nogil
        void (*tile_stats)(const double *, Py_ssize_t, Py_ssize_t, Py_ssize_t, double *, double *) noexcept nogil
        void (*tile_scale)(const double *, double *, Py_ssize_t, Py_ssize_t, Py_ssize_t, const double *,
                           const double *, const double *, const double *) noexcept nogil
        void (*rows_sums)(const double *, double *, Py_ssize_t, Py_ssize_t, double *, double *) noexcept nogil
        void (*rows_stats)(const double *, Py_ssize_t, Py_ssize_t, double *, double *, double *,
                           double *) noexcept nogil
        void (*rows_scale)(const double *, const double *, double *, Py_ssize_t, Py_ssize_t, const double *,
                           const double *) noexcept nogil
        void (*log1p_rests)(const double *, double *, Py_ssize_t) noexcept nogil
        void (*rows_shifted)(const double *, double *, Py_ssize_t, Py_ssize_t, const double *,
                             const double *) noexcept nogil
        void (*tile_finish)(Py_ssize_t, const double *, const double *, const double *, const double *, const double *,
                            const double *, const double *, const double *, const double *, double, double, double,
                            double, int, double *, double *, double *, double *, double *, double *) noexcept nogil
    fx_table_f32 fx_f32
    fx_table_f64 fx_f64
    void fx_count_targets_i32(const int32_t *, Py_ssize_t, Py_ssize_t, long long, Py_ssize_t *,
                              Py_ssize_t *) noexcept nogil
    void fx_count_targets_i64(const int64_t *, Py_ssize_t, Py_ssize_t, long long, Py_ssize_t *,
                              Py_ssize_t *) noexcept nogil
    const char *fx_init()
    int FX_SHORT
    int FX_LANE_CLASSES
    enum: FX_LANE_CLASSES_MAX "FX_LANE_CLASSES"

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FX_OPENMP 1
    #else
    #define FX_OPENMP 0
    #endif
    """
    int FX_OPENMP

ctypedef fused real:
    float
    double

ctypedef fused index_t:
    int32_t
    int64_t

#: The instruction set the primitives run with ("avx2+fma", "baseline" or "native").
ISA = fx_init().decode("ascii")
#: Whether this is the parallel build (compiled with OpenMP; else every kernel is serial).
OPENMP = bool(FX_OPENMP)
#: Fewer elements than this run on one thread. Measured on 2 cores (float32,
#: python -m fastxent bench latency shapes): at 2**13 elements and above two
#: threads win (256x100 loss 21.7 -> 15.1 us, 1024x10 28.2 -> 18.6 us); the
#: earlier 2**15 predates the per-call overhead cuts.
SERIAL_BELOW = 1 << 13
cdef Py_ssize_t serial_below = SERIAL_BELOW
#: Bytes of logits per tile when the class axis is not last. A tile's classes lie a power-of-two stride apart
#: in (N, C, H, W) logits, so they share L1 sets: half of L1 keeps them there for the second sweep
#: (8x21x256x256 float32, 1 thread: 1.02 -> 0.85 ns per element for the loss, 1.82 -> 1.62 with the gradient).
TILE_BYTES = 16 * 1024
#: Tiles at least this wide take the class-by-class loops (FX_NARROW in fx_tiles_template.h).
NARROW = 128
#: Bytes per tile at most where TILE_BYTES would give narrower tiles than NARROW (many classes): there a
#: tile of 1024 positions measured 2-4x faster for the gradient, softmax and log_softmax, whose sweep
#: then reads long runs per class, not one line a page from the last (2x1000x32x32 float32, 2 threads:
#: loss+grad 1.94, 2.56 -> 5.22, 5.77 GB/s). It bounds the softcap's copy of a tile (twice its size).
WIDE_TILE_BYTES = 4 << 20

# A forked child has none of the parent's pool threads (and a pool mutex may
# have been held at the fork): a forked child runs every kernel serially.
cdef bint _forked_child = False


def _after_fork_in_child():
    global _forked_child
    _forked_child = True


os.register_at_fork(after_in_child=_after_fork_in_child)


cdef int threads_for(Py_ssize_t n_elements, int n_threads) noexcept nogil:
    if not FX_OPENMP or _forked_child or n_elements < serial_below or n_threads < 1:
        return 1
    return n_threads


def tile_width(Py_ssize_t n_classes, Py_ssize_t n_positions, Py_ssize_t itemsize, Py_ssize_t n_rows=1,
               int n_threads=1):
    """Positions per tile, a multiple of 16 up to 1024: ``TILE_BYTES`` of logits, or where that would be
    narrower than ``NARROW``, up to ``WIDE_TILE_BYTES`` (halved down to ``NARROW`` while there are fewer
    tiles than threads)."""
    cdef Py_ssize_t row_bytes = max(1, n_classes * itemsize)
    cdef Py_ssize_t width = TILE_BYTES // row_bytes
    if width < NARROW:
        width = min(1024, WIDE_TILE_BYTES // row_bytes)
        while width > NARROW and n_rows * ((n_positions + width - 1) // width) < n_threads:
            width //= 2
    width = max(16, min(1024, width - width % 16))
    return max(1, min(width, n_positions))


# ---------------------------------------------------------------- primitives

cdef inline double shift_sum(const real *x, Py_ssize_t n, real *shift) noexcept nogil:
    if real is float:
        return fx_f32.shift_sum(x, n, shift)
    else:
        return fx_f64.shift_sum(x, n, shift)


cdef inline double store_exp(const real *x, real *out, Py_ssize_t n, real *shift) noexcept nogil:
    if real is float:
        return fx_f32.store_exp(x, out, n, shift)
    else:
        return fx_f64.store_exp(x, out, n, shift)


cdef inline void scale_row(real *out, Py_ssize_t n, real scale, real smooth, const real *weight) noexcept nogil:
    if real is float:
        fx_f32.scale(out, n, scale, smooth, weight)
    else:
        fx_f64.scale(out, n, scale, smooth, weight)


cdef inline void shifted_row(const real *x, real *out, Py_ssize_t n, real shift, real log_total) noexcept nogil:
    if real is float:
        fx_f32.shifted(x, out, n, shift, log_total)
    else:
        fx_f64.shifted(x, out, n, shift, log_total)


cdef inline void tile_stats(const real *x, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w,
                            real *shift, double *rest) noexcept nogil:
    if real is float:
        fx_f32.tile_stats(x, n_classes, stride, w, shift, rest)
    else:
        fx_f64.tile_stats(x, n_classes, stride, w, shift, rest)


cdef inline void tile_scale(const real *x, real *out, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w,
                            const real *shift, const real *scale, const real *smooth,
                            const real *weight) noexcept nogil:
    if real is float:
        fx_f32.tile_scale(x, out, n_classes, stride, w, shift, scale, smooth, weight)
    else:
        fx_f64.tile_scale(x, out, n_classes, stride, w, shift, scale, smooth, weight)


cdef inline double log1p_rest(const real *dtype, double rest) noexcept nogil:
    """``log(S) = log1p(S')`` of a row's S' (fx_rest): relatively accurate when one class dominates.

    From S' >= 1/2 (float32) or 1 (float64), ``log(1 + S')`` is within an ulp or two of
    ``log1p(S')`` and cheaper (float64 100-class rows: 12 % of their time).
    """
    if real is float:
        return logf(<float>(1.0 + rest)) if rest >= 0.5 else log1pf(<float>rest)
    else:
        return log(1.0 + rest) if rest >= 1.0 else log1p(rest)


cdef inline void rows_sums(const real *x, real *out, Py_ssize_t rows, Py_ssize_t n, real *shift,
                           double *rest) noexcept nogil:
    if real is float:
        fx_f32.rows_sums(x, out, rows, n, shift, rest)
    else:
        fx_f64.rows_sums(x, out, rows, n, shift, rest)


cdef inline void rows_stats(const real *x, Py_ssize_t rows, Py_ssize_t n, real *shift, double *rest,
                            real *logs, real *exps) noexcept nogil:
    if real is float:
        fx_f32.rows_stats(x, rows, n, shift, rest, logs, exps)
    else:
        fx_f64.rows_stats(x, rows, n, shift, rest, logs, exps)


cdef inline void rows_scale(const real *x, const real *exps, real *out, Py_ssize_t rows, Py_ssize_t n,
                            const real *shift, const real *scale) noexcept nogil:
    if real is float:
        fx_f32.rows_scale(x, exps, out, rows, n, shift, scale)
    else:
        fx_f64.rows_scale(x, exps, out, rows, n, shift, scale)


cdef inline void rows_shifted(const real *x, real *out, Py_ssize_t rows, Py_ssize_t n, const real *shift,
                              const real *logs) noexcept nogil:
    if real is float:
        fx_f32.rows_shifted(x, out, rows, n, shift, logs)
    else:
        fx_f64.rows_shifted(x, out, rows, n, shift, logs)


cdef inline void log1p_rests(const double *rest, real *out, Py_ssize_t n) noexcept nogil:
    """``out = log1p(rest)`` over a tile's positions, vectorised (fx_vlog1p)."""
    if real is float:
        fx_f32.log1p_rests(rest, out, n)
    else:
        fx_f64.log1p_rests(rest, out, n)


cdef inline void tile_finish(Py_ssize_t w, const real *shift, const double *rest, const real *logs,
                             const real *xy, const double *wy, const double *valid, const double *weighted,
                             const double *gs, const real *slope, double eps, double smooth_coef,
                             double weight_sum, double z_coef, bint with_grad, real *loss, real *lse, real *scale,
                             real *smooth, double *correction, double *target_grad) noexcept nogil:
    if real is float:
        fx_f32.tile_finish(w, shift, rest, logs, xy, wy, valid, weighted, gs, slope, eps, smooth_coef, weight_sum,
                           z_coef, with_grad, loss, lse, scale, smooth, correction, target_grad)
    else:
        fx_f64.tile_finish(w, shift, rest, logs, xy, wy, valid, weighted, gs, slope, eps, smooth_coef, weight_sum,
                           z_coef, with_grad, loss, lse, scale, smooth, correction, target_grad)


cdef extern from *:
    """
    /* Where the condition is a coin toss (is a position's target its maximum?), a
     * mispredicted branch costs more than both sides: a bit mask picks one (gcc
     * kept `condition ? a : b` a branch here; 2 classes: 12.7 -> 6.4 ns per element). */
    static inline double fx_select(int condition, double if_true, double if_false) {
        uint64_t a, b, mask = -(uint64_t)(condition != 0);
        memcpy(&a, &if_true, sizeof a);
        memcpy(&b, &if_false, sizeof b);
        a = (a & mask) | (b & ~mask);
        memcpy(&if_true, &a, sizeof a);
        return if_true;
    }
    """
    double select "fx_select"(bint condition, double if_true, double if_false) noexcept nogil


cdef inline real capped(real value, double cap) noexcept nogil:
    return <real>(cap * tanh(value / cap))


cdef inline void cap_into(const real *x, real *out, Py_ssize_t n, double cap) noexcept nogil:
    """``out[:n]`` = capped ``x``; ``out[n:2n]`` = the cap's slope ``1 - tanh(x / cap)**2``.

    The slope is formed in float64 from the raw logit: from a float32 capped
    value it would cancel to 0 for ``|x| >> cap``.
    """
    cdef Py_ssize_t i
    cdef double t
    for i in range(n):
        t = tanh(x[i] / cap)
        out[i] = <real>(cap * t)
        out[n + i] = <real>(1.0 - t * t)


cdef inline real special_lse(const real *x, Py_ssize_t n, Py_ssize_t stride, real shift,
                             double log_total) noexcept nogil:
    """``M + log(S)``, except that a ``+inf`` logit gives ``+inf`` (NaN if the row has a NaN)."""
    cdef Py_ssize_t i
    if shift == INFINITY:
        for i in range(n):
            if isnan(x[i * stride]):
                return x[i * stride]
        return shift
    return shift + <real>log_total


# ---------------------------------------------------------------- rows (K == 1)

cdef inline double weighted_sum(const real *z, const real *weight, Py_ssize_t n) noexcept nogil:
    """``sum(weight * z)`` in float64: label smoothing's part of the loss."""
    cdef double total = 0
    cdef Py_ssize_t i
    for i in range(n):
        total += <double>weight[i] * <double>z[i]
    return total


cdef void xent_index_finish(real *g, Py_ssize_t n, Py_ssize_t y, real x_y, double weighted, const real *weight,
                            double weight_sum, double eps, double z_coef, real shift, double rest, real *loss,
                            real *lse, double gs, bint with_grad, const real *slopes) noexcept nogil:
    """A row's loss, lse and gradient once its max ``shift`` and ``rest`` = S' (fx_rest) are known.

    ``x_y`` is the (capped) target logit and ``weighted`` = ``sum(weight * z)``
    (read before ``g``, which may be the row itself, was written); ``g`` holds
    ``exp(z - shift)`` when ``with_grad``; ``slopes`` is the softcap's slope
    per class, or NULL without a cap. A target that is the row's maximum gets
    ``log1p(S')`` as its loss and ``-S' / (1 + S')`` in its gradient, both
    relatively accurate however small S' is.
    """
    cdef double w_y, log_total, row_lse, value, a, c, total = 1.0 + rest
    cdef double smooth = eps / n
    cdef real scale
    cdef Py_ssize_t i
    # No weights (NULL) means unit weights; smoothing always gets an array.
    w_y = 1.0 if weight == NULL else weight[y]
    log_total = log1p_rest(&x_y, rest)
    row_lse = <double>shift + log_total
    value = (1.0 - eps) * w_y * (<double>(shift - x_y) + log_total)
    if eps > 0:
        value = value + smooth * (weight_sum * row_lse - weighted)
    loss[0] = <real>value
    lse[0] = <real>row_lse
    if not with_grad:
        return
    a = gs * ((1.0 - eps) * w_y + smooth * weight_sum)
    if z_coef != 0:
        a = a + gs * 2.0 * z_coef * row_lse
    if eps == 0 and n <= FX_SHORT:
        # A short row: a plain loop beats the call through the table (same products as fx_scale).
        scale = <real>(a / total)
        for i in range(n):
            g[i] = g[i] * scale
    else:
        scale_row(g, n, <real>(a / total), <real>(gs * smooth), weight if eps > 0 else NULL)
    if slopes != NULL:
        for i in range(n):
            g[i] = g[i] * slopes[i]
    c = gs * (1.0 - eps) * w_y
    if x_y == shift:
        # exp(x_y - M) = 1: a / S - c = ((a - c) - c * S') / S, with no cancellation.
        g[y] = <real>((((a - c) - c * rest) / total - gs * smooth * (w_y if eps > 0 else 0.0))
                      * (slopes[y] if slopes != NULL else 1.0))
    else:
        g[y] = g[y] - <real>(c * (slopes[y] if slopes != NULL else 1.0))


cdef void xent_index_row(const real *x, real *g, Py_ssize_t n, Py_ssize_t y, const real *weight,
                         double weight_sum, double eps, double cap, double z_coef, real *loss, real *lse,
                         double gs, bint with_grad, real *scratch) noexcept nogil:
    cdef const real *z = x
    cdef real shift
    cdef double rest, weighted = 0
    if cap != 0:
        cap_into(x, scratch, n, cap)
        z = scratch
    cdef real x_y = z[y]
    if eps > 0:
        weighted = weighted_sum(z, weight, n)
    if with_grad:
        rest = store_exp(z, g, n, &shift)
    else:
        rest = shift_sum(z, n, &shift)
    xent_index_finish(g, n, y, x_y, weighted, weight, weight_sum, eps, z_coef, shift, rest, loss, lse, gs,
                      with_grad, scratch + n if cap != 0 else NULL)


cdef void xent_probs_row(const real *x, const real *t, real *g, Py_ssize_t n, const real *weight, double eps,
                         double cap, double z_coef, real *loss, real *lse, double gs, bint with_grad,
                         real *scratch) noexcept nogil:
    cdef const real *z = x
    cdef real shift, best = -INFINITY
    cdef double rest, total, mass = 0, moment = 0, wt, row_lse, a, mass_m = 0, ref
    cdef double keep = 1.0 - eps, uniform = eps / n
    cdef Py_ssize_t i, m = -1
    if cap != 0:
        cap_into(x, scratch, n, cap)
        z = scratch
    for i in range(n):
        if z[i] > best:
            best = z[i]
            m = i
    # The moment about the maximum, sum(wt * (z - M)): with the loss formed as
    # mass * log1p(S') - moment, a target on the maximum keeps its tiny loss.
    ref = best if isfinite(best) else 0.0
    for i in range(n):
        wt = <double>weight[i] * (<double>t[i] * keep + uniform)
        mass += wt
        moment += wt * (<double>z[i] - ref)
    if m >= 0:
        mass_m = <double>weight[m] * (<double>t[m] * keep + uniform)
    if with_grad:
        rest = store_exp(z, g, n, &shift)
    else:
        rest = shift_sum(z, n, &shift)
    total = 1.0 + rest
    row_lse = <double>shift + log1p_rest(x, rest)
    loss[0] = <real>(mass * ((<double>shift - ref) + log1p_rest(x, rest)) - moment)
    lse[0] = <real>row_lse
    if not with_grad:
        return
    a = gs * mass
    if z_coef != 0:
        a = a + gs * 2.0 * z_coef * row_lse
    scale_row(g, n, <real>(a / total), <real>0, NULL)
    for i in range(n):
        if i == m and best == shift:
            # exp(z_m - M) = 1: a / S - gs * t'_m = (a - gs * t'_m * S) / S, with S = 1 + S' split off.
            g[i] = <real>(((a - gs * mass_m) - gs * mass_m * rest) / total)
        else:
            g[i] = g[i] - <real>(gs * weight[i]) * (t[i] * <real>keep + <real>uniform)
        if cap != 0:
            g[i] = g[i] * scratch[n + i]


# ---------------------------------------------------------------- tiles (K > 1)

cdef struct TileScratch:
    void *shift
    double *total      # per-position S' (fx_rest), float64
    void *scale
    void *smooth
    double *extra      # per-position float64 sums
    double *extra2
    double *target_grad  # per-position gradient of a target that is the maximum (NaN: it is not)
    void *logs         # per-position log1p(S'), in the logits' type
    void *xy           # per-position target logit (gathered), in the logits' type
    void *slope        # per-position softcap slope at the target, only with a softcap
    double *wy         # per-position class weight of the target (0 where ignored)
    double *valid      # per-position 1 (target counted) or 0 (ignored)
    void *capped       # (2, C, width): capped copy and its slopes, only with a softcap
    double *gfill      # width copies of a scalar upstream gradient, only for a scalar grad_scale
    void *block        # the one allocation all of the above live in
    bint ok            # the allocation succeeded


cdef inline Py_ssize_t padded(Py_ssize_t nbytes) noexcept nogil:
    return (nbytes + 63) & ~(<Py_ssize_t>63)


cdef TileScratch new_scratch(Py_ssize_t width, Py_ssize_t n_classes, Py_ssize_t itemsize, bint with_cap,
                             bint scalar_grad, double gs_scalar) noexcept nogil:
    """Scratch for one thread's units: one allocation (a short row's call is a few microseconds)."""
    cdef TileScratch s
    cdef Py_ssize_t k, real_part = padded(width * itemsize), double_part = padded(width * sizeof(double))
    cdef Py_ssize_t cap_part = padded(2 * n_classes * width * itemsize) if with_cap else 0
    cdef char *block = <char *>malloc(6 * real_part + 7 * double_part + cap_part)
    memset(&s, 0, sizeof(s))
    s.block = block
    s.ok = block != NULL
    if block == NULL:
        return s
    s.shift = block
    s.scale = block + real_part
    s.smooth = block + 2 * real_part
    s.total = <double *>(block + 3 * real_part)
    s.extra = <double *>(block + 3 * real_part + double_part)
    s.extra2 = <double *>(block + 3 * real_part + 2 * double_part)
    s.target_grad = <double *>(block + 3 * real_part + 3 * double_part)
    s.gfill = <double *>(block + 3 * real_part + 4 * double_part) if scalar_grad else NULL
    s.logs = block + 3 * real_part + 5 * double_part
    s.xy = block + 4 * real_part + 5 * double_part
    s.slope = block + 5 * real_part + 5 * double_part
    s.wy = <double *>(block + 6 * real_part + 5 * double_part)
    s.valid = <double *>(block + 6 * real_part + 6 * double_part)
    s.capped = block + 6 * real_part + 7 * double_part if with_cap else NULL
    if scalar_grad:
        for k in range(width):
            s.gfill[k] = gs_scalar
    return s


cdef void free_scratch(TileScratch s) noexcept nogil:
    free(s.block)


cdef const real *capped_tile(const real *xb, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w, double cap,
                             real *out) noexcept nogil:
    """Copy the tile into ``out`` as ``(C, w)`` capped values then ``(C, w)`` slopes; returns ``out``."""
    cdef Py_ssize_t c, k
    cdef double t
    for c in range(n_classes):
        for k in range(w):
            t = tanh(xb[c * stride + k] / cap)
            out[c * w + k] = <real>(cap * t)
            out[n_classes * w + c * w + k] = <real>(1.0 - t * t)
    return out


cdef void xent_index_tile(const real *xb, real *gb, const index_t *yb, Py_ssize_t n_classes, Py_ssize_t stride,
                          Py_ssize_t w, const real *weight, double weight_sum, long long ignore_index, double eps,
                          double cap, double z_coef, real *loss, real *lse, const double *gs, bint with_grad,
                          TileScratch s) noexcept nogil:
    cdef real *shift = <real *>s.shift
    cdef double *rest = s.total
    cdef real *scale = <real *>s.scale
    cdef real *smooth = <real *>s.smooth
    cdef double *weighted = s.extra
    cdef double *correction = s.extra2
    cdef double *target_grad = s.target_grad
    cdef real *logs = <real *>s.logs
    cdef real *xy = <real *>s.xy
    cdef real *slope = <real *>s.slope
    cdef double *wy = s.wy
    cdef double *valid = s.valid
    cdef const real *z = xb
    cdef Py_ssize_t zstride = stride, c, k
    cdef long long y
    cdef double smooth_coef = eps / n_classes
    cdef real fixed
    if cap != 0:
        z = capped_tile(xb, n_classes, stride, w, cap, <real *>s.capped)
        zstride = w
    tile_stats(z, n_classes, zstride, w, shift, rest)
    log1p_rests(rest, logs, w)
    for k in range(w):
        weighted[k] = 0
    if eps > 0:
        for c in range(n_classes):
            for k in range(w):
                weighted[k] += <double>weight[c] * <double>z[c * zstride + k]
    # The targets gathered (a short scalar loop), then one vectorised loop (fx_tile_finish).
    for k in range(w):
        y = yb[k]
        if y == ignore_index or y < 0 or y >= n_classes:
            xy[k] = shift[k]
            wy[k] = 0
            valid[k] = 0
            slope[k] = 1
        else:
            xy[k] = z[y * zstride + k]
            wy[k] = weight[y]
            valid[k] = 1
            if cap != 0:
                slope[k] = z[n_classes * w + y * w + k]
    tile_finish(w, shift, rest, logs, xy, wy, valid, weighted, gs, slope if cap != 0 else NULL, eps, smooth_coef,
                weight_sum, z_coef, with_grad, loss, lse, scale, smooth, correction, target_grad)
    if not with_grad:
        return
    if cap == 0:
        tile_scale(xb, gb, n_classes, stride, w, shift, scale, smooth, weight)
    else:
        for c in range(n_classes):
            for k in range(w):
                gb[c * stride + k] = <real>(
                    (scale[k] * exp(z[c * zstride + k] - shift[k]) - smooth[k] * weight[c])
                    * z[n_classes * w + c * w + k]
                )
    for k in range(w):
        y = yb[k]
        if y == ignore_index or y < 0 or y >= n_classes:
            for c in range(n_classes):
                gb[c * stride + k] = 0
        else:
            # A select: whether the target is the maximum is a coin toss for a branch.
            fixed = gb[y * stride + k] - <real>correction[k]
            gb[y * stride + k] = <real>select(isnan(target_grad[k]), fixed, target_grad[k])


cdef void xent_probs_tile(const real *xb, const real *tb, real *gb, Py_ssize_t n_classes, Py_ssize_t stride,
                          Py_ssize_t w, const real *weight, double eps, double cap, double z_coef, real *loss,
                          real *lse, const double *gs, bint with_grad, TileScratch s) noexcept nogil:
    cdef real *shift = <real *>s.shift
    cdef double *rest = s.total
    cdef real *scale = <real *>s.scale
    cdef real *smooth = <real *>s.smooth
    cdef double *mass = s.extra
    cdef double *moment = s.extra2
    cdef double *top_grad = s.target_grad
    cdef real *logs = <real *>s.logs
    cdef const real *z = xb
    cdef Py_ssize_t zstride = stride, c, k, m
    cdef double keep = 1.0 - eps, uniform = eps / n_classes, wt, row_lse, a, g, value, total, mass_m
    if cap != 0:
        z = capped_tile(xb, n_classes, stride, w, cap, <real *>s.capped)
        zstride = w
    tile_stats(z, n_classes, zstride, w, shift, rest)
    log1p_rests(rest, logs, w)
    for k in range(w):
        mass[k] = 0
        moment[k] = 0
        smooth[k] = 0
    # Moments about the maximum, as in xent_probs_row.
    for c in range(n_classes):
        for k in range(w):
            wt = <double>weight[c] * (<double>tb[c * stride + k] * keep + uniform)
            mass[k] += wt
            moment[k] += wt * (<double>z[c * zstride + k] - <double>shift[k])
    for k in range(w):
        total = 1.0 + rest[k]
        row_lse = <double>shift[k] + <double>logs[k]
        loss[k] = <real>(mass[k] * <double>logs[k] - moment[k])
        lse[k] = <real>row_lse
        g = gs[k] if with_grad else 0.0
        a = g * mass[k]
        if z_coef != 0:
            a = a + g * 2.0 * z_coef * row_lse
        scale[k] = <real>(a / total)
        # Where the maximum dominates (S' < 1), its p - t' is formed as in
        # xent_probs_row, without cancellation: its class (found now, before
        # an in-place gradient overwrites the logits) goes into `moment`.
        moment[k] = -1
        if with_grad and rest[k] < 1:
            for m in range(n_classes):
                if z[m * zstride + k] == shift[k]:
                    mass_m = <double>weight[m] * (<double>tb[m * stride + k] * keep + uniform)
                    top_grad[k] = ((a - g * mass_m) - g * mass_m * rest[k]) / total
                    if cap != 0:
                        top_grad[k] = top_grad[k] * z[n_classes * w + m * w + k]
                    moment[k] = m
                    break
    if not with_grad:
        return
    if cap == 0:
        tile_scale(xb, gb, n_classes, stride, w, shift, scale, smooth, weight)
    for c in range(n_classes):
        for k in range(w):
            value = gs[k] * <double>weight[c] * (<double>tb[c * stride + k] * keep + uniform)
            if cap == 0:
                gb[c * stride + k] = gb[c * stride + k] - <real>value
            else:
                gb[c * stride + k] = <real>(
                    (scale[k] * exp(z[c * zstride + k] - shift[k]) - value) * z[n_classes * w + c * w + k]
                )
    for k in range(w):
        if moment[k] >= 0:
            gb[<Py_ssize_t>moment[k] * stride + k] = <real>top_grad[k]


# ---------------------------------------------------------------- units of work
# Each processes one row (K == 1) or one tile (K > 1) given raw pointers; the
# entry points below run them in a plain loop on one thread or in chunks on
# the pool. Each returns 1 when its scratch could not be allocated.

cdef inline void lse_unit(const real *x, real *out, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w,
                          TileScratch s) noexcept nogil:
    cdef real shift
    cdef double rest
    cdef Py_ssize_t k
    if stride == 1:
        rest = shift_sum(x, n_classes, &shift)
        out[0] = special_lse(x, n_classes, 1, shift, log1p_rest(x, rest))
        return
    tile_stats(x, n_classes, stride, w, <real *>s.shift, s.total)
    log1p_rests(s.total, <real *>s.logs, w)
    for k in range(w):
        out[k] = special_lse(x + k, n_classes, stride, (<real *>s.shift)[k], (<real *>s.logs)[k])


cdef inline void softmax_unit(const real *x, real *out, Py_ssize_t n_classes, Py_ssize_t stride, Py_ssize_t w,
                              bint log_space, TileScratch s) noexcept nogil:
    cdef real shift
    cdef double rest
    cdef real *shifts = <real *>s.shift
    cdef real *scales = <real *>s.scale
    cdef Py_ssize_t c, k
    if stride == 1:
        if log_space:
            rest = shift_sum(x, n_classes, &shift)
            shifted_row(x, out, n_classes, shift, <real>log1p_rest(x, rest))
        else:
            rest = store_exp(x, out, n_classes, &shift)
            scale_row(out, n_classes, <real>(1 / (1.0 + rest)), 0, NULL)
        return
    tile_stats(x, n_classes, stride, w, shifts, s.total)
    if log_space:
        log1p_rests(s.total, scales, w)
        for c in range(n_classes):
            for k in range(w):
                out[c * stride + k] = (x[c * stride + k] - shifts[k]) - scales[k]
    else:
        for k in range(w):
            scales[k] = <real>(1 / (1.0 + s.total[k]))
            (<real *>s.smooth)[k] = 0
        tile_scale(x, out, n_classes, stride, w, shifts, scales, <real *>s.smooth, NULL)


cdef struct Layout:
    Py_ssize_t n_classes   # C
    Py_ssize_t stride      # K: 1 for rows, else the distance between classes
    Py_ssize_t width       # positions per tile (1 for rows)
    Py_ssize_t tiles       # tiles per leading index b
    Py_ssize_t units       # rows or tiles in all
    Py_ssize_t itemsize


cdef Layout layout_of(cnp.ndarray x, int n_threads):
    cdef Layout L
    L.n_classes = x.shape[1]
    L.stride = x.shape[2]
    L.itemsize = cnp.PyArray_ITEMSIZE(x)
    L.width = tile_width(L.n_classes, L.stride, L.itemsize, x.shape[0], n_threads) if L.stride > 1 else 1
    L.tiles = (L.stride + L.width - 1) // L.width
    L.units = x.shape[0] * L.tiles
    return L


cdef inline Py_ssize_t locate(Layout L, Py_ssize_t unit, Py_ssize_t *position, Py_ssize_t *w) noexcept nogil:
    """Offset of ``unit``'s first logit; writes its first output ``position`` and width ``w``."""
    cdef Py_ssize_t b, k0
    if L.stride == 1:
        position[0] = unit
        w[0] = 1
        return unit * L.n_classes
    b = unit // L.tiles
    k0 = (unit % L.tiles) * L.width
    position[0] = b * L.stride + k0
    w[0] = min(L.width, L.stride - k0)
    return b * L.n_classes * L.stride + k0


cdef inline Py_ssize_t first_unit(Layout L, int part, int parts) noexcept nogil:
    """Units are split into ``parts`` contiguous, static ranges: one per thread."""
    return L.units * part // parts


cdef enum:
    ROW_BLOCK = 64            # at most this many rows per rows_sums call
    ROW_BLOCK_BYTES = 32768   # and at most this much of them, so their exps are still in cache for the scaling


cdef inline Py_ssize_t lane_classes(const real *dtype, bint with_grad) noexcept nogil:
    """Rows up to this many classes go lanes across rows, the gradient too: its pass scales the exps the
    sums stored. Measured, one thread, loss+grad ns per row, lanes against the row path: float32 20 classes
    43 -> 24, 32 classes 50 -> 30; float64 16 classes 70 -> 52, 20 classes 78 -> 70, 24 a tie, 28 classes
    88 -> 95 (the block's exps no longer fit the registers)."""
    if with_grad and real is double:
        return 24
    return FX_LANE_CLASSES


cdef void lse_lane_rows(Layout L, const real *x, real *out, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    """Short rows: their M and log1p(S') lanes across rows (fx_rows_stats), a block of rows at a time."""
    cdef real shifts[ROW_BLOCK]
    cdef real logs[ROW_BLOCK]
    cdef double rests[ROW_BLOCK]
    cdef Py_ssize_t start = first, r, count, n = L.n_classes
    while start < last:
        count = min(<Py_ssize_t>ROW_BLOCK, last - start)
        rows_stats(x + start * n, count, n, shifts, rests, logs, NULL)
        for r in range(count):
            out[start + r] = special_lse(x + (start + r) * n, n, 1, shifts[r], logs[r])
        start += count


cdef int lse_units(Layout L, const real *x, real *out, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    cdef TileScratch s
    cdef Py_ssize_t unit, offset, position, w
    if L.stride == 1 and 0 < L.n_classes <= lane_classes(x, False):
        lse_lane_rows(L, x, out, first, last)
        return 0
    s = new_scratch(L.width, L.n_classes, sizeof(real), False, False, 0)
    if s.ok:
        for unit in range(first, last):
            offset = locate(L, unit, &position, &w)
            lse_unit(x + offset, out + position, L.n_classes, L.stride, w, s)
    free_scratch(s)
    return not s.ok


cdef void softmax_lane_rows(Layout L, const real *x, real *out, bint log_space, Py_ssize_t first,
                            Py_ssize_t last) noexcept nogil:
    """Short rows: M, S' and log1p(S') lanes across rows, then ``exps / S`` from the exps the sums stored, or
    ``(x - M) - log(S)`` by blocks of rows transposed (fx_lanes_template.h)."""
    cdef real shifts[ROW_BLOCK]
    cdef real logs[ROW_BLOCK]
    cdef real scales[ROW_BLOCK]
    cdef real exps[ROW_BLOCK * FX_LANE_CLASSES_MAX]
    cdef double rests[ROW_BLOCK]
    cdef Py_ssize_t start = first, r, count, n = L.n_classes
    while start < last:
        count = min(<Py_ssize_t>ROW_BLOCK, last - start)
        rows_stats(x + start * n, count, n, shifts, rests, logs, NULL if log_space else exps)
        if log_space:
            rows_shifted(x + start * n, out + start * n, count, n, shifts, logs)
        else:
            for r in range(count):
                scales[r] = <real>(1 / (1.0 + rests[r]))
            rows_scale(x + start * n, exps, out + start * n, count, n, shifts, scales)
        start += count


cdef int softmax_units(Layout L, const real *x, real *out, bint log_space, Py_ssize_t first,
                       Py_ssize_t last) noexcept nogil:
    cdef TileScratch s
    cdef Py_ssize_t unit, offset, position, w
    # Like a gradient, a softmax's pass scales stored exps: the gradient's lane limit (log_softmax stores none).
    if L.stride == 1 and 0 < L.n_classes <= lane_classes(x, not log_space):
        softmax_lane_rows(L, x, out, log_space, first, last)
        return 0
    s = new_scratch(L.width, L.n_classes, sizeof(real), False, False, 0)
    if s.ok:
        for unit in range(first, last):
            offset = locate(L, unit, &position, &w)
            softmax_unit(x + offset, out + offset, L.n_classes, L.stride, w, log_space, s)
    free_scratch(s)
    return not s.ok


cdef struct LossArgs:
    double weight_sum
    long long ignore_index
    double eps
    double cap
    double z_coef
    bint with_grad
    double gs_scalar       # the upstream gradient of every row when there is no per-row array


cdef inline void xent_index_unit(const real *x, real *g, const index_t *y, Py_ssize_t n_classes, Py_ssize_t stride,
                                 Py_ssize_t w, const real *weight, double weight_sum, long long ignore_index,
                                 double eps, double cap, double z_coef, real *loss, real *lse, const double *gs,
                                 bint with_grad, TileScratch s) noexcept nogil:
    cdef long long target
    if stride > 1:
        xent_index_tile(x, g, y, n_classes, stride, w, weight, weight_sum, ignore_index, eps, cap, z_coef,
                        loss, lse, gs, with_grad, s)
        return
    target = y[0]
    if target == ignore_index or target < 0 or target >= n_classes:
        loss[0] = 0
        lse[0] = 0
        if with_grad:
            memset(g, 0, n_classes * sizeof(real))
        return
    xent_index_row(x, g, n_classes, target, weight, weight_sum, eps, cap, z_coef, loss, lse,
                   gs[0] if with_grad else 0.0, with_grad, <real *>s.capped)


cdef void xent_index_block_rows(Layout L, LossArgs a, const real *x, real *g, const index_t *y, const real *weight,
                                real *loss, real *lse, const double *gs, Py_ssize_t first,
                                Py_ssize_t last) noexcept nogil:
    """Rows without a softcap: the sums of a block of rows in one call, then each row's result."""
    cdef real shifts[ROW_BLOCK]
    cdef real targets[ROW_BLOCK]
    cdef double rests[ROW_BLOCK]
    cdef double weighted[ROW_BLOCK]
    cdef Py_ssize_t start, r, row, count, n = L.n_classes
    cdef Py_ssize_t block = max(1, min(<Py_ssize_t>ROW_BLOCK, ROW_BLOCK_BYTES // (n * <Py_ssize_t>sizeof(real))))
    cdef long long target
    start = first
    while start < last:
        count = min(block, last - start)
        # Read what the results need before rows_sums writes exps into g, which may be x (in place).
        for r in range(count):
            target = y[start + r]
            targets[r] = x[(start + r) * n + target] if 0 <= target < n else 0
            weighted[r] = weighted_sum(x + (start + r) * n, weight, n) if a.eps > 0 else 0
        rows_sums(x + start * n, g + start * n if a.with_grad else NULL, count, n, shifts, rests)
        for r in range(count):
            row = start + r
            target = y[row]
            if target == a.ignore_index or target < 0 or target >= n:
                loss[row] = 0
                lse[row] = 0
                if a.with_grad:
                    memset(g + row * n, 0, n * sizeof(real))
                continue
            xent_index_finish(g + row * n if a.with_grad else NULL, n, target, targets[r], weighted[r], weight,
                              a.weight_sum, a.eps, a.z_coef, shifts[r], rests[r], loss + row, lse + row,
                              (gs[row] if gs != NULL else a.gs_scalar) if a.with_grad else 0.0, a.with_grad, NULL)
        start += count


cdef void xent_index_lane_rows(Layout L, LossArgs a, const real *x, real *g, const index_t *y, const real *weight,
                               real *loss, real *lse, const double *gs, Py_ssize_t first,
                               Py_ssize_t last) noexcept nogil:
    """Short rows without smoothing or a softcap: their M, S' and log1p(S') lanes across rows
    (fx_lanes_template.h), each row's loss, then the gradient pass over the block at once."""
    cdef real shifts[ROW_BLOCK]
    cdef real logs[ROW_BLOCK]
    cdef real scales[ROW_BLOCK]
    cdef real targets[ROW_BLOCK]
    cdef real exps[ROW_BLOCK * FX_LANE_CLASSES_MAX]  # the block's exps for the gradient pass
    cdef double rests[ROW_BLOCK]
    cdef double coefs[ROW_BLOCK]
    cdef double numerators[ROW_BLOCK]  # a: the gradient is a * p - c at the target
    cdef Py_ssize_t start = first, r, row, count, n = L.n_classes
    cdef long long target
    cdef double w_y, row_lse, upstream, total, c
    while start < last:
        count = min(<Py_ssize_t>ROW_BLOCK, last - start)
        if a.with_grad:
            # Read before the gradient pass overwrites the rows (in place).
            for r in range(count):
                target = y[start + r]
                targets[r] = x[(start + r) * n + target] if 0 <= target < n else 0
        rows_stats(x + start * n, count, n, shifts, rests, logs, exps if a.with_grad else NULL)
        for r in range(count):
            row = start + r
            target = y[row]
            scales[r] = 0
            if target == a.ignore_index or target < 0 or target >= n:
                loss[row] = 0
                lse[row] = 0
                continue
            if not a.with_grad:
                targets[r] = x[row * n + target]
            w_y = 1.0 if weight == NULL else weight[target]
            row_lse = <double>shifts[r] + <double>logs[r]
            loss[row] = <real>(w_y * (<double>(shifts[r] - targets[r]) + <double>logs[r]))
            lse[row] = <real>row_lse
            if a.with_grad:
                upstream = gs[row] if gs != NULL else a.gs_scalar
                coefs[r] = upstream * w_y
                numerators[r] = coefs[r] + upstream * 2.0 * a.z_coef * row_lse if a.z_coef != 0 else coefs[r]
                scales[r] = <real>(numerators[r] / (1.0 + rests[r]))
        if a.with_grad:
            rows_scale(x + start * n, exps, g + start * n, count, n, shifts, scales)
            for r in range(count):
                row = start + r
                target = y[row]
                if target == a.ignore_index or target < 0 or target >= n:
                    memset(g + row * n, 0, n * sizeof(real))
                elif targets[r] == shifts[r]:
                    # exp(x_y - M) = 1: a / S - c = ((a - c) - c * S') / S, with no cancellation.
                    total = 1.0 + rests[r]
                    c = coefs[r]
                    g[row * n + target] = <real>(((numerators[r] - c) - c * rests[r]) / total)
                else:
                    g[row * n + target] = g[row * n + target] - <real>coefs[r]
        start += count


cdef int xent_index_units(Layout L, LossArgs a, const real *x, real *g, const index_t *y, const real *weight,
                          real *loss, real *lse, const double *gs, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    # Rows need a capped copy of one row (width 1), tiles one of the tile.
    cdef TileScratch s = new_scratch(L.width, L.n_classes, sizeof(real), a.cap != 0,
                                     a.with_grad and gs == NULL, a.gs_scalar)
    cdef Py_ssize_t unit, offset, position, w
    if s.ok and L.stride == 1 and 0 < L.n_classes <= lane_classes(x, a.with_grad) and a.cap == 0 and a.eps == 0:
        xent_index_lane_rows(L, a, x, g, y, weight, loss, lse, gs, first, last)
    elif s.ok and L.stride == 1 and L.n_classes > 0 and a.cap == 0:
        xent_index_block_rows(L, a, x, g, y, weight, loss, lse, gs, first, last)
    elif s.ok:
        for unit in range(first, last):
            offset = locate(L, unit, &position, &w)
            xent_index_unit(x + offset, g + offset if a.with_grad else NULL, y + position, L.n_classes, L.stride, w,
                            weight, a.weight_sum, a.ignore_index, a.eps, a.cap, a.z_coef, loss + position,
                            lse + position, (gs + position if gs != NULL else s.gfill) if a.with_grad else NULL,
                            a.with_grad, s)
    free_scratch(s)
    return not s.ok


cdef inline void xent_probs_unit(const real *x, const real *t, real *g, Py_ssize_t n_classes, Py_ssize_t stride,
                                 Py_ssize_t w, const real *weight, double eps, double cap, double z_coef, real *loss,
                                 real *lse, const double *gs, bint with_grad, TileScratch s) noexcept nogil:
    if stride > 1:
        xent_probs_tile(x, t, g, n_classes, stride, w, weight, eps, cap, z_coef, loss, lse, gs, with_grad, s)
    else:
        xent_probs_row(x, t, g, n_classes, weight, eps, cap, z_coef, loss, lse, gs[0] if with_grad else 0.0,
                       with_grad, <real *>s.capped)


cdef int xent_probs_units(Layout L, LossArgs a, const real *x, const real *t, real *g, const real *weight,
                          real *loss, real *lse, const double *gs, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    cdef TileScratch s = new_scratch(L.width, L.n_classes, sizeof(real), a.cap != 0,
                                     a.with_grad and gs == NULL, a.gs_scalar)
    cdef Py_ssize_t unit, offset, position, w
    if s.ok:
        for unit in range(first, last):
            offset = locate(L, unit, &position, &w)
            xent_probs_unit(x + offset, t + offset, g + offset if a.with_grad else NULL, L.n_classes, L.stride, w,
                            weight, a.eps, a.cap, a.z_coef, loss + position, lse + position,
                            (gs + position if gs != NULL else s.gfill) if a.with_grad else NULL, a.with_grad, s)
    free_scratch(s)
    return not s.ok


cdef extern from "fx_pool.h" nogil:
    ctypedef int (*fx_task)(void *context, Py_ssize_t first, Py_ssize_t last) noexcept nogil
    int fx_pool_run(int threads, Py_ssize_t units, Py_ssize_t chunk, fx_task task, void *context)


cdef enum Kernel:
    LSE, SOFTMAX, XENT_INDEX, XENT_PROBS


cdef struct Job:
    Kernel kernel
    Layout L
    LossArgs a
    bint log_space
    bint wide_index   # int64 class indices (else int32)
    const void *x
    const void *target
    void *out         # softmax / lse output, or the gradient
    const void *weight
    void *loss
    void *lse
    const double *gs


cdef int job_units(Job *j, const real *x, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    """Run units [first, last) of a job in the logits' type (``x`` only selects it)."""
    if j.kernel == LSE:
        return lse_units(j.L, x, <real *>j.out, first, last)
    if j.kernel == SOFTMAX:
        return softmax_units(j.L, x, <real *>j.out, j.log_space, first, last)
    if j.kernel == XENT_PROBS:
        return xent_probs_units(j.L, j.a, x, <const real *>j.target, <real *>j.out, <const real *>j.weight,
                                <real *>j.loss, <real *>j.lse, j.gs, first, last)
    if j.wide_index:
        return xent_index_units(j.L, j.a, x, <real *>j.out, <const int64_t *>j.target, <const real *>j.weight,
                                <real *>j.loss, <real *>j.lse, j.gs, first, last)
    return xent_index_units(j.L, j.a, x, <real *>j.out, <const int32_t *>j.target, <const real *>j.weight,
                            <real *>j.loss, <real *>j.lse, j.gs, first, last)


cdef int job_task(void *context, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    cdef Job *j = <Job *>context
    if j.L.itemsize == 4:
        return job_units(j, <const float *>j.x, first, last)
    return job_units(j, <const double *>j.x, first, last)


cdef int run(Job *j, Py_ssize_t n_elements, int n_threads) noexcept nogil:
    """Run a job's units on the pool: chunks of at least ~4K elements, about four per thread."""
    cdef int threads = threads_for(n_elements, n_threads)
    cdef Py_ssize_t per_unit = max(1, j.L.n_classes * j.L.width)
    cdef Py_ssize_t chunk = max((4096 + per_unit - 1) // per_unit, (j.L.units + 4 * threads - 1) // (4 * threads))
    if j.L.units == 0:
        return 0
    if threads == 1:
        return job_task(j, 0, j.L.units)
    return fx_pool_run(threads, j.L.units, chunk, job_task, j)


cdef void row_totals(const real *loss, const real *lse, Py_ssize_t n, double *totals) noexcept nogil:
    """``totals = (sum of loss, sum of lse**2)`` over ``n`` rows, in row order (thread-count independent)."""
    cdef double loss_sum = 0, square_sum = 0
    cdef Py_ssize_t i
    for i in range(n):
        loss_sum += loss[i]
        square_sum += <double>lse[i] * <double>lse[i]
    totals[0] = loss_sum
    totals[1] = square_sum


cdef void totals_of(Job *j, Py_ssize_t rows, double *totals) noexcept nogil:
    if j.L.itemsize == 4:
        row_totals(<const float *>j.loss, <const float *>j.lse, rows, totals)
    else:
        row_totals(<const double *>j.loss, <const double *>j.lse, rows, totals)


# ---------------------------------------------------------------- entry points
# One def per operation; the dtype is dispatched in C on the arrays' item
# sizes (the API hands over native float32/float64 and int32/int64 only), so
# a call pays no fused-signature matching and no memoryview acquisition.

cdef inline void *data(object array) noexcept:
    return cnp.PyArray_DATA(<cnp.ndarray>array)


cdef inline bint single(object array) noexcept:
    return cnp.PyArray_ITEMSIZE(<cnp.ndarray>array) == 4


cdef inline int check(int failed) except -1:
    if failed:
        raise MemoryError("fastxent: could not allocate a kernel's scratch memory")
    return 0


cdef Job new_job(Kernel kernel, cnp.ndarray x, object out, int n_threads):
    cdef Job j
    memset(&j, 0, sizeof(j))
    j.kernel = kernel
    j.L = layout_of(x, threads_for(cnp.PyArray_SIZE(x), n_threads))
    j.x = data(x)
    j.out = NULL if out is None else data(out)
    return j


def logsumexp(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads):
    """``out (B, K) = log(sum(exp(x), axis=1))``."""
    cdef Job j = new_job(LSE, x, out, n_threads)
    cdef Py_ssize_t size = cnp.PyArray_SIZE(x)
    cdef int failed
    with nogil:
        failed = run(&j, size, n_threads)
    check(failed)


def softmax(cnp.ndarray x not None, cnp.ndarray out not None, bint log_space, int n_threads):
    """Softmax (or log-softmax) over axis 1 of ``x (B, C, K)``; ``out`` may be ``x``."""
    cdef Job j = new_job(SOFTMAX, x, out, n_threads)
    cdef Py_ssize_t size = cnp.PyArray_SIZE(x)
    cdef int failed = 0
    j.log_space = log_space
    if size:
        with nogil:
            failed = run(&j, size, n_threads)
    check(failed)


cdef LossArgs loss_args(Layout L, object params, object grad, object grad_scale, bint index):
    cdef LossArgs a
    a.weight_sum = 0
    a.ignore_index = params.ignore_index if index else 0
    a.eps = params.label_smoothing
    a.cap = params.softcap
    a.z_coef = params.z_coef
    a.with_grad = grad is not None
    a.gs_scalar = 0 if grad_scale is None or isinstance(grad_scale, cnp.ndarray) else grad_scale
    return a


cdef void *unit_weights(Layout L, object weight, bint needed) noexcept:
    """A malloc'ed array of ones when there are no weights but the kernel reads them (else NULL)."""
    cdef void *ones
    cdef Py_ssize_t c
    if weight is not None or not needed:
        return NULL
    ones = malloc(max(1, L.n_classes) * L.itemsize)
    if ones != NULL:
        for c in range(L.n_classes):
            if L.itemsize == 4:
                (<float *>ones)[c] = 1
            else:
                (<double *>ones)[c] = 1
    return ones


cdef void *row_outputs(object loss, object lse, Py_ssize_t rows, Py_ssize_t itemsize, void **lp, void **sp):
    """Point ``lp``/``sp`` at the per-row loss and lse: the caller's arrays, or for each that is None (not
    wanted) room in one malloc'ed block, which is returned for the caller to free."""
    cdef void *block = NULL
    if loss is None or lse is None:
        block = malloc(2 * max(1, rows) * itemsize)
    lp[0] = block if loss is None else data(loss)
    sp[0] = (<char *>block + rows * itemsize) if lse is None else data(lse)
    if block == NULL and (loss is None or lse is None):
        lp[0] = NULL
    return block


def cross_entropy_index(cnp.ndarray x not None, cnp.ndarray target not None, object weight, object params,
                        object loss, object lse, object grad, object grad_scale, object totals, int n_threads):
    """Cross-entropy with class indices; see the backend interface for the arguments."""
    cdef Job j = new_job(XENT_INDEX, x, grad, n_threads)
    cdef Py_ssize_t c, size = cnp.PyArray_SIZE(x), rows = x.shape[0] * x.shape[2]
    cdef int failed = 0
    # Rows without smoothing read only w[y]; tiles and smoothing read the whole weight array.
    j.a = loss_args(j.L, params, grad, grad_scale, True)
    cdef void *ones = unit_weights(j.L, weight, j.a.eps > 0 or j.L.stride > 1)
    cdef void *rows_scratch = row_outputs(loss, lse, rows, j.L.itemsize, &j.loss, &j.lse)
    j.weight = ones if ones != NULL else (NULL if weight is None else data(weight))
    j.gs = <const double *>data(grad_scale) if isinstance(grad_scale, cnp.ndarray) else NULL
    j.target = data(target)
    j.wide_index = cnp.PyArray_ITEMSIZE(target) == 8
    if (j.weight == NULL and weight is None and (j.a.eps > 0 or j.L.stride > 1) and j.L.n_classes) or j.loss == NULL:
        free(ones)
        free(rows_scratch)
        raise MemoryError("fastxent: could not allocate unit weights or row outputs")
    if j.weight != NULL:
        for c in range(j.L.n_classes):
            j.a.weight_sum += (<const float *>j.weight)[c] if j.L.itemsize == 4 else (<const double *>j.weight)[c]
    else:
        j.a.weight_sum = j.L.n_classes
    with nogil:
        failed = run(&j, size, n_threads)
    if totals is not None and not failed:
        totals_of(&j, rows, <double *>data(totals))
    free(ones)
    free(rows_scratch)
    check(failed)


def cross_entropy_probs(cnp.ndarray x not None, cnp.ndarray target not None, object weight, object params,
                        object loss, object lse, object grad, object grad_scale, object totals, int n_threads):
    """Cross-entropy with class probabilities; see the backend interface for the arguments."""
    cdef Job j = new_job(XENT_PROBS, x, grad, n_threads)
    cdef Py_ssize_t b, size = cnp.PyArray_SIZE(x), rows = x.shape[0] * x.shape[2]
    cdef int failed = 0
    j.a = loss_args(j.L, params, grad, grad_scale, False)
    cdef void *ones = unit_weights(j.L, weight, True)
    cdef void *rows_scratch = row_outputs(loss, lse, rows, j.L.itemsize, &j.loss, &j.lse)
    j.weight = ones if ones != NULL else data(weight)
    j.gs = <const double *>data(grad_scale) if isinstance(grad_scale, cnp.ndarray) else NULL
    j.target = data(target)
    if (weight is None and ones == NULL) or j.loss == NULL:
        free(ones)
        free(rows_scratch)
        raise MemoryError("fastxent: could not allocate unit weights or row outputs")
    if j.L.n_classes == 0:
        # No classes: every loss is an empty sum.
        for b in range(rows):
            if j.L.itemsize == 4:
                (<float *>j.loss)[b] = 0
                (<float *>j.lse)[b] = -INFINITY
            else:
                (<double *>j.loss)[b] = 0
                (<double *>j.lse)[b] = -INFINITY
    else:
        with nogil:
            failed = run(&j, size, n_threads)
    if totals is not None and not failed:
        totals_of(&j, rows, <double *>data(totals))
    free(ones)
    free(rows_scratch)
    check(failed)


def index_target_stats(cnp.ndarray target not None, object weight, Py_ssize_t n_classes, long long ignore_index):
    """``(valid rows, summed weight of their targets, targets out of range)`` of class indices (B, K)."""
    cdef Py_ssize_t i, n = cnp.PyArray_SIZE(target), valid = 0, bad = 0
    cdef long long y
    cdef double weight_sum = 0
    cdef bint wide = cnp.PyArray_ITEMSIZE(target) == 8
    cdef bint has_weight = weight is not None
    cdef bint single_weight = has_weight and single(weight)
    cdef const void *t = data(target)
    cdef const void *w = data(weight) if has_weight else NULL
    with nogil:
        if wide:
            fx_count_targets_i64(<const int64_t *>t, n, n_classes, ignore_index, &valid, &bad)
        else:
            fx_count_targets_i32(<const int32_t *>t, n, n_classes, ignore_index, &valid, &bad)
        if has_weight:
            for i in range(n):
                y = (<const int64_t *>t)[i] if wide else (<const int32_t *>t)[i]
                if 0 <= y < n_classes and y != ignore_index:
                    weight_sum += (<const float *>w)[y] if single_weight else (<const double *>w)[y]
    return valid, (weight_sum if has_weight else <double>valid), bad


cdef void scaled_lse_position(const real *x, const real *b, Py_ssize_t n, Py_ssize_t stride, Py_ssize_t b_stride,
                              real *out, real *sign) noexcept nogil:
    """SciPy's ``logsumexp(x, b=b, return_sign=True)`` of one row (stride apart), as its ``_logsumexp``.

    The maxima's weights ``m`` stay out of the sum (``S = m * (1 + s)``) so that
    ``log1p(s)`` keeps its precision; where that is not finite (an infinite
    maximum, every weight zero) the plain sum decides.
    """
    cdef double a_max = -INFINITY, m = 0, s = 0, direct = 0, v, w, sgn, result
    cdef Py_ssize_t i
    cdef bint has_nan = False
    for i in range(n):
        w = b[i * b_stride]
        if w != 0:
            v = x[i * stride]
            if isnan(v):
                has_nan = True
            elif v > a_max:
                a_max = v
    if has_nan:
        out[0] = <real>NAN
        sign[0] = <real>NAN
        return
    for i in range(n):
        w = b[i * b_stride]
        if w == 0:
            continue
        v = x[i * stride]
        direct += w * exp(v)
        if v == a_max:
            m += w
        else:
            s += w * exp(v - a_max)
    if s != 0:
        s = s / m
    sgn = (1.0 if s + 1 > 0 else (-1.0 if s + 1 < 0 else (0.0 if s + 1 == 0 else NAN)))
    sgn = sgn * (1.0 if m > 0 else (-1.0 if m < 0 else (0.0 if m == 0 else NAN)))
    if s < -1:
        s = -s - 2
    result = log1p(s) + log(fabs(m)) + a_max
    if isfinite(result):
        out[0] = <real>result
        sign[0] = <real>sgn
    else:
        out[0] = <real>log(fabs(direct))
        sign[0] = <real>(1.0 if direct > 0 else (-1.0 if direct < 0 else (0.0 if direct == 0 else NAN)))


cdef void scaled_lse_all(const real *x, const real *b, const Py_ssize_t *b_steps, real *out, real *sign,
                         Py_ssize_t rows, Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    """Every position; ``b_steps`` are ``b``'s (B, C, K) strides in elements (0 where it is broadcast)."""
    cdef Py_ssize_t r, k
    for r in range(rows):
        for k in range(stride):
            scaled_lse_position(x + r * n * stride + k, b + r * b_steps[0] + k * b_steps[2], n, stride, b_steps[1],
                                out + r * stride + k, sign + r * stride + k)


def logsumexp_scaled(cnp.ndarray x not None, cnp.ndarray b not None, cnp.ndarray out not None,
                     cnp.ndarray sign not None, int n_threads):
    """SciPy's ``logsumexp(x, b=b, return_sign=True)`` over axis 1 of ``x (B, C, K)``; one thread.

    ``b`` has ``x``'s shape and dtype and any strides (a broadcast scale is not laid out at ``x``'s size).
    """
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], stride = x.shape[2], i
    cdef Py_ssize_t b_steps[3]
    for i in range(3):
        b_steps[i] = b.strides[i] // cnp.PyArray_ITEMSIZE(b)
    with nogil:
        if cnp.PyArray_ITEMSIZE(x) == 4:
            scaled_lse_all(<const float *>cnp.PyArray_DATA(x), <const float *>cnp.PyArray_DATA(b), b_steps,
                           <float *>cnp.PyArray_DATA(out), <float *>cnp.PyArray_DATA(sign), rows, n, stride)
        else:
            scaled_lse_all(<const double *>cnp.PyArray_DATA(x), <const double *>cnp.PyArray_DATA(b), b_steps,
                           <double *>cnp.PyArray_DATA(out), <double *>cnp.PyArray_DATA(sign), rows, n, stride)
