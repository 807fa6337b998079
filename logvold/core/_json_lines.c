/* logvold.core._json_lines: json-file encoding of a whole read chunk in one C call.
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
 * JSON encoder and two bytes.replace passes (~2-3 ms per MiB). Here, on x86-64 with
 * SSSE3 (checked at run time): one pass that checks the UTF-8 and escapes 16 bytes at
 * a time into a per-thread buffer, then one copy into the result, ~0.45 ms per MiB of
 * typical log lines on a busy 2-vCPU machine; without SSSE3 a UTF-8 pass first, then
 * an SSE2 or a byte-wise loop. The GIL is released meanwhile. The pure-Python paths
 * (chunk_encoding.py) stay for builds without a C compiler, and tests compare all of
 * them byte for byte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* What each byte needs: 0 nothing; 1 a short escape; 2 \u00XX; 3 newline; 4 a UTF-8
 * lead or continuation byte (validated); 5 an HTML-safe escape \u00XX. */
static unsigned char kind[256];
static char short_escape[256];
/* Bytes written without a branch on their kind: `repl` after a backslash when `two`
 * (the two-character escapes), else the byte itself (plain ASCII, UTF-8 bytes of an
 * input validated beforehand). The others (`slow`) take the switch. */
static unsigned char two[256];
static unsigned char repl[256];
static unsigned char slow[256];
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
    for (int c = 0; c < 256; c++) {
        two[c] = kind[c] == 1;
        repl[c] = two[c] ? (unsigned char)short_escape[c] : (unsigned char)c;
        slow[c] = kind[c] == 2 || kind[c] == 3 || kind[c] == 5 || c == 0xE2;
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
/* Bit i set: byte i of v needs more than a copy (UTF-8 bytes other than 0xE2 need
 * none once the input is validated). */
static inline unsigned special_mask(__m128i v) {
    const __m128i zero = _mm_setzero_si128();
    __m128i m = _mm_andnot_si128(_mm_cmplt_epi8(v, zero), _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(v, _mm_set1_epi8('"')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));
    m = _mm_or_si128(m, _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('<')),
                                     _mm_cmpeq_epi8(v, _mm_set1_epi8('>'))));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(v, _mm_set1_epi8('&')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(v, _mm_set1_epi8((char)0xE2)));
    return (unsigned)_mm_movemask_epi8(m);
}

/* Bit i set: byte i of v needs the switch (`slow`): a newline, a control byte without
 * a two-character escape, <, >, &, or 0xE2 (U+2028 / U+2029 start with it). */
static inline unsigned slow_mask(__m128i v) {
    const __m128i zero = _mm_setzero_si128();
    __m128i ctl = _mm_andnot_si128(_mm_cmplt_epi8(v, zero), _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
    __m128i sh = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\t')),
                              _mm_cmpeq_epi8(v, _mm_set1_epi8('\r')));
    sh = _mm_or_si128(sh, _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\b')),
                                       _mm_cmpeq_epi8(v, _mm_set1_epi8('\f'))));
    __m128i m = _mm_andnot_si128(sh, ctl);
    m = _mm_or_si128(m, _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('<')),
                                     _mm_cmpeq_epi8(v, _mm_set1_epi8('>'))));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(v, _mm_set1_epi8('&')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(v, _mm_set1_epi8((char)0xE2)));
    return (unsigned)_mm_movemask_epi8(m);
}

/* p[0, lim) into o, where bit k of `t` says p[k] takes a two-character escape
 * and no other byte needs one: each run before an escape is one 16-byte store (the
 * excess is overwritten next; the caller leaves room and input for it). Returns the
 * end of the output. */
static inline unsigned char *escape_run(unsigned char *o, const unsigned char *p, unsigned t,
                                        unsigned lim) {
    unsigned last = 0;
    while (t) {
        unsigned k = (unsigned)__builtin_ctz(t);
        _mm_storeu_si128((__m128i *)o, _mm_loadu_si128((const __m128i *)(p + last)));
        o += k - last;
        o[0] = '\\';
        o[1] = repl[p[k]];
        o += 2;
        last = k + 1;
        t &= t - 1;
    }
    _mm_storeu_si128((__m128i *)o, _mm_loadu_si128((const __m128i *)(p + last)));
    return o + (lim - last);
}
#endif

/* Is [p, end) valid UTF-8 (Python's strict decoder: no overlongs, no surrogates)? */
static int valid_utf8(const unsigned char *p, const unsigned char *end) {
    while (p < end) {
#if defined(__SSE2__)
        if (end - p >= 16) {
            unsigned m = (unsigned)_mm_movemask_epi8(_mm_loadu_si128((const __m128i *)p));
            if (m == 0) {
                p += 16;
                continue;
            }
            p += __builtin_ctz(m);
        }
#endif
        if (*p < 0x80) {
            p++;
            continue;
        }
        Py_ssize_t n = utf8_length(p, end);
        if (n == 0)
            return 0;
        p += n;
    }
    return 1;
}

/* Headroom past the worst case, for the 16-byte stores of the copy loop. */
#define SLACK 32

/* Bytes [p, p + n) that are not `slow`, without a branch on each one's kind: a
 * backslash is written first and overwritten by the byte itself when it needs none. */
static inline unsigned char *write_fast(unsigned char *o, const unsigned char *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        o[0] = '\\';
        o[two[c]] = repl[c];
        o += 1 + two[c];
    }
    return o;
}

/* One `slow` byte (with its UTF-8 sequence when it leads one) at p; returns the output end. */
static inline unsigned char *write_slow(unsigned char *o, const unsigned char **pp,
                                        const unsigned char *end, const char *sep,
                                        Py_ssize_t seplen) {
    const unsigned char *p = *pp;
    unsigned char c = *p;
    if (c == '\n') {
        memcpy(o, sep, (size_t)seplen);
        *pp = p + 1;
        return o + seplen;
    }
    if (c == 0xE2) { /* validated: a 3-byte sequence */
        (void)end;
        if (p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) {
            memcpy(o, p[2] == 0xA8 ? "\\u2028" : "\\u2029", 6);
            o += 6;
        } else {
            o[0] = p[0];
            o[1] = p[1];
            o[2] = p[2];
            o += 3;
        }
        *pp = p + 3;
        return o;
    }
    memcpy(o, "\\u00", 4); /* control bytes, <, >, & */
    o[4] = (unsigned char)hex[c >> 4];
    o[5] = (unsigned char)hex[c & 15];
    *pp = p + 1;
    return o + 6;
}

/* LOGVOLD_NO_SSSE3: build without the SSSE3 loop (the tests' way to run the SSE2 one). */
#if defined(__SSE2__) && defined(__GNUC__) && defined(__x86_64__) && !defined(LOGVOLD_NO_SSSE3)
#include <tmmintrin.h>
/* SSSE3 (every x86-64 CPU since about 2008; checked at import): a 16-byte block whose
 * only escapes are two-character ones is written without a branch per escape, each
 * 8-byte half by one byte shuffle from a table indexed by its escape bits. */
#define HAVE_EXPAND 1
static unsigned char expand_shuffle[256][16];
static unsigned char expand_backslash[256][16];
static unsigned char expand_length[256];
static int use_expand; /* the CPU has SSSE3: escape_ssse3 */

static void init_expand(void) {
    for (int m = 0; m < 256; m++) {
        int j = 0;
        for (int i = 0; i < 8; i++) {
            if (m & (1 << i)) {
                expand_shuffle[m][j] = (unsigned char)i;
                expand_backslash[m][j] = 0xFF;
                j++;
            }
            expand_shuffle[m][j] = (unsigned char)i;
            j++;
        }
        for (int k = j; k < 16; k++)
            expand_shuffle[m][k] = 0x80;
        expand_length[m] = (unsigned char)j;
    }
    __builtin_cpu_init();
    use_expand = __builtin_cpu_supports("ssse3");
}

__attribute__((target("ssse3"))) static unsigned char *expand_half(unsigned char *o, __m128i r,
                                                                    unsigned m) {
    __m128i shuffled = _mm_shuffle_epi8(r, _mm_loadu_si128((const __m128i *)expand_shuffle[m]));
    __m128i bs = _mm_loadu_si128((const __m128i *)expand_backslash[m]);
    __m128i out = _mm_or_si128(_mm_andnot_si128(bs, shuffled),
                               _mm_and_si128(bs, _mm_set1_epi8('\\')));
    _mm_storeu_si128((__m128i *)o, out);
    return o + expand_length[m];
}

/* The byte classes of the SSSE3 loop, one bit each, found by two 16-entry table
 * look-ups (low and high nibble, AND-ed): a class is a set of high nibbles times a
 * set of low nibbles, so a byte's result is exactly its class bit or 0. */
#define C_SHORTCTL 0x01 /* \b \t \f \r: two characters */
#define C_CTL0 0x02     /* other bytes 0x00-0x0F, newline included: the switch */
#define C_CTL1 0x04     /* 0x10-0x1F */
#define C_QUOTE 0x08    /* " */
#define C_AMP 0x10      /* & */
#define C_LTGT 0x20     /* < > */
#define C_BSL 0x40      /* backslash */
#define C_E2 0x80       /* the lead byte of U+2028 / U+2029 (and other characters) */
#define C_SLOW (C_CTL0 | C_CTL1 | C_AMP | C_LTGT | C_E2)
static unsigned char class_lo[16];
static unsigned char class_hi[16];
/* The letter of \b \t \f \r by low nibble (0x08 0x09 0x0C 0x0D). */
static unsigned char short_letter[16];

static void init_classes(void) {
    for (int lo = 0; lo < 16; lo++) {
        int shortctl = lo == 8 || lo == 9 || lo == 12 || lo == 13;
        class_lo[lo] = (unsigned char)((shortctl ? C_SHORTCTL : C_CTL0) | C_CTL1);
        short_letter[lo] = (unsigned char)(shortctl ? short_escape[lo] : 0);
    }
    class_lo[2] |= C_QUOTE | C_E2;
    class_lo[6] |= C_AMP;
    class_lo[12] |= C_LTGT | C_BSL;
    class_lo[14] |= C_LTGT;
    class_hi[0] = C_SHORTCTL | C_CTL0;
    class_hi[1] = C_CTL1;
    class_hi[2] = C_QUOTE | C_AMP;
    class_hi[3] = C_LTGT;
    class_hi[5] = C_BSL;
    class_hi[14] = C_E2;
}

/* The main loop on SSSE3: per 16 bytes, one classification (two byte shuffles), a
 * 16-byte copy when nothing needs escaping, one shuffle per half when only
 * two-character escapes do; else the escapes one by one up to the first `slow` byte.
 * Stops with fewer than 32 bytes left (the scalar loop finishes) or past `limit`. */
__attribute__((target("ssse3"))) static unsigned char *
escape_ssse3(unsigned char *o, const unsigned char **pp, const unsigned char *end,
             const char *sep, Py_ssize_t seplen, const unsigned char *limit,
             const unsigned char **checked) {
    const unsigned char *p = *pp;
    const unsigned char *vend = *checked;
    const __m128i lo_tbl = _mm_loadu_si128((const __m128i *)class_lo);
    const __m128i hi_tbl = _mm_loadu_si128((const __m128i *)class_hi);
    const __m128i letters = _mm_loadu_si128((const __m128i *)short_letter);
    const __m128i nibble = _mm_set1_epi8(0x0F);
    const __m128i zero = _mm_setzero_si128();
    const __m128i slow_bits = _mm_set1_epi8((char)C_SLOW);
    const __m128i shortctl = _mm_set1_epi8(C_SHORTCTL);
    while (end - p >= 32 && o <= limit) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        unsigned high = (unsigned)_mm_movemask_epi8(v);
        if (high && vend - p < 16) {
            /* UTF-8 sequences starting in this block, past those checked already:
             * checked here, before any of their bytes is written (write_slow reads
             * an E2 sequence's next two bytes). */
            Py_ssize_t done = vend - p;
            unsigned bits = done > 0 ? high & ~((1u << done) - 1) : high;
            while (bits) {
                unsigned k = (unsigned)__builtin_ctz(bits);
                Py_ssize_t n = utf8_length(p + k, end);
                if (n == 0) {
                    *pp = NULL; /* not valid UTF-8 */
                    return o;
                }
                vend = p + k + n;
                bits &= ~((1u << (k + (unsigned)n)) - 1);
            }
        }
        __m128i lo = _mm_and_si128(v, nibble);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), nibble);
        __m128i cls = _mm_and_si128(_mm_shuffle_epi8(lo_tbl, lo), _mm_shuffle_epi8(hi_tbl, hi));
        unsigned any = 0xFFFFu ^ (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(cls, zero));
        unsigned m = 0xFFFFu ^ (unsigned)_mm_movemask_epi8(
                                   _mm_cmpeq_epi8(_mm_and_si128(cls, slow_bits), zero));
        if (m == 0) {
            /* Plain text or two-character escapes only, without a branch on which (in
             * typical logs most blocks have a few): \b \t \f \r take their letter,
             * " and \ stay, a plain block is shuffled onto itself. */
            __m128i ctl = _mm_cmpeq_epi8(_mm_and_si128(cls, shortctl), shortctl);
            __m128i r = _mm_or_si128(_mm_andnot_si128(ctl, v),
                                     _mm_and_si128(ctl, _mm_shuffle_epi8(letters, lo)));
            o = expand_half(o, r, any & 0xFF);
            o = expand_half(o, _mm_srli_si128(r, 8), (any >> 8) & 0xFF);
            p += 16;
            continue;
        }
        unsigned lim = (unsigned)__builtin_ctz(m);
        /* The bytes before the first slow one, with their two-character escapes. */
        o = escape_run(o, p, any & ~m & (unsigned)((1u << lim) - 1), lim);
        p += lim;
        o = write_slow(o, &p, end, sep, seplen);
    }
    *pp = p;
    *checked = vend;
    return o;
}
#endif

/* The escapes of [p, end) into o (room for output_bound() + SLACK); returns the end. */
/* Output room one step of the block loops may need: 16 bytes as two-character
 * escapes, a 16-byte store's overrun, one `sep` or \u00XX. */
#define STEP_ROOM(seplen) (64 + ((seplen) > 6 ? (seplen) : 6))

/* The escapes of [*pp, end) into o, 16 bytes at a time, until fewer than 32 bytes
 * are left or o passes `limit` (STEP_ROOM before the end of the room). The SSSE3
 * loop checks the UTF-8 as it goes (up to *checked, which it advances) and sets *pp
 * to NULL at an invalid sequence; the others need it checked beforehand. */
static unsigned char *escape_blocks(unsigned char *o, const unsigned char **pp,
                                    const unsigned char *end, const char *sep,
                                    Py_ssize_t seplen, const unsigned char *limit,
                                    const unsigned char **checked) {
#if defined(HAVE_EXPAND)
    if (use_expand)
        return escape_ssse3(o, pp, end, sep, seplen, limit, checked);
#endif
    (void)checked; /* the caller checked all of the input first */
#if defined(__SSE2__)
    const unsigned char *p = *pp;
    /* 32 left at least, so the 16-byte loads below stay inside. */
    while (end - p >= 32 && o <= limit) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        unsigned any = special_mask(v);
        if (any == 0) { /* plain text: a 16-byte copy */
            _mm_storeu_si128((__m128i *)o, v);
            p += 16;
            o += 16;
            continue;
        }
        unsigned m = slow_mask(v);
        unsigned lim = m ? (unsigned)__builtin_ctz(m) : 16;
        /* The bytes before the first slow one, with their two-character escapes. */
        o = escape_run(o, p, any & ~m & (unsigned)((1u << lim) - 1), lim);
        p += lim;
        if (m)
            o = write_slow(o, &p, end, sep, seplen);
    }
#else
    const unsigned char *p = *pp;
    while (end - p >= 32 && o <= limit) {
        if (slow[*p])
            o = write_slow(o, &p, end, sep, seplen);
        else
            o = write_fast(o, p++, 1);
    }
#endif
    *pp = p;
    return o;
}

/* The rest, byte by byte (room: max(6, seplen) per byte). */
static unsigned char *escape_bytes(unsigned char *o, const unsigned char *p,
                                   const unsigned char *end, const char *sep, Py_ssize_t seplen) {
    while (p < end) {
        if (slow[*p])
            o = write_slow(o, &p, end, sep, seplen);
        else
            o = write_fast(o, p++, 1);
    }
    return o;
}

/* Each thread's output buffer, kept between calls: written at once, without a pass
 * to size the output first (that pass cost ~0.17 ms per MiB), and grown when a step
 * could pass its end; the result is one copy of what was written. Freed with the
 * thread, and after a call that made it bigger than SCRATCH_KEEP. */
typedef struct {
    unsigned char *buf;
    size_t cap;
} Scratch;
#define SCRATCH_KEEP (8u << 20)
static pthread_key_t scratch_key;
static int scratch_key_ok;

static void scratch_free(void *arg) {
    Scratch *sc = arg;
    free(sc->buf);
    free(sc);
}

static int scratch_reserve(Scratch *sc, size_t cap) {
    if (sc->cap >= cap)
        return 0;
    if (cap < 2 * sc->cap)
        cap = 2 * sc->cap;
    unsigned char *buf = realloc(sc->buf, cap);
    if (buf == NULL)
        return -1;
    sc->buf = buf;
    sc->cap = cap;
    return 0;
}

/* Escapes [p, end) into sc; the length written, -1 when memory ran out, -2 when
 * the input is not valid UTF-8. */
static Py_ssize_t escape_into(Scratch *sc, const unsigned char *p, const unsigned char *end,
                              const char *sep, Py_ssize_t seplen) {
    size_t per_byte = (size_t)(seplen > 6 ? seplen : 6);
    size_t n = (size_t)(end - p);
    const unsigned char *checked = p;
#if defined(HAVE_EXPAND)
    if (!use_expand)
#endif
    {
        if (!valid_utf8(p, end))
            return -2;
        checked = end;
    }
    if (scratch_reserve(sc, n + n / 2 + STEP_ROOM(seplen) + 32 * per_byte + SLACK) < 0)
        return -1;
    size_t used = 0;
    for (;;) {
        const unsigned char *limit = sc->buf + sc->cap - STEP_ROOM(seplen) - SLACK;
        unsigned char *o = escape_blocks(sc->buf + used, &p, end, sep, seplen, limit, &checked);
        if (p == NULL)
            return -2;
        used = (size_t)(o - sc->buf);
        if (end - p < 32)
            break;
        if (scratch_reserve(sc, 2 * sc->cap) < 0)
            return -1;
    }
    if (checked < end && !valid_utf8(checked > p ? checked : p, end))
        return -2;
    if (scratch_reserve(sc, used + (size_t)(end - p) * per_byte + SLACK) < 0)
        return -1;
    return escape_bytes(sc->buf + used, p, end, sep, seplen) - sc->buf;
}

static PyObject *escape_lines(PyObject *module, PyObject *args) {
    Py_buffer in;
    const char *sep;
    Py_ssize_t seplen;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*y#:escape_lines", &in, &sep, &seplen))
        return NULL;
    const unsigned char *p = in.buf;
    const unsigned char *end = p + in.len;
    /* Pure C over buffers we hold (`data` is exported to us, the scratch buffer is
     * this thread's): other threads run meanwhile (the writer's segment and spare-file
     * threads, a `logvold run` caller's other work). */
    Scratch *sc = pthread_getspecific(scratch_key);
    if (sc == NULL) {
        sc = calloc(1, sizeof *sc);
        if (sc == NULL || pthread_setspecific(scratch_key, sc) != 0) {
            free(sc);
            PyBuffer_Release(&in);
            return PyErr_NoMemory();
        }
    }
    Py_ssize_t used;
    Py_BEGIN_ALLOW_THREADS
    used = escape_into(sc, p, end, sep, seplen);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyObject *out;
    if (used == -2)
        out = Py_NewRef(Py_None);
    else if (used < 0)
        out = PyErr_NoMemory();
    else
        out = PyBytes_FromStringAndSize((const char *)sc->buf, used);
    if (sc->cap > SCRATCH_KEEP) { /* a rare huge output: do not keep its memory */
        free(sc->buf);
        sc->buf = NULL;
        sc->cap = 0;
    }
    return out;
}

/* Where escape_step() is in its input and output, between calls. */
typedef struct {
    const unsigned char *p;
    const unsigned char *checked; /* UTF-8 checked up to here */
    size_t used;
} Progress;

/* Escapes on from `st` into buf[0:cap]: 0 when done, 1 when it needs a buffer of at
 * least *need bytes (the caller grows it, keeping what is written, and calls again),
 * -2 when the input is not valid UTF-8. */
static int escape_step(unsigned char *buf, size_t cap, Progress *st, const unsigned char *end,
                       const char *sep, Py_ssize_t seplen, size_t *need) {
    size_t room = STEP_ROOM(seplen) + SLACK;
    while (end - st->p >= 32) {
        if (cap < st->used + room) {
            *need = 2 * cap > st->used + room ? 2 * cap : st->used + room;
            return 1;
        }
        const unsigned char *limit = buf + cap - room;
        const unsigned char *p = st->p;
        unsigned char *o = escape_blocks(buf + st->used, &p, end, sep, seplen, limit, &st->checked);
        if (p == NULL)
            return -2;
        st->p = p;
        st->used = (size_t)(o - buf);
    }
    size_t tail = st->used + (size_t)(end - st->p) * (size_t)(seplen > 6 ? seplen : 6) + SLACK;
    if (cap < tail) {
        *need = tail;
        return 1;
    }
    if (st->checked < end && !valid_utf8(st->checked > st->p ? st->checked : st->p, end))
        return -2;
    st->used = (size_t)(escape_bytes(buf + st->used, st->p, end, sep, seplen) - buf);
    st->p = end;
    return 0;
}

/* escape_lines() into a bytearray the caller keeps between calls: no copy of the
 * output and no fresh memory per call. Resized to the output; exported (locked
 * against resizing by others) while it is written without the GIL; BufferError if
 * a view of it is alive when called. */
static PyObject *escape_lines_into(PyObject *module, PyObject *args) {
    Py_buffer in;
    const char *sep;
    Py_ssize_t seplen;
    PyObject *out;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*y#O!:escape_lines_into", &in, &sep, &seplen,
                          &PyByteArray_Type, &out))
        return NULL;
    if (((PyByteArrayObject *)out)->ob_exports > 0) {
        /* Someone may still read the last output through a view: never overwrite it. */
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_BufferError, "escape_lines_into: `out` is in use by a memoryview");
        return NULL;
    }
    const unsigned char *end = (const unsigned char *)in.buf + in.len;
    Progress st = {in.buf, in.buf, 0};
    int done = 0;
#if defined(HAVE_EXPAND)
    if (!use_expand)
#endif
    {
        Py_BEGIN_ALLOW_THREADS
        done = valid_utf8(st.p, end) ? 0 : -2;
        Py_END_ALLOW_THREADS
        st.checked = end;
    }
    size_t n = (size_t)in.len;
    size_t need = n + n / 2 + STEP_ROOM(seplen) + 32 * (size_t)(seplen > 6 ? seplen : 6) + SLACK;
    if (done == 0 && (size_t)PyByteArray_GET_SIZE(out) >= need)
        need = 0;
    while (done == 0 || done == 1) {
        if (need && PyByteArray_Resize(out, (Py_ssize_t)need) < 0) {
            PyBuffer_Release(&in);
            return NULL;
        }
        Py_buffer ob;
        if (PyObject_GetBuffer(out, &ob, PyBUF_WRITABLE) < 0) {
            PyBuffer_Release(&in);
            return NULL;
        }
        need = 0;
        Py_BEGIN_ALLOW_THREADS
        done = escape_step(ob.buf, (size_t)ob.len, &st, end, sep, seplen, &need);
        Py_END_ALLOW_THREADS
        PyBuffer_Release(&ob);
        if (done == 0)
            break;
    }
    PyBuffer_Release(&in);
    if (done == -2)
        Py_RETURN_NONE;
    if (PyByteArray_Resize(out, (Py_ssize_t)st.used) < 0)
        return NULL;
    return Py_NewRef(out);
}

static PyMethodDef methods[] = {
    {"escape_lines", escape_lines, METH_VARARGS,
     "escape_lines(data, sep) -> bytes | None: JSON string escapes of UTF-8 `data` "
     "(Go's HTML-safe ones too), each newline replaced by `sep`; None if `data` is not "
     "valid UTF-8."},
    {"escape_lines_into", escape_lines_into, METH_VARARGS,
     "escape_lines_into(data, sep, out) -> bytearray | None: escape_lines() written "
     "into the bytearray `out` (resized to the output; returned), reused between calls."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_json_lines",
    "json-file encoding of whole chunks in one C call (see chunk_encoding.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__json_lines(void) {
    if (!scratch_key_ok) {
        if (pthread_key_create(&scratch_key, scratch_free) != 0)
            return PyErr_NoMemory();
        scratch_key_ok = 1;
    }
    init_tables();
#if defined(HAVE_EXPAND)
    init_expand();
    init_classes();
#endif
    return PyModule_Create(&module_def);
}
