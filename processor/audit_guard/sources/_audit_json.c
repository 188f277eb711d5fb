/* audit_guard.sources._audit_json: lines of the shipped nginx format (otel/nginx/
   audit_log_format.conf) decoded straight into columns (issue #11's throughput target).

   decode(lines, keys) -> (columns, fallback_rows)

   `keys` are the format's keys in the order nginx writes them (AuditJsonLine's fields). Each
   line that is exactly `{"k1":v1,"k2":v2,...}` (JSON whitespace allowed between tokens) with
   those keys in that order and only plain values is decoded into column k, row i; any other
   line is left to the caller (its row number is in `fallback_rows`, its cells None), which
   decodes it with msgspec as before. Plain values, decoded as msgspec decodes them into `Any`:

   - a string of ASCII characters without escapes or control characters -> str
   - an integer of at most 18 digits -> int; a decimal without exponent of at most 15
     significant digits -> float (both exact in one double operation, so any correctly
     rounding parser - msgspec's, Python's - gives the same value)
   - true / false / null -> True / False / None

   Anything else (an escape, a non-ASCII character, a longer number, an exponent, an object or
   array, a cut or broken line) sends the line to the caller.

   Why: with msgspec, a line of 28 fields is a struct and 28 new objects, most of which repeat
   the line before (host, protocol, status, user agent, ...); creating and freeing them was most
   of the decode's cost in the service (cache misses on a churned heap). Here equal values of a
   column share one object (a small two-way cache per column, keyed by the value's text),
   and no struct is made: the rows are built only for the rare reader that wants one
   (nginx_access.AuditJsonRows). tests/unit/sources/test_audit_json_native.py checks every
   decoded value against msgspec's, value and type. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_KEYS 64
#define CACHE_SET_BITS 5 /* per column 2^5 pairs of slots */
#define CACHE_SLOTS (2 << CACHE_SET_BITS)

typedef struct {
    uint64_t hash;
    const char *text; /* into a line kept alive for the whole call */
    Py_ssize_t len;
    PyObject *value;  /* a reference of the cache's own (a line left to the caller drops its) */
} Slot;

typedef struct {
    const char *text;
    Py_ssize_t len;
} Key;

static inline int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && is_ws(*p))
        p++;
    return p;
}

/* Cheap to compute for long values (user agents): the length, the first and last 8 bytes. */
static inline uint64_t text_hash(const char *s, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)n;
    Py_ssize_t head = n < 8 ? n : 8;
    for (Py_ssize_t i = 0; i < head; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    for (Py_ssize_t i = n > 16 ? n - 8 : head; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

enum kind { K_STR, K_INT, K_FLOAT };

/* A new reference to the value of `text` (its JSON spelling, or a string's content) of the
   given kind, shared with an equal earlier value of the column, or with `prev` (the line's
   previous value: $uri is mostly $request_uri, $server_name $host); NULL with an exception
   set. */
static PyObject *cached(Slot *cache, const char *text, Py_ssize_t len, enum kind kind,
                        PyObject *prev) {
    uint64_t h = text_hash(text, len) ^ (uint64_t)kind;
    /* Two ways: the pair of slots at the hash's top bits (Fibonacci hashing), the value last
       seen first; a new value goes first and moves the other one second. */
    Slot *pair = &cache[((h * 0x9E3779B97F4A7C15ULL) >> (64 - CACHE_SET_BITS)) * 2];
    for (int way = 0; way < 2; way++) {
        Slot *slot = &pair[way];
        if (slot->value != NULL && slot->hash == h && slot->len == len
            && memcmp(slot->text, text, (size_t)len) == 0) {
            if (way == 1) { /* now the last seen */
                Slot hit = pair[1];
                pair[1] = pair[0];
                pair[0] = hit;
            }
            Py_INCREF(pair[0].value);
            return pair[0].value;
        }
    }
    PyObject *value;
    if (kind == K_STR && prev != NULL && PyUnicode_CheckExact(prev) && PyUnicode_IS_ASCII(prev)
        && PyUnicode_GET_LENGTH(prev) == len
        && memcmp(PyUnicode_1BYTE_DATA(prev), text, (size_t)len) == 0) {
        value = prev;
        Py_INCREF(value);
    } else if (kind == K_STR) {
        /* ASCII (checked by the caller): no UTF-8 decoding, a copy. */
        value = PyUnicode_New(len, 127);
        if (value != NULL)
            memcpy(PyUnicode_1BYTE_DATA(value), text, (size_t)len);
    } else if (kind == K_INT) {
        long long n = 0;
        int negative = text[0] == '-';
        for (Py_ssize_t i = negative; i < len; i++)
            n = n * 10 + (text[i] - '0');
        value = PyLong_FromLongLong(negative ? -n : n);
    } else {
        char buf[40];
        memcpy(buf, text, (size_t)len);
        buf[len] = '\0';
        double d = PyOS_string_to_double(buf, NULL, NULL);
        value = (d == -1.0 && PyErr_Occurred()) ? NULL : PyFloat_FromDouble(d);
    }
    if (value == NULL)
        return NULL;
    Py_XDECREF(pair[1].value);
    pair[1] = pair[0];
    Py_INCREF(value);
    pair[0].value = value;
    pair[0].hash = h;
    pair[0].text = text;
    pair[0].len = len;
    return value;
}

/* The first byte at or after p that may end a plain string (a quote, a backslash, a control
   character or a non-ASCII byte), or `end`: eight bytes a step (the usual values are 10 to 40
   plain bytes). Each mask flags, in its lowest set byte, the first such byte exactly (a borrow
   only flags bytes above a true one), so the lowest of them all is the answer. */
static inline const char *plain_run(const char *p, const char *end) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (end - p >= 8) {
        uint64_t w, quote, slash;
        memcpy(&w, p, 8);
        quote = w ^ (ones * '"');
        slash = w ^ (ones * '\\');
        uint64_t found = (w & highs)                          /* >= 0x80 */
                         | ((w - ones * 0x20) & ~w & highs)   /* < 0x20 */
                         | ((quote - ones) & ~quote & highs)  /* '"' */
                         | ((slash - ones) & ~slash & highs); /* '\\' */
        if (found)
            return p + (__builtin_ctzll(found) >> 3);
        p += 8;
    }
#endif /* elsewhere the caller's byte loop does it all */
    return p;
}

/* Parse one plain value at *pp. Returns a new reference, or NULL: with an exception set (out of
   memory) or without (not a plain value: the caller falls back). */
static PyObject *plain_value(const char **pp, const char *end, Slot *cache, PyObject *prev) {
    const char *p = *pp;
    if (p >= end)
        return NULL;
    char c = *p;
    if (c == '"') {
        const char *s = ++p;
        p = plain_run(p, end);
        while (p < end) {
            unsigned char b = (unsigned char)*p;
            if (b == '"')
                break;
            if (b == '\\' || b < 0x20 || b >= 0x80)
                return NULL;
            p++;
        }
        if (p >= end)
            return NULL;
        *pp = p + 1;
        return cached(cache, s, p - s, K_STR, prev);
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        const char *s = p;
        if (c == '-')
            p++;
        const char *digits = p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        Py_ssize_t int_digits = p - digits;
        if (int_digits == 0 || (int_digits > 1 && digits[0] == '0'))
            return NULL;
        enum kind kind = K_INT;
        Py_ssize_t significant = int_digits;
        if (p < end && *p == '.') {
            const char *frac = ++p;
            while (p < end && *p >= '0' && *p <= '9')
                p++;
            if (p == frac)
                return NULL;
            kind = K_FLOAT;
            significant += p - frac;
        }
        if (p < end && (*p == 'e' || *p == 'E'))
            return NULL;
        if (kind == K_INT ? int_digits > 18 : significant > 15)
            return NULL;
        *pp = p;
        return cached(cache, s, p - s, kind, NULL);
    }
    if (end - p >= 4 && memcmp(p, "true", 4) == 0) {
        *pp = p + 4;
        Py_RETURN_TRUE;
    }
    if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
        *pp = p + 5;
        Py_RETURN_FALSE;
    }
    if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
        *pp = p + 4;
        Py_RETURN_NONE;
    }
    return NULL;
}

/* Decode one line into values[0..nkeys). 1: done; 0: not a plain line of the format (values
   released); -1: an exception (values released). */
static int decode_line(const char *p, const char *end, const Key *keys, Py_ssize_t nkeys,
                       Slot *caches, PyObject **values) {
    Py_ssize_t k = 0;
    p = skip_ws(p, end);
    if (p >= end || *p++ != '{')
        goto fallback;
    for (; k < nkeys; k++) {
        p = skip_ws(p, end);
        if (k > 0) {
            if (p >= end || *p++ != ',')
                goto fallback;
            p = skip_ws(p, end);
        }
        const Key *key = &keys[k];
        if (end - p < key->len + 2 || p[0] != '"' || memcmp(p + 1, key->text, (size_t)key->len) != 0
            || p[key->len + 1] != '"')
            goto fallback;
        p = skip_ws(p + key->len + 2, end);
        if (p >= end || *p++ != ':')
            goto fallback;
        p = skip_ws(p, end);
        values[k] = plain_value(&p, end, &caches[k * CACHE_SLOTS], k > 0 ? values[k - 1] : NULL);
        if (values[k] == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto fallback;
        }
    }
    p = skip_ws(p, end);
    if (p >= end || *p++ != '}')
        goto fallback;
    if (skip_ws(p, end) != end)
        goto fallback;
    return 1;
fallback:
    for (Py_ssize_t j = 0; j < k; j++)
        Py_DECREF(values[j]);
    return 0;
error:
    for (Py_ssize_t j = 0; j < k; j++)
        Py_DECREF(values[j]);
    return -1;
}

/* The text of a line (str or bytes) as bytes, or NULL when it cannot be plain (a non-ASCII
   str: the caller falls back; msgspec decodes it). */
static const char *line_text(PyObject *line, Py_ssize_t *len) {
    if (PyUnicode_Check(line)) {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(line) < 0) { /* a legacy string that cannot be made ready */
            PyErr_Clear();
            return NULL;
        }
#endif
        if (!PyUnicode_IS_ASCII(line))
            return NULL;
        *len = PyUnicode_GET_LENGTH(line);
        return (const char *)PyUnicode_DATA(line);
    }
    if (PyBytes_Check(line)) {
        *len = PyBytes_GET_SIZE(line);
        return PyBytes_AS_STRING(line);
    }
    return NULL;
}

static void release_caches(Slot *caches, Py_ssize_t slots) {
    if (caches == NULL)
        return;
    for (Py_ssize_t i = 0; i < slots; i++)
        Py_XDECREF(caches[i].value);
    PyMem_Free(caches);
}

static PyObject *decode(PyObject *self, PyObject *args) {
    PyObject *lines_arg, *keys_arg;
    if (!PyArg_ParseTuple(args, "OO!:decode", &lines_arg, &PyTuple_Type, &keys_arg))
        return NULL;
    Py_ssize_t nkeys = PyTuple_GET_SIZE(keys_arg);
    if (nkeys < 1 || nkeys > MAX_KEYS) {
        PyErr_Format(PyExc_ValueError, "decode: 1 to %d keys, not %zd", MAX_KEYS, nkeys);
        return NULL;
    }
    Key keys[MAX_KEYS];
    for (Py_ssize_t k = 0; k < nkeys; k++) {
        PyObject *key = PyTuple_GET_ITEM(keys_arg, k);
        if (!PyUnicode_Check(key) || !PyUnicode_IS_ASCII(key)) {
            PyErr_SetString(PyExc_TypeError, "decode: keys must be ASCII str");
            return NULL;
        }
        keys[k].text = (const char *)PyUnicode_DATA(key);
        keys[k].len = PyUnicode_GET_LENGTH(key);
    }
    /* A tuple of our own: the lines (which the caches point into) stay alive and unchanged
       whatever runs during an allocation. */
    PyObject *lines = PySequence_Tuple(lines_arg);
    if (lines == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(lines);
    PyObject *columns = PyList_New(nkeys), *fallback = PyList_New(0);
    Slot *caches = PyMem_Calloc((size_t)nkeys * CACHE_SLOTS, sizeof(Slot));
    PyObject *values[MAX_KEYS];
    if (columns == NULL || fallback == NULL || caches == NULL)
        goto error;
    for (Py_ssize_t k = 0; k < nkeys; k++) {
        PyObject *col = PyList_New(n);
        if (col == NULL)
            goto error;
        PyList_SET_ITEM(columns, k, col);
        for (Py_ssize_t i = 0; i < n; i++) { /* every cell filled: the list is valid on error */
            Py_INCREF(Py_None);
            PyList_SET_ITEM(col, i, Py_None);
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len = 0;
        const char *text = line_text(PyTuple_GET_ITEM(lines, i), &len);
        int done = text == NULL ? 0 : decode_line(text, text + len, keys, nkeys, caches, values);
        if (done < 0)
            goto error;
        if (done == 0) {
            PyObject *row = PyLong_FromSsize_t(i);
            if (row == NULL || PyList_Append(fallback, row) < 0) {
                Py_XDECREF(row);
                goto error;
            }
            Py_DECREF(row);
            continue;
        }
        for (Py_ssize_t k = 0; k < nkeys; k++) {
            PyListObject *col = (PyListObject *)PyList_GET_ITEM(columns, k);
            Py_DECREF(col->ob_item[i]); /* None */
            col->ob_item[i] = values[k];
        }
    }
    release_caches(caches, nkeys * CACHE_SLOTS);
    Py_DECREF(lines);
    return Py_BuildValue("(NN)", columns, fallback);
error:
    release_caches(caches, nkeys * CACHE_SLOTS);
    Py_DECREF(lines);
    Py_XDECREF(columns);
    Py_XDECREF(fallback);
    return NULL;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(lines, keys) -> (columns, fallback_rows): lines of the shipped nginx format "
     "decoded into one list per key; the rows it leaves (None in every column) are for "
     "the caller to decode."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_audit_json",
    "Lines of the shipped nginx access-log format decoded into columns (see the source).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__audit_json(void) { return PyModule_Create(&module); }
