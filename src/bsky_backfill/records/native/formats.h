/*
 * records/native/formats.h: the lexicon string-format checks over bytes.
 *
 * Where it sits: included by records/_formats.c (the `is_valid_*` functions
 * records/formats.py hands to the Python validators, over a str's ASCII
 * bytes) and by records/native/lexcheck.c (the native record path, over a
 * checked record's UTF-8 text). Each check answers exactly what its Python
 * twin in bsky_backfill/syntax.py answers (tests/records/test_formats_twin.py
 * holds them equal on the interop vectors and fuzzed strings, also under
 * ASan/UBSan). One copy of each scan, so the two callers cannot drift.
 *
 * Every format but `uri` is ASCII-only: a caller asks `fmt_ascii` first, as
 * Python refuses a non-ASCII str (and the tables refuse bytes >= 0x80
 * anyway). Lengths are in characters, which for ASCII are bytes. `uri` reads
 * code points: `uri_utf8_ok` decodes valid UTF-8 (the caller's text was
 * checked) and asks CPython's own whitespace table, what the regex `\s`
 * means. Nothing here allocates with the GIL held or sets an exception:
 * lexcheck.c may call these without the GIL. Nothing here counts graphemes.
 */
#ifndef BSKY_FORMATS_H
#define BSKY_FORMATS_H
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define IS_LOWER(c) ((c) >= 'a' && (c) <= 'z')
#define IS_UPPER(c) ((c) >= 'A' && (c) <= 'Z')
#define IS_ALPHA(c) (IS_LOWER(c) || IS_UPPER(c))
#define IS_DIGIT(c) ((c) >= '0' && (c) <= '9')
#define IS_ALNUM(c) (IS_ALPHA(c) || IS_DIGIT(c))

/* Character classes of the formats, one bit each, for the per-character
 * loops (one load and a test instead of a chain of comparisons). A constant
 * table of all 256 byte values (no fill at import, the same in every file
 * that includes this one): a byte >= 0x80, part of a non-ASCII character,
 * belongs to no class, so the loops refuse it as the regexes would. */
enum {
    C_DID = 1,    /* a DID's identifier: [a-zA-Z0-9._:%-] */
    C_LABEL = 2,  /* a DNS label or NSID segment: [a-zA-Z0-9-] */
    C_RKEY = 4,   /* a record key: [a-zA-Z0-9_~.:-] */
    C_CID = 8,    /* a CID string: [a-zA-Z0-9+=] */
    C_SCHEME = 16 /* a URI scheme after its first letter: [a-zA-Z0-9+.-] */
};
#define FMT_CLS(c)                                                                           \
    ((c) < 128 ? (unsigned char)(                                                          \
                     ((IS_ALNUM(c) || (c) == '.' || (c) == '_' || (c) == ':' || (c) == '%' || \
                       (c) == '-') ? C_DID : 0) |                                           \
                     ((IS_ALNUM(c) || (c) == '-') ? C_LABEL : 0) |                          \
                     ((IS_ALNUM(c) || (c) == '_' || (c) == '~' || (c) == '.' || (c) == ':' || \
                       (c) == '-') ? C_RKEY : 0) |                                          \
                     ((IS_ALNUM(c) || (c) == '+' || (c) == '=') ? C_CID : 0) |              \
                     ((IS_ALNUM(c) || (c) == '+' || (c) == '.' || (c) == '-') ? C_SCHEME : 0)) \
               : 0)
#define FMT_CLS4(c) FMT_CLS(c), FMT_CLS((c) + 1), FMT_CLS((c) + 2), FMT_CLS((c) + 3)
#define FMT_CLS16(c) FMT_CLS4(c), FMT_CLS4((c) + 4), FMT_CLS4((c) + 8), FMT_CLS4((c) + 12)
#define FMT_CLS64(c) FMT_CLS16(c), FMT_CLS16((c) + 16), FMT_CLS16((c) + 32), FMT_CLS16((c) + 48)
static const unsigned char CLASS[256] = {FMT_CLS64(0), FMT_CLS64(64), FMT_CLS64(128),
                                         FMT_CLS64(192)};

/* Whether every one of p[0:n] is of class `bit`. */
static inline int all_in(const unsigned char *p, Py_ssize_t n, unsigned char bit) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (!(CLASS[p[i]] & bit)) return 0;
    return 1;
}

/* Whether p[0:n] is all ASCII: every format but `uri` refuses anything else
 * (Python's checks see a non-ASCII str), so callers over UTF-8 bytes ask
 * this first, eight bytes at a time. */
static inline int fmt_ascii(const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w & 0x8080808080808080ULL) return 0;
    }
    for (; i < n; i++)
        if (p[i] & 0x80) return 0;
    return 1;
}

/* --- DID, handle, NSID, at-identifier ---------------------------------- */

/* did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-], at most 2048 characters. */
static inline int did_ok(const unsigned char *p, Py_ssize_t n) {
    if (n > 2048 || n < 7 || memcmp(p, "did:", 4) != 0) return 0;
    Py_ssize_t i = 4;
    while (i < n && IS_LOWER(p[i])) i++;
    if (i == 4 || i >= n || p[i] != ':') return 0;
    i++;
    if (i >= n || !all_in(p + i, n - i, C_DID)) return 0;
    return p[n - 1] != ':' && p[n - 1] != '%';
}

/* A DNS label: 1-63 of [a-zA-Z0-9-], not starting or ending with '-'. */
static inline int label_ok(const unsigned char *p, Py_ssize_t n) {
    return n >= 1 && n <= 63 && p[0] != '-' && p[n - 1] != '-' && all_in(p, n, C_LABEL);
}

/* At least two labels, the last starting with a letter; at most 253 characters. */
static inline int handle_ok(const unsigned char *p, Py_ssize_t n) {
    if (n > 253) return 0;
    Py_ssize_t start = 0, labels = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        if (i == n || p[i] == '.') {
            if (!label_ok(p + start, i - start)) return 0;
            if (i == n) return labels >= 1 && IS_ALPHA(p[start]);
            labels++;
            start = i + 1;
        }
    }
    return 0;
}

static inline int at_identifier_ok(const unsigned char *p, Py_ssize_t n) {
    if (n >= 4 && memcmp(p, "did:", 4) == 0) return did_ok(p, n);
    return handle_ok(p, n);
}

/* Reversed domain (first segment starting with a letter) and a name of a
 * letter then letters and digits (at most 63); three segments or more, at
 * most 317 characters. */
static inline int nsid_ok(const unsigned char *p, Py_ssize_t n) {
    if (n > 317) return 0;
    Py_ssize_t start = 0, segments = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        if (i < n && p[i] != '.') continue;
        Py_ssize_t len = i - start;
        const unsigned char *seg = p + start;
        if (i == n) { /* the name */
            if (segments < 2 || len < 1 || len > 63 || !IS_ALPHA(seg[0])) return 0;
            for (Py_ssize_t j = 1; j < len; j++)
                if (!IS_ALNUM(seg[j])) return 0;
            return 1;
        }
        if (!label_ok(seg, len)) return 0;
        if (segments == 0 && !IS_ALPHA(seg[0])) return 0;
        segments++;
        start = i + 1;
    }
    return 0;
}

/* --- TID and record key ------------------------------------------------ */

/* 13 of base32-sortable [2-7a-z]; the first one of [2-7a-j]. */
static inline int tid_ok(const unsigned char *p, Py_ssize_t n) {
    if (n != 13) return 0;
    for (Py_ssize_t i = 0; i < 13; i++) {
        unsigned char c = p[i];
        int ok = (c >= '2' && c <= '7') || (c >= 'a' && c <= (i == 0 ? 'j' : 'z'));
        if (!ok) return 0;
    }
    return 1;
}

/* 1-512 of [a-zA-Z0-9_~.:-], not "." or "..". */
static inline int record_key_ok(const unsigned char *p, Py_ssize_t n) {
    if (n < 1 || n > 512) return 0;
    if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return 0;
    return all_in(p, n, C_RKEY);
}

/* --- AT-URI ------------------------------------------------------------- */

/* at://AUTHORITY[/COLLECTION[/RKEY]], at most 8 KB. The regex's parts exclude
 * '/', '?', '#' and whitespace, which no part's own syntax allows either, so
 * splitting on '/' and checking each part is the same test. */
static inline int at_uri_ok(const unsigned char *p, Py_ssize_t n) {
    if (n > 8192 || n < 6 || memcmp(p, "at://", 5) != 0) return 0;
    const unsigned char *parts[3];
    Py_ssize_t lens[3];
    int count = 0;
    Py_ssize_t start = 5;
    while (start <= n) {
        const unsigned char *slash = memchr(p + start, '/', (size_t)(n - start));
        Py_ssize_t end = slash == NULL ? n : slash - p;
        if (count == 3 || end == start) return 0;
        parts[count] = p + start;
        lens[count] = end - start;
        count++;
        start = end + 1;
    }
    if (!at_identifier_ok(parts[0], lens[0])) return 0;
    if (count > 1 && !nsid_ok(parts[1], lens[1])) return 0;
    return count < 3 || record_key_ok(parts[2], lens[2]);
}

/* --- CID ---------------------------------------------------------------- */

/* 8-256 of [a-zA-Z0-9+=], not a CIDv0 ("Qmb..."). */
static inline int cid_ok(const unsigned char *p, Py_ssize_t n) {
    if (n < 8 || n > 256) return 0;
    if (p[0] == 'Q' && p[1] == 'm' && p[2] == 'b') return 0;
    return all_in(p, n, C_CID);
}

/* --- datetime ----------------------------------------------------------- */

static inline int digits(const unsigned char *p, int k, int *out) {
    int v = 0;
    for (int i = 0; i < k; i++) {
        if (!IS_DIGIT(p[i])) return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

static inline int is_leap(int y) { return y % 4 == 0 && (y % 100 != 0 || y % 400 == 0); }

/* Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm). */
static inline long long days_from_civil(int y, int m, int d) {
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    long long yoe = y - era * 400;
    long long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* syntax.is_valid_datetime: the shape
 *   YYYY-MM-DDTHH:MM:SS[.f{1,20}](Z|+HH:MM|-HH:MM), hours 00-23, not -00:00,
 * then real calendar values, an offset of 00-23 hours and 00-59 minutes (RFC
 * 3339's time-numoffset), and for year 0000 an instant not before
 * 0000-01-01T00:00:00Z (the reference's exact path; later years are all
 * within range whatever the offset). */
static inline int datetime_ok(const unsigned char *p, Py_ssize_t n) {
    int year, month, day, hour, minute, second, oh = 0, om = 0;
    if (n < 20) return 0;
    if (!digits(p, 4, &year) || p[4] != '-' || !digits(p + 5, 2, &month) || p[7] != '-' ||
        !digits(p + 8, 2, &day) || p[10] != 'T' || !digits(p + 11, 2, &hour) || p[13] != ':' ||
        !digits(p + 14, 2, &minute) || p[16] != ':' || !digits(p + 17, 2, &second))
        return 0;
    Py_ssize_t i = 19;
    if (p[i] == '.') {
        Py_ssize_t f = ++i;
        while (i < n && IS_DIGIT(p[i])) i++;
        if (i == f || i - f > 20) return 0;
    }
    if (i >= n) return 0;
    char sign = (char)p[i];
    if (sign == 'Z') {
        if (i + 1 != n) return 0;
    } else if (sign == '+' || sign == '-') {
        if (n - i != 6 || !digits(p + i + 1, 2, &oh) || p[i + 3] != ':' ||
            !digits(p + i + 4, 2, &om))
            return 0;
        if (sign == '-' && oh == 0 && om == 0) return 0;
    } else {
        return 0;
    }
    if (hour > 23 || minute > 59 || second > 59 || month < 1 || month > 12 || day < 1) return 0;
    static const int dim[13] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (day > (month == 2 && is_leap(year) ? 29 : dim[month])) return 0;
    if (oh > 23 || om > 59) return 0;
    if (year >= 1) return 1;
    long long secs = days_from_civil(year, month, day) * 86400LL + hour * 3600 + minute * 60 +
                     second;
    long long offset = oh * 3600LL + om * 60LL;
    secs += sign == '+' ? -offset : (sign == '-' ? offset : 0);
    return secs >= -62167219200LL;
}

/* --- language ----------------------------------------------------------- */

static inline int lower(int c) { return IS_UPPER(c) ? c + 32 : c; }

/* The subtag at *pos (its start and length); *pos moves past its '-'. */
static inline int next_tag(const unsigned char *s, Py_ssize_t n, Py_ssize_t *pos,
                    const unsigned char **tag, Py_ssize_t *len) {
    if (*pos > n) return 0;
    Py_ssize_t i = *pos;
    while (i < n && s[i] != '-') i++;
    *tag = s + *pos;
    *len = i - *pos;
    *pos = i + 1;
    return 1;
}

static inline int tag_all(const unsigned char *p, Py_ssize_t n, int want_alpha, int want_digit) {
    for (Py_ssize_t i = 0; i < n; i++) {
        int c = lower(p[i]);
        if (!((want_alpha && IS_LOWER(c)) || (want_digit && IS_DIGIT(c)))) return 0;
    }
    return 1;
}
#define ALPHA(p, n) tag_all(p, n, 1, 0)
#define DIGITS(p, n) tag_all(p, n, 0, 1)

/* A subtag of at most 8 characters, lowercased, as one comparable number. */
static inline unsigned long long packed(const unsigned char *p, Py_ssize_t n) {
    unsigned long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) v = (v << 8) | (unsigned long long)lower(p[i]);
    return v;
}

static inline int cmp_u64(const void *a, const void *b) {
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return (x > y) - (x < y);
}

static const char *const GRANDFATHERED[] = {
    "en-gb-oed",   "i-ami",    "i-bnn",     "i-default", "i-enochian", "i-hak",      "i-klingon",
    "i-lux",       "i-mingo",  "i-navajo",  "i-pwn",     "i-tao",      "i-tay",      "i-tsu",
    "sgn-be-fr",   "sgn-be-nl", "sgn-ch-de", "art-lojban", "cel-gaulish", "no-bok",  "no-nyn",
    "zh-guoyu",    "zh-hakka", "zh-min",    "zh-min-nan", "zh-xiang",  NULL,
};

static inline int grandfathered(const unsigned char *s, Py_ssize_t n) {
    for (const char *const *g = GRANDFATHERED; *g != NULL; g++) {
        if ((Py_ssize_t)strlen(*g) != n) continue;
        Py_ssize_t i = 0;
        while (i < n && lower(s[i]) == (*g)[i]) i++;
        if (i == n) return 1;
    }
    return 0;
}

/* syntax.is_valid_language (1, 0, or -1 when out of memory): atproto's syntax check, then a well-formed and
 * valid BCP 47 tag (RFC 5646 langtag, private use or grandfathered, any
 * case), no repeated variant or extension singleton. The langtag grammar is
 * matched subtag by subtag: each kind has its own length or shape, so the
 * first fit is the only one (the reference's regex cannot backtrack into
 * another). A tag has no length limit (variants, private-use subtags), so
 * repeated variants are found by sorting, not by comparing every pair. */
static inline int language_ok(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t pos = 0, len = 0;
    const unsigned char *tag = s;
    /* The syntax: (i|[a-z]{2,3})(-[a-zA-Z0-9]+)* | [xX](-[a-zA-Z0-9]{1,8})+ */
    next_tag(s, n, &pos, &tag, &len);
    int private_form = len == 1 && (tag[0] == 'x' || tag[0] == 'X');
    if (!private_form && !(len == 1 && tag[0] == 'i') &&
        !(len >= 2 && len <= 3 && IS_LOWER(tag[0]) && IS_LOWER(tag[1]) &&
          (len == 2 || IS_LOWER(tag[2]))))
        return 0;
    Py_ssize_t count = 1, variants_n = 0;
    for (Py_ssize_t p = pos; next_tag(s, n, &p, &tag, &len); count++) {
        if (len == 0 || !tag_all(tag, len, 1, 1)) return 0;
        if (private_form && len > 8) return 0;
        if (len >= 4) variants_n++; /* an upper bound, to size the sort */
    }
    if (private_form) return count >= 2;
    if (n >= 5 && grandfathered(s, n)) return 1; /* the shortest is i-ami */
    /* language: [a-z]{2,3}(-[a-z]{3}){0,3} | [a-z]{4} | [a-z]{5,8} (the
     * syntax above allowed only the first, or "i", which fits none) */
    pos = 0;
    next_tag(s, n, &pos, &tag, &len);
    if (len < 2 || len > 3) return 0;
    int ok = next_tag(s, n, &pos, &tag, &len);
    for (int k = 0; k < 3 && ok && len == 3 && ALPHA(tag, 3); k++) /* extlang */
        ok = next_tag(s, n, &pos, &tag, &len);
    if (ok && len == 4 && ALPHA(tag, 4)) ok = next_tag(s, n, &pos, &tag, &len); /* script */
    if (ok && ((len == 2 && ALPHA(tag, 2)) || (len == 3 && DIGITS(tag, 3))))
        ok = next_tag(s, n, &pos, &tag, &len); /* region */
    /* Room for the variants: on the stack for any real tag, else the raw
     * allocator (no GIL needed: lexcheck.c may run without it). */
    unsigned long long stack[16];
    unsigned long long *variants = stack;
    Py_ssize_t seen = 0;
    int answer = 0;
    if (variants_n > 16) {
        variants = PyMem_RawMalloc((size_t)variants_n * sizeof *variants);
        if (variants == NULL) return -1; /* out of memory: the caller decides */
    }
    while (ok && ((len >= 5 && len <= 8) || (len == 4 && IS_DIGIT(tag[0])))) {
        variants[seen++] = packed(tag, len);
        ok = next_tag(s, n, &pos, &tag, &len);
    }
    unsigned long long singletons = 0; /* a bit per character */
    while (ok && len == 1 && lower(tag[0]) != 'x') { /* extensions */
        int bit = IS_DIGIT(tag[0]) ? tag[0] - '0' : 10 + lower(tag[0]) - 'a';
        if (singletons & (1ULL << bit)) goto done;
        singletons |= 1ULL << bit;
        Py_ssize_t subtags = 0;
        while ((ok = next_tag(s, n, &pos, &tag, &len)) && len >= 2 && len <= 8) subtags++;
        if (subtags == 0) goto done;
    }
    if (ok && len == 1 && lower(tag[0]) == 'x') { /* private use */
        Py_ssize_t subtags = 0;
        while ((ok = next_tag(s, n, &pos, &tag, &len))) {
            if (len > 8) goto done;
            subtags++;
        }
        if (subtags == 0) goto done;
    }
    if (ok) goto done; /* a subtag that fits nothing */
    if (seen > 1) {
        qsort(variants, (size_t)seen, sizeof *variants, cmp_u64);
        for (Py_ssize_t i = 1; i < seen; i++)
            if (variants[i] == variants[i - 1]) goto done;
    }
    answer = 1;
done:
    if (variants != stack) PyMem_RawFree(variants);
    return answer;
}

/* --- generic URI -------------------------------------------------------- */

/* syntax.is_valid_uri over valid UTF-8 (lexcheck.c's text, checked by
 * cb_check): [a-zA-Z][a-zA-Z0-9+.-]*:(//)?[^\s/][^\s]*, at most 8192 code
 * points. The scheme is ASCII; the body any code point but Python's
 * whitespace (Py_UNICODE_ISSPACE, the table str.isspace and `\s` use). */
static inline int uri_utf8_ok(const unsigned char *p, Py_ssize_t n) {
    if (n < 3 || !IS_ALPHA(p[0])) return 0;
    Py_ssize_t i = 1;
    while (i < n && p[i] != ':') {
        if (!(CLASS[p[i]] & C_SCHEME)) return 0;
        i++;
    }
    if (i >= n) return 0;
    i++;
    Py_ssize_t count = i; /* code points so far: all ASCII */
    if (i + 1 < n && p[i] == '/' && p[i + 1] == '/') {
        i += 2;
        count += 2;
    }
    if (i >= n || p[i] == '/') return 0;
    while (i < n) {
        unsigned char c = p[i];
        Py_UCS4 cp;
        /* Valid UTF-8: the lead byte says the length. */
        if (c < 0x80) {
            cp = c;
            i += 1;
        } else if (c < 0xE0) {
            cp = ((Py_UCS4)(c & 0x1F) << 6) | (p[i + 1] & 0x3F);
            i += 2;
        } else if (c < 0xF0) {
            cp = ((Py_UCS4)(c & 0x0F) << 12) | ((Py_UCS4)(p[i + 1] & 0x3F) << 6) |
                 (p[i + 2] & 0x3F);
            i += 3;
        } else {
            cp = ((Py_UCS4)(c & 0x07) << 18) | ((Py_UCS4)(p[i + 1] & 0x3F) << 12) |
                 ((Py_UCS4)(p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F);
            i += 4;
        }
        if (Py_UNICODE_ISSPACE(cp)) return 0;
        count++;
    }
    return count <= 8192; /* the length limit of syntax.is_valid_uri, in code points */
}

#endif
