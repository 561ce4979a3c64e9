/*
 * records/native/lexcheck.c: lexicon validation of a checked DAG-CBOR record.
 *
 * Where it sits: records/validate_native.py describes a collection's record
 * lexicon (from the same lexicon model records/validate.py compiles) as a flat
 * tuple of nodes; `lex_compile` packs it once per collection into a
 * `lex_schema` held by a capsule; per record, after `cb_check` accepted the
 * block, `lex_valid` walks the bytes and the schema together, without making
 * a Python object. It is an accept filter: 1 means the Python check
 * (`records.validate.record_checks(name, trust_created_at=True)`, on the
 * libipld-decoded record) accepts the record; 0 means it rejects it OR that
 * this walk did not decide, and the Python validator then decides and words
 * the dead letter. So a 0 is always safe, a 1 must be exact.
 *
 * Not decided here (0, the Python validator decides):
 *   - maxGraphemes when a non-ASCII string has more code points than the
 *     limit (graphemes <= code points; counting clusters needs Unicode
 *     categories, see validate.grapheme_count); ASCII strings are counted
 *     exactly (one per character, CR LF as one);
 *   - minGraphemes on any non-ASCII string (no bundled lexicon has one);
 *   - a `language` value whose variants need more than 16 slots when memory
 *     runs out (formats.h language_ok answers -1);
 *   - a schema walk deeper than LEX_MAX_DEPTH (only a lexicon whose unions
 *     name each other without a level of data between them gets there).
 * Everything else the Python check looks at is decided: object required and
 * nullable, every type, string formats/maxLength/minLength (UTF-8 bytes,
 * which the text's CBOR length is)/enum/const, integer bounds/enum/const,
 * boolean const, bytes (also as a link or {"$bytes"}), CID links (tag 42 or
 * {"$link"}), blobs (typed, and the legacy 2023 {cid, mimeType}) with accept
 * and maxSize, arrays, open and closed unions by $type, `unknown`.
 *
 * The schema is one allocation: nodes (48 bytes each, children by index),
 * entries (a key or value's bytes in the pool plus a node and flags: object
 * properties in DAG-CBOR key order, union members, string enum values and
 * const, blob accepts), int64 enum values, and the byte pool. An object's
 * properties are in the record map's own key order, so a record map and its
 * properties are merged in one pass.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "cbor.h"
#include "formats.h"
#include "lexcheck.h"

#define LEX_CAPSULE "bsky_backfill.records._native.lex_schema"
#define LEX_MAX_DEPTH 256 /* schema levels walked; cb_check caps data nesting at 128 */

enum {
    LK_OBJECT,
    LK_STRING,
    LK_INTEGER,
    LK_BOOLEAN,
    LK_BYTES,
    LK_LINK,
    LK_BLOB,
    LK_ARRAY,
    LK_UNION,
    LK_UNKNOWN,
    LK_ANY, /* a required property the object does not describe: only its presence counts */
};

/* Node flags: which optional rules a node has. */
enum {
    LF_MIN = 1,     /* lo: minLength / minimum */
    LF_MAX = 2,     /* hi: maxLength / maximum / maxSize */
    LF_GMIN = 4,    /* glo: minGraphemes */
    LF_GMAX = 8,    /* ghi: maxGraphemes */
    LF_ENUM = 16,   /* first/count: enum values */
    LF_CONST = 32,  /* string: entry `child`; integer: glo; boolean: child (0/1) */
    LF_CLOSED = 64, /* union: closed */
    LF_ACCEPT = 128 /* blob: first/count are the accepted MIME types (not the any-type one) */
};

/* Entry flags. */
enum { LE_REQUIRED = 1, LE_NULLABLE = 2, LE_PREFIX = 4 };

/* String formats, in the order of FORMAT_NAMES. */
enum {
    LF_NONE,
    F_AT_IDENTIFIER,
    F_AT_URI,
    F_CID,
    F_DATETIME,
    F_DID,
    F_HANDLE,
    F_LANGUAGE,
    F_NSID,
    F_RECORD_KEY,
    F_TID,
    F_URI,
};
static const char *const FORMAT_NAMES[] = {
    "",    "at-identifier", "at-uri", "cid", "datetime", "did", "handle", "language",
    "nsid", "record-key",   "tid",    "uri", NULL,
};

typedef struct {
    uint8_t kind;
    uint8_t fmt;
    uint16_t flags;
    uint32_t child; /* ARRAY: items node; STRING: const entry; BOOLEAN: const value */
    uint32_t first; /* entries (or, for INTEGER enums, ints) of this node */
    uint32_t count;
    uint32_t nreq;  /* OBJECT: required properties */
    uint32_t spare;
    int64_t lo, hi;   /* length limits, integer bounds, blob maxSize (hi) */
    int64_t glo, ghi; /* grapheme limits; INTEGER const in glo */
} lex_node;

typedef struct {
    uint32_t off, len; /* bytes in the pool */
    uint32_t node;     /* property value / union member */
    uint32_t flags;    /* LE_* */
} lex_entry;

struct lex_schema {
    uint32_t n_nodes, n_entries, n_ints;
    const lex_node *nodes;
    const lex_entry *entries;
    const int64_t *ints;
    const unsigned char *pool;
};

/* --- the walk ------------------------------------------------------------- */

static int walk(const lex_schema *s, uint32_t node, cb_cur *c, int depth);

/* A count above an upper limit / below a lower one, as Python compares
 * them (exact for any int64 limit, negative ones too). */
static inline int over(uint64_t n, int64_t hi) { return hi < 0 || n > (uint64_t)hi; }
static inline int under(uint64_t n, int64_t lo) { return lo > 0 && n < (uint64_t)lo; }

/* Code points of valid UTF-8 text: bytes that do not continue a sequence. */
static inline size_t code_points(const unsigned char *p, size_t n) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++) count += (p[i] & 0xC0) != 0x80;
    return count;
}

/* Whether the text equals an entry's bytes. */
static inline int entry_eq(const lex_schema *s, const lex_entry *e, const unsigned char *p,
                           size_t n) {
    return e->len == n && memcmp(s->pool + e->off, p, n) == 0;
}

/* The value of `key` in the map at `c` (trusted): 1 with *val, else 0. */
static inline int map_get(cb_cur c, const char *key, cb_cur *val) {
    return cb_map_get(c, key, strlen(key), val);
}

/* Whether the item at `v` is the text `want` (what Python's `== "blob"` asks). */
static inline int text_is(cb_cur v, const char *want) {
    const unsigned char *t;
    size_t n;
    return cb_text(v, &t, &n) && n == strlen(want) && memcmp(t, want, n) == 0;
}

/* A format check over a checked string's bytes: 1, 0, or -1 (not decided). */
static int format_ok(int fmt, const unsigned char *p, size_t n) {
    Py_ssize_t len = (Py_ssize_t)n;
    if (fmt == F_URI) return uri_utf8_ok(p, len);
    if (!fmt_ascii(p, len)) return 0; /* every other format is ASCII-only */
    switch (fmt) {
    case F_AT_IDENTIFIER:
        return at_identifier_ok(p, len);
    case F_AT_URI:
        return at_uri_ok(p, len);
    case F_CID:
        return cid_ok(p, len);
    case F_DATETIME:
        return datetime_ok(p, len);
    case F_DID:
        return did_ok(p, len);
    case F_HANDLE:
        return handle_ok(p, len);
    case F_LANGUAGE:
        return language_ok(p, len); /* -1: out of memory */
    case F_NSID:
        return nsid_ok(p, len);
    case F_RECORD_KEY:
        return record_key_ok(p, len);
    case F_TID:
        return tid_ok(p, len);
    default:
        return 1;
    }
}

/* validate._is_link on the item at `c`: a tag-42 link (libipld's CID bytes),
 * or {"$link": a cid string}. A plain byte string is never a link here:
 * cb_check declined every one that libipld.decode_cid could read. */
static int is_link(cb_cur c) {
    uint64_t n;
    int kind = cb_kind(c, &n);
    if (kind == CB_TAG) return 1; /* cb_check: a CIDv1 of sha2-256, which decodes */
    if (kind != CB_MAP || n != 1) return 0;
    cb_cur v;
    const unsigned char *t;
    size_t tn;
    return map_get(c, "$link", &v) && cb_text(v, &t, &tn) && fmt_ascii(t, (Py_ssize_t)tn) &&
           cid_ok(t, (Py_ssize_t)tn);
}

/* An ASCII string's graphemes as validate.grapheme_count counts them. */
static int64_t ascii_graphemes(const unsigned char *p, size_t n) {
    int64_t g = (int64_t)n;
    for (size_t i = 0; i + 1 < n; i++)
        if (p[i] == '\r' && p[i + 1] == '\n') g--;
    return g;
}

static int walk_string(const lex_schema *s, const lex_node *d, cb_cur *c) {
    int major;
    uint64_t n;
    cb_head_t(c, &major, &n);
    if (major != CB_TEXT) return 0;
    const unsigned char *p = c->p;
    c->p += n;
    /* UTF-8 bytes, what maxLength/minLength count (the text is valid UTF-8). */
    if ((d->flags & LF_MAX) && over(n, d->hi)) return 0;
    if ((d->flags & LF_MIN) && under(n, d->lo)) return 0;
    if (d->flags & (LF_GMAX | LF_GMIN)) {
        size_t cps = code_points(p, (size_t)n);
        int ascii = cps == n;
        if ((d->flags & LF_GMAX) && (int64_t)cps > d->ghi) {
            /* More code points than graphemes allowed: only ASCII is counted here. */
            if (!ascii || ascii_graphemes(p, (size_t)n) > d->ghi) return 0;
        }
        if (d->flags & LF_GMIN) {
            if (!ascii || ascii_graphemes(p, (size_t)n) < d->glo) return 0;
        }
    }
    if (d->fmt != LF_NONE && format_ok(d->fmt, p, (size_t)n) != 1) return 0;
    if (d->flags & LF_ENUM) {
        uint32_t i = 0;
        while (i < d->count && !entry_eq(s, &s->entries[d->first + i], p, (size_t)n)) i++;
        if (i == d->count) return 0;
    }
    if ((d->flags & LF_CONST) && !entry_eq(s, &s->entries[d->child], p, (size_t)n)) return 0;
    return 1;
}

static int walk_integer(const lex_schema *s, const lex_node *d, cb_cur *c) {
    int major;
    uint64_t arg;
    cb_head_t(c, &major, &arg);
    if (major != CB_UINT && major != CB_NINT) return 0;
    /* cb_check: a negative is >= -2^63; an unsigned above INT64_MAX is beyond
     * every bound the schema holds. */
    int big = major == CB_UINT && arg > (uint64_t)INT64_MAX;
    int64_t v = major == CB_UINT ? (int64_t)(big ? 0 : arg) : -1 - (int64_t)arg;
    if ((d->flags & LF_MIN) && !big && v < d->lo) return 0;
    if ((d->flags & LF_MAX) && (big || v > d->hi)) return 0;
    if (d->flags & LF_ENUM) {
        uint32_t i = 0;
        while (!big && i < d->count && s->ints[d->first + i] != v) i++;
        if (big || i == d->count) return 0;
    }
    if ((d->flags & LF_CONST) && (big || v != d->glo)) return 0;
    return 1;
}

/* validate._check_bytes: a byte string (or a link: libipld gives its 36 CID
 * bytes), or {"$bytes": text} counted as len(text.rstrip("=")) * 3 // 4. */
static int walk_bytes(const lex_node *d, cb_cur *c) {
    uint64_t n;
    int kind = cb_kind(*c, &n);
    int64_t size;
    if (kind == CB_BYTES) {
        size = (int64_t)n;
    } else if (kind == CB_TAG) {
        size = CB_LINK_LEN - 1; /* without the multibase 0x00 */
    } else if (kind == CB_MAP && n == 1) {
        cb_cur v;
        const unsigned char *t;
        size_t tn;
        if (!map_get(*c, "$bytes", &v) || !cb_text(v, &t, &tn)) return 0;
        while (tn > 0 && t[tn - 1] == '=') tn--;
        size = (int64_t)(code_points(t, tn) * 3 / 4);
    } else {
        return 0;
    }
    if ((d->flags & LF_MAX) && size > d->hi) return 0;
    if ((d->flags & LF_MIN) && size < d->lo) return 0;
    cb_skip_t(c);
    return 1;
}

/* validate._check_blob and its accept/maxSize limits (check_limited_blob). */
static int walk_blob(const lex_schema *s, const lex_node *d, cb_cur *c) {
    if (cb_kind(*c, NULL) != CB_MAP) return 0;
    cb_cur v, t;
    const unsigned char *mime;
    size_t mime_n;
    if (!map_get(*c, "mimeType", &v) || !cb_text(v, &mime, &mime_n)) return 0;
    int has_type = map_get(*c, "$type", &t);
    int sized = map_get(*c, "size", &v);
    int major = sized ? cb_kind(v, NULL) : -1;
    uint64_t size = 0;
    if (sized && major == CB_UINT) {
        int m;
        cb_cur sv = v;
        cb_head_t(&sv, &m, &size);
    }
    if (has_type && text_is(t, "blob")) {
        cb_cur ref;
        if (!map_get(*c, "ref", &ref) || !is_link(ref)) return 0;
        if (major != CB_UINT) return 0; /* missing, or not a non-negative integer */
    } else {
        /* The legacy 2023 blob: no $type, a cid string. */
        const unsigned char *cid;
        size_t cid_n;
        if (has_type || !map_get(*c, "cid", &v) || !cb_text(v, &cid, &cid_n) ||
            !fmt_ascii(cid, (Py_ssize_t)cid_n) || !cid_ok(cid, (Py_ssize_t)cid_n))
            return 0;
    }
    /* maxSize: only an integer size is compared (a legacy blob may have none). */
    if ((d->flags & LF_MAX) && major == CB_UINT && over(size, d->hi)) return 0;
    if (d->flags & LF_ACCEPT) {
        uint32_t i = 0;
        for (; i < d->count; i++) {
            const lex_entry *e = &s->entries[d->first + i];
            int prefix = (e->flags & LE_PREFIX) != 0;
            if (prefix ? e->len <= mime_n && memcmp(s->pool + e->off, mime, e->len) == 0
                       : entry_eq(s, e, mime, mime_n))
                break;
        }
        if (i == d->count) return 0;
    }
    cb_skip_t(c);
    return 1;
}

/* An object: the map's keys and the properties (both in DAG-CBOR key order)
 * merged in one pass; keys the schema does not name are skipped (open objects). */
static int walk_object(const lex_schema *s, const lex_node *d, cb_cur *c, int depth) {
    int major;
    uint64_t n;
    cb_head_t(c, &major, &n);
    if (major != CB_MAP) return 0;
    const lex_entry *prop = s->entries + d->first, *end = prop + d->count;
    uint32_t required = 0;
    for (uint64_t i = 0; i < n; i++) {
        int km;
        uint64_t kn;
        cb_head_t(c, &km, &kn);
        const unsigned char *k = c->p;
        c->p += kn;
        int cmp = 1; /* one comparison per key and property passed, equality included */
        while (prop < end && (cmp = cb_key_cmp(s->pool + prop->off, prop->len, k, (size_t)kn)) < 0)
            prop++;
        if (prop < end && cmp == 0) {
            required += (prop->flags & LE_REQUIRED) != 0;
            if ((prop->flags & LE_NULLABLE) && *c->p == 0xF6) { /* null */
                c->p++;
            } else if (!walk(s, prop->node, c, depth + 1)) {
                return 0;
            }
            prop++;
        } else {
            cb_skip_t(c);
        }
    }
    return required == d->nreq;
}

/* A union: the member its $type names; an unknown $type fails a closed union
 * and passes an open one unchecked; no $type string fails both. */
static int walk_union(const lex_schema *s, const lex_node *d, cb_cur *c, int depth) {
    if (cb_kind(*c, NULL) != CB_MAP) return 0;
    cb_cur v;
    const unsigned char *t;
    size_t tn;
    if (!map_get(*c, "$type", &v) || !cb_text(v, &t, &tn)) return 0;
    for (uint32_t i = 0; i < d->count; i++) {
        const lex_entry *e = &s->entries[d->first + i];
        if (entry_eq(s, e, t, tn)) return walk(s, e->node, c, depth + 1);
    }
    if (d->flags & LF_CLOSED) return 0;
    cb_skip_t(c);
    return 1;
}

/* 1 when the item at `c` is valid under node `node` (c then past it); 0 when
 * invalid or not decided (c anywhere: the caller stops). */
static int walk(const lex_schema *s, uint32_t node, cb_cur *c, int depth) {
    if (depth > LEX_MAX_DEPTH) return 0; /* not decided */
    const lex_node *d = &s->nodes[node];
    switch (d->kind) {
    case LK_OBJECT:
        return walk_object(s, d, c, depth);
    case LK_STRING:
        return walk_string(s, d, c);
    case LK_INTEGER:
        return walk_integer(s, d, c);
    case LK_BOOLEAN: {
        int major;
        uint64_t arg;
        cb_head_t(c, &major, &arg);
        if (major != CB_SIMPLE || (arg != CB_FALSE && arg != CB_TRUE)) return 0;
        return !(d->flags & LF_CONST) || (arg == CB_TRUE) == (d->child != 0);
    }
    case LK_BYTES:
        return walk_bytes(d, c);
    case LK_LINK:
        if (!is_link(*c)) return 0;
        cb_skip_t(c);
        return 1;
    case LK_BLOB:
        return walk_blob(s, d, c);
    case LK_ARRAY: {
        int major;
        uint64_t n;
        cb_head_t(c, &major, &n);
        if (major != CB_ARRAY) return 0;
        if ((d->flags & LF_MAX) && over(n, d->hi)) return 0;
        if ((d->flags & LF_MIN) && under(n, d->lo)) return 0;
        for (uint64_t i = 0; i < n; i++)
            if (!walk(s, d->child, c, depth + 1)) return 0;
        return 1;
    }
    case LK_UNION:
        return walk_union(s, d, c, depth);
    case LK_UNKNOWN: {
        /* Any map, but not one that reads as a byte string or a blob. */
        cb_cur v;
        if (cb_kind(*c, NULL) != CB_MAP || map_get(*c, "$bytes", &v)) return 0;
        if (map_get(*c, "$type", &v) && text_is(v, "blob")) return 0;
        cb_skip_t(c);
        return 1;
    }
    case LK_ANY:
        cb_skip_t(c);
        return 1;
    default:
        return 0;
    }
}

int lex_valid(const lex_schema *schema, const unsigned char *p, size_t n) {
    if (schema == NULL || schema->n_nodes == 0 || n == 0) return 0;
    cb_cur c = {p, p + n};
    return walk(schema, 0, &c, 0);
}

/* --- compiling a description ---------------------------------------------- */

/* Growing arrays while a description is read; packed into one block at the end. */
typedef struct {
    lex_node *nodes;
    size_t n_nodes;
    lex_entry *entries;
    size_t n_entries, cap_entries;
    int64_t *ints;
    size_t n_ints, cap_ints;
    unsigned char *pool;
    size_t n_pool, cap_pool;
} builder;

/* Room for one more of `size`-byte items in *arr: 0, or -1 with MemoryError. */
static int grow(void **arr, size_t *cap, size_t len, size_t size) {
    if (len < *cap) return 0;
    size_t want = *cap ? *cap * 2 : 16;
    void *bigger = PyMem_Realloc(*arr, want * size);
    if (bigger == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *arr = bigger;
    *cap = want;
    return 0;
}

/* A new entry holding the UTF-8 of str `text`: its index, or -1 with an exception. */
static Py_ssize_t add_entry(builder *b, PyObject *text, uint32_t node, uint32_t flags) {
    Py_ssize_t n;
    const char *utf8 = PyUnicode_Check(text) ? PyUnicode_AsUTF8AndSize(text, &n) : NULL;
    if (utf8 == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "lexicon description: expected a str");
        return -1;
    }
    if (b->n_pool + (size_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "lexicon description too large");
        return -1;
    }
    while (b->n_pool + (size_t)n > b->cap_pool)
        if (grow((void **)&b->pool, &b->cap_pool, b->cap_pool, 1) < 0) return -1;
    if (grow((void **)&b->entries, &b->cap_entries, b->n_entries, sizeof(lex_entry)) < 0) return -1;
    if (n > 0) memcpy(b->pool + b->n_pool, utf8, (size_t)n);
    lex_entry *e = &b->entries[b->n_entries];
    e->off = (uint32_t)b->n_pool;
    e->len = (uint32_t)n;
    e->node = node;
    e->flags = flags;
    b->n_pool += (size_t)n;
    return (Py_ssize_t)b->n_entries++;
}

/* An optional int64 rule: None leaves it unset; an int sets *out and `bit`. */
static int opt_int(PyObject *o, int64_t *out, uint16_t *flags, uint16_t bit) {
    if (o == Py_None) return 0;
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "lexicon description: expected an int or None");
        return -1;
    }
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (int64_t)v;
    *flags |= bit;
    return 0;
}

/* A node index of the description: 0 <= i < n_nodes. */
static int node_index(PyObject *o, size_t n_nodes, uint32_t *out) {
    Py_ssize_t i = PyLong_Check(o) ? PyLong_AsSsize_t(o) : -1;
    if (i < 0 || (size_t)i >= n_nodes) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "lexicon description: bad node index");
        return -1;
    }
    *out = (uint32_t)i;
    return 0;
}

/* A tuple item of the description, type-checked. */
static PyObject *tuple_of(PyObject *o, Py_ssize_t n, const char *what) {
    if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != n) {
        PyErr_Format(PyExc_ValueError, "lexicon description: %s must be a %zd-tuple", what, n);
        return NULL;
    }
    return o;
}

/* Object properties: (key, node, required, nullable) each, in DAG-CBOR key order. */
static int read_object(builder *b, lex_node *d, PyObject *props) {
    if (!PyTuple_Check(props)) {
        PyErr_SetString(PyExc_ValueError, "lexicon description: properties must be a tuple");
        return -1;
    }
    d->first = (uint32_t)b->n_entries;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(props); i++) {
        PyObject *p = tuple_of(PyTuple_GET_ITEM(props, i), 4, "a property");
        uint32_t node;
        if (p == NULL || node_index(PyTuple_GET_ITEM(p, 1), b->n_nodes, &node) < 0) return -1;
        int req = PyObject_IsTrue(PyTuple_GET_ITEM(p, 2));
        int null = PyObject_IsTrue(PyTuple_GET_ITEM(p, 3));
        if (req < 0 || null < 0) return -1;
        uint32_t flags = (req ? LE_REQUIRED : 0) | (null ? LE_NULLABLE : 0);
        Py_ssize_t at = add_entry(b, PyTuple_GET_ITEM(p, 0), node, flags);
        if (at < 0) return -1;
        if (at > (Py_ssize_t)d->first) { /* the merge walk needs strictly ascending keys */
            const lex_entry *prev = &b->entries[at - 1], *cur = &b->entries[at];
            if (cb_key_cmp(b->pool + prev->off, prev->len, b->pool + cur->off, cur->len) >= 0) {
                PyErr_SetString(PyExc_ValueError,
                                "lexicon description: properties not in DAG-CBOR key order");
                return -1;
            }
        }
        d->nreq += req ? 1 : 0;
        d->count++;
    }
    return 0;
}

/* A tuple of str as entries of node `d` (enum values, accepts, members). */
static int read_strings(builder *b, lex_node *d, PyObject *items) {
    if (!PyTuple_Check(items)) {
        PyErr_SetString(PyExc_ValueError, "lexicon description: expected a tuple of str");
        return -1;
    }
    d->first = (uint32_t)b->n_entries;
    d->count = (uint32_t)PyTuple_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(items); i++)
        if (add_entry(b, PyTuple_GET_ITEM(items, i), 0, 0) < 0) return -1;
    return 0;
}

static int read_node(builder *b, lex_node *d, PyObject *t) {
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(t, 0))) {
        PyErr_SetString(PyExc_ValueError, "lexicon description: a node is (kind, ...)");
        return -1;
    }
    const char *kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(t, 0));
    if (kind == NULL) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(t);
#define ITEM(i) PyTuple_GET_ITEM(t, i)
#define WANT(k)                                                                             \
    if (n != (k)) {                                                                         \
        PyErr_Format(PyExc_ValueError, "lexicon description: %s node of %zd items", kind, n); \
        return -1;                                                                          \
    }
    if (strcmp(kind, "object") == 0) {
        WANT(2);
        d->kind = LK_OBJECT;
        return read_object(b, d, ITEM(1));
    }
    if (strcmp(kind, "string") == 0) {
        WANT(8);
        d->kind = LK_STRING;
        if (ITEM(1) != Py_None) {
            const char *fmt = PyUnicode_Check(ITEM(1)) ? PyUnicode_AsUTF8(ITEM(1)) : NULL;
            if (fmt == NULL) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "format must be a str");
                return -1;
            }
            int f = 1;
            while (FORMAT_NAMES[f] != NULL && strcmp(FORMAT_NAMES[f], fmt) != 0) f++;
            if (FORMAT_NAMES[f] == NULL) {
                PyErr_Format(PyExc_ValueError, "unknown string format %.100s", fmt);
                return -1;
            }
            d->fmt = (uint8_t)f;
        }
        if (opt_int(ITEM(2), &d->lo, &d->flags, LF_MIN) < 0 ||
            opt_int(ITEM(3), &d->hi, &d->flags, LF_MAX) < 0 ||
            opt_int(ITEM(4), &d->glo, &d->flags, LF_GMIN) < 0 ||
            opt_int(ITEM(5), &d->ghi, &d->flags, LF_GMAX) < 0)
            return -1;
        if (ITEM(6) != Py_None) {
            if (read_strings(b, d, ITEM(6)) < 0) return -1;
            d->flags |= LF_ENUM;
        }
        if (ITEM(7) != Py_None) {
            Py_ssize_t at = add_entry(b, ITEM(7), 0, 0);
            if (at < 0) return -1;
            d->child = (uint32_t)at;
            d->flags |= LF_CONST;
        }
        return 0;
    }
    if (strcmp(kind, "integer") == 0) {
        WANT(5);
        d->kind = LK_INTEGER;
        if (opt_int(ITEM(1), &d->lo, &d->flags, LF_MIN) < 0 ||
            opt_int(ITEM(2), &d->hi, &d->flags, LF_MAX) < 0 ||
            opt_int(ITEM(4), &d->glo, &d->flags, LF_CONST) < 0)
            return -1;
        PyObject *values = ITEM(3);
        if (values != Py_None) {
            if (!PyTuple_Check(values)) {
                PyErr_SetString(PyExc_ValueError, "integer enum must be a tuple");
                return -1;
            }
            d->flags |= LF_ENUM;
            d->first = (uint32_t)b->n_ints;
            d->count = (uint32_t)PyTuple_GET_SIZE(values);
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(values); i++) {
                uint16_t ignored = 0;
                if (grow((void **)&b->ints, &b->cap_ints, b->n_ints, sizeof(int64_t)) < 0 ||
                    opt_int(PyTuple_GET_ITEM(values, i), &b->ints[b->n_ints], &ignored, 1) < 0)
                    return -1;
                if (!ignored) {
                    PyErr_SetString(PyExc_ValueError, "integer enum holds None");
                    return -1;
                }
                b->n_ints++;
            }
        }
        return 0;
    }
    if (strcmp(kind, "boolean") == 0) {
        WANT(2);
        d->kind = LK_BOOLEAN;
        if (ITEM(1) != Py_None) {
            int v = PyObject_IsTrue(ITEM(1));
            if (v < 0) return -1;
            d->flags |= LF_CONST;
            d->child = (uint32_t)v;
        }
        return 0;
    }
    if (strcmp(kind, "bytes") == 0) {
        WANT(3);
        d->kind = LK_BYTES;
        return opt_int(ITEM(1), &d->lo, &d->flags, LF_MIN) < 0 ||
                       opt_int(ITEM(2), &d->hi, &d->flags, LF_MAX) < 0
                   ? -1
                   : 0;
    }
    if (strcmp(kind, "cid-link") == 0) {
        WANT(1);
        d->kind = LK_LINK;
        return 0;
    }
    if (strcmp(kind, "blob") == 0) {
        WANT(3);
        d->kind = LK_BLOB;
        if (opt_int(ITEM(1), &d->hi, &d->flags, LF_MAX) < 0) return -1;
        PyObject *accept = ITEM(2);
        if (accept == Py_None) return 0;
        if (!PyTuple_Check(accept)) {
            PyErr_SetString(PyExc_ValueError, "blob accept must be a tuple");
            return -1;
        }
        /* As validate.py: a type ending in slash-star is a prefix (the text up to
         * the slash); star-slash-star (or no list at all) accepts any type. */
        d->first = (uint32_t)b->n_entries;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(accept); i++) {
            PyObject *a = PyTuple_GET_ITEM(accept, i);
            Py_ssize_t at = add_entry(b, a, 0, 0);
            if (at < 0) return -1;
            lex_entry *e = &b->entries[at];
            const unsigned char *text = b->pool + e->off;
            if (e->len == 3 && memcmp(text, "*/*", 3) == 0) return 0; /* any type: no check */
            if (e->len >= 2 && text[e->len - 2] == '/' && text[e->len - 1] == '*') {
                e->flags = LE_PREFIX;
                e->len -= 1; /* drop the star: the prefix keeps the slash */
            }
            d->count++;
        }
        if (d->count > 0) d->flags |= LF_ACCEPT;
        return 0;
    }
    if (strcmp(kind, "array") == 0) {
        WANT(4);
        d->kind = LK_ARRAY;
        return node_index(ITEM(1), b->n_nodes, &d->child) < 0 ||
                       opt_int(ITEM(2), &d->lo, &d->flags, LF_MIN) < 0 ||
                       opt_int(ITEM(3), &d->hi, &d->flags, LF_MAX) < 0
                   ? -1
                   : 0;
    }
    if (strcmp(kind, "union") == 0) {
        WANT(3);
        d->kind = LK_UNION;
        int closed = PyObject_IsTrue(ITEM(2));
        if (closed < 0) return -1;
        if (closed) d->flags |= LF_CLOSED;
        PyObject *members = ITEM(1);
        if (!PyTuple_Check(members)) {
            PyErr_SetString(PyExc_ValueError, "union members must be a tuple");
            return -1;
        }
        d->first = (uint32_t)b->n_entries;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(members); i++) {
            PyObject *m = tuple_of(PyTuple_GET_ITEM(members, i), 2, "a union member");
            uint32_t node;
            if (m == NULL || node_index(PyTuple_GET_ITEM(m, 1), b->n_nodes, &node) < 0 ||
                add_entry(b, PyTuple_GET_ITEM(m, 0), node, 0) < 0)
                return -1;
            d->count++;
        }
        return 0;
    }
    if (strcmp(kind, "unknown") == 0) {
        WANT(1);
        d->kind = LK_UNKNOWN;
        return 0;
    }
    if (strcmp(kind, "any") == 0) {
        WANT(1);
        d->kind = LK_ANY;
        return 0;
    }
#undef ITEM
#undef WANT
    PyErr_Format(PyExc_ValueError, "lexicon description: unknown node kind %.100s", kind);
    return -1;
}

static void lex_capsule_free(PyObject *capsule) {
    PyMem_Free(PyCapsule_GetPointer(capsule, LEX_CAPSULE));
}

/* The builder's arrays in one block behind a lex_schema (NULL with MemoryError). */
static lex_schema *pack(const builder *b) {
    size_t head = sizeof(lex_schema);
    size_t at_nodes = (head + 7) & ~(size_t)7;
    size_t at_entries = at_nodes + b->n_nodes * sizeof(lex_node);
    size_t at_ints = at_entries + b->n_entries * sizeof(lex_entry);
    at_ints = (at_ints + 7) & ~(size_t)7;
    size_t at_pool = at_ints + b->n_ints * sizeof(int64_t);
    unsigned char *block = PyMem_Malloc(at_pool + b->n_pool + 1);
    if (block == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    lex_schema *s = (lex_schema *)block;
    if (b->n_nodes) memcpy(block + at_nodes, b->nodes, b->n_nodes * sizeof(lex_node));
    if (b->n_entries) memcpy(block + at_entries, b->entries, b->n_entries * sizeof(lex_entry));
    if (b->n_ints) memcpy(block + at_ints, b->ints, b->n_ints * sizeof(int64_t));
    if (b->n_pool) memcpy(block + at_pool, b->pool, b->n_pool);
    s->n_nodes = (uint32_t)b->n_nodes;
    s->n_entries = (uint32_t)b->n_entries;
    s->n_ints = (uint32_t)b->n_ints;
    s->nodes = (const lex_node *)(block + at_nodes);
    s->entries = (const lex_entry *)(block + at_entries);
    s->ints = (const int64_t *)(block + at_ints);
    s->pool = block + at_pool;
    return s;
}

PyDoc_STRVAR(lex_compile_doc,
"lex_compile(description) -> capsule\n"
"A record lexicon described by records/validate_native.py (a tuple of nodes,\n"
"the record's object first; children by index) packed for lex_check.");

static PyObject *lex_compile_py(PyObject *self, PyObject *desc) {
    (void)self;
    if (!PyTuple_Check(desc) || PyTuple_GET_SIZE(desc) < 1 ||
        (size_t)PyTuple_GET_SIZE(desc) > UINT32_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "lexicon description: a non-empty tuple of nodes");
        return NULL;
    }
    builder b;
    memset(&b, 0, sizeof b);
    b.n_nodes = (size_t)PyTuple_GET_SIZE(desc);
    b.nodes = PyMem_Calloc(b.n_nodes, sizeof(lex_node));
    PyObject *capsule = NULL;
    lex_schema *s = NULL;
    if (b.nodes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < b.n_nodes; i++)
        if (read_node(&b, &b.nodes[i], PyTuple_GET_ITEM(desc, (Py_ssize_t)i)) < 0) goto done;
    if (b.nodes[0].kind != LK_OBJECT) {
        PyErr_SetString(PyExc_ValueError, "lexicon description: the record (node 0) is an object");
        goto done;
    }
    s = pack(&b);
    if (s == NULL) goto done;
    capsule = PyCapsule_New(s, LEX_CAPSULE, lex_capsule_free);
    if (capsule == NULL) PyMem_Free(s);
done:
    PyMem_Free(b.nodes);
    PyMem_Free(b.entries);
    PyMem_Free(b.ints);
    PyMem_Free(b.pool);
    return capsule;
}

const lex_schema *lex_from_capsule(PyObject *obj) {
    if (!PyCapsule_IsValid(obj, LEX_CAPSULE)) {
        PyErr_Format(PyExc_TypeError, "expected a schema from lex_compile, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return PyCapsule_GetPointer(obj, LEX_CAPSULE);
}

PyDoc_STRVAR(lex_check_doc,
"lex_check(schema, block) -> bool\n"
"True: the record block is valid under the compiled lexicon, exactly where the\n"
"Python validator accepts it. False: invalid, outside cb_check's subset, or not\n"
"decided here (records/native/lexcheck.c lists when); Python then decides.");

static PyObject *lex_check_py(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "lex_check(schema, block)");
        return NULL;
    }
    const lex_schema *s = lex_from_capsule(args[0]);
    if (s == NULL) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) return NULL;
    /* The walk trusts its input: only blocks of cb_check's subset reach it. */
    int ok = cb_check(view.buf, (size_t)view.len) == 0 &&
             lex_valid(s, view.buf, (size_t)view.len) == 1;
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

PyMethodDef bsky_lex_methods[] = {
    {"lex_compile", lex_compile_py, METH_O, lex_compile_doc},
    {"lex_check", (PyCFunction)(void (*)(void))lex_check_py, METH_FASTCALL, lex_check_doc},
    {NULL, NULL, 0, NULL},
};
