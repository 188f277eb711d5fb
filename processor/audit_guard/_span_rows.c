/* audit_guard._span_rows: a batch's spans joined from their fields' columns in one C pass
   (issue #11's throughput target; audit_guard.spans is its Python side and its fallback).

   join(n, parts) -> list of n bytes
   frame(tag, items) -> bytes   (the spans framed into their ScopeSpans; see frame below)

   Span i is the concatenation of every part's piece for row i, in order. A part is:
   - bytes: the same piece in every row (a field tag, a kind every span has);
   - a list of n bytes: row i's piece;
   - (width, list of n bytes): row i's piece cut or zero-padded to `width` bytes, as
     struct's "<Ns" packs it (trace and span ids);
   - (0, list of n ints): row i's int as a little-endian fixed64 (span times), each in
     [0, 2**64).

   What it replaces: struct.pack over the ids and over kind + times (an object a row each),
   then b"".join over a zip of the columns. tests/unit/spans/test_span_rows_native.py checks
   the result against that Python path. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum part_kind { CONST, ROWS, PADDED, FIXED64 };

typedef struct {
    enum part_kind kind;
    PyObject *items; /* CONST: the bytes; else the list (borrowed from `parts`) */
    Py_ssize_t width;
} Part;

#define MAX_PARTS 64

static int read_parts(PyObject *parts, Py_ssize_t n, Part *out, Py_ssize_t *count) {
    if (!PyList_CheckExact(parts) || PyList_GET_SIZE(parts) > MAX_PARTS) {
        PyErr_SetString(PyExc_TypeError, "join: parts must be a list of at most 64 parts");
        return -1;
    }
    *count = PyList_GET_SIZE(parts);
    for (Py_ssize_t k = 0; k < *count; k++) {
        PyObject *part = PyList_GET_ITEM(parts, k), *list = part;
        Part *p = &out[k];
        p->width = 0;
        if (PyBytes_CheckExact(part)) {
            p->kind = CONST;
            p->items = part;
            continue;
        }
        if (PyTuple_CheckExact(part) && PyTuple_GET_SIZE(part) == 2) {
            p->width = PyLong_AsSsize_t(PyTuple_GET_ITEM(part, 0));
            if (p->width < 0) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "join: a negative width");
                return -1;
            }
            list = PyTuple_GET_ITEM(part, 1);
            p->kind = p->width ? PADDED : FIXED64;
        } else {
            p->kind = ROWS;
        }
        if (!PyList_CheckExact(list) || PyList_GET_SIZE(list) != n) {
            PyErr_Format(PyExc_ValueError, "join: part %zd is not a list of %zd rows", k, n);
            return -1;
        }
        p->items = list;
    }
    return 0;
}

/* Row i's piece of part p: its size (-1 with an exception: a value of the wrong type). */
static Py_ssize_t piece_size(const Part *p, Py_ssize_t i) {
    switch (p->kind) {
    case CONST:
        return PyBytes_GET_SIZE(p->items);
    case PADDED:
        return p->width;
    case FIXED64:
        return 8;
    default: {
        PyObject *v = PyList_GET_ITEM(p->items, i);
        if (!PyBytes_CheckExact(v)) {
            PyErr_SetString(PyExc_TypeError, "join: a row's piece is not bytes");
            return -1;
        }
        return PyBytes_GET_SIZE(v);
    }
    }
}

static int write_piece(const Part *p, Py_ssize_t i, char *at) {
    switch (p->kind) {
    case CONST:
        memcpy(at, PyBytes_AS_STRING(p->items), (size_t)PyBytes_GET_SIZE(p->items));
        return 0;
    case ROWS: {
        PyObject *v = PyList_GET_ITEM(p->items, i);
        memcpy(at, PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v));
        return 0;
    }
    case PADDED: {
        PyObject *v = PyList_GET_ITEM(p->items, i);
        if (!PyBytes_CheckExact(v)) {
            PyErr_SetString(PyExc_TypeError, "join: an id is not bytes");
            return -1;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(v) < p->width ? PyBytes_GET_SIZE(v) : p->width;
        memcpy(at, PyBytes_AS_STRING(v), (size_t)len);
        memset(at + len, 0, (size_t)(p->width - len));
        return 0;
    }
    default: {
        unsigned long long value = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(p->items, i));
        if (value == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        for (int b = 0; b < 8; b++)
            at[b] = (char)((value >> (8 * b)) & 0xff);
        return 0;
    }
    }
}

static PyObject *join(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    PyObject *parts_arg;
    if (!PyArg_ParseTuple(args, "nO:join", &n, &parts_arg))
        return NULL;
    Part parts[MAX_PARTS];
    Py_ssize_t count;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "join: n < 0");
        return NULL;
    }
    if (read_parts(parts_arg, n, parts, &count) < 0)
        return NULL;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t size = 0;
        for (Py_ssize_t k = 0; k < count; k++) {
            Py_ssize_t s = piece_size(&parts[k], i);
            if (s < 0)
                goto error;
            size += s;
        }
        PyObject *span = PyBytes_FromStringAndSize(NULL, size);
        if (span == NULL)
            goto error;
        PyList_SET_ITEM(out, i, span);
        char *at = PyBytes_AS_STRING(span);
        for (Py_ssize_t k = 0; k < count; k++) {
            if (write_piece(&parts[k], i, at) < 0)
                goto error;
            at += piece_size(&parts[k], i);
        }
    }
    return out;
error:
    Py_DECREF(out); /* unfilled slots are NULL: list_dealloc skips them */
    return NULL;
}

/* frame(tag, items) -> bytes: each item as a length-delimited protobuf field (tag, varint
   length, the item), all concatenated: a message's repeated field, e.g. ScopeSpans.spans. */
static PyObject *frame(PyObject *self, PyObject *args) {
    PyObject *tag, *items;
    if (!PyArg_ParseTuple(args, "SO!:frame", &tag, &PyList_Type, &items))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items), tag_len = PyBytes_GET_SIZE(tag), size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyBytes_CheckExact(item)) {
            PyErr_SetString(PyExc_TypeError, "frame: an item is not bytes");
            return NULL;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(item), varint = 1;
        for (size_t v = (size_t)len; v >= 0x80; v >>= 7)
            varint++;
        size += tag_len + varint + len;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    unsigned char *at = (unsigned char *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        size_t len = (size_t)PyBytes_GET_SIZE(item);
        memcpy(at, PyBytes_AS_STRING(tag), (size_t)tag_len);
        at += tag_len;
        for (size_t v = len;; v >>= 7) {
            if (v < 0x80) {
                *at++ = (unsigned char)v;
                break;
            }
            *at++ = (unsigned char)((v & 0x7f) | 0x80);
        }
        memcpy(at, PyBytes_AS_STRING(item), len);
        at += len;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"join", join, METH_VARARGS,
     "join(n, parts) -> [bytes] * n: each row's pieces of every part, joined (see the source)."},
    {"frame", frame, METH_VARARGS,
     "frame(tag, items) -> bytes: each item as a length-delimited field (see the source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_span_rows",
    "A batch's spans joined from their fields' columns in one pass (see the source).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__span_rows(void) { return PyModule_Create(&module); }
