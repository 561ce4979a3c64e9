/*
 * bsky_backfill.records._native: the native record path, one extension.
 *
 * Where it sits: records/native.py imports this module when it was built (and
 * BSKY_BACKFILL_PURE_PYTHON is not set); records/columns.py then turns the
 * wanted records of a repo into columns in one C call (`records_pass`,
 * pass.c) instead of decoding each record into Python objects. Each part is a
 * file of its own that brings its Python-callable functions as a method table:
 *   cbor.h      DAG-CBOR reading: the accepted subset, trusted readers
 *   json.c      a checked record -> atproto JSON text (orjson's output, byte for byte)
 *   lexcheck.c  lexicon validation of a checked record (accept, or let Python decide)
 *   pass.c      a repo's wanted records -> column buffers
 * Every part answers exactly as its Python twin or declines; the Python path
 * stays the reference, and the twin tests hold the two equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

extern PyMethodDef bsky_json_methods[];
extern PyMethodDef bsky_lex_methods[];
extern PyMethodDef bsky_pass_methods[];
int bsky_pass_init(PyObject *module);

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bsky_backfill.records._native",
    "The native record path (see records/native.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddFunctions(m, bsky_json_methods) < 0 ||
        PyModule_AddFunctions(m, bsky_lex_methods) < 0 ||
        PyModule_AddFunctions(m, bsky_pass_methods) < 0 || bsky_pass_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
