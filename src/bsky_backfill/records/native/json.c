/* records/native/json.c: a checked DAG-CBOR item -> atproto JSON text (to be written). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "cbor.h"
#include "json.h"

int jbuf_reserve(jbuf *out, size_t need) {
    if (out->len + need <= out->cap) return 0;
    size_t cap = out->cap ? out->cap : 4096;
    while (cap < out->len + need) cap *= 2;
    char *grown = realloc(out->buf, cap);
    if (grown == NULL) return -1;
    out->buf = grown;
    out->cap = cap;
    return 0;
}

int json_write(jbuf *out, const unsigned char *p, size_t n) {
    (void)out;
    (void)p;
    (void)n;
    return -2; /* not written yet: the caller declines */
}

PyMethodDef bsky_json_methods[] = {{NULL, NULL, 0, NULL}};
