/* Vectorised row primitives with run-time CPU dispatch.
 *
 * Each primitive is compiled twice on x86-64 with gcc or clang: for the
 * baseline ISA (what the wheel targets) and with target("avx2,fma"). fx_init
 * picks the AVX2 table when __builtin_cpu_supports says the CPU has both, so
 * a portable build still runs AVX2 code where it can. FASTXENT_NATIVE
 * builds (opt-in, -march=native) and other platforms use one variant.
 */
#ifndef FX_SIMD_H
#define FX_SIMD_H

#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Elements per chunk of the online normaliser: 8 KB of float32, inside L1. */
#define FX_CHUNK 2048
/* Rows this short skip the `omp simd` reductions (see fx_short_row). */
#define FX_SHORT 16
/* Rows of up to this many classes go lanes across rows (fx_lanes_template.h). */
#define FX_LANE_CLASSES 32
/* Tiles hold at most this many positions (the Cython side's tile_width caps them). */
#define FX_TILE_MAX 1024
/* Classes summed in the logits' precision before adding into a double total. */
#define FX_CLASS_BLOCK 256

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(FASTXENT_NATIVE)
#define FX_DISPATCH 1
#else
#define FX_DISPATCH 0
#endif

#if FX_DISPATCH || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#define FX_ATTR
#define ISA generic
#include "fx_instantiate.h"
#undef ISA
#undef FX_ATTR

#if FX_DISPATCH
#define FX_ATTR __attribute__((target("avx2,fma")))
#define ISA avx2
#define FX_AVX2 1
#include "fx_instantiate.h"
#undef FX_AVX2
#undef ISA
#undef FX_ATTR
#endif

/* One table of primitives per float type. */
#define FX_TABLE(REAL, SUF)                                                                              \
    typedef struct {                                                                                     \
        double (*shift_sum)(const REAL *, Py_ssize_t, REAL *);                                           \
        double (*store_exp)(const REAL *, REAL *, Py_ssize_t, REAL *);                                   \
        void (*scale)(REAL *, Py_ssize_t, REAL, REAL, const REAL *);                                     \
        void (*shifted)(const REAL *, REAL *, Py_ssize_t, REAL, REAL);                                   \
        void (*tile_stats)(const REAL *, Py_ssize_t, Py_ssize_t, Py_ssize_t, REAL *, double *);          \
        void (*tile_scale)(const REAL *, REAL *, Py_ssize_t, Py_ssize_t, Py_ssize_t, const REAL *,       \
                           const REAL *, const REAL *, const REAL *);                                    \
        void (*rows_sums)(const REAL *, REAL *, Py_ssize_t, Py_ssize_t, REAL *, double *);               \
        void (*rows_stats)(const REAL *, Py_ssize_t, Py_ssize_t, REAL *, double *, REAL *, REAL *);      \
        void (*rows_scale)(const REAL *, const REAL *, REAL *, Py_ssize_t, Py_ssize_t, const REAL *,     \
                           const REAL *);                                                                \
        void (*log1p_rests)(const double *, REAL *, Py_ssize_t);                                         \
        void (*rows_shifted)(const REAL *, REAL *, Py_ssize_t, Py_ssize_t, const REAL *, const REAL *);  \
        void (*tile_finish)(Py_ssize_t, const REAL *, const double *, const REAL *, const REAL *,         \
                            const double *, const double *, const double *, const double *, const REAL *,  \
                            double, double, double, double, int, REAL *, REAL *, REAL *, REAL *, double *, \
                            double *);                                                                   \
    } fx_table_##SUF;

FX_TABLE(float, f32)
FX_TABLE(double, f64)

#define FX_FILL(SUF, ISA)                                                                                \
    {fx_shift_sum_##SUF##_##ISA, fx_store_exp_##SUF##_##ISA, fx_scale_##SUF##_##ISA,                    \
     fx_shifted_##SUF##_##ISA, fx_tile_stats_##SUF##_##ISA, fx_tile_scale_##SUF##_##ISA,                 \
     fx_rows_sums_##SUF##_##ISA, fx_rows_stats_##SUF##_##ISA, fx_rows_scale_##SUF##_##ISA, \
     fx_log1p_rests_##SUF##_##ISA, fx_rows_shifted_##SUF##_##ISA, fx_tile_finish_##SUF##_##ISA}

/* Valid and out-of-range counts of class-index targets by 0/1 arithmetic, so the loop vectorises
 * (one unsigned compare is 0 <= y < n_classes). With an if per target, a million random targets
 * with some ignored took 4.8 ms; this is a plain loop, compiled per ISA like the primitives. */
#define FX_COUNT_TARGETS(NAME, ATTR, INDEX)                                                                 \
    static ATTR void NAME(const INDEX *t, Py_ssize_t n, Py_ssize_t n_classes, long long ignore_index,      \
                          Py_ssize_t *valid, Py_ssize_t *bad) {                                              \
        int64_t n_valid = 0, n_bad = 0;                                                                      \
        for (Py_ssize_t i = 0; i < n; i++) {                                                                 \
            const int64_t y = t[i];                                                                          \
            const int64_t kept = y != ignore_index, inside = (uint64_t)y < (uint64_t)n_classes;              \
            n_valid += kept & inside;                                                                        \
            n_bad += kept & (inside ^ 1);                                                                    \
        }                                                                                                    \
        *valid = (Py_ssize_t)n_valid;                                                                        \
        *bad = (Py_ssize_t)n_bad;                                                                            \
    }
typedef void (*fx_count_i32_t)(const int32_t *, Py_ssize_t, Py_ssize_t, long long, Py_ssize_t *, Py_ssize_t *);
typedef void (*fx_count_i64_t)(const int64_t *, Py_ssize_t, Py_ssize_t, long long, Py_ssize_t *, Py_ssize_t *);
FX_COUNT_TARGETS(fx_count_targets_i32_generic, , int32_t)
FX_COUNT_TARGETS(fx_count_targets_i64_generic, , int64_t)
#if FX_DISPATCH
FX_COUNT_TARGETS(fx_count_targets_i32_avx2, __attribute__((target("avx2"))), int32_t)
FX_COUNT_TARGETS(fx_count_targets_i64_avx2, __attribute__((target("avx2"))), int64_t)
#endif
static fx_count_i32_t fx_count_targets_i32 = fx_count_targets_i32_generic;
static fx_count_i64_t fx_count_targets_i64 = fx_count_targets_i64_generic;

static fx_table_f32 fx_f32 = FX_FILL(f32, generic);
static fx_table_f64 fx_f64 = FX_FILL(f64, generic);
static const char *fx_isa = "baseline";

/* Choose the AVX2 variants when this CPU has AVX2 and FMA; returns the ISA's name. */
static const char *fx_init(void) {
#if FX_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        fx_table_f32 f32 = FX_FILL(f32, avx2);
        fx_table_f64 f64 = FX_FILL(f64, avx2);
        fx_f32 = f32;
        fx_f64 = f64;
        fx_count_targets_i32 = fx_count_targets_i32_avx2;
        fx_count_targets_i64 = fx_count_targets_i64_avx2;
        fx_isa = "avx2+fma";
    }
#elif defined(FASTXENT_NATIVE)
    fx_isa = "native";
#endif
    return fx_isa;
}

#endif /* FX_SIMD_H */
