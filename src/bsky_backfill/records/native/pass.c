/* records/native/pass.c: a repo's wanted records -> column buffers (to be written). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "cbor.h"
#include "json.h"
#include "lexcheck.h"

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
    {NULL, NULL, 0, NULL},
};

int bsky_pass_init(PyObject *module) {
    (void)module;
    return 0;
}
