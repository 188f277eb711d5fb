/* audit_guard.sources._columns: the common case of three column conversions of
   audit_guard.sources.columns in one C pass each (issue #11's throughput target).

   ints(col) -> list | None        columns.ints (to_int, last_int): each value an int, a string
                                   of 1 to 18 ASCII digits, "" or "-" (no value), or None
   seconds_ns(col) -> list | None  columns.seconds_ns (to_ns): each value a float, an int, a
                                   string of ASCII digits with at most one "." between digits,
                                   "" or "-", or None
   texts(col) -> list | None       columns.text_column when every value is a str: the values,
                                   "" and "-" (no value) as None

   Each gives exactly what the Python function gives, or None when some value is of another
   kind: the caller then runs the Python function (which defines the result). Only exact
   types count (a bool is not an int, a str subclass is not a str). The numbers are computed
   as Python computes them: int(text); round(float(value) * 1_000_000) * 1000, with the same
   IEEE double operations (float() of a plain decimal is correctly rounded both ways, and
   round() of a float rounds half to even, as nearbyint does).

   Why: the shipped format's decoder (_audit_json.c) shares one object among equal values, so
   most of a column is the same few objects; the Python functions still pass over the column
   several times (a type scan, a join, a JSON read of the joined digits, min/max checks).
   tests/unit/sources/test_columns_native.py compares every function with the Python path. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

/* "" or "-": nginx's spelling of a variable without a value. */
static int no_value(const char *s, Py_ssize_t n) { return n == 0 || (n == 1 && s[0] == '-'); }

/* A new reference to int(value), None for no value; NULL without an exception: another kind. */
static PyObject *one_int(PyObject *v) {
    if (PyLong_CheckExact(v) || v == Py_None) {
        Py_INCREF(v);
        return v;
    }
    if (!PyUnicode_CheckExact(v) || !PyUnicode_IS_ASCII(v))
        return NULL;
    const char *s = (const char *)PyUnicode_1BYTE_DATA(v);
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    if (no_value(s, n))
        Py_RETURN_NONE;
    if (n > 18)
        return NULL;
    long long out = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return NULL;
        out = out * 10 + (s[i] - '0');
    }
    return PyLong_FromLongLong(out);
}

/* A plain decimal: digits, optionally "." and digits. */
static int plain_decimal(const char *s, Py_ssize_t n) {
    Py_ssize_t i = 0, dot = -1;
    for (; i < n; i++) {
        if (s[i] == '.' && dot < 0 && i > 0)
            dot = i;
        else if (s[i] < '0' || s[i] > '9')
            return 0;
    }
    return n > 0 && dot != n - 1;
}

static PyObject *one_ns(PyObject *v) {
    double d;
    if (v == Py_None) {
        Py_RETURN_NONE;
    } else if (PyFloat_CheckExact(v)) {
        d = PyFloat_AS_DOUBLE(v);
    } else if (PyLong_CheckExact(v)) {
        d = PyLong_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) { /* beyond a double: Python's path says None */
            PyErr_Clear();
            return NULL;
        }
    } else if (PyUnicode_CheckExact(v) && PyUnicode_IS_ASCII(v)) {
        const char *s = (const char *)PyUnicode_1BYTE_DATA(v);
        Py_ssize_t n = PyUnicode_GET_LENGTH(v);
        if (no_value(s, n))
            Py_RETURN_NONE;
        if (n > 40 || !plain_decimal(s, n))
            return NULL;
        d = PyOS_string_to_double(s, NULL, NULL);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return NULL;
        }
    } else {
        return NULL;
    }
    double micros = nearbyint(d * 1000000.0);
    if (!isfinite(micros) || fabs(micros) > 9.0e15) /* the product stays exact in int64 */
        return NULL;
    return PyLong_FromLongLong((long long)micros * 1000);
}

static PyObject *one_text(PyObject *v) {
    if (!PyUnicode_CheckExact(v))
        return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    if (n == 0 || (n == 1 && PyUnicode_READ_CHAR(v, 0) == '-'))
        Py_RETURN_NONE;
    Py_INCREF(v);
    return v;
}

/* `one` over a list: equal neighbours are often one object (the decoder shares them), so the
   last value's result is reused for the same object. */
static PyObject *convert(PyObject *col, PyObject *(*one)(PyObject *)) {
    if (!PyList_CheckExact(col))
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(col);
    PyObject *out = PyList_New(n), *last_in = NULL, *last_out = NULL;
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(col, i), *r;
        if (v == last_in) {
            r = last_out;
            Py_INCREF(r);
        } else {
            r = one(v);
            if (r == NULL) {
                Py_DECREF(out);
                if (PyErr_Occurred())
                    return NULL;
                Py_RETURN_NONE;
            }
            last_in = v;
            last_out = r;
        }
        PyList_SET_ITEM(out, i, r);
    }
    return out;
}

static PyObject *ints(PyObject *self, PyObject *col) { return convert(col, one_int); }
static PyObject *seconds_ns(PyObject *self, PyObject *col) { return convert(col, one_ns); }
static PyObject *texts(PyObject *self, PyObject *col) { return convert(col, one_text); }

static PyMethodDef methods[] = {
    {"ints", ints, METH_O, "ints(col) -> list | None (see the source)"},
    {"seconds_ns", seconds_ns, METH_O, "seconds_ns(col) -> list | None (see the source)"},
    {"texts", texts, METH_O, "texts(col) -> list | None (see the source)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_columns",
    "The common case of column conversions in one C pass each (see the source).", -1, methods,
};

PyMODINIT_FUNC PyInit__columns(void) { return PyModule_Create(&module); }
