/*
 * DAG-CBOR reading for the native record path (records/native/).
 *
 * Where it sits: every part of the native record path reads a record block
 * through these functions. `cb_check` runs first, once per record: it accepts
 * only the subset of DAG-CBOR whose meaning is certain (below) and answers -1
 * ("decline": the Python path, libipld + orjson + the generated validators,
 * decides this record) for anything else. After it accepted a block, the
 * trusted readers (`cb_head_t`, `cb_skip_t`, `cb_map_get`, ...) walk it with no
 * further checks.
 *
 * Why hand-written: libipld decodes into Python objects, which is the cost
 * this path exists to avoid; no maintained C library reads DAG-CBOR with its
 * canonical-form rules (tinycbor and libcbor read generic CBOR and would need
 * the same checks around them).
 *
 * The accepted subset (every record the network normally writes):
 *   - integers: unsigned up to 2^64-1, negative down to -2^63 (what orjson
 *     writes); shortest-form heads only (DAG-CBOR);
 *   - byte strings that cannot be read as a CID (first byte not 0x00, 0x01 or
 *     0x12: libipld and the JSON encoder treat bytes that parse as a CID as a
 *     link, see records/json.py; libipld 3.5 reads a CID only from a first
 *     byte 0x01 or 0x12, with trailing bytes ignored, so 0x00 is declined out
 *     of caution only); text strings of valid UTF-8;
 *   - arrays; maps whose keys are text, in DAG-CBOR order (length first, then
 *     bytes), without duplicates;
 *   - tag 42 on a byte string 0x00 + CIDv1 (codec dag-cbor 0x71 or raw 0x55,
 *     sha2-256, 32-byte digest): a link;
 *   - false, true, null.
 * Declined: floats, undefined and other simple values, other tags, indefinite
 * lengths, non-shortest heads, nesting deeper than CB_MAX_DEPTH (the block's
 * item is at depth 0, each array or map puts its items one deeper: so at most
 * CB_MAX_DEPTH containers around a leaf, or CB_MAX_DEPTH + 1 around nothing;
 * well inside orjson's limit of 255 with a {"$link"} map added), trailing
 * bytes, and anything cut short.
 * tests/records/test_native_json.py holds these rules against libipld and
 * the Python JSON (hypothesis values, raw random CBOR, mutated blocks).
 */
#ifndef BSKY_CBOR_H
#define BSKY_CBOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { CB_UINT = 0, CB_NINT = 1, CB_BYTES = 2, CB_TEXT = 3, CB_ARRAY = 4, CB_MAP = 5, CB_TAG = 6, CB_SIMPLE = 7 };
enum { CB_FALSE = 20, CB_TRUE = 21, CB_NULL = 22 };
#define CB_MAX_DEPTH 128
#define CB_LINK_LEN 37 /* 0x00 + 0x01 codec 0x12 0x20 + 32-byte digest */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} cb_cur;

/* One head, checked: major type and argument. 0, or -1 when cut short, of an
 * indefinite length, reserved, not in shortest form, or a float. */
static inline int cb_head(cb_cur *c, int *major, uint64_t *arg) {
    if (c->p >= c->end) return -1;
    unsigned char b = *c->p++;
    int ai = b & 31;
    *major = b >> 5;
    if (ai < 24) {
        *arg = (uint64_t)ai;
        return 0;
    }
    int n = ai == 24 ? 1 : ai == 25 ? 2 : ai == 26 ? 4 : ai == 27 ? 8 : 0;
    if (n == 0 || c->end - c->p < n) return -1;
    if (*major == CB_SIMPLE && ai != 24) return -1; /* floats */
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | c->p[i];
    c->p += n;
    /* Shortest form: each width only for values the narrower one cannot hold. */
    if ((n == 1 && v < 24) || (n == 2 && v <= 0xFF) || (n == 4 && v <= 0xFFFF) ||
        (n == 8 && v <= 0xFFFFFFFFULL))
        return -1;
    *arg = v;
    return 0;
}

/* Strict UTF-8 from s[0:n] on, past a prefix known to be ASCII: the
 * character-by-character part of cb_utf8_ok. 1 if valid. */
static int cb_utf8_rest(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* ASCII runs, eight bytes at a time. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (i + 2 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && s[i + 1] < 0xA0) return 0; /* overlong */
            if (c == 0xED && s[i + 1] >= 0xA0) return 0; /* surrogates */
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (i + 3 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80)
                return 0;
            if (c == 0xF0 && s[i + 1] < 0x90) return 0; /* overlong */
            if (c == 0xF4 && s[i + 1] >= 0x90) return 0; /* above U+10FFFF */
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Strict UTF-8 (no overlongs, no surrogates, at most U+10FFFF): what Python
 * and libipld accept as text. 1 if valid. Most strings of a record (keys,
 * $type, dates, DIDs, URIs) are short ASCII: they are settled here, inline,
 * a word and then an OR of the tail bytes, without the per-character loop. */
static inline int cb_utf8_ok(const unsigned char *s, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ULL) return cb_utf8_rest(s + i, n - i);
    }
    unsigned char high = 0;
    for (size_t j = i; j < n; j++) high |= s[j];
    return (high & 0x80) ? cb_utf8_rest(s + i, n - i) : 1;
}

/* DAG-CBOR map-key order: shorter first, then bytewise. <0, 0, >0. */
static inline int cb_key_cmp(const unsigned char *a, size_t na, const unsigned char *b, size_t nb) {
    if (na != nb) return na < nb ? -1 : 1;
    return memcmp(a, b, na);
}

/* Whether b[0:n] is a link's payload this path writes as {"$link"}. */
static inline int cb_link_ok(const unsigned char *b, uint64_t n) {
    return n == CB_LINK_LEN && b[0] == 0x00 && b[1] == 0x01 && (b[2] == 0x71 || b[2] == 0x55) &&
           b[3] == 0x12 && b[4] == 0x20;
}

static int cb_check_item(cb_cur *c, int depth) {
    int major;
    uint64_t arg;
    if (depth > CB_MAX_DEPTH || cb_head(c, &major, &arg) < 0) return -1;
    switch (major) {
    case CB_UINT:
        return 0;
    case CB_NINT:
        return arg <= (uint64_t)INT64_MAX ? 0 : -1;
    case CB_BYTES:
        if (arg > (uint64_t)(c->end - c->p)) return -1;
        if (arg > 0 && (c->p[0] == 0x00 || c->p[0] == 0x01 || c->p[0] == 0x12)) return -1;
        c->p += arg;
        return 0;
    case CB_TEXT:
        if (arg > (uint64_t)(c->end - c->p) || !cb_utf8_ok(c->p, (size_t)arg)) return -1;
        c->p += arg;
        return 0;
    case CB_ARRAY:
        if (arg > (uint64_t)(c->end - c->p)) return -1; /* each item is at least a byte */
        for (uint64_t i = 0; i < arg; i++)
            if (cb_check_item(c, depth + 1) < 0) return -1;
        return 0;
    case CB_MAP: {
        if (arg > (uint64_t)(c->end - c->p) / 2) return -1;
        const unsigned char *prev = NULL;
        size_t prev_n = 0;
        for (uint64_t i = 0; i < arg; i++) {
            int km;
            uint64_t kn;
            if (cb_head(c, &km, &kn) < 0 || km != CB_TEXT || kn > (uint64_t)(c->end - c->p))
                return -1;
            if (!cb_utf8_ok(c->p, (size_t)kn)) return -1;
            if (prev != NULL && cb_key_cmp(prev, prev_n, c->p, (size_t)kn) >= 0) return -1;
            prev = c->p;
            prev_n = (size_t)kn;
            c->p += kn;
            if (cb_check_item(c, depth + 1) < 0) return -1;
        }
        return 0;
    }
    case CB_TAG: {
        int bm;
        uint64_t bn;
        if (arg != 42 || cb_head(c, &bm, &bn) < 0 || bm != CB_BYTES) return -1;
        if (bn > (uint64_t)(c->end - c->p) || !cb_link_ok(c->p, bn)) return -1;
        c->p += bn;
        return 0;
    }
    default: /* CB_SIMPLE: cb_head refused floats */
        return (arg == CB_FALSE || arg == CB_TRUE || arg == CB_NULL) ? 0 : -1;
    }
}

/* Whether p[0:n] is exactly one item of the accepted subset: 0, or -1 (decline). */
static inline int cb_check(const unsigned char *p, size_t n) {
    cb_cur c = {p, p + n};
    if (cb_check_item(&c, 0) < 0) return -1;
    return c.p == c.end ? 0 : -1;
}

/* --- trusted readers: only on bytes `cb_check` accepted ------------------- */

static inline void cb_head_t(cb_cur *c, int *major, uint64_t *arg) {
    unsigned char b = *c->p++;
    int ai = b & 31;
    *major = b >> 5;
    if (ai < 24) {
        *arg = (uint64_t)ai;
        return;
    }
    int n = 1 << (ai - 24);
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | c->p[i];
    c->p += n;
    *arg = v;
}

/* Past one whole item. */
static void cb_skip_t(cb_cur *c) {
    int major;
    uint64_t arg;
    cb_head_t(c, &major, &arg);
    switch (major) {
    case CB_BYTES:
    case CB_TEXT:
        c->p += arg;
        return;
    case CB_ARRAY:
        for (uint64_t i = 0; i < arg; i++) cb_skip_t(c);
        return;
    case CB_MAP:
        for (uint64_t i = 0; i < arg; i++) {
            cb_skip_t(c);
            cb_skip_t(c);
        }
        return;
    case CB_TAG:
        cb_skip_t(c);
        return;
    default:
        return;
    }
}

/* The item at `c` is a map holding text key `key`: 1 with *val at its value,
 * else 0 (not a map, or no such key). Keys are in DAG-CBOR order, so the scan
 * stops at the first longer key. */
static inline int cb_map_get(cb_cur c, const char *key, size_t klen, cb_cur *val) {
    int major;
    uint64_t n;
    cb_head_t(&c, &major, &n);
    if (major != CB_MAP) return 0;
    for (uint64_t i = 0; i < n; i++) {
        int km;
        uint64_t kn;
        cb_head_t(&c, &km, &kn);
        const unsigned char *k = c.p;
        c.p += kn;
        if (kn > klen) return 0;
        if (kn == klen && memcmp(k, key, klen) == 0) {
            *val = c;
            return 1;
        }
        cb_skip_t(&c);
    }
    return 0;
}

/* The item at `c` is a text string: 1 with *s, *n set, else 0. */
static inline int cb_text(cb_cur c, const unsigned char **s, size_t *n) {
    int major;
    uint64_t arg;
    cb_head_t(&c, &major, &arg);
    if (major != CB_TEXT) return 0;
    *s = c.p;
    *n = (size_t)arg;
    return 1;
}

/* The major type of the item at `c` (and, for arrays and maps, its count in *n). */
static inline int cb_kind(cb_cur c, uint64_t *n) {
    int major;
    uint64_t arg;
    cb_head_t(&c, &major, &arg);
    if (n != NULL) *n = arg;
    return major == CB_SIMPLE ? CB_SIMPLE : major;
}

#endif
