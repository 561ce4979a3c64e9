/* records/native/formats.h: the lexicon string-format checks over bytes, shared by
 * records/_formats.c and lexcheck.c (to be moved here from _formats.c). */
#ifndef BSKY_FORMATS_H
#define BSKY_FORMATS_H
#endif
