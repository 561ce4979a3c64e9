/*
 * records/native/json.c: a checked DAG-CBOR item -> atproto JSON text.
 *
 * Where it sits: the native record path (pass.c) fills the `record` column
 * with json_write's output; `cbor_json` (below) exposes it to Python for the
 * twin tests and the benchmark. Its Python twin is
 * `records.json.to_json_bytes(libipld.decode_dag_cbor(block))`, and the output
 * must be the same bytes, so every rule here is orjson's:
 *   - keys sorted bytewise (orjson's OPT_SORT_KEYS compares the UTF-8 text,
 *     i.e. code point order), while DAG-CBOR stores them length first: each
 *     map is written in DAG-CBOR order, then its entries' texts are put in
 *     bytewise order in place;
 *   - strings: '"' and '\\' escaped, \b \t \n \f \r short, the other control
 *     characters below 0x20 as \u00xx with lower-case hex; DEL, U+2028/9 and
 *     all non-ASCII bytes written as they are, '/' not escaped;
 *   - integers in decimal, no spaces anywhere;
 *   - a link (tag 42) as {"$link":"b<base32 lower-case, unpadded, of the CID>"}
 *     and a byte string as {"$bytes":"<standard base64, unpadded>"} (what
 *     records/json.py's `encode_default` writes; cb_check declines byte strings
 *     that libipld would read back as a CID, so every byte string here is
 *     $bytes).
 * Only bytes cb_check accepted reach json_write: it reads with cbor.h's
 * trusted readers and bounds nothing again (cb_check bounded lengths, nesting
 * depth and UTF-8).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cbor.h"
#include "json.h"

/* Grow geometrically so that appending stays amortised O(1). */
int jbuf_reserve(jbuf *out, size_t need) {
    /* Sizes this large cannot be allocated anyway; refusing them keeps the
     * doubling below from overflowing. */
    if (out->len > SIZE_MAX / 2 || need > SIZE_MAX / 2 - out->len) return -1;
    if (out->len + need <= out->cap) return 0;
    size_t cap = out->cap ? out->cap : 4096;
    while (cap < out->len + need) cap *= 2;
    char *grown = realloc(out->buf, cap);
    if (grown == NULL) return -1;
    out->buf = grown;
    out->cap = cap;
    return 0;
}

/* Per byte of a string: 0 written as is, else the letter of its escape
 * ('u' for \u00xx). A table, so the scan costs one load per byte. */
static const unsigned char ESCAPE[256] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
    0,   0,   '"', 0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   '\\', 0,  0,   0,
    /* 0x60.. and every byte from 0x80 up: written as they are */
};

static const char HEX[] = "0123456789abcdef";

/* Room for `need` more bytes, the common case (room already there) inline. */
static inline int reserve(jbuf *out, size_t need) {
    return out->cap - out->len >= need ? 0 : jbuf_reserve(out, need);
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether any of the eight bytes in `w` needs an escape (below 0x20, '"' or
 * '\\'). The classic "has a zero / a byte below n" bit tricks: no false
 * negatives, so a zero answer lets eight bytes through without the table. */
static inline int needs_escape8(uint64_t w) {
    uint64_t below = (w - ONES * 0x20) & ~w;
    uint64_t q = w ^ (ONES * '"');
    uint64_t b = w ^ (ONES * '\\');
    return (((below | ((q - ONES) & ~q) | ((b - ONES) & ~b)) & HIGHS)) != 0;
}

/* Append s[0:n] as a JSON string, quotes included. Room is reserved once for
 * the worst case (every byte a six-byte \u00xx). Words of eight bytes that
 * need no escape are copied as words; the rest goes byte by byte through the
 * table, up to the next word (no libc calls: most strings are a few bytes). */
static int write_string(jbuf *out, const unsigned char *s, size_t n) {
    if (n > (SIZE_MAX - 2) / 6 || reserve(out, n * 6 + 2) < 0) return -1;
    char *w = out->buf + out->len;
    *w++ = '"';
    size_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t chunk;
            memcpy(&chunk, s + i, 8);
            if (needs_escape8(chunk)) break;
            memcpy(w, &chunk, 8);
            w += 8;
            i += 8;
        }
        size_t stop = i + 8 < n ? i + 8 : n;
        for (; i < stop; i++) {
            unsigned char c = s[i];
            unsigned char e = ESCAPE[c];
            if (e == 0) {
                *w++ = (char)c;
            } else if (e == 'u') {
                w[0] = '\\';
                w[1] = 'u';
                w[2] = '0';
                w[3] = '0';
                w[4] = HEX[c >> 4];
                w[5] = HEX[c & 15];
                w += 6;
            } else {
                w[0] = '\\';
                w[1] = (char)e;
                w += 2;
            }
        }
    }
    *w++ = '"';
    out->len = (size_t)(w - out->buf);
    return 0;
}

/* Append a literal (no escaping needed). */
static inline int write_raw(jbuf *out, const char *s, size_t n) {
    if (reserve(out, n) < 0) return -1;
    memcpy(out->buf + out->len, s, n);
    out->len += n;
    return 0;
}

/* Append an integer: `neg` means the CBOR negative -1 - v (v <= INT64_MAX
 * after cb_check, so its magnitude v + 1 fits a uint64_t). */
static int write_int(jbuf *out, uint64_t v, int neg) {
    char tmp[21];
    char *e = tmp + sizeof tmp;
    char *d = e;
    if (neg) v += 1;
    do {
        *--d = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    if (neg) *--d = '-';
    return write_raw(out, d, (size_t)(e - d));
}

/* A link's CID bytes (after the 0x00 multibase-identity prefix) as
 * {"$link":"b..."}: RFC 4648 base32, lower case, unpadded, what
 * libipld.encode_cid writes for a CIDv1. */
static int write_link(jbuf *out, const unsigned char *b, size_t n) {
    static const char HEAD[] = "{\"$link\":\"b";
    if (reserve(out, sizeof HEAD - 1 + (n * 8 + 4) / 5 + 2) < 0) return -1;
    char *w = out->buf + out->len;
    memcpy(w, HEAD, sizeof HEAD - 1);
    w += sizeof HEAD - 1;
    w += base32_lower(w, b, n);
    *w++ = '"';
    *w++ = '}';
    out->len = (size_t)(w - out->buf);
    return 0;
}

/* A byte string as {"$bytes":"..."}: standard base64 alphabet, no padding
 * (records/json.py strips the '='). */
static int write_bytes(jbuf *out, const unsigned char *b, size_t n) {
    static const char A64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char HEAD[] = "{\"$bytes\":\"";
    if (n > SIZE_MAX / 2 || reserve(out, sizeof HEAD - 1 + (n + 2) / 3 * 4 + 2) < 0) return -1;
    char *w = out->buf + out->len;
    memcpy(w, HEAD, sizeof HEAD - 1);
    w += sizeof HEAD - 1;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8 | b[i + 2];
        w[0] = A64[v >> 18];
        w[1] = A64[(v >> 12) & 63];
        w[2] = A64[(v >> 6) & 63];
        w[3] = A64[v & 63];
        w += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)b[i] << 16;
        *w++ = A64[v >> 18];
        *w++ = A64[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8;
        *w++ = A64[v >> 18];
        *w++ = A64[(v >> 12) & 63];
        *w++ = A64[(v >> 6) & 63];
    }
    *w++ = '"';
    *w++ = '}';
    out->len = (size_t)(w - out->buf);
    return 0;
}

/* One map entry while its map is re-sorted: the key's text (in the block)
 * and where its `"key":value` text sits in the output. */
typedef struct {
    const unsigned char *key;
    size_t klen;
    size_t off;
    size_t end;
} entry;

/* orjson's key order: the UTF-8 bytes compared as unsigned bytes, a prefix
 * first (Rust's str ordering). Keys within one map are distinct. */
static inline int key_before(const entry *a, const entry *b) {
    size_t m = a->klen < b->klen ? a->klen : b->klen;
    /* A loop, not memcmp: keys are short and mostly differ in their first
     * byte, where a libc call costs more than the comparison. */
    for (size_t i = 0; i < m; i++)
        if (a->key[i] != b->key[i]) return a->key[i] < b->key[i];
    return a->klen < b->klen;
}

/* qsort's comparator for key_before (for maps too big for insertion sort). */
static int entry_cmp(const void *pa, const void *pb) {
    const entry *a = pa;
    const entry *b = pb;
    return key_before(a, b) ? -1 : key_before(b, a) ? 1 : 0;
}

/* Maps with up to this many entries sort by insertion (records' maps are
 * small), bigger ones with qsort. */
#define SMALL_MAP 24
/* Entries json_write holds on its own stack frame before it needs the heap. */
#define LOCAL_ENTRIES 64

/* One json_write call: the output, and one stack of map entries shared by
 * all nesting levels (a map pushes its entries, its values push theirs above,
 * it pops them when done), so that deep nesting costs no per-level arrays on
 * the C stack and a big map no allocation of its own. */
typedef struct {
    jbuf *out;
    entry *es;    /* LOCAL_ENTRIES on json_write's frame, or `heap` */
    entry *heap;  /* malloc'd once the local ones ran out, else NULL */
    size_t top;
    size_t cap;
} wctx;

/* Room for `n` more entries above `top`: 0, or -1 when out of memory.
 * Moving to (or growing) the heap copies the live entries, so callers hold
 * indexes into `es`, never pointers, across anything that may push. */
static int entries_reserve(wctx *x, size_t n) {
    if (n <= x->cap - x->top) return 0;
    if (n > SIZE_MAX / sizeof(entry) / 2 - x->top) return -1;
    size_t cap = x->cap * 2 > x->top + n ? x->cap * 2 : x->top + n;
    entry *grown = malloc(cap * sizeof(entry));
    if (grown == NULL) return -1;
    memcpy(grown, x->es, x->top * sizeof(entry));
    free(x->heap);
    x->es = x->heap = grown;
    x->cap = cap;
    return 0;
}

static int write_item(wctx *x, cb_cur *c);

/* Put the entries' texts, written in DAG-CBOR order from es[0].off on, into
 * bytewise key order in place: the region is copied past the end of the
 * output (scratch room in the same buffer), then copied back entry by entry.
 * Same entries, same commas, so the region keeps its length. */
static int reorder(jbuf *out, entry *es, size_t n) {
    size_t base = es[0].off; /* before sorting: the first entry written */
    if (n <= SMALL_MAP) {
        for (size_t i = 1; i < n; i++) {
            entry e = es[i];
            size_t j = i;
            while (j > 0 && key_before(&e, &es[j - 1])) {
                es[j] = es[j - 1];
                j--;
            }
            es[j] = e;
        }
    } else {
        qsort(es, n, sizeof *es, entry_cmp);
    }
    size_t size = out->len - base;
    if (reserve(out, size) < 0) return -1;
    char *scratch = out->buf + out->len;
    memcpy(scratch, out->buf + base, size);
    char *w = out->buf + base;
    for (size_t i = 0; i < n; i++) {
        if (i > 0) *w++ = ',';
        size_t len = es[i].end - es[i].off;
        memcpy(w, scratch + (es[i].off - base), len);
        w += len;
    }
    return 0;
}

/* Append the map whose `count` entries start at `c` (its head read), keys
 * in orjson's order; leaves `c` past the map. The entries are written as
 * they come (one pass over the block, no skipping ahead to find values),
 * then reordered if DAG-CBOR's length-first order was not already bytewise. */
static int write_map(wctx *x, cb_cur *c, uint64_t count) {
    jbuf *out = x->out;
    /* count <= block length / 2 after cb_check, so it fits a size_t. */
    size_t n = (size_t)count;
    if (entries_reserve(x, n) < 0) return -1;
    size_t base = x->top;
    x->top += n;
    int sorted = 1;
    int rc = write_raw(out, "{", 1);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (i > 0) rc = write_raw(out, ",", 1);
        if (rc < 0) break;
        int major;
        uint64_t kn;
        cb_head_t(c, &major, &kn);
        const unsigned char *key = c->p;
        c->p += kn;
        size_t off = out->len;
        rc = write_string(out, key, (size_t)kn);
        if (rc == 0) rc = write_raw(out, ":", 1);
        if (rc == 0) rc = write_item(x, c); /* may move x->es */
        entry *e = x->es + base + i;
        *e = (entry){key, (size_t)kn, off, out->len};
        if (i > 0 && sorted && !key_before(e - 1, e)) sorted = 0;
    }
    if (rc == 0 && !sorted) rc = reorder(out, x->es + base, n);
    if (rc == 0) rc = write_raw(out, "}", 1);
    x->top = base;
    return rc;
}

/* Append the item at `c` and move `c` past it. Recursion is bounded by
 * cb_check's CB_MAX_DEPTH. */
static int write_item(wctx *x, cb_cur *c) {
    jbuf *out = x->out;
    int major;
    uint64_t arg;
    cb_head_t(c, &major, &arg);
    switch (major) {
    case CB_UINT:
        return write_int(out, arg, 0);
    case CB_NINT:
        return write_int(out, arg, 1);
    case CB_BYTES: {
        const unsigned char *b = c->p;
        c->p += arg;
        return write_bytes(out, b, (size_t)arg);
    }
    case CB_TEXT: {
        const unsigned char *s = c->p;
        c->p += arg;
        return write_string(out, s, (size_t)arg);
    }
    case CB_ARRAY:
        if (write_raw(out, "[", 1) < 0) return -1;
        for (uint64_t i = 0; i < arg; i++) {
            if (i > 0 && write_raw(out, ",", 1) < 0) return -1;
            if (write_item(x, c) < 0) return -1;
        }
        return write_raw(out, "]", 1);
    case CB_MAP:
        return write_map(x, c, arg);
    case CB_TAG: { /* 42, on 0x00 + a CID (cb_check) */
        int bm;
        uint64_t bn;
        cb_head_t(c, &bm, &bn);
        const unsigned char *b = c->p;
        c->p += bn;
        return write_link(out, b + 1, (size_t)bn - 1);
    }
    default:
        if (arg == CB_FALSE) return write_raw(out, "false", 5);
        if (arg == CB_TRUE) return write_raw(out, "true", 4);
        return write_raw(out, "null", 4);
    }
}

int json_write(jbuf *out, const unsigned char *p, size_t n) {
    entry local[LOCAL_ENTRIES];
    wctx x = {out, local, NULL, 0, LOCAL_ENTRIES};
    cb_cur c = {p, p + n};
    int rc = write_item(&x, &c);
    free(x.heap);
    return rc;
}

PyDoc_STRVAR(cbor_json_doc,
"cbor_json(block) -> bytes | None\n"
"The atproto JSON of a DAG-CBOR block, byte for byte what\n"
"records.json.to_json_bytes(libipld.decode_dag_cbor(block)) gives; None when\n"
"the block is outside the subset the native path reads (records/native/cbor.h).");

/* cbor_json's output buffer, kept from call to call so that a record costs
 * no malloc/free of its own. Safe without a lock: only touched while holding
 * the GIL, and json_write never calls back into Python. */
static jbuf scratch = {NULL, 0, 0};
/* A buffer grown past this by one huge record is given back afterwards. */
#define SCRATCH_KEEP (1u << 20)

/* Python entry: check, write into the reused buffer, copy out once. */
static PyObject *cbor_json_py(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = view.buf;
    size_t n = (size_t)view.len;
    if (cb_check(p, n) < 0) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    scratch.len = 0;
    PyObject *result = NULL;
    if (json_write(&scratch, p, n) < 0)
        PyErr_NoMemory();
    else
        result = PyBytes_FromStringAndSize(scratch.buf, (Py_ssize_t)scratch.len);
    if (scratch.cap > SCRATCH_KEEP) {
        free(scratch.buf);
        scratch = (jbuf){NULL, 0, 0};
    }
    PyBuffer_Release(&view);
    return result;
}

PyMethodDef bsky_json_methods[] = {
    {"cbor_json", cbor_json_py, METH_O, cbor_json_doc},
    {NULL, NULL, 0, NULL},
};
