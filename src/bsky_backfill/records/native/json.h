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
