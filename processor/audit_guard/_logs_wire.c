/* audit_guard._logs_wire: an OTLP ExportLogsServiceRequest read straight from its serialized
   bytes, for the usual shape of what the collector's file_log receivers send (issue #11's
   throughput target; audit_guard.wire is its Python side).

   read(raw) -> (read_ns, resources, segments) | None

   - read_ns: the first record's observed_time_unix_nano, else its time_unix_nano (0: none)
   - resources: one (audit.source value | None, (serialized KeyValue, ...)) per ResourceLogs,
     the KeyValues being the resource's other attributes exactly as they came
   - segments: one [resource index, serialized log.file.path KeyValue | None, [body, ...],
     [log.file.record_offset, ...] | None] per run of records of one ScopeLogs that name the
     same file, in request order

   None: the request is not of that shape, and the caller parses it with protobuf (upb), as
   before. The shape: every record's body a non-empty string; no record carrying
   audit.source; record attributes holding scalars only; log.file.path (and the resource's
   attributes) a string KeyValue serialized canonically, so that the bytes kept are the bytes
   protobuf would serialize again; log.file.record_offset an int on every record or on none;
   no repeated singular field, no field of a known number with another wire type, no group;
   every string UTF-8 (upb refuses a request otherwise, and so does the caller then).

   Why: parsing a request with upb and reading each record's body through it made a Python
   message object per record (~0.8 µs a record of the ~8 the service spends). Here the bodies
   are the only objects made. tests/unit/otlp/test_wire.py checks the result against upb's on
   requests of every shape (hypothesis). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* 1: read; 0: not the usual shape (the caller falls back to upb); -1: a Python error. */
#define OK 1
#define OTHER 0
#define ERR (-1)

typedef struct {
    const uint8_t *p, *end;
} Cursor;

static int varint(Cursor *c, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && c->p < c->end; shift += 7) {
        uint8_t b = *c->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return OK;
        }
    }
    return OTHER;
}

/* A length-delimited field's body, its length written in the fewest bytes (as every
   serializer writes it; the kept KeyValues must be byte for byte what protobuf would write). */
static int delimited(Cursor *c, Cursor *body) {
    const uint8_t *start = c->p;
    uint64_t n;
    if (varint(c, &n) != OK || (c->p - start > 1 && c->p[-1] == 0) ||
        n > (uint64_t)(c->end - c->p))
        return OTHER;
    body->p = c->p;
    body->end = c->p + n;
    c->p += n;
    return OK;
}

/* Skip a field of wire type `wt` (its tag read). Groups (3, 4) are not read. */
static int skip(Cursor *c, int wt) {
    uint64_t ignored;
    Cursor body;
    switch (wt) {
    case 0:
        return varint(c, &ignored);
    case 1:
        if (c->end - c->p < 8)
            return OTHER;
        c->p += 8;
        return OK;
    case 2:
        return delimited(c, &body);
    case 5:
        if (c->end - c->p < 4)
            return OTHER;
        c->p += 4;
        return OK;
    default:
        return OTHER;
    }
}

static int tag(Cursor *c, uint32_t *field, int *wt) {
    uint64_t t;
    if (varint(c, &t) != OK || (t >> 3) == 0 || (t >> 3) > 0x1fffffff)
        return OTHER;
    *field = (uint32_t)(t >> 3);
    *wt = (int)(t & 7);
    return OK;
}

static int fixed64(Cursor *c, uint64_t *out) {
    if (c->end - c->p < 8)
        return OTHER;
    memcpy(out, c->p, 8); /* little-endian, as every machine this runs on */
    c->p += 8;
    return OK;
}

/* Strict UTF-8 (no surrogates, no overlong forms), as upb checks proto3 strings. */
static int utf8(Cursor s) {
    const uint8_t *p = s.p, *end = s.end;
    while (p < end) {
        uint8_t b = *p;
        if (b < 0x80) {
            p++;
            continue;
        }
        int n;
        uint32_t cp;
        if (b >= 0xc2 && b <= 0xdf) {
            n = 1;
            cp = b & 0x1f;
        } else if (b >= 0xe0 && b <= 0xef) {
            n = 2;
            cp = b & 0x0f;
        } else if (b >= 0xf0 && b <= 0xf4) {
            n = 3;
            cp = b & 0x07;
        } else {
            return OTHER;
        }
        if (end - p <= n)
            return OTHER;
        for (int i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return OTHER;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return OTHER;
        p += n + 1;
    }
    return OK;
}

static int equals(Cursor s, const char *text) {
    size_t n = strlen(text);
    return (size_t)(s.end - s.p) == n && memcmp(s.p, text, n) == 0;
}

/* A KeyValue whose value is a string, serialized canonically: key (field 1, non-empty), then
   value (field 2) holding only string_value (field 1, non-empty). */
static int string_kv(Cursor kv, Cursor *key, Cursor *value) {
    Cursor c = kv, any;
    if (c.p >= c.end || *c.p++ != 0x0a || delimited(&c, key) != OK || key->p == key->end)
        return OTHER;
    if (c.p >= c.end || *c.p++ != 0x12 || delimited(&c, &any) != OK || c.p != c.end)
        return OTHER;
    if (any.p >= any.end || *any.p++ != 0x0a || delimited(&any, value) != OK ||
        any.p != any.end || value->p == value->end)
        return OTHER;
    return utf8(*key) == OK && utf8(*value) == OK ? OK : OTHER;
}

/* An AnyValue of a record attribute other than the ones read: a scalar (strings checked). */
static int scalar_any(Cursor c) {
    uint32_t field;
    int wt;
    while (c.p < c.end) {
        if (tag(&c, &field, &wt) != OK)
            return OTHER;
        if (field == 1 && wt == 2) { /* string_value */
            Cursor s;
            if (delimited(&c, &s) != OK || utf8(s) != OK)
                return OTHER;
        } else if ((field == 2 || field == 3) && wt == 0) { /* bool, int */
            if (skip(&c, wt) != OK)
                return OTHER;
        } else if ((field == 4 && wt == 1) || (field == 7 && wt == 2)) { /* double, bytes */
            if (skip(&c, wt) != OK)
                return OTHER;
        } else {
            return OTHER; /* an array or map (strings inside), or anything unknown */
        }
    }
    return OK;
}

/* A record's KeyValue attribute, any layout: its key (checked), its value's bytes. */
static int any_kv(Cursor kv, Cursor *key, Cursor *value) {
    uint32_t field;
    int wt, have_key = 0, have_value = 0;
    key->p = key->end = kv.p;
    value->p = value->end = kv.p;
    while (kv.p < kv.end) {
        if (tag(&kv, &field, &wt) != OK)
            return OTHER;
        if (field == 1 && wt == 2 && !have_key) {
            if (delimited(&kv, key) != OK || utf8(*key) != OK)
                return OTHER;
            have_key = 1;
        } else if (field == 2 && wt == 2 && !have_value) {
            if (delimited(&kv, value) != OK)
                return OTHER;
            have_value = 1;
        } else {
            return OTHER;
        }
    }
    return OK;
}

/* int_value (field 3) alone. */
static int int_any(Cursor c, int64_t *out) {
    uint64_t v;
    if (c.p >= c.end || *c.p++ != 0x18 || varint(&c, &v) != OK || c.p != c.end)
        return OTHER;
    *out = (int64_t)v;
    return OK;
}

typedef struct {
    PyObject *body;         /* new reference */
    Cursor path;            /* the whole log.file.path KeyValue; p == NULL: none */
    int has_offset;
    int64_t offset;
    uint64_t time, observed;
} Record;

static int read_record(Cursor c, Record *r) {
    uint32_t field;
    int wt;
    memset(r, 0, sizeof *r);
    while (c.p < c.end) {
        if (tag(&c, &field, &wt) != OK)
            return OTHER;
        Cursor sub, key, value;
        switch (field) {
        case 1: /* time_unix_nano */
        case 11: /* observed_time_unix_nano */
            if (wt != 1 || fixed64(&c, field == 1 ? &r->time : &r->observed) != OK)
                return OTHER;
            break;
        case 3: /* severity_text */
        case 12: /* event_name */
            if (wt != 2 || delimited(&c, &sub) != OK || utf8(sub) != OK)
                return OTHER;
            break;
        case 2: /* severity_number */
        case 7: /* dropped_attributes_count */
            if (wt != 0 || skip(&c, wt) != OK)
                return OTHER;
            break;
        case 8: /* flags */
            if (wt != 5 || skip(&c, wt) != OK)
                return OTHER;
            break;
        case 9: /* trace_id */
        case 10: /* span_id */
            if (wt != 2 || skip(&c, wt) != OK)
                return OTHER;
            break;
        case 5: /* body: string_value alone, non-empty */
            if (wt != 2 || r->body != NULL || delimited(&c, &sub) != OK)
                return OTHER;
            if (sub.p >= sub.end || *sub.p++ != 0x0a || delimited(&sub, &value) != OK ||
                sub.p != sub.end || value.p == value.end)
                return OTHER;
            r->body = PyUnicode_DecodeUTF8((const char *)value.p, value.end - value.p, NULL);
            if (r->body == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                    return ERR;
                PyErr_Clear();
                return OTHER;
            }
            break;
        case 6: /* attributes */
            if (wt != 2 || delimited(&c, &sub) != OK || any_kv(sub, &key, &value) != OK)
                return OTHER;
            if (equals(key, "log.file.path")) {
                Cursor k2, v2;
                if (r->path.p != NULL || string_kv(sub, &k2, &v2) != OK)
                    return OTHER;
                r->path = sub;
            } else if (equals(key, "log.file.record_offset")) {
                if (r->has_offset || int_any(value, &r->offset) != OK)
                    return OTHER;
                r->has_offset = 1;
            } else if (equals(key, "audit.source") || scalar_any(value) != OK) {
                return OTHER;
            }
            break;
        default: /* a field this reader does not know: kept by upb, unread by the caller */
            if (skip(&c, wt) != OK)
                return OTHER;
        }
    }
    return r->body != NULL ? OK : OTHER;
}

typedef struct {
    PyObject *resources, *segments;
    int offsets_seen; /* 1: records with an offset, 2: without, 3: both (not read) */
    int have_first;
    uint64_t read_ns;
} Reader;

static int bytes_of(Cursor s, PyObject **out) {
    *out = PyBytes_FromStringAndSize((const char *)s.p, s.end - s.p);
    return *out == NULL ? ERR : OK;
}

/* A new segment [resource, path, [], [] | None] appended to the reader's (borrowed). */
static PyObject *new_segment(Reader *rd, Py_ssize_t resource, Cursor path, int with_offsets) {
    PyObject *items[4] = {
        PyLong_FromSsize_t(resource),
        path.p != NULL ? PyBytes_FromStringAndSize((const char *)path.p, path.end - path.p)
                       : Py_NewRef(Py_None),
        PyList_New(0),
        with_offsets ? PyList_New(0) : Py_NewRef(Py_None),
    };
    PyObject *segment = PyList_New(4);
    for (int i = 0; i < 4; i++) {
        if (items[i] == NULL || segment == NULL) {
            for (int j = 0; j < 4; j++)
                Py_XDECREF(items[j]);
            Py_XDECREF(segment);
            return NULL;
        }
    }
    for (int i = 0; i < 4; i++)
        PyList_SET_ITEM(segment, i, items[i]);
    int failed = PyList_Append(rd->segments, segment);
    Py_DECREF(segment);
    return failed ? NULL : segment;
}

static int read_scope_logs(Reader *rd, Cursor c, Py_ssize_t resource) {
    uint32_t field;
    int wt, status;
    PyObject *segment = NULL;
    Cursor path = {NULL, NULL};
    while (c.p < c.end) {
        if (tag(&c, &field, &wt) != OK)
            return OTHER;
        Cursor sub;
        if (field == 1 || field == 3) { /* scope, schema_url */
            if (wt != 2 || delimited(&c, &sub) != OK)
                return OTHER;
            if (field == 3 && utf8(sub) != OK)
                return OTHER;
            while (field == 1 && sub.p < sub.end) { /* InstrumentationScope */
                uint32_t f;
                int w;
                Cursor s;
                if (tag(&sub, &f, &w) != OK)
                    return OTHER;
                if ((f == 1 || f == 2) && w == 2) { /* name, version */
                    if (delimited(&sub, &s) != OK || utf8(s) != OK)
                        return OTHER;
                } else if (f == 4 && w == 0) { /* dropped_attributes_count */
                    if (skip(&sub, w) != OK)
                        return OTHER;
                } else {
                    return OTHER; /* its attributes, or anything unknown */
                }
            }
            continue;
        }
        if (field != 2) {
            if (skip(&c, wt) != OK)
                return OTHER;
            continue;
        }
        Record r;
        if (wt != 2 || delimited(&c, &sub) != OK)
            return OTHER;
        if ((status = read_record(sub, &r)) != OK) {
            Py_XDECREF(r.body);
            return status;
        }
        rd->offsets_seen |= r.has_offset ? 1 : 2;
        if (rd->offsets_seen == 3) {
            Py_DECREF(r.body);
            return OTHER;
        }
        if (!rd->have_first) {
            rd->have_first = 1;
            rd->read_ns = r.observed ? r.observed : r.time;
        }
        int same_path = segment != NULL &&
                        (path.p == NULL ? r.path.p == NULL
                                        : r.path.p != NULL && r.path.end - r.path.p == path.end - path.p &&
                                              memcmp(r.path.p, path.p, path.end - path.p) == 0);
        if (!same_path) {
            segment = new_segment(rd, resource, r.path, r.has_offset);
            path = r.path;
            if (segment == NULL) {
                Py_DECREF(r.body);
                return ERR;
            }
        }
        if (PyList_Append(PyList_GET_ITEM(segment, 2), r.body) < 0) {
            Py_DECREF(r.body);
            return ERR;
        }
        Py_DECREF(r.body);
        if (r.has_offset) {
            PyObject *offset = PyLong_FromLongLong(r.offset);
            if (offset == NULL || PyList_Append(PyList_GET_ITEM(segment, 3), offset) < 0) {
                Py_XDECREF(offset);
                return ERR;
            }
            Py_DECREF(offset);
        }
    }
    return OK;
}

/* The resource's audit.source (new reference, or None) and its other attributes (a tuple). */
static int read_resource(Cursor c, PyObject **source, PyObject **attributes) {
    uint32_t field;
    int wt;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return ERR;
    while (c.p < c.end) {
        Cursor kv, key, value;
        if (tag(&c, &field, &wt) != OK)
            goto other;
        if (field == 2 && wt == 0) { /* dropped_attributes_count */
            if (skip(&c, wt) != OK)
                goto other;
            continue;
        }
        if (field != 1 || wt != 2 || delimited(&c, &kv) != OK || string_kv(kv, &key, &value) != OK)
            goto other; /* entity refs, non-string attributes, anything unknown */
        if (equals(key, "audit.source")) {
            if (*source != NULL)
                goto other;
            *source = PyUnicode_DecodeUTF8((const char *)value.p, value.end - value.p, NULL);
            if (*source == NULL)
                goto error;
            continue;
        }
        PyObject *item;
        if (bytes_of(kv, &item) != OK)
            goto error;
        int failed = PyList_Append(list, item);
        Py_DECREF(item);
        if (failed)
            goto error;
    }
    *attributes = PyList_AsTuple(list);
    Py_DECREF(list);
    if (*attributes == NULL)
        return ERR;
    if (*source == NULL) {
        Py_INCREF(Py_None);
        *source = Py_None;
    }
    return OK;
other:
    Py_DECREF(list);
    return OTHER;
error:
    Py_DECREF(list);
    return ERR;
}

static int read_resource_logs(Reader *rd, Cursor c) {
    uint32_t field;
    int wt, status;
    Cursor scan = c, sub, resource = {NULL, NULL};
    while (scan.p < scan.end) { /* the resource first: it may come after the scopes */
        if (tag(&scan, &field, &wt) != OK)
            return OTHER;
        if (field == 1) {
            if (wt != 2 || resource.p != NULL || delimited(&scan, &resource) != OK)
                return OTHER;
        } else if (field == 2 || field == 3) {
            if (wt != 2 || delimited(&scan, &sub) != OK || (field == 3 && utf8(sub) != OK))
                return OTHER;
        } else if (skip(&scan, wt) != OK) {
            return OTHER;
        }
    }
    PyObject *source = NULL, *attributes = NULL;
    if (resource.p == NULL) {
        Py_INCREF(Py_None);
        source = Py_None;
        attributes = PyTuple_New(0);
        if (attributes == NULL) {
            Py_DECREF(source);
            return ERR;
        }
    } else if ((status = read_resource(resource, &source, &attributes)) != OK) {
        Py_XDECREF(source);
        return status;
    }
    PyObject *pair = PyTuple_Pack(2, source, attributes);
    Py_DECREF(source);
    Py_DECREF(attributes);
    if (pair == NULL)
        return ERR;
    int failed = PyList_Append(rd->resources, pair);
    Py_DECREF(pair);
    if (failed)
        return ERR;
    Py_ssize_t index = PyList_GET_SIZE(rd->resources) - 1;
    while (c.p < c.end) {
        if (tag(&c, &field, &wt) != OK)
            return OTHER;
        if (field != 2) {
            if (skip(&c, wt) != OK)
                return OTHER;
            continue;
        }
        if (delimited(&c, &sub) != OK)
            return OTHER;
        if ((status = read_scope_logs(rd, sub, index)) != OK)
            return status;
    }
    return OK;
}

static PyObject *read_request(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Reader rd = {PyList_New(0), PyList_New(0), 0, 0, 0};
    Cursor c = {view.buf, (const uint8_t *)view.buf + view.len};
    int status = rd.resources && rd.segments ? OK : ERR;
    while (status == OK && c.p < c.end) {
        uint32_t field;
        int wt;
        Cursor sub;
        if (tag(&c, &field, &wt) != OK) {
            status = OTHER;
        } else if (field != 1) {
            status = skip(&c, wt);
        } else if (wt != 2 || delimited(&c, &sub) != OK) {
            status = OTHER;
        } else {
            status = read_resource_logs(&rd, sub);
        }
    }
    PyBuffer_Release(&view);
    if (status == OK)
        return Py_BuildValue("(KNN)", (unsigned long long)rd.read_ns, rd.resources,
                             rd.segments);
    Py_XDECREF(rd.resources);
    Py_XDECREF(rd.segments);
    if (status == ERR)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"read", read_request, METH_O,
     "read(raw) -> (read_ns, resources, segments) | None: an OTLP logs request of the usual "
     "shape read from its bytes; None for any other (parse it with protobuf)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_logs_wire",
    "OTLP logs requests of the usual shape read from their bytes (see the source).", -1, methods,
};

PyMODINIT_FUNC PyInit__logs_wire(void) { return PyModule_Create(&module); }
