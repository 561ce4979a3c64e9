/*
 * records/native/pass.c: a repo's wanted records -> column buffers, in one call.
 *
 * Where it sits: records/columns.py `RecordColumns.add_native` calls
 * `records_pass` with the CAR bytes, its block index and the wanted leaves of
 * the MST walk (keys and record CIDs, in key order). Per record, with no
 * Python object made: the block is found and checked (cbor.h), `$type` must
 * be the collection, the record key must be of the lexicon's key type,
 * createdAt must be a valid datetime (and inside the time window, if one
 * applies), the record must pass its lexicon (lexcheck.c); then its atproto
 * JSON (json.c), uri, rkey, cid, created_at and the collection's typed
 * columns are appended to buffers that become Arrow arrays without a copy.
 *
 * Three phases: with the GIL, the keys, the collections' plans (from Python)
 * and the blocks are found; without it, every record is checked and landed
 * (no Python object is touched, so the event loop, the writer's Parquet
 * encoding and other threads run on the other core meanwhile); with it again,
 * the declined and outside-window indices go back as lists.
 *
 * Whatever is not the common case is declined, never decided: a missing or
 * unreadable block, a wrong `$type` or key, a createdAt absent or invalid, a
 * record its lexicon refuses (or that C cannot decide), a record with a float
 * or an odd shape in a typed field. The declined records go through the Python
 * path (records/columns.py `add_many`), which stays the reference: it writes
 * their dead letters with its own words, or lands them. The twin test
 * (tests/records/test_native_pass.py) holds the two paths' tables equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "cbor.h"
#include "formats.h"
#include "json.h"
#include "lexcheck.h"

/* --- column builders ------------------------------------------------------ */

static inline int put(jbuf *b, const void *src, size_t n) {
    /* The common case (room already there) without a call. */
    if (b->cap - b->len < n && jbuf_reserve(b, n) < 0) return -1;
    memcpy(b->buf + b->len, src, n);
    b->len += n;
    return 0;
}

static inline int put_i32(jbuf *b, int32_t v) { return put(b, &v, 4); }
static inline int put_i64(jbuf *b, int64_t v) { return put(b, &v, 8); }
static inline int put_u8(jbuf *b, unsigned char v) { return put(b, &v, 1); }

/* A string column: int32 offsets (starting at 0), data, one validity byte a row. */
typedef struct {
    jbuf offs, data, valid;
    size_t rows;
} scol;

/* A list<string> column: int32 list offsets, validity, its strings as a child. */
typedef struct {
    jbuf offs, valid;
    scol child;
    size_t rows;
} lcol;

/* An int32 (or, for created_at, int64) column with a validity byte a row. */
typedef struct {
    jbuf vals, valid;
    size_t rows;
} ncol;

static int scol_init(scol *c) {
    memset(c, 0, sizeof *c);
    return put_i32(&c->offs, 0);
}

static void scol_free(scol *c) {
    free(c->offs.buf);
    free(c->data.buf);
    free(c->valid.buf);
}

/* The data would no longer fit int32 offsets: the caller gives up the pass. */
#define TOO_BIG(len) ((len) > (size_t)INT32_MAX)

static int scol_put(scol *c, const unsigned char *s, size_t n) {
    if (put(&c->data, s, n) < 0 || TOO_BIG(c->data.len)) return -1;
    c->rows++;
    return put_i32(&c->offs, (int32_t)c->data.len) < 0 || put_u8(&c->valid, 1) < 0 ? -1 : 0;
}

static int scol_null(scol *c) {
    c->rows++;
    return put_i32(&c->offs, (int32_t)c->data.len) < 0 || put_u8(&c->valid, 0) < 0 ? -1 : 0;
}

static int lcol_init(lcol *c) {
    memset(c, 0, sizeof *c);
    return put_i32(&c->offs, 0) < 0 || scol_init(&c->child) < 0 ? -1 : 0;
}

static void lcol_free(lcol *c) {
    free(c->offs.buf);
    free(c->valid.buf);
    scol_free(&c->child);
}

/* Close the current list (its items were put into `child`), valid or null. */
static int lcol_end(lcol *c, int valid) {
    c->rows++;
    if (TOO_BIG(c->child.rows)) return -1;
    return put_i32(&c->offs, (int32_t)c->child.rows) < 0 || put_u8(&c->valid, (unsigned char)valid) < 0
               ? -1
               : 0;
}

static void ncol_free(ncol *c) {
    free(c->vals.buf);
    free(c->valid.buf);
}

/* --- per collection ------------------------------------------------------- */

/* Typed-column families (records/columns.py `_EXTRACTORS`), numbered as
 * records/native_pass.py `FAMILIES`. */
enum { F_NONE = 0, F_POST = 1, F_SUBJECT_REF = 2, F_SUBJECT_DID = 3, F_LISTITEM = 4, F_POST_URI = 5 };
/* Record-key rules (records/validate.py `record_key_check`). */
enum { K_SYNTAX = 0, K_TID = 1, K_NSID = 2, K_LITERAL = 3 };
/* createdAt: required (a dead letter without it) or not; both decline here. */

#define MAX_STR_COLS 8
#define MAX_LIST_COLS 4

typedef struct {
    PyObject *name; /* str */
    const char *name_b;
    Py_ssize_t name_n;
    int family, key_rule, windowed, decline_all;
    const char *literal;
    Py_ssize_t literal_n;
    PyObject *plan; /* keeps `literal` and the schema capsule alive */
    const lex_schema *schema;
    size_t rows;
    scol s[MAX_STR_COLS];
    lcol l[MAX_LIST_COLS];
    ncol n; /* image_count */
    int ns, nl, has_n;
} coll;

static void coll_free(coll *c) {
    for (int i = 0; i < c->ns; i++) scol_free(&c->s[i]);
    for (int i = 0; i < c->nl; i++) lcol_free(&c->l[i]);
    if (c->has_n) ncol_free(&c->n);
    Py_XDECREF(c->name);
    Py_XDECREF(c->plan);
}

/* Typed columns of each family, in schema order: 's' string, 'l' list, 'n' int32. */
static const char *family_layout(int family) {
    switch (family) {
    case F_POST: return "slssssssnlll";
    case F_SUBJECT_REF: return "ss";
    case F_SUBJECT_DID: return "s";
    case F_LISTITEM: return "ss";
    case F_POST_URI: return "s";
    default: return "";
    }
}

/* Fill `c` from the plan tuple that `plan_for(name)` returned:
 * (family, key_rule, literal | None, windowed, schema capsule | None, decline_all). */
static int coll_init(coll *c, PyObject *name, PyObject *plan) {
    memset(c, 0, sizeof *c);
    int family, key_rule, windowed, decline_all;
    PyObject *literal, *schema;
    if (!PyArg_ParseTuple(plan, "iiOpOp", &family, &key_rule, &literal, &windowed, &schema,
                          &decline_all))
        return -1;
    Py_INCREF(name);
    Py_INCREF(plan);
    c->name = name;
    c->plan = plan;
    c->name_b = PyUnicode_AsUTF8AndSize(name, &c->name_n);
    if (c->name_b == NULL) return -1;
    c->family = family;
    c->key_rule = key_rule;
    c->windowed = windowed;
    c->decline_all = decline_all;
    if (literal != Py_None) {
        c->literal = PyUnicode_AsUTF8AndSize(literal, &c->literal_n);
        if (c->literal == NULL) return -1;
    }
    if (schema != Py_None) {
        c->schema = lex_from_capsule(schema);
        if (c->schema == NULL) return -1;
    }
    for (const char *k = family_layout(family); *k; k++) {
        if (*k == 's' && scol_init(&c->s[c->ns++]) < 0) return -1;
        if (*k == 'l' && lcol_init(&c->l[c->nl++]) < 0) return -1;
        if (*k == 'n') c->has_n = 1;
    }
    return 0;
}

/* --- reading typed fields (the twins of records/columns.py's extractors) ---- */

#define KEY(s) s, sizeof(s) - 1

/* map[key] when it is a text string: 1 with s/n, else 0. */
static int text_at(cb_cur map, const char *key, size_t klen, const unsigned char **s, size_t *n) {
    cb_cur v;
    return cb_map_get(map, key, klen, &v) && cb_text(v, s, n);
}

/* map[key] when it is a map: 1 with *out at it, else 0. */
static int map_at(cb_cur map, const char *key, size_t klen, cb_cur *out) {
    return cb_map_get(map, key, klen, out) && cb_kind(*out, NULL) == CB_MAP;
}

static int put_text_or_null(scol *c, cb_cur map, const char *key, size_t klen) {
    const unsigned char *s;
    size_t n;
    if (text_at(map, key, klen, &s, &n)) return scol_put(c, s, n);
    return scol_null(c);
}

static int is_text(cb_cur v, const char *want, size_t wn) {
    const unsigned char *s;
    size_t n;
    return cb_text(v, &s, &n) && n == wn && memcmp(s, want, wn) == 0;
}

/* Enter an array: its count, *c moved to the first item. */
static uint64_t enter(cb_cur *c) {
    int major;
    uint64_t n;
    cb_head_t(c, &major, &n);
    return n;
}

/* The top-level fields the pass reads, found in one scan of the record map
 * (each `cb_map_get` would scan from the start and skip every value before
 * its key again). */
enum { FD_TYPE, FD_CREATED, FD_TEXT, FD_LANGS, FD_REPLY, FD_EMBED, FD_FACETS, FD_TAGS,
       FD_SUBJECT, FD_LIST, FD_POST, FD_N };
#define FIELD(s) {s, sizeof(s) - 1}
static const struct {
    const char *name;
    size_t n;
} FIELDS[FD_N] = {FIELD("$type"), FIELD("createdAt"), FIELD("text"),  FIELD("langs"),
                  FIELD("reply"), FIELD("embed"),     FIELD("facets"), FIELD("tags"),
                  FIELD("subject"), FIELD("list"),    FIELD("post")};
#undef FIELD

typedef struct {
    cb_cur at[FD_N];
    unsigned found; /* bit i: field i is there */
} fields;

/* Scan the record map (accepted by cb_check) once for every field above. */
static void scan_fields(cb_cur rec, fields *f) {
    int major;
    uint64_t n;
    f->found = 0;
    cb_head_t(&rec, &major, &n);
    for (uint64_t i = 0; i < n; i++) {
        int km;
        uint64_t kn;
        cb_head_t(&rec, &km, &kn);
        const unsigned char *k = rec.p;
        rec.p += kn;
        if (kn >= 4 && kn <= 9) {
            for (int id = 0; id < FD_N; id++) {
                if (FIELDS[id].n == kn && memcmp(FIELDS[id].name, k, kn) == 0) {
                    f->at[id] = rec;
                    f->found |= 1u << id;
                    break;
                }
            }
        }
        cb_skip_t(&rec);
    }
}

/* Field `id` when present: 1 with *out at its value. */
static inline int fget(const fields *f, int id, cb_cur *out) {
    if (!(f->found & (1u << id))) return 0;
    *out = f->at[id];
    return 1;
}

static inline int ftext(const fields *f, int id, const unsigned char **s, size_t *n) {
    cb_cur v;
    return fget(f, id, &v) && cb_text(v, s, n);
}

static inline int fmap(const fields *f, int id, cb_cur *out) {
    return fget(f, id, out) && cb_kind(*out, NULL) == CB_MAP;
}

static int put_ftext_or_null(scol *c, const fields *f, int id) {
    const unsigned char *s;
    size_t n;
    if (ftext(f, id, &s, &n)) return scol_put(c, s, n);
    return scol_null(c);
}

/* `langs`: a list of strings or null; 0 ok, -1 error. Its items are all
 * strings (`langs_ok` declined the record otherwise: columns.py
 * `_build_extra` decides such a list per repo). */
static int put_langs(lcol *c, const fields *f) {
    cb_cur v;
    uint64_t count;
    if (!fget(f, FD_LANGS, &v) || cb_kind(v, &count) != CB_ARRAY) return lcol_end(c, 0);
    uint64_t n = enter(&v);
    for (uint64_t i = 0; i < n; i++) {
        const unsigned char *s = NULL;
        size_t len = 0;
        (void)cb_text(v, &s, &len);
        if (scol_put(&c->child, s, len) < 0) return -1;
        cb_skip_t(&v);
    }
    return lcol_end(c, 1);
}

/* Facet features of a post (mentions, links, tags) then its own `tags`. */
static int put_facets(lcol *mentions, lcol *links, lcol *tags, const fields *f) {
    cb_cur facets;
    uint64_t count;
    if (fget(f, FD_FACETS, &facets) && cb_kind(facets, &count) == CB_ARRAY) {
        uint64_t nf = enter(&facets);
        for (uint64_t i = 0; i < nf; i++) {
            cb_cur features;
            if (cb_kind(facets, NULL) == CB_MAP && cb_map_get(facets, KEY("features"), &features) &&
                cb_kind(features, NULL) == CB_ARRAY) {
                uint64_t nt = enter(&features);
                for (uint64_t j = 0; j < nt; j++) {
                    cb_cur kind;
                    const unsigned char *s;
                    size_t len;
                    if (cb_kind(features, NULL) == CB_MAP && cb_map_get(features, KEY("$type"), &kind)) {
                        scol *to = NULL;
                        int found = 0;
                        if (is_text(kind, KEY("app.bsky.richtext.facet#mention"))) {
                            to = &mentions->child;
                            found = text_at(features, KEY("did"), &s, &len);
                        } else if (is_text(kind, KEY("app.bsky.richtext.facet#link"))) {
                            to = &links->child;
                            found = text_at(features, KEY("uri"), &s, &len);
                        } else if (is_text(kind, KEY("app.bsky.richtext.facet#tag"))) {
                            to = &tags->child;
                            found = text_at(features, KEY("tag"), &s, &len);
                        }
                        if (found && scol_put(to, s, len) < 0) return -1;
                    }
                    cb_skip_t(&features);
                }
            }
            cb_skip_t(&facets);
        }
    }
    cb_cur extra;
    if (fget(f, FD_TAGS, &extra) && cb_kind(extra, &count) == CB_ARRAY) {
        uint64_t n = enter(&extra);
        for (uint64_t i = 0; i < n; i++) {
            const unsigned char *s;
            size_t len;
            if (cb_text(extra, &s, &len) && scol_put(&tags->child, s, len) < 0) return -1;
            cb_skip_t(&extra);
        }
    }
    /* Never null: a post without facets has empty lists (columns.py `_NONE`). */
    return lcol_end(mentions, 1) < 0 || lcol_end(links, 1) < 0 || lcol_end(tags, 1) < 0 ? -1 : 0;
}

/* embed -> embed_type, quote_uri, quote_cid, external_uri, image_count
 * (columns.py `_extract_embed`). */
static int put_embed(coll *c, const fields *f) {
    scol *embed_type = &c->s[3], *quote_uri = &c->s[4], *quote_cid = &c->s[5],
         *external_uri = &c->s[6];
    ncol *images = &c->n;
    cb_cur embed, kind;
    const unsigned char *kt;
    size_t kn;
    if (!fmap(f, FD_EMBED, &embed) || !cb_map_get(embed, KEY("$type"), &kind) ||
        !cb_text(kind, &kt, &kn)) {
        if (scol_null(embed_type) < 0 || scol_null(quote_uri) < 0 || scol_null(quote_cid) < 0 ||
            scol_null(external_uri) < 0)
            return -1;
        images->rows++;
        return put_i32(&images->vals, 0) < 0 || put_u8(&images->valid, 0) < 0 ? -1 : 0;
    }
    if (scol_put(embed_type, kt, kn) < 0) return -1;
    cb_cur media = embed, quoted;
    int has_media = 1, has_quoted = 0;
#define IS(lit) (kn == sizeof(lit) - 1 && memcmp(kt, lit, kn) == 0)
    if (IS("app.bsky.embed.record")) {
        has_quoted = map_at(embed, KEY("record"), &quoted);
    } else if (IS("app.bsky.embed.recordWithMedia")) {
        cb_cur inner;
        has_quoted = map_at(embed, KEY("record"), &inner) && map_at(inner, KEY("record"), &quoted);
        has_media = map_at(embed, KEY("media"), &media);
    }
#undef IS
    if (has_quoted) {
        if (put_text_or_null(quote_uri, quoted, KEY("uri")) < 0 ||
            put_text_or_null(quote_cid, quoted, KEY("cid")) < 0)
            return -1;
    } else if (scol_null(quote_uri) < 0 || scol_null(quote_cid) < 0) {
        return -1;
    }
    cb_cur mkind, inner;
    int is_external = 0, is_images = 0;
    if (has_media && cb_map_get(media, KEY("$type"), &mkind)) {
        is_external = is_text(mkind, KEY("app.bsky.embed.external"));
        is_images = is_text(mkind, KEY("app.bsky.embed.images"));
    }
    if (is_external && map_at(media, KEY("external"), &inner)) {
        if (put_text_or_null(external_uri, inner, KEY("uri")) < 0) return -1;
    } else if (scol_null(external_uri) < 0) {
        return -1;
    }
    cb_cur list;
    uint64_t count = 0;
    int has_images = is_images && cb_map_get(media, KEY("images"), &list) &&
                     cb_kind(list, &count) == CB_ARRAY;
    if (count > INT32_MAX) return 1;
    images->rows++;
    return put_i32(&images->vals, has_images ? (int32_t)count : 0) < 0 ||
                   put_u8(&images->valid, (unsigned char)has_images) < 0
               ? -1
               : 0;
}

/* The strongRef-ish `map[key].uri` (reply root/parent, subject). */
static int put_ref_uri(scol *c, cb_cur map, const char *key, size_t klen) {
    cb_cur ref;
    if (map_at(map, key, klen, &ref)) return put_text_or_null(c, ref, KEY("uri"));
    return scol_null(c);
}

/* One record's typed columns: 0 ok, -1 error (1: an image list past int32,
 * which no block under 4 GB can hold). Rows are appended only once the record
 * is sure to land: the caller checked everything else, `langs` included. */
static int put_typed(coll *c, const fields *f) {
    switch (c->family) {
    case F_POST: {
        int r = put_langs(&c->l[0], f);
        if (r != 0) return r;
        cb_cur reply;
        int has_reply = fmap(f, FD_REPLY, &reply);
        if (put_ftext_or_null(&c->s[0], f, FD_TEXT) < 0) return -1;
        if (has_reply) {
            if (put_ref_uri(&c->s[1], reply, KEY("root")) < 0 ||
                put_ref_uri(&c->s[2], reply, KEY("parent")) < 0)
                return -1;
        } else if (scol_null(&c->s[1]) < 0 || scol_null(&c->s[2]) < 0) {
            return -1;
        }
        r = put_embed(c, f);
        if (r != 0) return r;
        return put_facets(&c->l[1], &c->l[2], &c->l[3], f);
    }
    case F_SUBJECT_REF: {
        cb_cur subject;
        if (fmap(f, FD_SUBJECT, &subject))
            return put_text_or_null(&c->s[0], subject, KEY("uri")) < 0 ||
                           put_text_or_null(&c->s[1], subject, KEY("cid")) < 0
                       ? -1
                       : 0;
        return scol_null(&c->s[0]) < 0 || scol_null(&c->s[1]) < 0 ? -1 : 0;
    }
    case F_SUBJECT_DID:
        return put_ftext_or_null(&c->s[0], f, FD_SUBJECT);
    case F_LISTITEM:
        return put_ftext_or_null(&c->s[0], f, FD_SUBJECT) < 0 ||
                       put_ftext_or_null(&c->s[1], f, FD_LIST) < 0
                   ? -1
                   : 0;
    case F_POST_URI:
        return put_ftext_or_null(&c->s[0], f, FD_POST);
    default:
        return 0;
    }
}

/* A post's langs decline is known only after reading it; check it before
 * anything is appended, so that a declined record leaves no partial row. */
static int langs_ok(coll *c, const fields *f) {
    cb_cur v;
    uint64_t count;
    if (c->family != F_POST || !fget(f, FD_LANGS, &v) || cb_kind(v, &count) != CB_ARRAY)
        return 1;
    uint64_t n = enter(&v);
    for (uint64_t i = 0; i < n; i++) {
        if (cb_kind(v, NULL) != CB_TEXT) return 0;
        cb_skip_t(&v);
    }
    return 1;
}

/* --- createdAt ------------------------------------------------------------ */

/* The value of k digits that `datetime_ok` already checked. */
static int num(const unsigned char *p, int k) {
    int v = 0;
    (void)digits(p, k, &v);
    return v;
}

/* Microseconds since the epoch of a datetime `datetime_ok` accepted, fractional
 * digits past the sixth truncated (syntax.datetime_micros); 0 for year 0000,
 * which the caller declines (its range edge is the Python path's to decide). */
static int created_micros(const unsigned char *p, size_t n, int64_t *out) {
    int year = num(p, 4);
    if (year < 1) return 0;
    long long secs = days_from_civil(year, num(p + 5, 2), num(p + 8, 2)) * 86400LL +
                     num(p + 11, 2) * 3600LL + num(p + 14, 2) * 60LL + num(p + 17, 2);
    size_t i = 19;
    long long frac = 0;
    if (p[i] == '.') {
        int digits = 0;
        for (i++; i < n && p[i] >= '0' && p[i] <= '9'; i++)
            if (digits < 6) {
                frac = frac * 10 + (p[i] - '0');
                digits++;
            }
        for (; digits < 6; digits++) frac *= 10;
    }
    if (p[i] == '+' || p[i] == '-') {
        long long offset = num(p + i + 1, 2) * 3600LL + num(p + i + 4, 2) * 60LL;
        secs += p[i] == '+' ? -offset : offset;
    }
    *out = (int64_t)(secs * 1000000LL + frac);
    return 1;
}

/* --- base32 of a CID (the `cid` column) ----------------------------------- */

/* "b" + RFC 4648 base32, lower case, unpadded: libipld.encode_cid of a CIDv1. */
static int put_cid_text(scol *c, const unsigned char *cid, size_t n) {
    char text[1 + (64 * 8 + 4) / 5];
    if (n > 64) return -1;
    text[0] = 'b';
    size_t k = 1 + base32_lower(text + 1, cid, n);
    return scol_put(c, (const unsigned char *)text, k);
}

/* --- the pass ------------------------------------------------------------- */

static const unsigned char CID_PREFIX[4] = {0x01, 0x71, 0x12, 0x20};

typedef struct {
    scol uri, rkey, cid, json;
    ncol created;
    size_t rows;
    coll *colls;
    int ncolls, capcolls;
} pass_state;

static void pass_free(pass_state *st) {
    scol_free(&st->uri);
    scol_free(&st->rkey);
    scol_free(&st->cid);
    scol_free(&st->json);
    ncol_free(&st->created);
    for (int i = 0; i < st->ncolls; i++) coll_free(&st->colls[i]);
    free(st->colls);
}

/* The collection named p[0:n]: found, or made from `plan_for(name)`. */
static coll *collection(pass_state *st, const char *p, Py_ssize_t n, PyObject *plan_for) {
    for (int i = 0; i < st->ncolls; i++)
        if (st->colls[i].name_n == n && memcmp(st->colls[i].name_b, p, (size_t)n) == 0)
            return &st->colls[i];
    if (st->ncolls == st->capcolls) {
        int cap = st->capcolls ? st->capcolls * 2 : 8;
        coll *grown = realloc(st->colls, sizeof(coll) * (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        st->colls = grown;
        st->capcolls = cap;
    }
    PyObject *name = PyUnicode_DecodeUTF8(p, n, "strict");
    if (name == NULL) return NULL;
    PyObject *plan = PyObject_CallOneArg(plan_for, name);
    if (plan == NULL) {
        Py_DECREF(name);
        return NULL;
    }
    coll *c = &st->colls[st->ncolls];
    int rc = coll_init(c, name, plan);
    Py_DECREF(name);
    Py_DECREF(plan);
    st->ncolls++; /* counted even on failure, so that pass_free frees what it holds */
    return rc < 0 ? NULL : c;
}

static PyObject *bytes_of(jbuf *b) {
    return PyBytes_FromStringAndSize(b->buf ? b->buf : "", (Py_ssize_t)b->len);
}

/* A validity bitmap (Arrow's: LSB first) from one byte a row; None when all valid. */
static PyObject *bitmap_of(jbuf *valid, size_t rows) {
    size_t nulls = 0;
    for (size_t i = 0; i < rows; i++) nulls += !valid->buf[i];
    if (nulls == 0) Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((rows + 7) / 8));
    if (out == NULL) return NULL;
    unsigned char *bits = (unsigned char *)PyBytes_AS_STRING(out);
    memset(bits, 0, (rows + 7) / 8);
    for (size_t i = 0; i < rows; i++)
        if (valid->buf[i]) bits[i >> 3] |= (unsigned char)(1u << (i & 7));
    return out;
}

static PyObject *scol_out(scol *c) {
    PyObject *bm = bitmap_of(&c->valid, c->rows);
    if (bm == NULL) return NULL;
    return Py_BuildValue("(snNNN)", "s", (Py_ssize_t)c->rows, bm, bytes_of(&c->offs), bytes_of(&c->data));
}

static PyObject *lcol_out(lcol *c) {
    PyObject *bm = bitmap_of(&c->valid, c->rows);
    if (bm == NULL) return NULL;
    PyObject *child = scol_out(&c->child);
    if (child == NULL) {
        Py_DECREF(bm);
        return NULL;
    }
    return Py_BuildValue("(snNNN)", "l", (Py_ssize_t)c->rows, bm, bytes_of(&c->offs), child);
}

static PyObject *ncol_out(ncol *c, const char *kind) {
    PyObject *bm = bitmap_of(&c->valid, c->rows);
    if (bm == NULL) return NULL;
    return Py_BuildValue("(snNN)", kind, (Py_ssize_t)c->rows, bm, bytes_of(&c->vals));
}

static PyObject *coll_out(coll *c) {
    const char *layout = family_layout(c->family);
    Py_ssize_t n = (Py_ssize_t)strlen(layout);
    PyObject *cols = PyTuple_New(n);
    if (cols == NULL) return NULL;
    int si = 0, li = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *col = layout[i] == 's'   ? scol_out(&c->s[si++])
                        : layout[i] == 'l' ? lcol_out(&c->l[li++])
                                           : ncol_out(&c->n, "i");
        if (col == NULL) {
            Py_DECREF(cols);
            return NULL;
        }
        PyTuple_SET_ITEM(cols, i, col);
    }
    return Py_BuildValue("(On)N", c->name, (Py_ssize_t)c->rows, cols);
}

PyDoc_STRVAR(records_pass_doc,
"records_pass(data, index, keys, cids, did, plan_for, since_us, until_us)\n"
"--\n\n"
"A repo's wanted records (keys and record CIDs, from the MST walk) -> columns.\n"
"`index`: CID -> start << 32 | length of its block in `data` (repo/lazy.py);\n"
"`plan_for(collection)` -> (family, key_rule, literal, windowed, schema, decline_all);\n"
"`since_us`/`until_us`: the window's bounds in microseconds, or None.\n"
"Returns (declined, outside, runs, collections, common): the indices of the\n"
"records left to the Python path and of those outside the window; the landed\n"
"rows' collection runs [(collection index, first row, rows)]; per collection\n"
"((name, rows), typed columns); the common columns (uri, rkey, cid,\n"
"created_at, record) as buffers (records/native_pass.py builds the arrays).");

/* One wanted record as the first phase found it (with the GIL): its block,
 * key and collection; `status` is set by the second phase. */
enum { R_PENDING = 0, R_LANDED = 1, R_DECLINED = 2, R_OUTSIDE = 3 };

typedef struct {
    const unsigned char *block; /* NULL: declined already (no block, odd CID) */
    size_t len;
    const char *key; /* UTF-8 of the key str (kept alive by the keys list) */
    Py_ssize_t key_n, coll_n;
    const unsigned char *cid; /* the 36 CID bytes (kept alive by the cids list) */
    int coll;                 /* index into pass_state.colls */
    unsigned char status;
} rec_in;

/* A run of landed rows of one collection, in row order. */
typedef struct {
    int coll;
    size_t start, rows;
} run_t;

/* The second phase, without the GIL: every check, the JSON and the columns of
 * each pending record. Touches no Python object (json_write and lex_valid do
 * not either), so the event loop and the writer's thread run meanwhile.
 * Returns 0, -1 out of memory, -2 columns past 32-bit offsets. Runs go to
 * `runs` (room for one per record). */
static int land_records(pass_state *st, rec_in *recs, Py_ssize_t total, const char *did_b,
                        Py_ssize_t did_n, int has_since, long long since, int has_until,
                        long long until, run_t *runs, size_t *nruns) {
    char uri_buf[8192];
    int run_coll = -1;
    for (Py_ssize_t i = 0; i < total; i++) {
        rec_in *r = &recs[i];
        if (r->block == NULL) {
            r->status = R_DECLINED;
            continue;
        }
        coll *cur = &st->colls[r->coll];
        r->status = R_DECLINED;
        if (cur->decline_all || cb_check(r->block, r->len) < 0) continue;
        cb_cur rec = {r->block, r->block + r->len};
        if (cb_kind(rec, NULL) != CB_MAP) continue;
        fields f;
        scan_fields(rec, &f);
        /* $type is the collection. */
        cb_cur v;
        const unsigned char *s;
        size_t sn;
        if (!fget(&f, FD_TYPE, &v) || !cb_text(v, &s, &sn) || sn != (size_t)r->coll_n ||
            memcmp(s, r->key, sn) != 0)
            continue;
        /* The record key. */
        const unsigned char *rkey = (const unsigned char *)r->key + r->coll_n + 1;
        Py_ssize_t rkey_n = r->key_n - r->coll_n - 1;
        int key_good;
        switch (cur->key_rule) {
        case K_TID: key_good = tid_ok(rkey, rkey_n); break;
        case K_NSID: key_good = nsid_ok(rkey, rkey_n); break;
        case K_LITERAL:
            key_good = rkey_n == cur->literal_n && memcmp(rkey, cur->literal, (size_t)rkey_n) == 0;
            break;
        default: key_good = record_key_ok(rkey, rkey_n);
        }
        if (!key_good) continue;
        /* createdAt: valid (absent or invalid: the Python path words or nulls it). */
        const unsigned char *created;
        size_t created_n;
        int64_t micros;
        if (!ftext(&f, FD_CREATED, &created, &created_n) ||
            !datetime_ok(created, (Py_ssize_t)created_n) || !created_micros(created, created_n, &micros))
            continue;
        /* The lexicon. */
        if (cur->schema != NULL && !lex_valid(cur->schema, r->block, r->len)) continue;
        if (!langs_ok(cur, &f)) continue;
        if (cur->windowed && ((has_since && micros < since) || (has_until && micros >= until))) {
            r->status = R_OUTSIDE;
            continue;
        }
        /* It lands: JSON first (the one step that can still decline). */
        size_t json_mark = st->json.data.len;
        int jr = json_write(&st->json.data, r->block, r->len);
        if (jr == -1) return -1;
        if (jr != 0) {
            st->json.data.len = json_mark;
            continue;
        }
        if (TOO_BIG(st->json.data.len)) return -2;
        st->json.rows++;
        if (put_i32(&st->json.offs, (int32_t)st->json.data.len) < 0 || put_u8(&st->json.valid, 1) < 0)
            return -1;
        size_t uri_n = 5 + (size_t)did_n + 1 + (size_t)r->key_n;
        if (uri_n > sizeof uri_buf) return -2;
        memcpy(uri_buf, "at://", 5);
        memcpy(uri_buf + 5, did_b, (size_t)did_n);
        uri_buf[5 + did_n] = '/';
        memcpy(uri_buf + 6 + did_n, r->key, (size_t)r->key_n);
        if (scol_put(&st->uri, (const unsigned char *)uri_buf, uri_n) < 0 ||
            scol_put(&st->rkey, rkey, (size_t)rkey_n) < 0 || put_cid_text(&st->cid, r->cid, 36) < 0)
            return -2;
        st->created.rows++;
        if (put_i64(&st->created.vals, micros) < 0 || put_u8(&st->created.valid, 1) < 0) return -1;
        if (put_typed(cur, &f) != 0) return -2;
        if (r->coll != run_coll) {
            runs[*nruns] = (run_t){r->coll, st->rows, 0};
            (*nruns)++;
            run_coll = r->coll;
        }
        runs[*nruns - 1].rows++;
        cur->rows++;
        st->rows++;
        r->status = R_LANDED;
    }
    return 0;
}

/* Append index i to `list`: 0, or -1 with an exception set. */
static int append_index(PyObject *list, Py_ssize_t i) {
    PyObject *at = PyLong_FromSsize_t(i);
    if (at == NULL) return -1;
    int rc = PyList_Append(list, at);
    Py_DECREF(at);
    return rc;
}

static PyObject *records_pass(PyObject *self, PyObject *args) {
    PyObject *data_obj, *index, *keys, *cids, *did, *plan_for, *since_obj, *until_obj;
    if (!PyArg_ParseTuple(args, "OO!O!O!UOOO", &data_obj, &PyDict_Type, &index, &PyList_Type, &keys,
                          &PyList_Type, &cids, &did, &plan_for, &since_obj, &until_obj))
        return NULL;
    Py_ssize_t total = PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(cids) != total) {
        PyErr_SetString(PyExc_ValueError, "keys and cids differ in length");
        return NULL;
    }
    int has_since = since_obj != Py_None, has_until = until_obj != Py_None;
    long long since = has_since ? PyLong_AsLongLong(since_obj) : 0;
    long long until = has_until ? PyLong_AsLongLong(until_obj) : 0;
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t did_n;
    const char *did_b = PyUnicode_AsUTF8AndSize(did, &did_n);
    if (did_b == NULL) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(data_obj, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *data = view.buf;
    size_t data_len = (size_t)view.len;

    pass_state st;
    memset(&st, 0, sizeof st);
    rec_in *recs = PyMem_RawCalloc((size_t)total + 1, sizeof(rec_in));
    run_t *run_list = PyMem_RawMalloc(((size_t)total + 1) * sizeof(run_t));
    size_t nruns = 0;
    PyObject *declined = PyList_New(0), *outside = PyList_New(0), *runs = PyList_New(0);
    PyObject *result = NULL;
    if (declined == NULL || outside == NULL || runs == NULL) goto done;
    if (recs == NULL || run_list == NULL) goto nomem;
    if (scol_init(&st.uri) < 0 || scol_init(&st.rkey) < 0 || scol_init(&st.cid) < 0 ||
        scol_init(&st.json) < 0)
        goto nomem;

    /* Phase one, with the GIL: keys, collections (their plans from Python) and
     * blocks found through the index. */
    int cur = -1;
    for (Py_ssize_t i = 0; i < total; i++) {
        rec_in *r = &recs[i];
        Py_ssize_t key_n;
        const char *key_b = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(keys, i), &key_n);
        if (key_b == NULL) goto done;
        const char *slash = memchr(key_b, '/', (size_t)key_n);
        if (slash == NULL) continue; /* block NULL: declined */
        Py_ssize_t coll_n = slash - key_b;
        if (cur < 0 || st.colls[cur].name_n != coll_n ||
            memcmp(st.colls[cur].name_b, key_b, (size_t)coll_n) != 0) {
            coll *next = collection(&st, key_b, coll_n, plan_for);
            if (next == NULL) goto done;
            cur = (int)(next - st.colls);
        }
        r->key = key_b;
        r->key_n = key_n;
        r->coll_n = coll_n;
        r->coll = cur;
        PyObject *cid = PyList_GET_ITEM(cids, i);
        if (!PyBytes_CheckExact(cid) || PyBytes_GET_SIZE(cid) != 36 ||
            memcmp(PyBytes_AS_STRING(cid), CID_PREFIX, 4) != 0)
            continue;
        PyObject *packed_obj = PyDict_GetItemWithError(index, cid);
        if (packed_obj == NULL) {
            if (PyErr_Occurred()) goto done;
            continue; /* not in the CAR: RecordBlockMissing, in Python's words */
        }
        unsigned long long packed = PyLong_AsUnsignedLongLong(packed_obj);
        if (packed == (unsigned long long)-1 && PyErr_Occurred()) goto done;
        size_t start = (size_t)(packed >> 32), len = (size_t)(packed & 0xFFFFFFFFULL);
        if (start > data_len || len > data_len - start) continue;
        r->block = data + start;
        r->len = len;
        r->cid = (const unsigned char *)PyBytes_AS_STRING(cid);
    }

    /* Phase two, without the GIL. */
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = land_records(&st, recs, total, did_b, did_n, has_since, since, has_until, until, run_list,
                      &nruns);
    Py_END_ALLOW_THREADS
    if (rc == -1) goto nomem;
    if (rc == -2) goto too_big;

    /* Phase three, with the GIL: what Python hears of it. */
    for (Py_ssize_t i = 0; i < total; i++) {
        if (recs[i].status == R_DECLINED && append_index(declined, i) < 0) goto done;
        if (recs[i].status == R_OUTSIDE && append_index(outside, i) < 0) goto done;
    }
    for (size_t k = 0; k < nruns; k++) {
        PyObject *run = Py_BuildValue("(inn)", run_list[k].coll, (Py_ssize_t)run_list[k].start,
                                      (Py_ssize_t)run_list[k].rows);
        if (run == NULL || PyList_Append(runs, run) < 0) {
            Py_XDECREF(run);
            goto done;
        }
        Py_DECREF(run);
    }
    {
        PyObject *colls = PyList_New(st.ncolls);
        if (colls == NULL) goto done;
        for (int i = 0; i < st.ncolls; i++) {
            PyObject *c = coll_out(&st.colls[i]);
            if (c == NULL) {
                Py_DECREF(colls);
                goto done;
            }
            PyList_SET_ITEM(colls, i, c);
        }
        PyObject *common = Py_BuildValue("(nNNNNN)", (Py_ssize_t)st.rows, scol_out(&st.uri),
                                         scol_out(&st.rkey), scol_out(&st.cid),
                                         ncol_out(&st.created, "t"), scol_out(&st.json));
        if (common == NULL) {
            Py_DECREF(colls);
            goto done;
        }
        result = Py_BuildValue("(OOONN)", declined, outside, runs, colls, common);
    }
    goto done;
too_big:
    PyErr_SetString(PyExc_OverflowError, "the repo's columns outgrow 32-bit offsets");
    goto done;
nomem:
    PyErr_NoMemory();
done:
    PyBuffer_Release(&view);
    pass_free(&st);
    PyMem_RawFree(recs);
    PyMem_RawFree(run_list);
    Py_XDECREF(declined);
    Py_XDECREF(outside);
    Py_XDECREF(runs);
    return result;
}

PyDoc_STRVAR(cbor_check_doc,
"cbor_check(block) -> bool\n"
"Whether the bytes are one item of the DAG-CBOR subset the native path reads\n"
"(records/native/cbor.h); False: the Python path decides the record.");

static PyObject *cbor_check_py(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    int ok = cb_check(view.buf, (size_t)view.len) == 0;
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

PyMethodDef bsky_pass_methods[] = {
    {"cbor_check", cbor_check_py, METH_O, cbor_check_doc},
    {"records_pass", records_pass, METH_VARARGS, records_pass_doc},
    {NULL, NULL, 0, NULL},
};

int bsky_pass_init(PyObject *module) {
    (void)module;
    return 0;
}
