/*
 * bsky_backfill.repo._native: the per-block loops of verification, in C.
 *
 * Where it sits: repo/native.py imports this module when it was built and
 * falls back to the same loops written in Python (repo/verify.py,
 * repo/lazy.py, repo/mst.py) when it was not. Nothing here decides anything:
 * every function either does exactly what its Python twin does, or returns
 * None ("not the common case, use the Python path"), so the two cannot
 * disagree on a CAR the C code does not fully understand.
 *
 * Why hand-written: verification hashes every block of a repo (sha2-256 of
 * each frame, compared with the CID) and every MST key (its layer). The
 * hashing itself is cheap (OpenSSL, SHA extensions); in Python the cost is
 * the interpreter around it, ~1 us per block, which made verification cost
 * ~30-40 % of the extraction. No maintained library hashes the frames of a
 * CAR in one call (libipld decodes but does not check CIDs), so this file
 * does it: framing, one sha2-256 per block, a compare. The Python twins stay
 * the reference, and tests run both on the same inputs.
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_API_COMPAT 0x10100000L
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <Python.h>
#include <openssl/sha.h>
#include <string.h>

/* CIDv1, dag-cbor, sha2-256, 32-byte digest: the CID of every atproto block. */
static const unsigned char PREFIX[4] = {0x01, 0x71, 0x12, 0x20};
#define CID_LEN 36

/* sha2-256 of buf[0:n] into md. The low-level calls, not OpenSSL 3's one-shot
 * SHA256(), which looks the algorithm up in the provider tables on every call
 * (~0.4 us, more than hashing a typical block with the SHA extensions). */
static inline void sha256(const unsigned char *buf, size_t n, unsigned char *md) {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, buf, n);
    SHA256_Final(md, &ctx);
}

/* Unsigned LEB128 at *pos (at most 9 bytes); -1 if cut short or too long. */
static int read_varint(const unsigned char *buf, Py_ssize_t len, Py_ssize_t *pos,
                       unsigned long long *out) {
    unsigned long long value = 0;
    Py_ssize_t p = *pos;
    for (int shift = 0; shift < 63; shift += 7) {
        if (p >= len) return -1;
        unsigned char b = buf[p++];
        value |= (unsigned long long)(b & 0x7F) << shift;
        if (b < 0x80) {
            *pos = p;
            *out = value;
            return 0;
        }
    }
    return -1;
}

/* Frame walk shared by the functions below: after the header, the next frame
 * of the common shape. Returns 1 with cid, data and size set and pos moved past
 * the frame, 0 at the end, -1 when the frame is not the common shape (another
 * CID form, empty, cut short): the caller then answers None. */
static int next_frame(const unsigned char *buf, Py_ssize_t len, Py_ssize_t *pos,
                      const unsigned char **cid, Py_ssize_t *data, Py_ssize_t *size) {
    if (*pos >= len) return 0;
    unsigned long long flen;
    Py_ssize_t p = *pos;
    if (read_varint(buf, len, &p, &flen) < 0) return -1;
    if (flen < CID_LEN || flen > (unsigned long long)(len - p)) return -1;
    if (memcmp(buf + p, PREFIX, 4) != 0) return -1;
    *cid = buf + p;
    *data = p + CID_LEN;
    *size = (Py_ssize_t)flen - CID_LEN;
    *pos = p + (Py_ssize_t)flen;
    return 1;
}

/* Position of the first frame (after the header), or -1. */
static Py_ssize_t skip_header(const unsigned char *buf, Py_ssize_t len) {
    Py_ssize_t pos = 0;
    unsigned long long hlen;
    if (read_varint(buf, len, &pos, &hlen) < 0) return -1;
    if (hlen == 0 || hlen > (unsigned long long)(len - pos)) return -1;
    return pos + (Py_ssize_t)hlen;
}

PyDoc_STRVAR(mismatched_doc,
"mismatched(data, only) -> set[bytes] | None\n\n"
"CIDs of the CAR's blocks (all, or those in the set `only`) whose bytes do\n"
"not hash to them; None if any frame is not the common shape.");

static PyObject *mismatched(PyObject *self, PyObject *args) {
    Py_buffer view;
    PyObject *only;
    if (!PyArg_ParseTuple(args, "y*O", &view, &only)) return NULL;
    if (only != Py_None && !PyAnySet_Check(only)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "only must be a set or None");
        return NULL;
    }
    const unsigned char *buf = view.buf;
    Py_ssize_t len = view.len;
    PyObject *bad = NULL;
    Py_ssize_t *offsets = NULL;  /* CID offsets of bad blocks (the all-blocks pass) */
    Py_ssize_t n_bad = 0, cap = 0;
    int shape = 1;
    Py_ssize_t pos = skip_header(buf, len);
    if (pos < 0) goto fallback;

    if (only == Py_None) {
        /* Every block: hash without the GIL (the event loop keeps running), then
         * build the set from the few offsets that failed. */
        Py_BEGIN_ALLOW_THREADS
        const unsigned char *cid;
        Py_ssize_t start, size;
        unsigned char md[SHA256_DIGEST_LENGTH];
        int r;
        while ((r = next_frame(buf, len, &pos, &cid, &start, &size)) == 1) {
            sha256(buf + start, (size_t)size, md);
            if (memcmp(md, cid + 4, SHA256_DIGEST_LENGTH) != 0) {
                if (n_bad == cap) {
                    Py_ssize_t grown = cap ? cap * 2 : 16;
                    Py_ssize_t *more = realloc(offsets, (size_t)grown * sizeof(Py_ssize_t));
                    if (more == NULL) {
                        r = -2;
                        break;
                    }
                    offsets = more;
                    cap = grown;
                }
                offsets[n_bad++] = cid - buf;
            }
        }
        shape = r;
        Py_END_ALLOW_THREADS
        if (shape == -2) {
            free(offsets);
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
        if (shape < 0) goto fallback;
        bad = PySet_New(NULL);
        if (bad == NULL) goto fail;
        for (Py_ssize_t i = 0; i < n_bad; i++) {
            PyObject *key = PyBytes_FromStringAndSize((const char *)buf + offsets[i], CID_LEN);
            if (key == NULL || PySet_Add(bad, key) < 0) {
                Py_XDECREF(key);
                goto fail;
            }
            Py_DECREF(key);
        }
        free(offsets);
        PyBuffer_Release(&view);
        return bad;
    }

    /* Only the used blocks: a membership test per frame, with the GIL. */
    bad = PySet_New(NULL);
    if (bad == NULL) goto fail;
    {
        const unsigned char *cid;
        Py_ssize_t start, size;
        unsigned char md[SHA256_DIGEST_LENGTH];
        int r;
        while ((r = next_frame(buf, len, &pos, &cid, &start, &size)) == 1) {
            PyObject *key = PyBytes_FromStringAndSize((const char *)cid, CID_LEN);
            if (key == NULL) goto fail;
            int in = PySet_Contains(only, key);
            if (in == 1) {
                sha256(buf + start, (size_t)size, md);
                if (memcmp(md, cid + 4, SHA256_DIGEST_LENGTH) != 0) in = PySet_Add(bad, key);
            }
            Py_DECREF(key);
            if (in < 0) goto fail;
        }
        if (r < 0) goto fallback;
    }
    PyBuffer_Release(&view);
    return bad;

fallback:
    free(offsets);
    Py_XDECREF(bad);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
fail:
    free(offsets);
    Py_XDECREF(bad);
    PyBuffer_Release(&view);
    return NULL;
}

PyDoc_STRVAR(frame_index_doc,
"frame_index(data) -> (header, {cid: start << 32 | length}) | None\n\n"
"The CAR's header bytes and where each block's data sits (the first frame\n"
"of a CID wins); None if any frame is not the common shape.");

/* One frame's place, found without the GIL. */
typedef struct {
    Py_ssize_t cid;   /* offset of the 36-byte CID */
    Py_ssize_t start; /* offset of the block's data */
    Py_ssize_t size;
} frame_at;

/* Dict entries built per hold of the GIL: the framing pass runs without it, and
 * the dict (Python objects) is built in slices with a release in between, so a
 * 1M-block repo never stalls the event loop thread for more than a slice
 * (~10-20 ms) where it used to hold the GIL for ~0.6 s in one go. */
#define SLICE 65536

static PyObject *frame_index(PyObject *self, PyObject *args) {
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*", &view)) return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t len = view.len;
    PyObject *index = NULL, *header = NULL, *result = NULL;
    frame_at *frames = NULL;
    Py_ssize_t n = 0;
    int r = 0;
    /* Packed locations must fit 64 bits: start < 2^31, length < 2^32. */
    if (len >= ((Py_ssize_t)1 << 31)) goto fallback;
    Py_ssize_t pos = skip_header(buf, len);
    if (pos < 0) goto fallback;
    {
        Py_ssize_t hstart = 0;
        unsigned long long hlen = 0;
        read_varint(buf, len, &hstart, &hlen);
        header = PyBytes_FromStringAndSize((const char *)buf + hstart, (Py_ssize_t)hlen);
        if (header == NULL) goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    {
        Py_ssize_t cap = 0;
        const unsigned char *cid;
        Py_ssize_t start, size;
        while ((r = next_frame(buf, len, &pos, &cid, &start, &size)) == 1) {
            if (n == cap) {
                cap = cap ? cap * 2 : 1024;
                frame_at *grown = realloc(frames, (size_t)cap * sizeof(frame_at));
                if (grown == NULL) {
                    r = -2;
                    break;
                }
                frames = grown;
            }
            frames[n].cid = cid - buf;
            frames[n].start = start;
            frames[n].size = size;
            n++;
        }
    }
    Py_END_ALLOW_THREADS
    if (r == -2) {
        PyErr_NoMemory();
        goto fail;
    }
    if (r < 0) goto fallback;
    index = PyDict_New();
    if (index == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i && i % SLICE == 0) {
            /* Let a waiting thread (the event loop) run between slices. The view
             * is a bytes object or a mapping held by the caller: still valid. */
            Py_BEGIN_ALLOW_THREADS
            Py_END_ALLOW_THREADS
        }
        PyObject *key = PyBytes_FromStringAndSize((const char *)buf + frames[i].cid, CID_LEN);
        if (key == NULL) goto fail;
        PyObject *value =
            PyLong_FromLongLong(((long long)frames[i].start << 32) | (long long)frames[i].size);
        if (value == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        PyObject *kept = PyDict_SetDefault(index, key, value);  /* borrowed */
        Py_DECREF(key);
        Py_DECREF(value);
        if (kept == NULL) goto fail;
    }
    free(frames);
    result = PyTuple_Pack(2, header, index);
    Py_DECREF(header);
    Py_DECREF(index);
    PyBuffer_Release(&view);
    return result;

fallback:
    free(frames);
    Py_XDECREF(header);
    Py_XDECREF(index);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
fail:
    free(frames);
    Py_XDECREF(header);
    Py_XDECREF(index);
    PyBuffer_Release(&view);
    return NULL;
}

PyDoc_STRVAR(off_layer_doc,
"off_layer(keys, layer) -> int\n\n"
"Index of the first key (bytes) whose MST height (leading zero 2-bit chunks\n"
"of sha256(key)) is not `layer`, or -1 when all are on it.");

/* MST height of a key: leading zero 2-bit chunks of sha256(key). */
static long key_height(const unsigned char *key, size_t n) {
    unsigned char md[SHA256_DIGEST_LENGTH];
    sha256(key, n, md);
    long zeros = 0;
    for (int j = 0; j < SHA256_DIGEST_LENGTH; j++) {
        if (md[j] == 0) {
            zeros += 8;
            continue;
        }
        zeros += __builtin_clz((unsigned int)md[j]) - 24;
        break;
    }
    return zeros / 2;
}

static PyObject *off_layer(PyObject *self, PyObject *args) {
    PyObject *keys;
    long layer;
    if (!PyArg_ParseTuple(args, "O!l", &PyList_Type, &keys, &layer)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "MST keys must be bytes");
            return NULL;
        }
        const unsigned char *k = (const unsigned char *)PyBytes_AS_STRING(key);
        if (key_height(k, (size_t)PyBytes_GET_SIZE(key)) != layer) return PyLong_FromSsize_t(i);
    }
    return PyLong_FromLong(-1);
}

PyDoc_STRVAR(has_float_doc,
"has_float(value) -> bool\n\n"
"Whether a decoded record holds a float anywhere in its maps and lists (the\n"
"atproto data model has none). Descends at most 256 levels, as the Python twin\n"
"(records/datamodel.py) does; deeper values are refused as JSON anyway.");

static int walk_float(PyObject *obj, int depth) {
    if (PyFloat_CheckExact(obj)) return 1;
    if (depth >= 256) return 0;
    if (PyDict_CheckExact(obj)) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(obj, &pos, &key, &value)) {
            if (walk_float(value, depth + 1)) return 1;
        }
        return 0;
    }
    if (PyList_CheckExact(obj)) {
        Py_ssize_t n = PyList_GET_SIZE(obj);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (walk_float(PyList_GET_ITEM(obj, i), depth + 1)) return 1;
        }
    }
    return 0;
}

static PyObject *has_float(PyObject *self, PyObject *value) {
    return PyBool_FromLong(walk_float(value, 0));
}


/* ---- the verified MST walk (repo/mst.py `walk_verified`, whole trees) ---- */

PyDoc_STRVAR(walk_leaves_doc,
"walk_leaves(blocks, root, nodes, layer, after, before, wanted, keys)\n"
"    -> (list[str], list[bytes], int) | str | None\n\n"
"repo/mst.py `walk_verified` over the decoded `blocks` (a dict, or a mapping\n"
"that decodes on access, repo/lazy.py `LazyBlocks`), without a\n"
"cut: every node CID goes to the set `nodes`, every (key, CID) to the dict\n"
"`keys` (or None); returns the keys and CIDs of the leaves whose collection\n"
"is in the set `wanted`, and the number of leaves. A str is the reason the\n"
"tree failed verification (worded as the Python walk words it). None: an\n"
"argument is not of the common shape (nothing was touched): use Python.");

/* A stack item: a leaf (key str, owned; value CID, borrowed from the decoded
 * tree, which `blocks` keeps alive) or a node still to open (CID borrowed;
 * layer -1 = not known yet, Python's None). */
/* The MST's field names, interned once (module init). */
static PyObject *S_e, *S_l, *S_p, *S_k, *S_v, *S_t;

typedef struct {
    int leaf;
    long layer;
    PyObject *a;
    PyObject *b;
} WalkItem;

typedef struct {
    WalkItem *items;
    Py_ssize_t n, cap;
} WalkStack;

static int stack_push(WalkStack *s, int leaf, long layer, PyObject *a, PyObject *b) {
    if (s->n == s->cap) {
        Py_ssize_t cap = s->cap ? s->cap * 2 : 256;
        WalkItem *grown = PyMem_Realloc(s->items, (size_t)cap * sizeof(WalkItem));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->items = grown;
        s->cap = cap;
    }
    s->items[s->n++] = (WalkItem){leaf, layer, a, b};
    return 0;
}

static void stack_free(WalkStack *s) {
    for (Py_ssize_t i = 0; i < s->n; i++) {
        if (s->items[i].leaf) Py_DECREF(s->items[i].a);
    }
    PyMem_Free(s->items);
    s->items = NULL;
    s->n = s->cap = 0;
}

/* `text` % repr(obj)[:200] as the walk's failure reason (a str), or NULL. */
static PyObject *reason1(const char *fmt, PyObject *obj) {
    PyObject *r = PyObject_Repr(obj);
    if (r == NULL) return NULL;
    PyObject *cut = PyUnicode_Substring(r, 0, 200);
    Py_DECREF(r);
    if (cut == NULL) return NULL;
    PyObject *out = PyUnicode_FromFormat(fmt, cut);
    Py_DECREF(cut);
    return out;
}

static PyObject *reason2(const char *fmt, PyObject *x, PyObject *y) {
    PyObject *rx = PyObject_Repr(x);
    PyObject *ry = rx == NULL ? NULL : PyObject_Repr(y);
    PyObject *cx = ry == NULL ? NULL : PyUnicode_Substring(rx, 0, 200);
    PyObject *cy = cx == NULL ? NULL : PyUnicode_Substring(ry, 0, 200);
    PyObject *out = cy == NULL ? NULL : PyUnicode_FromFormat(fmt, cx, cy);
    Py_XDECREF(rx);
    Py_XDECREF(ry);
    Py_XDECREF(cx);
    Py_XDECREF(cy);
    return out;
}

/* Python's `a <= b` for two ASCII strs. */
static int ascii_le(PyObject *a, PyObject *b) {
    Py_ssize_t na = PyUnicode_GET_LENGTH(a), nb = PyUnicode_GET_LENGTH(b);
    int c = memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)(na < nb ? na : nb));
    return c < 0 || (c == 0 && na <= nb);
}

static int is_ascii_str(PyObject *o) {
    return PyUnicode_CheckExact(o) && PyUnicode_IS_COMPACT_ASCII(o);
}


/* A `LazyBlocks` (repo/lazy.py) read from C: its block index and CAR bytes,
 * and libipld's decoder, so that a node is decoded without a Python-level
 * `__getitem__` per node. Only while the mapping does not hash each block as
 * it is read (`verify` false); otherwise, and for anything odd, each node
 * goes through the mapping itself. */
typedef struct {
    int on;
    PyObject *index;
    PyObject *decode;
    Py_buffer data;
} LazyView;

static PyObject *decode_dag_cbor = NULL;

static void lazy_open(LazyView *lv, PyObject *blocks) {
    lv->on = 0;
    PyObject *verify = PyObject_GetAttrString(blocks, "verify");
    PyObject *index = verify == Py_False ? PyObject_GetAttrString(blocks, "index") : NULL;
    PyObject *data = index != NULL && PyDict_CheckExact(index) ? PyObject_GetAttrString(blocks, "data") : NULL;
    if (data != NULL && decode_dag_cbor == NULL) {
        PyObject *lib = PyImport_ImportModule("libipld");
        decode_dag_cbor = lib ? PyObject_GetAttrString(lib, "decode_dag_cbor") : NULL;
        Py_XDECREF(lib);
    }
    if (data != NULL && decode_dag_cbor != NULL && PyObject_GetBuffer(data, &lv->data, PyBUF_SIMPLE) == 0) {
        lv->on = 1;
        lv->index = index;
        lv->decode = decode_dag_cbor;
        index = NULL; /* owned by lv now */
    }
    PyErr_Clear(); /* not a LazyBlocks of the usual shape: the mapping's own way */
    Py_XDECREF(verify);
    Py_XDECREF(index);
    Py_XDECREF(data);
}

static void lazy_close(LazyView *lv) {
    if (!lv->on) return;
    PyBuffer_Release(&lv->data);
    Py_DECREF(lv->index);
    lv->on = 0;
}

/* The node block `cid` decoded (a new reference), or NULL: with an exception
 * set, an error; without, not in the CAR. */
static PyObject *lazy_node(LazyView *lv, PyObject *blocks, PyObject *cid) {
    if (lv->on) {
        PyObject *packed_obj = PyDict_GetItemWithError(lv->index, cid);
        if (packed_obj == NULL) return NULL; /* missing, or an error already set */
        unsigned long long packed = PyLong_AsUnsignedLongLong(packed_obj);
        size_t start = (size_t)(packed >> 32), len = (size_t)(packed & 0xFFFFFFFFULL);
        if (!PyErr_Occurred() && start <= (size_t)lv->data.len && len <= (size_t)lv->data.len - start) {
            PyObject *raw = PyBytes_FromStringAndSize((const char *)lv->data.buf + start, (Py_ssize_t)len);
            PyObject *node = raw ? PyObject_CallOneArg(lv->decode, raw) : NULL;
            Py_XDECREF(raw);
            if (node != NULL) return node;
        }
        PyErr_Clear(); /* undecodable or odd: the mapping words it (Undecodable) */
    }
    PyObject *node = PyObject_GetItem(blocks, cid);
    if (node == NULL && PyErr_ExceptionMatches(PyExc_KeyError)) PyErr_Clear();
    return node;
}

/* The walk proper. Returns the result tuple, a reason str, or NULL (error). */
static PyObject *walk(PyObject *blocks, PyObject *root, PyObject *nodes, long layer0,
                      PyObject *after, PyObject *before, PyObject *wanted, PyObject *keys) {
    WalkStack st = {NULL, 0, 0};
    WalkStack pend = {NULL, 0, 0};
    unsigned char *prev = NULL;
    Py_ssize_t prev_cap = 0;
    PyObject *out_keys = PyList_New(0), *out_cids = PyList_New(0);
    PyObject *keep = NULL;
    LazyView lv = {0};
    if (!PyDict_CheckExact(blocks)) {
        if ((keep = PyList_New(0)) == NULL) {
            Py_XDECREF(out_keys);
            Py_XDECREF(out_cids);
            return NULL;
        }
        lazy_open(&lv, blocks);
    }
    PyObject *last = after;
    Py_INCREF(last);
    PyObject *result = NULL;
    /* The collection of the previous leaf and whether it is wanted: keys come
     * sorted, so a collection's keys are contiguous and the set is asked once
     * per collection, not per key. */
    PyObject *coll = NULL;
    int coll_wanted = 0;
    Py_ssize_t count = 0;
    const int is_root = layer0 < 0;
    if (out_keys == NULL || out_cids == NULL) goto error;
    if (stack_push(&st, 0, layer0, root, NULL) < 0) goto error;

    while (st.n > 0) {
        WalkItem item = st.items[--st.n];
        if (item.leaf) {
            PyObject *key = item.a; /* owned, now by this frame */
            if (ascii_le(key, last)) {
                result = reason2("MST keys out of order: %U after %U", key, last);
                Py_DECREF(key);
                goto done;
            }
            Py_DECREF(last);
            last = key;
            count++;
            if (keys != Py_None && PyDict_SetItem(keys, key, item.b) < 0) goto error;
            const char *k = (const char *)PyUnicode_DATA(key);
            Py_ssize_t kn = PyUnicode_GET_LENGTH(key);
            const char *slash = memchr(k, '/', (size_t)kn);
            Py_ssize_t cn = slash ? slash - k : kn;
            if (coll == NULL || PyUnicode_GET_LENGTH(coll) != cn ||
                memcmp(PyUnicode_DATA(coll), k, (size_t)cn) != 0) {
                Py_XDECREF(coll);
                coll = PyUnicode_DecodeASCII(k, cn, NULL);
                if (coll == NULL) goto error;
                coll_wanted = PySet_Contains(wanted, coll);
                if (coll_wanted < 0) goto error;
            }
            if (coll_wanted) {
                if (PyList_Append(out_keys, key) < 0 || PyList_Append(out_cids, item.b) < 0)
                    goto error;
            }
            continue;
        }
        long layer = item.layer;
        PyObject *cid = item.a;
        int had = PySet_Contains(nodes, cid);
        if (had < 0) goto error;
        if (had) {
            result = PyUnicode_FromString("an MST node is reached twice");
            goto done;
        }
        if (PySet_Add(nodes, cid) < 0) goto error;
        PyObject *node;
        if (keep == NULL) {
            node = PyDict_GetItemWithError(blocks, cid);
            if (node == NULL && PyErr_Occurred()) goto error;
        } else {
            /* A lazy mapping (repo/lazy.py) decodes the node now: `keep` holds it
             * while the stack borrows its CIDs and keys, as a dict would. */
            node = lazy_node(&lv, blocks, cid);
            if (node == NULL) {
                if (PyErr_Occurred()) goto error;
            } else {
                int rc = PyList_Append(keep, node);
                Py_DECREF(node);
                if (rc < 0) goto error;
            }
        }
        if (node == NULL || node == Py_None) {
            result = PyUnicode_FromString("an MST node is missing from the CAR");
            goto done;
        }
        PyObject *entries = NULL, *left = NULL;
        if (PyDict_CheckExact(node) && PyDict_GET_SIZE(node) == 2) {
            entries = PyDict_GetItemWithError(node, S_e);
            left = PyDict_GetItemWithError(node, S_l);
        }
        if (entries == NULL || left == NULL || !PyList_CheckExact(entries) ||
            (left != Py_None && !PyBytes_CheckExact(left))) {
            result = reason1("malformed MST node: %U", node);
            goto done;
        }
        Py_ssize_t ne = PyList_GET_SIZE(entries);
        if (ne > 0) {
            if (layer < 0) {
                PyObject *first = PyList_GET_ITEM(entries, 0);
                PyObject *k = PyDict_CheckExact(first) ? PyDict_GetItemWithError(first, S_k) : NULL;
                PyObject *p = PyDict_CheckExact(first) ? PyDict_GetItemWithError(first, S_p) : NULL;
                int bad = 1;
                if (k != NULL && PyBytes_CheckExact(k)) {
                    PyObject *zero = PyLong_FromLong(0);
                    if (zero == NULL) goto error;
                    bad = PyObject_RichCompareBool(p ? p : Py_None, zero, Py_NE);
                    Py_DECREF(zero);
                    if (bad < 0) goto error;
                }
                if (bad) {
                    result = reason1("malformed first MST entry: %U", first);
                    goto done;
                }
                layer = key_height((const unsigned char *)PyBytes_AS_STRING(k),
                                   (size_t)PyBytes_GET_SIZE(k));
            }
        } else if (left == Py_None && (!is_root || PyObject_RichCompareBool(cid, root, Py_NE) != 0)) {
            result = PyUnicode_FromString("an MST node below the root is empty");
            goto done;
        }
        long child = layer < 0 ? -1 : layer - 1;
        Py_ssize_t plen = 0;
        PyObject *off_key = NULL; /* the first key not on this layer, as bytes */
        for (Py_ssize_t i = 0; i < ne; i++) {
            PyObject *e = PyList_GET_ITEM(entries, i);
            PyObject *p = NULL, *k = NULL, *v = NULL, *t = NULL;
            if (PyDict_CheckExact(e) && PyDict_GET_SIZE(e) == 4) {
                p = PyDict_GetItemWithError(e, S_p);
                k = PyDict_GetItemWithError(e, S_k);
                v = PyDict_GetItemWithError(e, S_v);
                t = PyDict_GetItemWithError(e, S_t);
            }
            Py_ssize_t pv = -1;
            if (p != NULL && PyLong_CheckExact(p)) {
                int overflow = 0;
                long long x = PyLong_AsLongLongAndOverflow(p, &overflow);
                if (!overflow && x >= 0 && x <= plen) pv = (Py_ssize_t)x;
            }
            if (p == NULL || k == NULL || v == NULL || t == NULL || pv < 0 ||
                !PyBytes_CheckExact(k) || !PyBytes_CheckExact(v)) {
                Py_XDECREF(off_key);
                result = reason1("malformed MST entry: %U", e);
                goto done;
            }
            const unsigned char *kb = (const unsigned char *)PyBytes_AS_STRING(k);
            Py_ssize_t kn = PyBytes_GET_SIZE(k);
            if (pv < plen && kn > 0 && kb[0] == prev[pv]) {
                Py_XDECREF(off_key);
                result = reason1("MST key prefix not fully compressed: %U", e);
                goto done;
            }
            Py_ssize_t n = pv + kn;
            if (n > prev_cap) {
                Py_ssize_t cap = n * 2 + 64;
                unsigned char *grown = PyMem_Realloc(prev, (size_t)cap);
                if (grown == NULL) {
                    Py_XDECREF(off_key);
                    PyErr_NoMemory();
                    goto error;
                }
                prev = grown;
                prev_cap = cap;
            }
            if (kn) memcpy(prev + pv, kb, (size_t)kn);
            plen = n;
            int ascii = 1;
            for (Py_ssize_t j = 0; j < n; j++) {
                if (prev[j] >= 0x80) {
                    ascii = 0;
                    break;
                }
            }
            if (!ascii) {
                Py_XDECREF(off_key);
                PyObject *raw = PyBytes_FromStringAndSize((const char *)prev, n);
                if (raw == NULL) goto error;
                result = reason1("MST key is not ASCII: %U", raw);
                Py_DECREF(raw);
                goto done;
            }
            if (off_key == NULL && key_height(prev, (size_t)n) != layer) {
                off_key = PyBytes_FromStringAndSize((const char *)prev, n);
                if (off_key == NULL) goto error;
            }
            PyObject *key = PyUnicode_DecodeASCII((const char *)prev, n, NULL);
            if (key == NULL || stack_push(&pend, 1, 0, key, v) < 0) {
                Py_XDECREF(key);
                Py_XDECREF(off_key);
                goto error;
            }
            if (t != Py_None) {
                if (!PyBytes_CheckExact(t) || layer == 0) {
                    Py_XDECREF(off_key);
                    result = reason1("malformed MST entry (subtree): %U", e);
                    goto done;
                }
                if (stack_push(&pend, 0, child, t, NULL) < 0) {
                    Py_XDECREF(off_key);
                    goto error;
                }
            }
        }
        if (off_key != NULL) {
            PyObject *r = PyObject_Repr(off_key);
            PyObject *c = r == NULL ? NULL : PyUnicode_Substring(r, 0, 200);
            result = c == NULL ? NULL : PyUnicode_FromFormat("MST key %U is not on layer %ld", c, layer);
            Py_XDECREF(r);
            Py_XDECREF(c);
            Py_DECREF(off_key);
            if (result == NULL) goto error;
            goto done;
        }
        /* The node's items onto the stack in reverse, so they pop in key order. */
        for (Py_ssize_t i = pend.n - 1; i >= 0; i--) {
            WalkItem *w = &pend.items[i];
            if (stack_push(&st, w->leaf, w->layer, w->a, w->b) < 0) goto error;
            pend.n = i; /* the key's reference now belongs to `st` */
        }
        pend.n = 0;
        if (left != Py_None) {
            if (layer == 0) {
                result = PyUnicode_FromString("an MST node on layer 0 has a subtree");
                goto done;
            }
            if (stack_push(&st, 0, child, left, NULL) < 0) goto error;
        }
    }
    if (before != Py_None && ascii_le(before, last)) {
        result = reason2("MST key %U sorts after the next key %U", last, before);
        goto done;
    }
    result = Py_BuildValue("(OOn)", out_keys, out_cids, count);
    goto done;
error:
    Py_CLEAR(result);
done:
    stack_free(&st);
    stack_free(&pend);
    PyMem_Free(prev);
    Py_XDECREF(coll);
    Py_XDECREF(last);
    Py_XDECREF(out_keys);
    Py_XDECREF(out_cids);
    Py_XDECREF(keep);
    lazy_close(&lv);
    return result;
}

static PyObject *walk_leaves(PyObject *self, PyObject *args) {
    PyObject *blocks, *root, *nodes, *layer, *after, *before, *wanted, *keys;
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &blocks, &root, &nodes, &layer, &after, &before,
                          &wanted, &keys))
        return NULL;
    long layer0 = -1;
    if (layer != Py_None) {
        if (!PyLong_CheckExact(layer)) Py_RETURN_NONE;
        int overflow = 0;
        layer0 = PyLong_AsLongAndOverflow(layer, &overflow);
        if (overflow || layer0 < 0 || layer0 > 127) Py_RETURN_NONE;
    }
    int lazy = !PyDict_CheckExact(blocks) && !PyList_Check(blocks) && !PyTuple_Check(blocks) &&
               PyMapping_Check(blocks);
    if (!(PyDict_CheckExact(blocks) || lazy) || !PyBytes_CheckExact(root) || !PySet_CheckExact(nodes) ||
        !is_ascii_str(after) || (before != Py_None && !is_ascii_str(before)) ||
        !PyAnySet_CheckExact(wanted) || (keys != Py_None && !PyDict_CheckExact(keys)))
        Py_RETURN_NONE;
    return walk(blocks, root, nodes, layer0, after, before, wanted, keys);
}

static PyMethodDef methods[] = {
    {"has_float", has_float, METH_O, has_float_doc},
    {"mismatched", mismatched, METH_VARARGS, mismatched_doc},
    {"frame_index", frame_index, METH_VARARGS, frame_index_doc},
    {"off_layer", off_layer, METH_VARARGS, off_layer_doc},
    {"walk_leaves", walk_leaves, METH_VARARGS, walk_leaves_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bsky_backfill.repo._native",
    "Verification's per-block loops in C, and the records' float check (see repo/native.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject **names[] = {&S_e, &S_l, &S_p, &S_k, &S_v, &S_t};
    const char *texts[] = {"e", "l", "p", "k", "v", "t"};
    for (int i = 0; i < 6; i++) {
        *names[i] = PyUnicode_InternFromString(texts[i]);
        if (*names[i] == NULL) return NULL;
    }
    return PyModule_Create(&module);
}
