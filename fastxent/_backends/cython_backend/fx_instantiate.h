/* Instantiates fx_rows_template.h for float and double, for the ISA and FX_ATTR
 * that fx_simd.h has defined around this include. No include guard: included
 * once per ISA. */

#define REAL float
#define SUF f32
#define FX_IS_DOUBLE 0
#include "fx_rows_template.h"
#undef REAL
#undef SUF
#undef FX_IS_DOUBLE

#define REAL double
#define SUF f64
#define FX_IS_DOUBLE 1
#include "fx_rows_template.h"
#undef REAL
#undef SUF
#undef FX_IS_DOUBLE
