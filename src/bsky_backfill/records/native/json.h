/* records/native/json.c: a checked DAG-CBOR item -> atproto JSON text. */
#ifndef BSKY_JSON_H
#define BSKY_JSON_H
#include <stddef.h>

/* A growing output buffer (malloc'd; the caller frees `buf`). */
typedef struct {
    char *buf;
    size_t len;
    size_t cap;
} jbuf;

/* The CID bytes b[0:n] as RFC 4648 base32, lower case, unpadded (what
 * libipld.encode_cid writes after its "b" for a CIDv1), into dst, which has
 * room for (n * 8 + 4) / 5 characters; returns how many were written. Used
 * for a link's {"$link"} (json.c) and for the `cid` column (pass.c). */
static inline size_t base32_lower(char *dst, const unsigned char *b, size_t n) {
    static const char A32[] = "abcdefghijklmnopqrstuvwxyz234567";
    char *w = dst;
    unsigned long long acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8 | b[i]) & 0xFFFFULL; /* at most 12 bits are pending */
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            *w++ = A32[(acc >> bits) & 31];
        }
    }
    if (bits > 0) *w++ = A32[(acc << (5 - bits)) & 31];
    return (size_t)(w - dst);
}

/* Room for `need` more bytes: 0, or -1 when out of memory. */
int jbuf_reserve(jbuf *out, size_t need);

/* Append the atproto JSON of p[0:n], an item `cb_check` accepted, to `out`:
 * exactly the bytes `records.json.to_json_bytes(libipld.decode_dag_cbor(p))`
 * gives (keys sorted as orjson's OPT_SORT_KEYS, links as {"$link": ...},
 * bytes as {"$bytes": ...}, orjson's escaping). 0, or -1 when out of memory
 * (then `out` may end in a partial item: the caller resets `len`). Holds no
 * state between calls and never touches Python objects (callable without
 * the GIL). */
int json_write(jbuf *out, const unsigned char *p, size_t n);

#endif
