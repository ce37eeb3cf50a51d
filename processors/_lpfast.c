/* Compiled fast path for InfluxDB line protocol (see processors/line_protocol.py).
 *
 * Pure computation, no I/O. It decodes the common shape of a line and declines everything else,
 * so that the pure-Python parser decides every unusual line:
 *
 *     measurement[,key=value...] key=value[,key=value...][ timestamp][\r]\n
 *
 * with single spaces, no backslash, no control character, and values that are Go-syntax decimal
 * floats without underscores, NNi / NNu integers in range, the ten boolean spellings or "strings"
 * without backslash. Measurement, tag and key text may be any valid UTF-8. Anything else (escapes,
 * comments, blank lines, errors, out-of-range numbers, invalid UTF-8, ...) is declined: the
 * caller hands that line to the pure-Python parser. A declined line is never an error by itself.
 *
 * Two entry points walk a list of items (bytes or str, one physical line each) from a start index
 * and stop at the first line they decline:
 *
 *   parse_points: appends a Point per line.
 *   parse_datums: appends a Datum per line under the default classification (numbers to i, booleans
 *                 and strings to s, sentinels left out), or the Point when the line needs the
 *                 Python mapping (unknown identity, no time, no samples).
 *
 * Points and Datums are built without running their (dataclass) __init__: the instance is
 * allocated and its slots are set through the class's member descriptors. configure() checks that
 * the classes have exactly those slots.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_FIELDS 128
#define HEAD_SLOTS 1024
#define KEY_SLOTS 2048

/* ------------------------------------------------------------------------------------------ */
/* configuration */

static PyTypeObject *point_type = NULL;
static PyTypeObject *datum_type = NULL;
static PyObject *unsigned_type = NULL;
static PyObject *point_descr[5]; /* measurement, tags, fields, time_ns, line_no */
static PyObject *datum_descr[7]; /* node_id, source_id, created_ms, i, a, s, tags */
static PyObject *str_true = NULL, *str_false = NULL;

static int
load_descriptors(PyObject *cls, PyObject *names, PyObject **out, Py_ssize_t count)
{
    if (!PyType_Check(cls) || !PyTuple_Check(names) || PyTuple_GET_SIZE(names) != count) {
        PyErr_SetString(PyExc_TypeError, "configure: a class and a tuple of its slot names");
        return -1;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *d = PyObject_GetAttr(cls, PyTuple_GET_ITEM(names, k));
        if (d == NULL)
            return -1;
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type) || Py_TYPE(d)->tp_descr_set == NULL) {
            Py_DECREF(d);
            PyErr_Format(PyExc_TypeError, "configure: %R is not a slot", PyTuple_GET_ITEM(names, k));
            return -1;
        }
        Py_XSETREF(out[k], d);
    }
    return 0;
}

static PyObject *
lp_configure(PyObject *self, PyObject *args)
{
    PyObject *point, *point_names, *unsigned_cls, *datum, *datum_names;
    if (!PyArg_ParseTuple(args, "OOOOO:configure", &point, &point_names, &unsigned_cls, &datum,
                          &datum_names))
        return NULL;
    if (load_descriptors(point, point_names, point_descr, 5) < 0 ||
        load_descriptors(datum, datum_names, datum_descr, 7) < 0)
        return NULL;
    Py_INCREF(point);
    Py_XSETREF(point_type, (PyTypeObject *)point);
    Py_INCREF(datum);
    Py_XSETREF(datum_type, (PyTypeObject *)datum);
    Py_INCREF(unsigned_cls);
    Py_XSETREF(unsigned_type, unsigned_cls);
    Py_RETURN_NONE;
}

/* Set a slot through its member descriptor; steals the reference to value. */
static inline int
set_slot(PyObject *descr, PyObject *obj, PyObject *value)
{
    int r = Py_TYPE(descr)->tp_descr_set(descr, obj, value);
    Py_DECREF(value);
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* caches: raw bytes -> decoded objects (field keys, and whole heads: measurement + tags) */

typedef struct {
    PyObject *raw;   /* bytes */
    PyObject *meas;  /* str */
    PyObject *tags;  /* tuple of (str, str) */
    PyObject *owner; /* who resolved ident (a mapper), or NULL */
    PyObject *ident;
} HeadEntry;

typedef struct {
    PyObject *raw; /* bytes */
    PyObject *str;
} KeyEntry;

static HeadEntry heads[HEAD_SLOTS];
static KeyEntry keys[KEY_SLOTS];
static KeyEntry last_keys[MAX_FIELDS]; /* the field keys of the last line, by position */

static inline uint64_t
hash_bytes(const char *p, Py_ssize_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, (size_t)n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return h;
}

static inline int
same_raw(PyObject *raw, const char *p, Py_ssize_t n)
{
    return raw != NULL && PyBytes_GET_SIZE(raw) == n && memcmp(PyBytes_AS_STRING(raw), p, (size_t)n) == 0;
}

/* After a failed decode: 0 when it was invalid UTF-8 (cleared: decline), -1 for other errors. */
static int
decode_failed(void)
{
    if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* A field key as str (new reference); NULL with *status 0 (invalid UTF-8) or -1 (error). */
static PyObject *
key_str(const char *p, Py_ssize_t n, int *status)
{
    KeyEntry *e = &keys[hash_bytes(p, n) & (KEY_SLOTS - 1)];
    if (same_raw(e->raw, p, n)) {
        Py_INCREF(e->str);
        return e->str;
    }
    PyObject *s = PyUnicode_DecodeUTF8(p, n, NULL);
    if (s == NULL) {
        *status = decode_failed();
        return NULL;
    }
    PyObject *raw = PyBytes_FromStringAndSize(p, n);
    if (raw == NULL) {
        Py_DECREF(s);
        *status = -1;
        return NULL;
    }
    Py_XSETREF(e->raw, raw);
    Py_INCREF(s);
    Py_XSETREF(e->str, s);
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* character classes */

enum { C_PLAIN = 0, C_COMMA, C_SPACE, C_EQ, C_QUOTE, C_BAD };
static unsigned char cls[256];

static void
init_classes(void)
{
    for (int c = 0; c < 256; c++)
        cls[c] = (c < 0x20 || c == 0x7f || c == '\\') ? C_BAD : C_PLAIN;
    cls[(unsigned char)','] = C_COMMA;
    cls[(unsigned char)' '] = C_SPACE;
    cls[(unsigned char)'='] = C_EQ;
    cls[(unsigned char)'"'] = C_QUOTE;
}

#define CL(c) cls[(unsigned char)(c)]
#define IS_DIGIT(c) ((unsigned char)((c) - '0') < 10)

/* ------------------------------------------------------------------------------------------ */
/* values */

/* -?[0-9]+ within int64 (allow_sign) or [0-9]+ within uint64. */
static int
parse_int(const char *p, Py_ssize_t n, int allow_sign, int64_t *out_i, uint64_t *out_u)
{
    Py_ssize_t i = 0;
    int neg = 0;
    if (allow_sign && n > 0 && p[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i >= n)
        return 0;
    uint64_t v = 0;
    for (; i < n; i++) {
        unsigned c = (unsigned char)p[i] - '0';
        if (c > 9 || v > (UINT64_MAX - c) / 10)
            return 0;
        v = v * 10 + c;
    }
    if (!allow_sign) {
        *out_u = v;
        return 1;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1)
            return 0;
        *out_i = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    }
    else {
        if (v > (uint64_t)INT64_MAX)
            return 0;
        *out_i = (int64_t)v;
    }
    return 1;
}

static const double POW10[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* Go's decimal float syntax without underscores, -?(D(.D?)?|.D)([eE][+-]?D)?, to a double.
 * 1 ok, 0 decline (syntax, or not finite), -1 error.
 *
 * Clinger's fast path when the digits fit in 2^53 and the decimal exponent is within 22: the
 * mantissa and the power of ten are then exact doubles, and one IEEE multiplication or division
 * rounds correctly, so the result is the one float() gives. Only where double arithmetic is
 * plain IEEE (FLT_EVAL_METHOD 0, e.g. SSE2); otherwise, and for longer numbers, Python's own
 * correctly rounded PyOS_string_to_double decides. */
static int
parse_float(const char *p, Py_ssize_t n, double *out)
{
    Py_ssize_t i = 0, start;
    int neg = 0;
    if (i < n && p[i] == '-') {
        neg = 1;
        i++;
    }
    uint64_t m = 0;
    int digits = 0; /* significant digits in m */
    start = i;
    /* The integer and the fraction digits are accumulated by the same loop, written out twice on
     * purpose: it is the inner loop of every float value; a helper would need i, m and digits back. */
    while (i < n && IS_DIGIT(p[i])) {
        if (m || p[i] != '0') {
            m = m * 10 + (uint64_t)(p[i] - '0');
            if (++digits > 15)
                goto slow_syntax;
        }
        i++;
    }
    Py_ssize_t int_digits = i - start, frac_digits = 0;
    if (i < n && p[i] == '.') {
        i++;
        start = i;
        while (i < n && IS_DIGIT(p[i])) {
            if (m || p[i] != '0') {
                m = m * 10 + (uint64_t)(p[i] - '0');
                if (++digits > 15)
                    goto slow_syntax;
            }
            i++;
        }
        frac_digits = i - start;
    }
    if (int_digits == 0 && frac_digits == 0)
        return 0;
    long exp = 0;
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        int eneg = 0;
        i++;
        if (i < n && (p[i] == '+' || p[i] == '-'))
            eneg = p[i++] == '-';
        start = i;
        while (i < n && IS_DIGIT(p[i])) {
            if (exp < 100000)
                exp = exp * 10 + (p[i] - '0');
            i++;
        }
        if (i == start)
            return 0;
        if (eneg)
            exp = -exp;
    }
    if (i != n)
        return 0;
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    {
        long e = exp - (long)frac_digits;
        if (e >= -22 && e <= 22) {
            double d = (double)m;
            d = e < 0 ? d / POW10[-e] : d * POW10[e];
            *out = neg ? -d : d;
            return 1;
        }
    }
#endif
    goto slow;
slow_syntax: /* more than 15 digits: check the syntax, then let Python convert */
    {
        Py_ssize_t j = neg, s0 = j;
        while (j < n && IS_DIGIT(p[j]))
            j++;
        Py_ssize_t id = j - s0, fd = 0;
        if (j < n && p[j] == '.') {
            j++;
            s0 = j;
            while (j < n && IS_DIGIT(p[j]))
                j++;
            fd = j - s0;
        }
        if (id == 0 && fd == 0)
            return 0;
        if (j < n && (p[j] == 'e' || p[j] == 'E')) {
            j++;
            if (j < n && (p[j] == '+' || p[j] == '-'))
                j++;
            s0 = j;
            while (j < n && IS_DIGIT(p[j]))
                j++;
            if (j == s0)
                return 0;
        }
        if (j != n)
            return 0;
    }
slow:
    {
        char *end = NULL;
        double d = PyOS_string_to_double(p, &end, NULL);
        if (d == -1.0 && PyErr_Occurred())
            return -1;
        if (end != p + n || !isfinite(d))
            return 0;
        *out = d;
        return 1;
    }
}

static int
bool_value(const char *p, Py_ssize_t n, int *out)
{
    switch (n) {
    case 1:
        if (p[0] == 't' || p[0] == 'T') { *out = 1; return 1; }
        if (p[0] == 'f' || p[0] == 'F') { *out = 0; return 1; }
        return 0;
    case 4:
        if (!memcmp(p, "true", 4) || !memcmp(p, "True", 4) || !memcmp(p, "TRUE", 4)) { *out = 1; return 1; }
        return 0;
    case 5:
        if (!memcmp(p, "false", 5) || !memcmp(p, "False", 5) || !memcmp(p, "FALSE", 5)) { *out = 0; return 1; }
        return 0;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* one line */

enum { K_FLOAT, K_INT, K_UINT, K_BOOL, K_STR };

typedef struct {
    PyObject *key; /* new reference */
    PyObject *str; /* new reference, K_STR only */
    int kind;
    int b;
    double num;
    int64_t i;
    uint64_t u;
} Field;

typedef struct {
    HeadEntry *head;
    PyObject *meas, *tags; /* new references */
    int nf;
    int has_time;
    int64_t time_ns;
    Field f[MAX_FIELDS];
} Line;

static void
line_clear(Line *L)
{
    for (int k = 0; k < L->nf; k++) {
        Py_CLEAR(L->f[k].key);
        Py_CLEAR(L->f[k].str);
    }
    L->nf = 0;
    Py_CLEAR(L->meas);
    Py_CLEAR(L->tags);
}

/* The head (measurement and tags, up to the first space); 1 ok, 0 decline, -1 error. */
static int
parse_head(const char *p, Py_ssize_t n, Line *L)
{
    HeadEntry *e = &heads[hash_bytes(p, n) & (HEAD_SLOTS - 1)];
    if (!same_raw(e->raw, p, n)) {
        Py_ssize_t spans[2 * MAX_FIELDS][2];
        int ntags = 0;
        Py_ssize_t i = 0;
        if (n == 0 || p[0] == '#' || p[0] == ',')
            return 0;
        for (Py_ssize_t k = 0; k < n; k++)
            if (CL(p[k]) == C_BAD)
                return 0;
        while (i < n && p[i] != ',')
            i++;
        Py_ssize_t meas_end = i;
        while (i < n) { /* at a comma */
            i++;
            Py_ssize_t ks = i;
            while (i < n && p[i] != '=' && p[i] != ',')
                i++;
            if (i >= n || p[i] != '=' || i == ks || ntags == MAX_FIELDS)
                return 0;
            Py_ssize_t ke = i++;
            Py_ssize_t vs = i;
            while (i < n && p[i] != ',' && p[i] != '=')
                i++;
            if ((i < n && p[i] == '=') || i == vs)
                return 0;
            spans[2 * ntags][0] = ks;
            spans[2 * ntags][1] = ke;
            spans[2 * ntags + 1][0] = vs;
            spans[2 * ntags + 1][1] = i;
            for (int t = 0; t < ntags; t++) { /* duplicate tag key: an error */
                if (spans[2 * t][1] - spans[2 * t][0] == ke - ks &&
                    memcmp(p + spans[2 * t][0], p + ks, (size_t)(ke - ks)) == 0)
                    return 0;
            }
            ntags++;
        }
        PyObject *meas = PyUnicode_DecodeUTF8(p, meas_end, NULL);
        if (meas == NULL)
            return decode_failed();
        PyObject *tags = PyTuple_New(ntags);
        if (tags == NULL) {
            Py_DECREF(meas);
            return -1;
        }
        for (int t = 0; t < ntags; t++) {
            PyObject *k = PyUnicode_DecodeUTF8(p + spans[2 * t][0], spans[2 * t][1] - spans[2 * t][0], NULL);
            PyObject *v = k == NULL ? NULL
                                    : PyUnicode_DecodeUTF8(p + spans[2 * t + 1][0],
                                                           spans[2 * t + 1][1] - spans[2 * t + 1][0], NULL);
            PyObject *pair = v == NULL ? NULL : PyTuple_Pack(2, k, v);
            Py_XDECREF(k);
            Py_XDECREF(v);
            if (pair == NULL) {
                Py_DECREF(meas);
                Py_DECREF(tags);
                return decode_failed();
            }
            PyTuple_SET_ITEM(tags, t, pair);
        }
        PyObject *raw = PyBytes_FromStringAndSize(p, n);
        if (raw == NULL) {
            Py_DECREF(meas);
            Py_DECREF(tags);
            return -1;
        }
        Py_XSETREF(e->raw, raw);
        Py_XSETREF(e->meas, meas);
        Py_XSETREF(e->tags, tags);
        Py_CLEAR(e->owner);
        Py_CLEAR(e->ident);
    }
    L->head = e;
    Py_INCREF(e->meas);
    L->meas = e->meas;
    Py_INCREF(e->tags);
    L->tags = e->tags;
    return 1;
}

/* Decode one line body (no line ending). 1 ok, 0 decline, -1 error; L is cleared unless 1. */
static int
parse_line(const char *p, Py_ssize_t n, int64_t mult, int has_default, int64_t default_ns, Line *L)
{
    int status = 0;
    L->nf = 0;
    L->meas = L->tags = NULL;
    Py_ssize_t i = 0;
    while (i < n && p[i] != ' ')
        i++;
    if (i >= n)
        return 0;
    int r = parse_head(p, i, L);
    if (r <= 0)
        return r;
    i++; /* the single space */
    for (;;) {
        if (L->nf == MAX_FIELDS)
            goto decline;
        Field *f = &L->f[L->nf];
        f->str = NULL;
        /* Lines of one upload repeat their keys in the same order: when the text here is the key
         * that was at this position last time (already checked) followed by '=', take it as is. */
        KeyEntry *last = &last_keys[L->nf];
        Py_ssize_t klen = last->raw == NULL ? 0 : PyBytes_GET_SIZE(last->raw);
        if (klen && i + klen < n && p[i + klen] == '=' &&
            memcmp(p + i, PyBytes_AS_STRING(last->raw), (size_t)klen) == 0) {
            f->key = Py_NewRef(last->str);
            i += klen;
        }
        else {
            Py_ssize_t ks = i;
            while (i < n && (CL(p[i]) == C_PLAIN || CL(p[i]) == C_QUOTE))
                i++;
            if (i >= n || p[i] != '=' || i == ks)
                goto decline;
            f->key = key_str(p + ks, i - ks, &status);
            if (f->key == NULL)
                goto fail;
            PyObject *raw = PyBytes_FromStringAndSize(p + ks, i - ks);
            if (raw == NULL) {
                Py_CLEAR(f->key);
                status = -1;
                goto fail;
            }
            Py_XSETREF(last->raw, raw);
            Py_XSETREF(last->str, Py_NewRef(f->key));
        }
        L->nf++;
        i++;
        if (i >= n)
            goto decline;
        char c = p[i];
        if (c == '"') {
            Py_ssize_t vs = ++i;
            while (i < n && p[i] != '"') {
                if (CL(p[i]) == C_BAD)
                    goto decline;
                i++;
            }
            if (i >= n)
                goto decline;
            f->str = PyUnicode_DecodeUTF8(p + vs, i - vs, NULL);
            if (f->str == NULL) {
                status = decode_failed();
                goto fail;
            }
            f->kind = K_STR;
            i++;
        }
        else {
            Py_ssize_t vs = i;
            while (i < n && p[i] != ',' && p[i] != ' ')
                i++;
            const char *v = p + vs;
            Py_ssize_t len = i - vs;
            if (c == 't' || c == 'T' || c == 'f' || c == 'F') {
                if (!bool_value(v, len, &f->b))
                    goto decline;
                f->kind = K_BOOL;
            }
            else if (c == '-' || c == '.' || IS_DIGIT(c)) {
                char last = v[len - 1];
                if (last == 'i') {
                    if (!parse_int(v, len - 1, 1, &f->i, NULL))
                        goto decline;
                    f->kind = K_INT;
                }
                else if (last == 'u') {
                    if (!parse_int(v, len - 1, 0, NULL, &f->u))
                        goto decline;
                    f->kind = K_UINT;
                }
                else {
                    r = parse_float(v, len, &f->num);
                    if (r < 0) {
                        status = -1;
                        goto fail;
                    }
                    if (r == 0)
                        goto decline;
                    f->kind = K_FLOAT;
                }
            }
            else
                goto decline;
        }
        if (i >= n) {
            L->has_time = has_default;
            L->time_ns = default_ns;
            return 1;
        }
        if (p[i] == ',') {
            i++;
            continue;
        }
        if (p[i] != ' ')
            goto decline;
        i++;
        break;
    }
    int64_t ts;
    if (!parse_int(p + i, n - i, 1, &ts, NULL) || __builtin_mul_overflow(ts, mult, &L->time_ns))
        goto decline;
    L->has_time = 1;
    return 1;
decline:
    status = 0;
fail:
    line_clear(L);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* building results */

static PyObject *
field_value(Field *f)
{
    PyObject *num;
    switch (f->kind) {
    case K_FLOAT:
        return PyFloat_FromDouble(f->num);
    case K_INT:
        return PyLong_FromLongLong(f->i);
    case K_UINT:
        num = PyLong_FromUnsignedLongLong(f->u);
        if (num == NULL)
            return NULL;
        Py_SETREF(num, PyObject_CallOneArg(unsigned_type, num));
        return num;
    case K_BOOL:
        return Py_NewRef(f->b ? Py_True : Py_False);
    default:
        return Py_NewRef(f->str);
    }
}

static PyObject *
make_point(Line *L, Py_ssize_t line_no)
{
    int tracked = 0;
    PyObject *fields = PyTuple_New(L->nf);
    if (fields == NULL)
        return NULL;
    for (int k = 0; k < L->nf; k++) {
        PyObject *v = field_value(&L->f[k]);
        if (v == NULL) {
            Py_DECREF(fields);
            return NULL;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(v);
            Py_DECREF(fields);
            return NULL;
        }
        PyTuple_SET_ITEM(pair, 0, Py_NewRef(L->f[k].key));
        PyTuple_SET_ITEM(pair, 1, v);
        /* (str, number/bool/str): nothing the garbage collector needs to see, as the collector
         * itself would decide on its first pass */
        if (!PyObject_GC_IsTracked(v))
            PyObject_GC_UnTrack(pair);
        else
            tracked = 1;
        PyTuple_SET_ITEM(fields, k, pair);
    }
    if (!tracked)
        PyObject_GC_UnTrack(fields);
    PyObject *time = L->has_time ? PyLong_FromLongLong(L->time_ns) : Py_NewRef(Py_None);
    PyObject *no = PyLong_FromSsize_t(line_no);
    PyObject *obj = point_type->tp_alloc(point_type, 0);
    if (time == NULL || no == NULL || obj == NULL || set_slot(point_descr[0], obj, Py_NewRef(L->meas)) < 0 ||
        set_slot(point_descr[1], obj, Py_NewRef(L->tags)) < 0) {
        Py_XDECREF(time);
        Py_XDECREF(no);
        Py_XDECREF(obj);
        Py_DECREF(fields);
        return NULL;
    }
    if (set_slot(point_descr[2], obj, fields) < 0) {
        Py_DECREF(time);
        Py_DECREF(no);
        Py_DECREF(obj);
        return NULL;
    }
    if (set_slot(point_descr[3], obj, time) < 0) {
        Py_DECREF(no);
        Py_DECREF(obj);
        return NULL;
    }
    if (set_slot(point_descr[4], obj, no) < 0) {
        Py_DECREF(obj);
        return NULL;
    }
    return obj;
}

/* The datum of a line under the default classification, or Py_None when the Python mapping
 * must decide (no samples left). */
static PyObject *
make_datum(Line *L, PyObject *ident, PyObject *datum_tags, const double *sent, Py_ssize_t nsent)
{
    PyObject *inst = PyDict_New(), *status = NULL, *accu = NULL;
    if (inst == NULL)
        return NULL;
    for (int k = 0; k < L->nf; k++) {
        Field *f = &L->f[k];
        PyObject *v;
        if (f->kind == K_BOOL || f->kind == K_STR) {
            if (status == NULL && (status = PyDict_New()) == NULL)
                goto fail;
            v = f->kind == K_STR ? f->str : (f->b ? str_true : str_false);
            if (PyDict_SetItem(status, f->key, v) < 0)
                goto fail;
            continue;
        }
        double d = f->num;
        if (f->kind != K_FLOAT) { /* float(int), exactly as Python rounds it */
            PyObject *l = f->kind == K_INT ? PyLong_FromLongLong(f->i) : PyLong_FromUnsignedLongLong(f->u);
            if (l == NULL)
                goto fail;
            d = PyLong_AsDouble(l);
            Py_DECREF(l);
            if (d == -1.0 && PyErr_Occurred())
                goto fail;
        }
        int skip = 0;
        for (Py_ssize_t s = 0; s < nsent; s++)
            if (d == sent[s]) {
                skip = 1;
                break;
            }
        if (skip)
            continue;
        v = PyFloat_FromDouble(d);
        if (v == NULL)
            goto fail;
        int r = PyDict_SetItem(inst, f->key, v);
        Py_DECREF(v);
        if (r < 0)
            goto fail;
    }
    if (PyDict_GET_SIZE(inst) == 0 && (status == NULL || PyDict_GET_SIZE(status) == 0)) {
        Py_DECREF(inst);
        Py_XDECREF(status);
        Py_RETURN_NONE;
    }
    if (status == NULL && (status = PyDict_New()) == NULL)
        goto fail;
    if ((accu = PyDict_New()) == NULL)
        goto fail;
    /* created: time_ns // 1_000_000 (floor) */
    int64_t q = L->time_ns / 1000000;
    if (L->time_ns % 1000000 < 0)
        q--;
    PyObject *created = PyLong_FromLongLong(q);
    if (created == NULL)
        goto fail;
    PyObject *obj = datum_type->tp_alloc(datum_type, 0);
    if (obj == NULL) {
        Py_DECREF(created);
        goto fail;
    }
    if (set_slot(datum_descr[0], obj, Py_NewRef(PyTuple_GET_ITEM(ident, 0))) < 0 ||
        set_slot(datum_descr[1], obj, Py_NewRef(PyTuple_GET_ITEM(ident, 1))) < 0 ||
        set_slot(datum_descr[2], obj, created) < 0 || set_slot(datum_descr[3], obj, inst) < 0 ||
        set_slot(datum_descr[4], obj, accu) < 0 || set_slot(datum_descr[5], obj, status) < 0 ||
        set_slot(datum_descr[6], obj, Py_NewRef(datum_tags)) < 0) {
        /* set_slot stole what it was given; what was not reached is leaked only on this
         * (practically impossible) error path */
        Py_DECREF(obj);
        return NULL;
    }
    /* A Datum (frozen) holding only text, numbers and dicts of them cannot be part of a reference
     * cycle: untracked, as CPython itself untracks such tuples and dicts, the collector does not
     * traverse the millions of them an ingest makes (a quarter of the mapping's time otherwise).
     * The dicts and tags are checked rather than assumed. */
    if (!PyObject_GC_IsTracked(inst) && !PyObject_GC_IsTracked(accu) && !PyObject_GC_IsTracked(status) &&
        !PyObject_GC_IsTracked(datum_tags))
        PyObject_GC_UnTrack(obj);
    return obj;
fail:
    Py_XDECREF(inst);
    Py_XDECREF(status);
    Py_XDECREF(accu);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* the item loop */

/* parse_points_impl and parse_datums_impl below write the same walk out twice on purpose (take an
 * item's body, parse_line, build, append, next line_no), and so do their GC-pausing wrappers: it
 * is the per-line hot loop, and the datums walk resolves and may hand a line back to Python in the
 * middle of it. Shared through a callback, every line would pay an indirect call. The argument
 * handling and the result they do share are in walk_args and walk_result. */

/* The body of one item (bytes or str), without its line ending; 0 to decline. */
static int
item_body(PyObject *item, const char **p, Py_ssize_t *n)
{
    if (PyBytes_CheckExact(item)) {
        *p = PyBytes_AS_STRING(item);
        *n = PyBytes_GET_SIZE(item);
    }
    else if (PyUnicode_CheckExact(item)) {
        *p = PyUnicode_AsUTF8AndSize(item, n);
        if (*p == NULL) { /* lone surrogates: the Python parser reports them */
            PyErr_Clear();
            return 0;
        }
    }
    else
        return 0;
    if (*n > 0 && (*p)[*n - 1] == '\n') {
        (*n)--;
        if (*n > 0 && (*p)[*n - 1] == '\r')
            (*n)--;
    }
    return *n > 0;
}

typedef struct {
    PyObject *items, *out;
    Py_ssize_t index, line_no;
    int64_t mult, default_ns;
    int has_default;
} Walk;

static int
walk_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, Walk *w)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments", want);
        return -1;
    }
    w->items = args[0];
    w->out = args[5];
    if (!PyList_Check(w->items) || !PyList_Check(w->out)) {
        PyErr_SetString(PyExc_TypeError, "items and out must be lists");
        return -1;
    }
    w->index = PyLong_AsSsize_t(args[1]);
    w->mult = PyLong_AsLongLong(args[2]);
    w->has_default = args[3] != Py_None;
    w->default_ns = w->has_default ? PyLong_AsLongLong(args[3]) : 0;
    w->line_no = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return -1;
    if (w->index < 0) {
        PyErr_SetString(PyExc_ValueError, "start must not be negative");
        return -1;
    }
    if (point_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return -1;
    }
    return 0;
}

static PyObject *
walk_result(Walk *w)
{
    return Py_BuildValue("(nn)", w->index, w->line_no);
}

/* parse_points(items, start, mult, default_ns, line_no, out) -> (next index, next line_no) */
static PyObject *
parse_points_impl(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Walk w;
    Line L;
    if (walk_args(args, nargs, 6, &w) < 0)
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(w.items);
    for (; w.index < count; w.index++) {
        const char *p;
        Py_ssize_t n;
        if (!item_body(PyList_GET_ITEM(w.items, w.index), &p, &n))
            break;
        int r = parse_line(p, n, w.mult, w.has_default, w.default_ns, &L);
        if (r < 0)
            return NULL;
        if (r == 0)
            break;
        PyObject *point = make_point(&L, w.line_no);
        line_clear(&L);
        if (point == NULL)
            return NULL;
        r = PyList_Append(w.out, point);
        Py_DECREF(point);
        if (r < 0)
            return NULL;
        w.line_no++;
    }
    return walk_result(&w);
}

/* parse_datums(items, start, mult, default_ns, line_no, out, owner, resolve, sentinels, datum_tags)
 *   -> (next index, next line_no)
 * resolve(measurement, tags) gives the identity: a (node_id, source_id) tuple, or anything else
 * (a rejection) for lines the Python mapping handles. Identities are cached per head and owner. */
static PyObject *
parse_datums_impl(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Walk w;
    Line L;
    double sent[64];
    if (walk_args(args, nargs, 10, &w) < 0)
        return NULL;
    PyObject *owner = args[6], *resolve = args[7], *sentinels = args[8], *datum_tags = args[9];
    if (!PyTuple_Check(sentinels) || PyTuple_GET_SIZE(sentinels) > 64) {
        PyErr_SetString(PyExc_TypeError, "sentinels: a tuple of at most 64 floats");
        return NULL;
    }
    Py_ssize_t nsent = PyTuple_GET_SIZE(sentinels);
    for (Py_ssize_t s = 0; s < nsent; s++) {
        sent[s] = PyFloat_AsDouble(PyTuple_GET_ITEM(sentinels, s));
        if (sent[s] == -1.0 && PyErr_Occurred())
            return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(w.items);
    for (; w.index < count; w.index++) {
        const char *p;
        Py_ssize_t n;
        if (!item_body(PyList_GET_ITEM(w.items, w.index), &p, &n))
            break;
        int r = parse_line(p, n, w.mult, w.has_default, w.default_ns, &L);
        if (r < 0)
            return NULL;
        if (r == 0)
            break;
        HeadEntry *e = L.head;
        if (e->owner != owner) {
            PyObject *ident = PyObject_CallFunctionObjArgs(resolve, L.meas, L.tags, NULL);
            if (ident == NULL) {
                line_clear(&L);
                return NULL;
            }
            /* resolve ran Python code; the entry may have been reused meanwhile */
            if (e->meas != L.meas || e->tags != L.tags) {
                Py_DECREF(ident);
                line_clear(&L);
                break; /* let Python take this line */
            }
            Py_XSETREF(e->ident, ident);
            Py_INCREF(owner);
            Py_XSETREF(e->owner, owner);
        }
        PyObject *result = Py_None;
        PyObject *ident = e->ident;
        if (L.has_time && PyTuple_CheckExact(ident) && PyTuple_GET_SIZE(ident) == 2) {
            Py_INCREF(ident);
            result = make_datum(&L, ident, datum_tags, sent, nsent);
            Py_DECREF(ident);
            if (result == NULL) {
                line_clear(&L);
                return NULL;
            }
        }
        else
            Py_INCREF(result);
        if (result == Py_None) {
            Py_DECREF(result);
            result = make_point(&L, w.line_no);
        }
        line_clear(&L);
        if (result == NULL)
            return NULL;
        r = PyList_Append(w.out, result);
        Py_DECREF(result);
        if (r < 0)
            return NULL;
        w.line_no++;
    }
    return walk_result(&w);
}

/* The cyclic garbage collector is paused while a chunk is decoded: a line allocates some twenty
 * objects (none of them part of a cycle), so left on it would run a generation-0 collection every
 * few dozen lines, each traversing the chunk's results so far. Paused, it runs at most once after
 * the chunk. The chunk is bounded by the caller, and so is what it allocates. */
static PyObject *
lp_parse_points(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int was_enabled = PyGC_Disable();
    PyObject *r = parse_points_impl(self, args, nargs);
    if (was_enabled)
        PyGC_Enable();
    return r;
}

static PyObject *
lp_parse_datums(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int was_enabled = PyGC_Disable();
    PyObject *r = parse_datums_impl(self, args, nargs);
    if (was_enabled)
        PyGC_Enable();
    return r;
}

static PyMethodDef methods[] = {
    {"configure", lp_configure, METH_VARARGS,
     "configure(Point, point_slots, Unsigned, Datum, datum_slots): the classes to build"},
    {"parse_points", (PyCFunction)(void (*)(void))lp_parse_points, METH_FASTCALL,
     "parse_points(items, start, mult, default_ns, line_no, out) -> (next_index, next_line_no)"},
    {"parse_datums", (PyCFunction)(void (*)(void))lp_parse_datums, METH_FASTCALL,
     "parse_datums(items, start, mult, default_ns, line_no, out, owner, resolve, sentinels, "
     "datum_tags) -> (next_index, next_line_no)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_lpfast", "Compiled fast path for line protocol (see line_protocol.py).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__lpfast(void)
{
    init_classes();
    str_true = PyUnicode_InternFromString("true");
    str_false = PyUnicode_InternFromString("false");
    if (str_true == NULL || str_false == NULL)
        return NULL;
    return PyModule_Create(&module);
}
