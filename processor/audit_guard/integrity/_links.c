/* audit_guard.integrity._links: the chain's link loop in C (issue #14).

   chain_spans(prev, first, spans, id_bytes, seq_key, hash_prefix) -> (hashes, chained spans):
   the links, and each span with its three chain attributes appended, byte for byte what
   chain._chain_spans_py makes (its _links_py and encoding.ChainAttributes). The links:

       hash(seq) = SHA-256( hash(seq-1) || seq as 8 bytes big-endian || SHA-256(content) )

   for seq = first, first + 1, ... and hash(first - 1) = prev. Each link needs the one before,
   so in Python it is a loop of two hashlib calls a record (~0.9 us, most of it hashlib's set-up
   per call); here it is one call a chunk, with OpenSSL's SHA-256 (the library hashlib uses) on
   one reused digest context. tests/unit/integrity/test_links_native.py checks it against the
   Python loop and hashlib. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <openssl/evp.h>

static EVP_MD *sha256_md;  /* fetched once: an implicit fetch per init costs more than a hash */

static int digest(EVP_MD_CTX *ctx, const void *data, size_t len, unsigned char *out) {
    return EVP_DigestInit_ex(ctx, sha256_md, NULL) && EVP_DigestUpdate(ctx, data, len)
           && EVP_DigestFinal_ex(ctx, out, NULL);
}

/* The parts of one record's chain attributes (encoding.ChainAttributes): the id attribute
   (fixed), the seq attribute 0x4a len(kv) kv with kv = seq_key len(value) value and value =
   0x18 varint(seq), the hash attribute's prefix (fixed) and the hash as 64 lowercase hex. */
typedef struct {
    const char *id, *seq_key, *prefix;
    Py_ssize_t id_len, seq_key_len, prefix_len;
} Attributes;

static PyObject *chained_span(const char *span, Py_ssize_t span_len, const Attributes *a,
                              unsigned long long seq, const unsigned char *hash) {
    static const char hex[] = "0123456789abcdef";
    unsigned char value[11];
    int value_len = 1;
    value[0] = 0x18;
    do {
        unsigned char byte = seq & 0x7F;
        seq >>= 7;
        value[value_len++] = seq ? (byte | 0x80) : byte;
    } while (seq);
    Py_ssize_t kv_len = a->seq_key_len + 1 + value_len;
    Py_ssize_t total = span_len + a->id_len + 2 + kv_len + a->prefix_len + 64;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    memcpy(w, span, span_len); w += span_len;
    memcpy(w, a->id, a->id_len); w += a->id_len;
    *w++ = 0x4a;
    *w++ = (char)kv_len;
    memcpy(w, a->seq_key, a->seq_key_len); w += a->seq_key_len;
    *w++ = (char)value_len;
    memcpy(w, value, value_len); w += value_len;
    memcpy(w, a->prefix, a->prefix_len); w += a->prefix_len;
    for (int b = 0; b < 32; b++) {
        *w++ = hex[hash[b] >> 4];
        *w++ = hex[hash[b] & 0xF];
    }
    return out;
}

static PyObject *chain_spans(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer prev;
    PyObject *first, *spans;
    Attributes a;
    if (!PyArg_ParseTuple(args, "y*O!O!y#y#y#:chain_spans", &prev, &PyLong_Type, &first,
                          &PyList_Type, &spans, &a.id, &a.id_len, &a.seq_key, &a.seq_key_len,
                          &a.prefix, &a.prefix_len))
        return NULL;
    unsigned char block[72];
    int ok = prev.len == 32;
    if (ok)
        memcpy(block, prev.buf, 32);
    PyBuffer_Release(&prev);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "chain_spans: prev must be a 32-byte hash");
        return NULL;
    }
    /* seq_key + its length byte + a varint of up to 10 bytes + 0x18 must fit one length byte */
    if (a.seq_key_len > 100) {
        PyErr_SetString(PyExc_ValueError, "chain_spans: seq_key too long for one length byte");
        return NULL;
    }
    unsigned long long seq = PyLong_AsUnsignedLongLong(first);
    if (seq == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(spans);
    if (n > 0 && seq > ULLONG_MAX - (unsigned long long)(n - 1)) {
        PyErr_SetString(PyExc_OverflowError, "chain_spans: seq past 2**64 - 1");
        return NULL;
    }
    PyObject *hashes = PyList_New(n), *chained = PyList_New(n);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (hashes == NULL || chained == NULL || ctx == NULL) {
        if (ctx == NULL && hashes != NULL && chained != NULL)
            PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++, seq++) {
        char *data;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(PyList_GET_ITEM(spans, i), &data, &len) < 0)
            goto fail;
        for (int b = 0; b < 8; b++)
            block[32 + b] = (unsigned char)(seq >> (56 - 8 * b));
        if (!digest(ctx, data, (size_t)len, block + 40) || !digest(ctx, block, 72, block)) {
            PyErr_SetString(PyExc_RuntimeError, "chain_spans: OpenSSL SHA-256 failed");
            goto fail;
        }
        PyObject *hash = PyBytes_FromStringAndSize((const char *)block, 32);
        if (hash == NULL)
            goto fail;
        PyList_SET_ITEM(hashes, i, hash);
        PyObject *span = chained_span(data, len, &a, seq, block);
        if (span == NULL)
            goto fail;
        PyList_SET_ITEM(chained, i, span);
    }
    EVP_MD_CTX_free(ctx);
    PyObject *result = PyTuple_Pack(2, hashes, chained);
    Py_DECREF(hashes);
    Py_DECREF(chained);
    return result;
fail:
    EVP_MD_CTX_free(ctx);  /* NULL is allowed */
    Py_XDECREF(hashes);
    Py_XDECREF(chained);
    return NULL;
}

static PyMethodDef methods[] = {
    {"chain_spans", chain_spans, METH_VARARGS,
     "chain_spans(prev, first, spans, id_bytes, seq_key, hash_prefix) -> (hashes, spans with "
     "their chain attributes): the links and encoding.ChainAttributes in one pass."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_links", "The integrity chain's link loop in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__links(void) {
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (sha256_md == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA256 (EVP_MD_fetch failed)");
        return NULL;
    }
    return PyModule_Create(&module);
}
