/* records/native/lexcheck.h: lexicon validation of a checked DAG-CBOR record
 * (lexcheck.c; records/validate_native.py describes and compiles the schemas). */
#ifndef BSKY_LEXCHECK_H
#define BSKY_LEXCHECK_H
#include <Python.h>
#include <stddef.h>

typedef struct lex_schema lex_schema;

/* The compiled schema held by a capsule from `lex_compile` (NULL with an
 * exception set when `obj` is not one). */
const lex_schema *lex_from_capsule(PyObject *obj);

/* 1: the record p[0:n] (accepted by `cb_check`) is valid under the schema,
 * exactly where the Python validator of `records.validate.record_checks(name,
 * trust_created_at=True)` accepts it; 0: invalid, or not decided here (the
 * Python validator then decides and words the dead letter; lexcheck.c lists
 * when it does not decide). Touches no Python object: callable without the GIL. */
int lex_valid(const lex_schema *schema, const unsigned char *p, size_t n);

#endif
