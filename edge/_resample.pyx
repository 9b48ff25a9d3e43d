# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The exact resize's loops (edge/resize.py), compiled ahead of time: one call an image,
with the GIL released for all of it.

Each output row is 4 weighted input rows, then each output column 4 weighted columns,
in float32, the products summed left to right as TensorFlow's kernel does
(resize_bicubic_op.cc). The loops are C (below), which the compiler vectorises for the
CPU it runs on; whole-row pointers and three channels spelled out keep them free of
index arithmetic. They check no bounds: edge/resize.py checks the crop first.

Built with the package (pyproject.toml, ext-modules; Cython and a C compiler at build
time only): serving loads this one small library instead of a JIT compiler.
"""

from libc.stdint cimport int64_t

import numpy as np

ctypedef fused pixel:
    unsigned char
    float


cdef extern from *:
    """
    /* The loops. restrict tells the compiler an output aliases no input (a uint8 pointer
       may alias anything otherwise), so they vectorise; target_clones builds each for
       AVX2, AVX and baseline x86-64 and picks one at load time, as numba's compile for
       the host CPU did. Plain float multiplies and adds in this order on every target
       (no -ffast-math, no contraction into FMA): every clone gives the same bits. */
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    #define CLONES __attribute__((target_clones("avx2", "avx", "default")))
    #else
    #define CLONES
    #endif
    #include <math.h>
    typedef unsigned char uint8;
    #include <stdint.h>
    typedef int64_t i64;

    /* Each output row: 4 weighted input rows, `n` floats wide, starting at column `start`. */
    #define ROWS_PASS(T)                                                                  \
        CLONES static void rows_##T(const T *restrict rows, i64 stride, i64 top, i64 start, \
                i64 n, const i64 *restrict idx, const float *restrict w, i64 out_rows,    \
                float *restrict tall) {                                                   \
            for (i64 i = 0; i < out_rows; i++) {                                          \
                const T *s0 = rows + (top + idx[4 * i]) * stride + start;                 \
                const T *s1 = rows + (top + idx[4 * i + 1]) * stride + start;             \
                const T *s2 = rows + (top + idx[4 * i + 2]) * stride + start;             \
                const T *s3 = rows + (top + idx[4 * i + 3]) * stride + start;             \
                float w0 = w[4 * i], w1 = w[4 * i + 1], w2 = w[4 * i + 2], w3 = w[4 * i + 3]; \
                float *restrict dst = tall + i * n;                                       \
                for (i64 x = 0; x < n; x++)                                               \
                    dst[x] = w0 * (float)s0[x] + w1 * (float)s1[x] + w2 * (float)s2[x]    \
                             + w3 * (float)s3[x];                                         \
            }                                                                             \
        }
    ROWS_PASS(uint8)
    ROWS_PASS(float)

    /* Each output column of each row: 4 weighted input columns, three channels. */
    CLONES static void columns_pass(const float *restrict tall, i64 rows, i64 n, const i64 *restrict idx,
                                    const float *restrict w, i64 cols, float *restrict out) {
        for (i64 i = 0; i < rows; i++) {
            const float *src = tall + i * n;
            float *dst = out + i * cols * 3;
            for (i64 j = 0; j < cols; j++) {
                i64 a = idx[4 * j] * 3, b = idx[4 * j + 1] * 3, c = idx[4 * j + 2] * 3, d = idx[4 * j + 3] * 3;
                float w0 = w[4 * j], w1 = w[4 * j + 1], w2 = w[4 * j + 2], w3 = w[4 * j + 3];
                for (int k = 0; k < 3; k++)
                    dst[3 * j + k] = w0 * src[a + k] + w1 * src[b + k] + w2 * src[c + k] + w3 * src[d + k];
            }
        }
    }

    /* Rounded half to even (rintf in the default rounding mode, as np.rint), clipped: a
       pass of its own, which vectorises (rounding inside the column pass did not, and
       was slower). */
    CLONES static void round_to_uint8(const float *restrict src, i64 n, uint8 *restrict out) {
        for (i64 x = 0; x < n; x++) {
            float v = rintf(src[x]);
            out[x] = (uint8)(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v));
        }
    }
    """
    void rows_uint8(const unsigned char* rows, int64_t stride, int64_t top, int64_t start, int64_t n,
                    const int64_t* idx, const float* w, int64_t out_rows, float* tall) nogil
    void rows_float(const float* rows, int64_t stride, int64_t top, int64_t start, int64_t n,
                    const int64_t* idx, const float* w, int64_t out_rows, float* tall) nogil
    void columns_pass(const float* tall, int64_t rows, int64_t n, const int64_t* idx, const float* w,
                      int64_t cols, float* out) nogil
    void round_to_uint8(const float* src, int64_t n, unsigned char* out) nogil


cdef void rows_pass(const pixel[:, ::1] rows, Py_ssize_t top, Py_ssize_t left, Py_ssize_t width,
                    const int64_t[:, ::1] row_idx, const float[:, ::1] row_w, float[:, ::1] tall) noexcept nogil:
    if pixel is float:
        rows_float(&rows[0, 0], rows.shape[1], top, left * 3, width * 3, &row_idx[0, 0], &row_w[0, 0],
                   row_idx.shape[0], &tall[0, 0])
    else:
        rows_uint8(&rows[0, 0], rows.shape[1], top, left * 3, width * 3, &row_idx[0, 0], &row_w[0, 0],
                   row_idx.shape[0], &tall[0, 0])


def resample(const pixel[:, ::1] rows, Py_ssize_t top, Py_ssize_t left, Py_ssize_t width,
             const int64_t[:, ::1] row_idx, const float[:, ::1] row_w,
             const int64_t[:, ::1] col_idx, const float[:, ::1] col_w):
    """float32 (len(row_idx), len(col_idx) * 3): the region of `rows` (H, W * 3) at
    (top, left), `width` wide and as tall as the row taps reach, resized: rows first,
    then columns."""
    out = np.empty((row_idx.shape[0], col_idx.shape[0] * 3), np.float32)
    cdef float[:, ::1] tall = np.empty((row_idx.shape[0], width * 3), np.float32)
    cdef float[:, ::1] out_v = out
    with nogil:
        rows_pass(rows, top, left, width, row_idx, row_w, tall)
        columns_pass(&tall[0, 0], tall.shape[0], tall.shape[1], &col_idx[0, 0], &col_w[0, 0], col_idx.shape[0],
                     &out_v[0, 0])
    return out


def resample_uint8(const unsigned char[:, ::1] rows, Py_ssize_t top, Py_ssize_t left, Py_ssize_t width,
                   const int64_t[:, ::1] row_idx, const float[:, ::1] row_w,
                   const int64_t[:, ::1] col_idx, const float[:, ::1] col_w):
    """`resample`, rounded half to even and clipped to [0, 255]: uint8, flat."""
    out = np.empty(row_idx.shape[0] * col_idx.shape[0] * 3, np.uint8)
    cdef float[:, ::1] tall = np.empty((row_idx.shape[0], width * 3), np.float32)
    cdef float[:, ::1] resized = np.empty((row_idx.shape[0], col_idx.shape[0] * 3), np.float32)
    cdef unsigned char[::1] out_v = out
    with nogil:
        rows_pass(rows, top, left, width, row_idx, row_w, tall)
        columns_pass(&tall[0, 0], tall.shape[0], tall.shape[1], &col_idx[0, 0], &col_w[0, 0], col_idx.shape[0],
                     &resized[0, 0])
        round_to_uint8(&resized[0, 0], out_v.shape[0], &out_v[0])
    return out
