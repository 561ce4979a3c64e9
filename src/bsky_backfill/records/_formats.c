/*
 * bsky_backfill.records._formats: the lexicon string-format checks, in C.
 *
 * Where it sits: records/formats.py imports this module when it was built and
 * otherwise uses the regex checks of bsky_backfill/syntax.py, which stay the
 * reference. The generated validators (records/validate_codegen.py) call one
 * of these per formatted string of a record: every strongRef of a like,
 * repost or reply carries an AT-URI and a CID, every post a language, facets
 * and embeds URIs and DIDs. A precompiled regex costs ~0.25-0.4 us per value
 * there; a hand-written scan costs the call. Each function answers exactly
 * what its Python twin answers (tests/records/test_formats_twin.py holds them
 * equal on the interop vectors and on fuzzed strings, also under ASan/UBSan).
 *
 * Every format but `uri` is ASCII-only, so any other string is refused
 * before its characters are read; `uri` allows any non-whitespace character,
 * and "whitespace" is Python's (`str.isspace`, what the regex `\s` means),
 * so it reads the string in whichever width CPython stores it. Lengths are
 * in code points, as Python's `len`. Nothing here counts graphemes.
 *
 * The scans themselves live in records/native/formats.h, shared with the
 * native record path (records/native/lexcheck.c), which runs them over a
 * record's UTF-8 bytes; this file wraps them for Python str arguments.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "native/formats.h"

#define ASCII_OK(o) (PyUnicode_IS_ASCII(o))

/* The string's ASCII bytes and length, or NULL when it is not an ASCII str
 * (*n is then -1 for a non-str, which raises TypeError as the regex would). */
static const unsigned char *ascii_of(PyObject *s, Py_ssize_t *n) {
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "expected a str, got %.100s", Py_TYPE(s)->tp_name);
        *n = -1;
        return NULL;
    }
    if (!ASCII_OK(s)) {
        *n = 0;
        return NULL;
    }
    *n = PyUnicode_GET_LENGTH(s);
    return PyUnicode_1BYTE_DATA(s);
}

/* The boilerplate of every METH_O check: an ASCII view of the argument, the
 * answer of `fn` on it (-1: out of memory), False for non-ASCII,
 * TypeError for non-str. */
#define ASCII_CHECK(pyname, fn)                                   \
    static PyObject *pyname(PyObject *self, PyObject *arg) {      \
        Py_ssize_t n;                                             \
        const unsigned char *p = ascii_of(arg, &n);               \
        if (p == NULL) {                                          \
            if (n < 0) return NULL;                               \
            Py_RETURN_FALSE;                                      \
        }                                                         \
        int ok = fn(p, n);                                        \
        if (ok < 0) return PyErr_NoMemory();                      \
        if (ok) Py_RETURN_TRUE;                                   \
        Py_RETURN_FALSE;                                          \
    }

/* --- generic URI -------------------------------------------------------- */

/* [a-zA-Z][a-zA-Z0-9+.-]*:(//)?[^\s/][^\s]*, at most 8 KB. Any characters but
 * Python's whitespace in the body, so this one reads any string width. */
static PyObject *is_valid_uri(PyObject *self, PyObject *s) {
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "expected a str, got %.100s", Py_TYPE(s)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    if (n > 8192 || n < 3) Py_RETURN_FALSE;
    Py_UCS4 c = PyUnicode_READ(kind, data, 0);
    if (!(c < 128 && IS_ALPHA(c))) Py_RETURN_FALSE;
    Py_ssize_t i = 1;
    for (; i < n; i++) {
        c = PyUnicode_READ(kind, data, i);
        if (c == ':') break;
        if (!(c < 128 && (CLASS[c] & C_SCHEME))) Py_RETURN_FALSE;
    }
    if (i >= n) Py_RETURN_FALSE;
    i++;
    if (i + 1 < n && PyUnicode_READ(kind, data, i) == '/' && PyUnicode_READ(kind, data, i + 1) == '/')
        i += 2;
    if (i >= n || PyUnicode_READ(kind, data, i) == '/') Py_RETURN_FALSE;
    for (; i < n; i++)
        if (Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i))) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

ASCII_CHECK(is_valid_did, did_ok)
ASCII_CHECK(is_valid_handle, handle_ok)
ASCII_CHECK(is_valid_at_identifier, at_identifier_ok)
ASCII_CHECK(is_valid_nsid, nsid_ok)
ASCII_CHECK(is_valid_tid, tid_ok)
ASCII_CHECK(is_valid_record_key, record_key_ok)
ASCII_CHECK(is_valid_at_uri, at_uri_ok)
ASCII_CHECK(is_valid_cid, cid_ok)
ASCII_CHECK(is_valid_datetime, datetime_ok)
ASCII_CHECK(is_valid_language, language_ok)

static PyMethodDef methods[] = {
    {"is_valid_did", is_valid_did, METH_O, "syntax.is_valid_did in C."},
    {"is_valid_handle", is_valid_handle, METH_O, "syntax.is_valid_handle in C."},
    {"is_valid_at_identifier", is_valid_at_identifier, METH_O,
     "syntax.is_valid_at_identifier in C."},
    {"is_valid_nsid", is_valid_nsid, METH_O, "syntax.is_valid_nsid in C."},
    {"is_valid_tid", is_valid_tid, METH_O, "syntax.is_valid_tid in C."},
    {"is_valid_record_key", is_valid_record_key, METH_O, "syntax.is_valid_record_key in C."},
    {"is_valid_at_uri", is_valid_at_uri, METH_O, "syntax.is_valid_at_uri in C."},
    {"is_valid_cid", is_valid_cid, METH_O, "syntax.is_valid_cid in C."},
    {"is_valid_datetime", is_valid_datetime, METH_O, "syntax.is_valid_datetime in C."},
    {"is_valid_language", is_valid_language, METH_O, "syntax.is_valid_language in C."},
    {"is_valid_uri", is_valid_uri, METH_O, "syntax.is_valid_uri in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bsky_backfill.records._formats",
    "The lexicon string-format checks in C (see records/formats.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__formats(void) { return PyModule_Create(&module); }
