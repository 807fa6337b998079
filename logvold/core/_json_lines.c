/* logvold.core._json_lines: json-file encoding of a whole read chunk in one C pass.
 *
 * escape_lines(data, sep) -> bytes | None
 *
 * The inside of the JSON string `json.dumps(text, ensure_ascii=False)` makes for
 * `data` decoded as UTF-8, with Go's HTML-safe escapes (<, >, &, U+2028, U+2029) that
 * dockerd writes, except that each newline becomes `sep` (the end of one json-file
 * line and the head of the next). None when `data` is not valid UTF-8 (Python's
 * strict decoder's rules): the caller then takes the stdlib path, which writes the
 * invalid bytes as lone-surrogate escapes.
 *
 * Why C: the same bytes from Python take a UTF-8 decode, a UTF-8 re-encode inside the
 * JSON encoder and two bytes.replace passes (~2 ms per MiB); one pass here is
 * ~0.3 ms, which is what brings the containerd driver's json-file output near copy
 * speed. The pure-Python paths (chunk_encoding.py) stay, for builds without a C
 * compiler, and tests compare all of them byte for byte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* What each byte needs: 0 nothing; 1 a short escape; 2 \u00XX; 3 newline; 4 a UTF-8
 * lead or continuation byte (validated); 5 an HTML-safe escape \u00XX. */
static unsigned char kind[256];
static char short_escape[256];
/* The escape of each ASCII byte that has one, in an 8-byte slot (one store), and its length. */
static unsigned char ascii_escape[128][8];
static unsigned char ascii_escape_len[128];
static const char hex[] = "0123456789abcdef";

static void init_tables(void) {
    for (int c = 0; c < 0x20; c++)
        kind[c] = 2;
    kind['\b'] = kind['\t'] = kind['\f'] = kind['\r'] = 1;
    kind['"'] = kind['\\'] = 1;
    short_escape['\b'] = 'b';
    short_escape['\t'] = 't';
    short_escape['\f'] = 'f';
    short_escape['\r'] = 'r';
    short_escape['"'] = '"';
    short_escape['\\'] = '\\';
    kind['\n'] = 3;
    for (int c = 0x80; c < 0x100; c++)
        kind[c] = 4;
    kind['<'] = kind['>'] = kind['&'] = 5;
    for (int c = 0; c < 128; c++) {
        if (kind[c] == 1) {
            ascii_escape[c][0] = '\\';
            ascii_escape[c][1] = (unsigned char)short_escape[c];
            ascii_escape_len[c] = 2;
        } else if (kind[c] == 2 || kind[c] == 5) {
            memcpy(ascii_escape[c], "\\u00", 4);
            ascii_escape[c][4] = (unsigned char)hex[c >> 4];
            ascii_escape[c][5] = (unsigned char)hex[c & 15];
            ascii_escape_len[c] = 6;
        }
    }
}

/* Length of the valid UTF-8 sequence at p (p < end, *p >= 0x80), 0 if invalid. */
static Py_ssize_t utf8_length(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    Py_ssize_t avail = end - p;
    if (c >= 0xC2 && c <= 0xDF) {
        return avail >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (avail < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && p[1] < 0xA0)
            return 0; /* overlong */
        if (c == 0xED && p[1] > 0x9F)
            return 0; /* a surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (avail < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 ||
            (p[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && p[1] < 0x90)
            return 0; /* overlong */
        if (c == 0xF4 && p[1] > 0x8F)
            return 0; /* past U+10FFFF */
        return 4;
    }
    return 0;
}

#if defined(__SSE2__)
/* Bit i set: byte i of v needs more than a copy. */
static inline unsigned special_mask(__m128i v) {
    const __m128i below = _mm_set1_epi8(0x20); /* signed: also catches >= 0x80 */
    __m128i m = _mm_or_si128(_mm_cmplt_epi8(v, below), _mm_cmpeq_epi8(v, _mm_set1_epi8('"')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));
    m = _mm_or_si128(m, _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('<')),
                                     _mm_cmpeq_epi8(v, _mm_set1_epi8('>'))));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(v, _mm_set1_epi8('&')));
    return (unsigned)_mm_movemask_epi8(m);
}
#endif

#if defined(__SSE2__)
static inline Py_ssize_t lane_sum(__m128i counts) {
    __m128i sums = _mm_sad_epu8(counts, _mm_setzero_si128());
    return (Py_ssize_t)_mm_cvtsi128_si32(sums) + _mm_extract_epi16(sums, 4);
}
#endif

/* An upper bound of the output's length (exact but for E2 bytes, each counted as a
 * possible U+2028 / U+2029), so the output is allocated once at about its size: a
 * bigger reservation is a fresh mmap per call, every page of it faulted in again. */
static Py_ssize_t output_bound(const unsigned char *p, const unsigned char *end, Py_ssize_t seplen) {
    Py_ssize_t n = end - p, nl = 0, two = 0, six = 0, e2 = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    while (end - p >= 16) {
        /* Per-lane counts (a set lane is -1: subtracting counts it), summed every
         * 255 vectors, before a lane could wrap. */
        __m128i c_nl = zero, c_two = zero, c_six = zero, c_e2 = zero;
        for (int i = 0; i < 255 && end - p >= 16; i++, p += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            __m128i ctl = _mm_andnot_si128(_mm_cmplt_epi8(v, zero),
                                           _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
            __m128i lf = _mm_cmpeq_epi8(v, _mm_set1_epi8('\n'));
            __m128i sh = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
                                      _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));
            sh = _mm_or_si128(sh, _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\t')),
                                               _mm_cmpeq_epi8(v, _mm_set1_epi8('\r'))));
            sh = _mm_or_si128(sh, _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\b')),
                                               _mm_cmpeq_epi8(v, _mm_set1_epi8('\f'))));
            __m128i u = _mm_andnot_si128(_mm_or_si128(sh, lf), ctl);
            u = _mm_or_si128(u, _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('<')),
                                             _mm_cmpeq_epi8(v, _mm_set1_epi8('>'))));
            u = _mm_or_si128(u, _mm_cmpeq_epi8(v, _mm_set1_epi8('&')));
            c_nl = _mm_sub_epi8(c_nl, lf);
            c_two = _mm_sub_epi8(c_two, sh);
            c_six = _mm_sub_epi8(c_six, u);
            c_e2 = _mm_sub_epi8(c_e2, _mm_cmpeq_epi8(v, _mm_set1_epi8((char)0xE2)));
        }
        nl += lane_sum(c_nl);
        two += lane_sum(c_two);
        six += lane_sum(c_six);
        e2 += lane_sum(c_e2);
    }
#endif
    for (; p < end; p++) {
        unsigned char c = *p;
        nl += c == '\n';
        two += kind[c] == 1;
        six += kind[c] == 2 || kind[c] == 5;
        e2 += c == 0xE2;
    }
    return n + nl * (seplen - 1) + two + six * 5 + e2 * 3;
}

/* Headroom past the worst case, for the 16-byte stores of the copy loop. */
#define SLACK 32

static PyObject *escape_lines(PyObject *module, PyObject *args) {
    Py_buffer in;
    const char *sep;
    Py_ssize_t seplen;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*y#:escape_lines", &in, &sep, &seplen))
        return NULL;
    const unsigned char *p = in.buf;
    const unsigned char *end = p + in.len;
    Py_ssize_t cap = output_bound(p, end, seplen) + SLACK;
    PyObject *out = PyBytes_FromStringAndSize(NULL, cap);
    if (out == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    {
        while (p < end) {
#if defined(__SSE2__)
            /* Copy 16 bytes at a time, stopping at the first that needs more: the
             * store may run past it (into headroom), the next write overwrites. */
            if (end - p >= 16) {
                __m128i v = _mm_loadu_si128((const __m128i *)p);
                _mm_storeu_si128((__m128i *)o, v);
                unsigned mask = special_mask(v);
                if (mask == 0) {
                    p += 16;
                    o += 16;
                    continue;
                }
                unsigned k = (unsigned)__builtin_ctz(mask);
                p += k;
                o += k;
            } else if (!kind[*p]) {
                *o++ = *p++;
                continue;
            }
#else
            if (!kind[*p]) {
                *o++ = *p++;
                continue;
            }
#endif
            unsigned char c = *p;
            if (c < 0x80 && c != '\n') { /* one 8-byte store, no branch on which */
                memcpy(o, ascii_escape[c], 8);
                o += ascii_escape_len[c];
                p++;
                continue;
            }
            unsigned char k = kind[c];
            if (k == 4 && c >= 0xC2 && c <= 0xDF && end - p >= 2 && (p[1] & 0xC0) == 0x80) {
                o[0] = c;
                o[1] = p[1];
                o += 2;
                p += 2;
                continue;
            }
            switch (k) {
            case 3:
                memcpy(o, sep, (size_t)seplen);
                o += seplen;
                p++;
                break;
            case 4: {
                Py_ssize_t n = utf8_length(p, end);
                if (n == 0) {
                    PyBuffer_Release(&in);
                    Py_DECREF(out);
                    Py_RETURN_NONE;
                }
                if (n == 3 && c == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) {
                    memcpy(o, p[2] == 0xA8 ? "\\u2028" : "\\u2029", 6);
                    o += 6;
                } else {
                    for (Py_ssize_t i = 0; i < n; i++)
                        o[i] = p[i];
                    o += n;
                }
                p += n;
                break;
            }
            default: /* 2, 5: \u00XX */
                memcpy(o, "\\u00", 4);
                o[4] = (unsigned char)hex[c >> 4];
                o[5] = (unsigned char)hex[c & 15];
                o += 6;
                p++;
                break;
            }
        }
    }
    Py_ssize_t used = (char *)o - PyBytes_AS_STRING(out);
    PyBuffer_Release(&in);
    if (_PyBytes_Resize(&out, used) < 0)
        return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"escape_lines", escape_lines, METH_VARARGS,
     "escape_lines(data, sep) -> bytes | None: JSON string escapes of UTF-8 `data` "
     "(Go's HTML-safe ones too), each newline replaced by `sep`; None if `data` is not "
     "valid UTF-8."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_json_lines",
    "json-file encoding of whole chunks in one C pass (see chunk_encoding.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__json_lines(void) {
    init_tables();
    return PyModule_Create(&module_def);
}
