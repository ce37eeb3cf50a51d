/* Compiled encoder of the datum batch envelope (schemas/avro/datum_batch.v1.avsc).
 *
 * encode_datum_batch(datums) writes exactly the bytes fastavro.schemaless_writer writes for
 * {"datums": [{"nodeId", "sourceId", "created", "i", "a", "s", "tags"}, ...]}: arrays and maps as
 * one block (count, items, then 0), longs zig-zag varints, strings and map keys length + UTF-8,
 * doubles 8 bytes little-endian. It returns None for anything it is not sure about (a value that
 * is not an int, str, float or dict where expected, an out-of-range long, a string that is not
 * valid UTF-8), and the caller then uses fastavro, which encodes it or raises as it always did.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *buf;
    size_t len, cap;
} Buf;

static int
reserve(Buf *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *nb = PyMem_Realloc(b->buf, cap);
    if (nb == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->buf = nb;
    b->cap = cap;
    return 0;
}

static inline int
put_long(Buf *b, int64_t v)
{
    if (reserve(b, 10) < 0)
        return -1;
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    char *p = b->buf + b->len;
    while (z >= 0x80) {
        *p++ = (char)((z & 0x7f) | 0x80);
        z >>= 7;
    }
    *p++ = (char)z;
    b->len = (size_t)(p - b->buf);
    return 0;
}

/* 1 ok, 0 unsupported (caller falls back), -1 error */
static int
put_str(Buf *b, PyObject *s)
{
    if (!PyUnicode_Check(s))
        return 0;
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    if (put_long(b, n) < 0 || reserve(b, (size_t)n) < 0)
        return -1;
    memcpy(b->buf + b->len, u, (size_t)n);
    b->len += (size_t)n;
    return 1;
}

static int
put_int(Buf *b, PyObject *v)
{
    if (!PyLong_Check(v))
        return 0;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow)
        return 0;
    return put_long(b, x) < 0 ? -1 : 1;
}

static int
put_double(Buf *b, PyObject *v)
{
    double d;
    if (PyFloat_CheckExact(v))
        d = PyFloat_AS_DOUBLE(v);
    else if (PyFloat_Check(v) || PyLong_Check(v)) {
        d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
    }
    else
        return 0;
    if (reserve(b, 8) < 0)
        return -1;
    if (PyFloat_Pack8(d, b->buf + b->len, 1) < 0)
        return -1;
    b->len += 8;
    return 1;
}

/* a map of doubles (numbers=1) or strings (numbers=0) */
static int
put_map(Buf *b, PyObject *m, int numbers)
{
    if (!PyDict_CheckExact(m))
        return 0;
    Py_ssize_t n = PyDict_GET_SIZE(m), pos = 0;
    PyObject *k, *v;
    if (n > 0) {
        if (put_long(b, n) < 0)
            return -1;
        while (PyDict_Next(m, &pos, &k, &v)) {
            int r = put_str(b, k);
            if (r <= 0)
                return r;
            r = numbers ? put_double(b, v) : put_str(b, v);
            if (r <= 0)
                return r;
        }
    }
    return put_long(b, 0) < 0 ? -1 : 1;
}

static PyObject *names[7]; /* node_id, source_id, created_ms, i, a, s, tags */
/* configure(Datum): the Datum class and where its slots live, to read them without a lookup */
static PyTypeObject *datum_type = NULL;
static Py_ssize_t offsets[7];

static PyObject *
configure(PyObject *self, PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "configure: a class");
        return NULL;
    }
    Py_ssize_t found[7];
    for (int k = 0; k < 7; k++) {
        PyObject *d = PyObject_GetAttr(cls, names[k]);
        if (d == NULL)
            return NULL;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok)
            found[k] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "configure: %R is not an object slot", names[k]);
            return NULL;
        }
    }
    memcpy(offsets, found, sizeof offsets);
    Py_INCREF(cls);
    Py_XSETREF(datum_type, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

static int
put_datum(Buf *b, PyObject *d)
{
    PyObject *v[7] = {NULL};
    int r = 1;
    int direct = Py_IS_TYPE(d, datum_type);
    for (int k = 0; k < 7; k++) {
        if (direct && (v[k] = *(PyObject **)((char *)d + offsets[k])) != NULL)
            Py_INCREF(v[k]);
        else if ((v[k] = PyObject_GetAttr(d, names[k])) == NULL) {
            r = -1;
            goto done;
        }
    }
    if ((r = put_int(b, v[0])) <= 0 || (r = put_str(b, v[1])) <= 0 || (r = put_int(b, v[2])) <= 0 ||
        (r = put_map(b, v[3], 1)) <= 0 || (r = put_map(b, v[4], 1)) <= 0 || (r = put_map(b, v[5], 0)) <= 0)
        goto done;
    /* tags: fastavro writes list(d.tags) */
    if (!PyTuple_CheckExact(v[6]) && !PyList_CheckExact(v[6])) {
        r = 0;
        goto done;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(v[6]);
    if (n > 0) {
        if (put_long(b, n) < 0) {
            r = -1;
            goto done;
        }
        for (Py_ssize_t k = 0; k < n; k++)
            if ((r = put_str(b, PySequence_Fast_GET_ITEM(v[6], k))) <= 0)
                goto done;
    }
    r = put_long(b, 0) < 0 ? -1 : 1;
done:
    for (int k = 0; k < 7; k++)
        Py_XDECREF(v[k]);
    return r;
}

/* One buffer kept from call to call (batches are about the same size each time), so a batch is
 * written without reallocations and copied once into its bytes object. */
static Buf kept = {NULL, 0, 0};
static int kept_in_use = 0;

static PyObject *
encode_datum_batch(PyObject *self, PyObject *datums)
{
    PyObject *seq = PySequence_Fast(datums, "datums must be a sequence");
    if (seq == NULL)
        return NULL;
    /* a fallback attribute lookup can run Python code, which could encode another batch */
    int own = !kept_in_use;
    Buf b = own ? kept : (Buf){NULL, 0, 0};
    b.len = 0;
    kept_in_use = 1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int r = 1;
    if (n > 0 && put_long(&b, n) < 0)
        r = -1;
    for (Py_ssize_t k = 0; r > 0 && k < n; k++)
        r = put_datum(&b, PySequence_Fast_GET_ITEM(seq, k));
    if (r > 0 && put_long(&b, 0) < 0)
        r = -1;
    Py_DECREF(seq);
    PyObject *out = NULL;
    if (r > 0)
        out = PyBytes_FromStringAndSize(b.buf, (Py_ssize_t)b.len);
    else if (r == 0)
        out = Py_NewRef(Py_None);
    if (own) {
        if (b.cap > (64u << 20)) { /* do not keep a huge one */
            PyMem_Free(b.buf);
            b.buf = NULL;
            b.cap = 0;
        }
        kept = b;
        kept_in_use = 0;
    }
    else
        PyMem_Free(b.buf);
    return out;
}

/* ---- decoding, straight into columns ------------------------------------------------------------
 *
 * decode_columns(payload) reads the same envelope into columns: per datum its node, source,
 * created and tags; per sample its datum's index, kind (b"i", b"a" or b"s"), property, number
 * (NaN for a status) and, for a status, its text. It returns None for anything it is not sure
 * about (corrupt or truncated bytes, invalid UTF-8, a key repeated within a map, trailing bytes),
 * and the caller then decodes with fastavro, which either reads it or says exactly why not.
 */

typedef struct {
    const unsigned char *p, *end;
} Rd;

/* 1 ok, 0 malformed */
static inline int
get_long(Rd *r, int64_t *out)
{
    uint64_t z = 0;
    int shift = 0;
    while (r->p < r->end) {
        unsigned char c = *r->p++;
        if (shift == 63 && (c & 0x7e))
            return 0;
        z |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
            return 1;
        }
        shift += 7;
        if (shift > 63)
            return 0;
    }
    return 0;
}

/* a new reference to an interned str, NULL with no error set when malformed, NULL with an error */
static PyObject *
get_str(Rd *r, int intern)
{
    int64_t n;
    if (!get_long(r, &n) || n < 0 || n > (int64_t)(r->end - r->p))
        return NULL;
    PyObject *s = PyUnicode_DecodeUTF8((const char *)r->p, (Py_ssize_t)n, NULL);
    if (s == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            PyErr_Clear();
        return NULL;
    }
    r->p += n;
    if (intern)
        PyUnicode_InternInPlace(&s);
    return s;
}

/* a block count: 1 ok (0 ends), 0 malformed */
static inline int
get_count(Rd *r, int64_t *count)
{
    if (!get_long(r, count))
        return 0;
    if (*count < 0) {
        int64_t size;
        if (*count == INT64_MIN || !get_long(r, &size) || size < 0)
            return 0;
        *count = -*count;
    }
    return 1;
}

typedef struct {
    Buf node, created, datum, kind, value;
    PyObject *sources, *tags, *props, *texts;
} Cols;

static int
put_raw(Buf *b, const void *src, size_t n)
{
    if (reserve(b, n) < 0)
        return -1;
    memcpy(b->buf + b->len, src, n);
    b->len += n;
    return 0;
}

/* 1 ok, 0 malformed, -1 error */
static int
get_map(Rd *r, Cols *c, int32_t index, char kind)
{
    size_t first = PyList_GET_SIZE(c->props);
    int64_t count;
    for (;;) {
        if (!get_count(r, &count))
            return 0;
        if (count == 0)
            return 1;
        for (int64_t k = 0; k < count; k++) {
            PyObject *key = get_str(r, 1);
            if (key == NULL)
                return PyErr_Occurred() ? -1 : 0;
            /* a key repeated within one map: fastavro keeps the last value, left to it */
            Py_ssize_t have = PyList_GET_SIZE(c->props);
            for (Py_ssize_t j = (Py_ssize_t)first; j < have; j++)
                if (PyList_GET_ITEM(c->props, j) == key) {
                    Py_DECREF(key);
                    return 0;
                }
            int rc = PyList_Append(c->props, key);
            Py_DECREF(key);
            if (rc < 0)
                return -1;
            double v;
            if (kind == 's') {
                PyObject *text = get_str(r, 0);
                if (text == NULL)
                    return PyErr_Occurred() ? -1 : 0;
                rc = PyList_Append(c->texts, text);
                Py_DECREF(text);
                if (rc < 0)
                    return -1;
                v = Py_NAN;
            }
            else {
                if (r->end - r->p < 8)
                    return 0;
                memcpy(&v, r->p, 8); /* little-endian hosts only (x86-64, arm64) */
                r->p += 8;
            }
            if (put_raw(&c->datum, &index, 4) < 0 || put_raw(&c->kind, &kind, 1) < 0 ||
                put_raw(&c->value, &v, 8) < 0)
                return -1;
        }
    }
}

static int
get_datum(Rd *r, Cols *c, int32_t index)
{
    int64_t node, created;
    if (!get_long(r, &node))
        return 0;
    PyObject *source = get_str(r, 1);
    if (source == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int rc = PyList_Append(c->sources, source);
    Py_DECREF(source);
    if (rc < 0)
        return -1;
    if (!get_long(r, &created))
        return 0;
    if (put_raw(&c->node, &node, 8) < 0 || put_raw(&c->created, &created, 8) < 0)
        return -1;
    if ((rc = get_map(r, c, index, 'i')) <= 0 || (rc = get_map(r, c, index, 'a')) <= 0 ||
        (rc = get_map(r, c, index, 's')) <= 0)
        return rc;
    PyObject *tags = PyList_New(0);
    if (tags == NULL)
        return -1;
    int64_t count;
    for (;;) {
        if (!get_count(r, &count)) {
            Py_DECREF(tags);
            return 0;
        }
        if (count == 0)
            break;
        for (int64_t k = 0; k < count; k++) {
            PyObject *tag = get_str(r, 1);
            if (tag == NULL) {
                Py_DECREF(tags);
                return PyErr_Occurred() ? -1 : 0;
            }
            rc = PyList_Append(tags, tag);
            Py_DECREF(tag);
            if (rc < 0) {
                Py_DECREF(tags);
                return -1;
            }
        }
    }
    PyObject *tup = PyList_AsTuple(tags);
    Py_DECREF(tags);
    if (tup == NULL)
        return -1;
    rc = PyList_Append(c->tags, tup);
    Py_DECREF(tup);
    return rc < 0 ? -1 : 1;
}

static PyObject *
take(Buf *b)
{
    PyObject *out = PyBytes_FromStringAndSize(b->buf ? b->buf : "", (Py_ssize_t)b->len);
    return out;
}

static PyObject *
decode_columns(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Rd r = {(const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len};
    Cols c = {{0}, {0}, {0}, {0}, {0}, PyList_New(0), PyList_New(0), PyList_New(0), PyList_New(0)};
    PyObject *out = NULL;
    int rc = 1;
    if (!c.sources || !c.tags || !c.props || !c.texts) {
        rc = -1;
        goto done;
    }
    int64_t count, index = 0;
    for (;;) {
        if (!get_count(&r, &count)) {
            rc = 0;
            goto done;
        }
        if (count == 0)
            break;
        for (int64_t k = 0; k < count; k++, index++) {
            if (index >= INT32_MAX) {
                rc = 0;
                goto done;
            }
            if ((rc = get_datum(&r, &c, (int32_t)index)) <= 0)
                goto done;
        }
    }
    if (r.p != r.end) {
        rc = 0;
        goto done;
    }
    out = Py_BuildValue("(NONONNONO)", take(&c.node), c.sources, take(&c.created), c.tags, take(&c.datum),
                        take(&c.kind), c.props, take(&c.value), c.texts);
done:
    if (out == NULL && rc == 0 && !PyErr_Occurred())
        out = Py_NewRef(Py_None);
    PyMem_Free(c.node.buf);
    PyMem_Free(c.created.buf);
    PyMem_Free(c.datum.buf);
    PyMem_Free(c.kind.buf);
    PyMem_Free(c.value.buf);
    Py_XDECREF(c.sources);
    Py_XDECREF(c.tags);
    Py_XDECREF(c.props);
    Py_XDECREF(c.texts);
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_O, "configure(Datum): read Datum slots directly"},
    {"encode_datum_batch", encode_datum_batch, METH_O,
     "encode_datum_batch(datums) -> bytes, or None when fastavro must encode them"},
    {"decode_columns", decode_columns, METH_O,
     "decode_columns(payload) -> (node, sources, created, tags, sample_datum, sample_kind, properties,"
     " values, texts), or None when fastavro must decode it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_avrofast", "Compiled datum batch envelope encoder (see codec.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__avrofast(void)
{
    static const char *attrs[7] = {"node_id", "source_id", "created_ms", "i", "a", "s", "tags"};
    for (int k = 0; k < 7; k++)
        if ((names[k] = PyUnicode_InternFromString(attrs[k])) == NULL)
            return NULL;
    return PyModule_Create(&module);
}
