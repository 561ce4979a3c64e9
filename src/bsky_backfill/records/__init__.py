"""records layer: decoded records -> validated rows in per-collection Arrow tables.

transform.py  extract_repo: CAR bytes -> RepoExtract (the hot path)
columns.py    RecordColumns: validation rules + column accumulation (CAR and listRecords)
json.py       decoded DAG-CBOR -> atproto JSON ($link / $bytes)
schema.py     the output schemas (contract columns) and the dead-letter table
lexicon.py    constants read from the Lexicons (default collections, createdAt rules)
validate.py   lexicon validation: bundled lexicons -> per-record checks (+ record-key types)
validate_codegen.py  the generated fast path of those checks
formats.py    the string-format checks: C (_formats.c) when built, else syntax.py's
"""
