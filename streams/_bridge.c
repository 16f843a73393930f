/*
 * streams._bridge: the Ceilometer bridge's per-sample hot path in C (streams/bridge/); its sample
 * writer is also the pollers' (streams.codec.BatchCodec.encode).
 *
 * Every function here has a pure-Python twin in streams/bridge/ that defines the rule; this module
 * only makes it cheaper, and the unit tests (tests/unit/bridge/test_native.py) check that both give
 * the same result on the captured vectors and on fuzzed input. The Python side uses it when it is
 * built (setuptools builds it from pyproject.toml `ext-modules`) and falls back otherwise.
 *
 * signed_text(message: dict, skip: str | None, texts: dict | None, list_text) -> bytes | None
 *   Ceilometer's signed text (ceilometer/publisher/utils.py, rule in streams/bridge/signing.py):
 *   the keys of `message` in sorted order, except `skip` (top level only); a str value is fed as
 *   itself, a dict is walked right there with names "parent:child" (an empty one emits nothing),
 *   or, at the top level, replaced by texts[name] (str or bytes) when `texts` has the name; a list
 *   or tuple is fed as list_text(value) (Python: str() of its "bytes form"); anything else as
 *   str(value). Names and values are concatenated, UTF-8. Returns None, without error, for input
 *   the Python walk must decide: a key that is not exactly str, or a value of a subclass of str,
 *   dict, list or tuple. Raises UnicodeEncodeError for a lone surrogate (as str.encode does),
 *   RecursionError when nested too deep, TypeError if list_text does not return str.
 *
 * same_json(a, b) -> bool
 *   True if a and b are the same JSON value as json.loads/orjson build it: same exact types (so 1,
 *   1.0 and True differ), equal str and int, floats equal bit for bit (so 0.0 and -0.0 differ),
 *   dicts with equal keys *in the same order*, lists and tuples element by element. Anything else
 *   (other types, subclasses) is never the same as an object other than itself. Two values that are
 *   the same have the same signed text, metadata strings and Avro map.
 *
 * nesting_depth(data: bytes) -> int
 *   Deepest running sum of '[' / '{' (+1) and ']' / '}' (-1) over every byte, strings included;
 *   0 when there is no bracket (so "]" gives -1), as streams.bridge.ceilometer's Python version.
 *
 * encode_samples(samples: list[dict], map_of) -> bytes
 *   The Avro binary encoding (Avro spec, "Binary Encoding") of each streams.Sample of
 *   schemas/sample.avsc (fingerprint checked by the caller), concatenated, field by field as
 *   streams.bridge.avro.SampleBatchWriter.sample writes them; resource_metadata is written as
 *   map_of(metadata) (bytes), or the empty map when it is missing or empty. Raises (KeyError,
 *   TypeError, ValueError, OverflowError) on a sample it cannot write; the caller then encodes in
 *   Python, which raises the exact error the Python writer gives.
 *   With map_of None (streams.codec.BatchCodec.encode, the pollers' publisher), it writes exactly
 *   what fastavro writes for the schema: resource_metadata is written here, from an exact dict of
 *   str to str, and the empty map only when the key is missing (its schema default); a sample with
 *   anything fastavro might treat otherwise (subclasses, None metadata, bools as numbers) raises,
 *   and the caller encodes it with fastavro, which gives fastavro's bytes or error.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ growable byte buffer */

typedef struct {
    char *buf;
    Py_ssize_t len;
    Py_ssize_t cap;
    char small[2048];
} Buf;

static void buf_init(Buf *b) {
    b->buf = b->small;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof(b->small);
}

static void buf_free(Buf *b) {
    if (b->buf != b->small) PyMem_Free(b->buf);
    b->buf = b->small;
}

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + more) cap *= 2;
    char *p;
    if (b->buf == b->small) {
        p = PyMem_Malloc((size_t)cap);
        if (p != NULL) memcpy(p, b->small, (size_t)b->len);
    } else {
        p = PyMem_Realloc(b->buf, (size_t)cap);
    }
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->buf = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->buf + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

static inline int buf_byte(Buf *b, unsigned char c) {
    if (buf_reserve(b, 1) < 0) return -1;
    b->buf[b->len++] = (char)c;
    return 0;
}

/* str -> its UTF-8 bytes appended; UnicodeEncodeError for lone surrogates. */
static inline int buf_text(Buf *b, PyObject *s) {
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL) return -1;
    return buf_put(b, u, n);
}

/* ------------------------------------------------------------------ signed_text */

/* 1 done, 0 the Python walk must decide, -1 error */
static int walk(Buf *out, PyObject *obj, Buf *prefix, PyObject *skip, PyObject *texts, PyObject *list_text) {
    PyObject *keys = PyDict_Keys(obj);
    if (keys == NULL) return -1;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    int rc = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(keys, i))) {
            Py_DECREF(keys);
            return 0;
        }
    }
    if (PyList_Sort(keys) < 0) {
        Py_DECREF(keys);
        return -1;
    }
    if (Py_EnterRecursiveCall(" while walking a Ceilometer message")) {
        Py_DECREF(keys);
        return -1;
    }
    Py_ssize_t base = prefix->len;
    for (Py_ssize_t i = 0; i < n && rc == 1; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        if (skip != NULL) {
            int eq = PyUnicode_Compare(key, skip);
            if (eq == -1 && PyErr_Occurred()) { rc = -1; break; }
            if (eq == 0) continue;
        }
        PyObject *value = PyDict_GetItemWithError(obj, key);
        if (value == NULL) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
            rc = -1;
            break;
        }
        Py_INCREF(value);
        if (PyUnicode_CheckExact(value)) {
            if (buf_put(out, prefix->buf, base) < 0 || buf_text(out, key) < 0 || buf_text(out, value) < 0) rc = -1;
        } else if (PyDict_CheckExact(value)) {
            PyObject *text = NULL;
            if (texts != NULL) {
                text = PyDict_GetItemWithError(texts, key);
                if (text == NULL && PyErr_Occurred()) rc = -1;
            }
            if (rc != 1) {
                /* error above */
            } else if (text != NULL) {
                if (PyBytes_Check(text)) {
                    if (buf_put(out, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text)) < 0) rc = -1;
                } else if (PyUnicode_Check(text)) {
                    if (buf_text(out, text) < 0) rc = -1;
                } else {
                    PyErr_SetString(PyExc_TypeError, "texts values must be str or bytes");
                    rc = -1;
                }
            } else {
                if (buf_text(prefix, key) < 0 || buf_byte(prefix, ':') < 0) {
                    rc = -1;
                } else {
                    rc = walk(out, value, prefix, NULL, NULL, list_text);
                }
                prefix->len = base;
            }
        } else if (PyList_CheckExact(value) || PyTuple_CheckExact(value)) {
            PyObject *text = PyObject_CallOneArg(list_text, value);
            if (text == NULL) {
                rc = -1;
            } else if (!PyUnicode_CheckExact(text)) {
                PyErr_SetString(PyExc_TypeError, "list_text must return str");
                rc = -1;
            } else if (buf_put(out, prefix->buf, base) < 0 || buf_text(out, key) < 0 || buf_text(out, text) < 0) {
                rc = -1;
            }
            Py_XDECREF(text);
        } else if (PyUnicode_Check(value) || PyDict_Check(value) || PyList_Check(value) || PyTuple_Check(value)) {
            rc = 0; /* a subclass: the Python walk decides */
        } else {
            PyObject *text = PyObject_Str(value);
            if (text == NULL) {
                rc = -1;
            } else if (buf_put(out, prefix->buf, base) < 0 || buf_text(out, key) < 0 || buf_text(out, text) < 0) {
                rc = -1;
            }
            Py_XDECREF(text);
        }
        Py_DECREF(value);
    }
    Py_LeaveRecursiveCall();
    Py_DECREF(keys);
    return rc;
}

static PyObject *signed_text(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "signed_text(message, skip, texts, list_text)");
        return NULL;
    }
    PyObject *message = args[0], *skip = args[1], *texts = args[2], *list_text = args[3];
    if (!PyDict_CheckExact(message)) Py_RETURN_NONE;
    if (skip == Py_None) skip = NULL;
    else if (!PyUnicode_CheckExact(skip)) {
        PyErr_SetString(PyExc_TypeError, "skip must be str or None");
        return NULL;
    }
    if (texts == Py_None) texts = NULL;
    else if (!PyDict_Check(texts)) {
        PyErr_SetString(PyExc_TypeError, "texts must be a dict or None");
        return NULL;
    }
    Buf out, prefix;
    buf_init(&out);
    buf_init(&prefix);
    int rc = walk(&out, message, &prefix, skip, texts, list_text);
    PyObject *result = NULL;
    if (rc == 1) result = PyBytes_FromStringAndSize(out.buf, out.len);
    else if (rc == 0) result = Py_NewRef(Py_None);
    buf_free(&out);
    buf_free(&prefix);
    return result;
}

/* ------------------------------------------------------------------ same_json */

/* 1 same, 0 not, -1 error */
static int same(PyObject *a, PyObject *b) {
    if (a == b) return 1;
    PyTypeObject *t = Py_TYPE(a);
    if (t != Py_TYPE(b)) return 0;
    if (t == &PyUnicode_Type) {
        int c = PyUnicode_Compare(a, b);
        if (c == -1 && PyErr_Occurred()) return -1;
        return c == 0;
    }
    if (t == &PyLong_Type) return PyObject_RichCompareBool(a, b, Py_EQ);
    if (t == &PyFloat_Type) {
        double x = PyFloat_AS_DOUBLE(a), y = PyFloat_AS_DOUBLE(b);
        return memcmp(&x, &y, sizeof(double)) == 0;
    }
    int rc = 1;
    if (t == &PyDict_Type) {
        if (PyDict_GET_SIZE(a) != PyDict_GET_SIZE(b)) return 0;
        if (Py_EnterRecursiveCall(" in same_json")) return -1;
        Py_ssize_t i = 0, j = 0;
        PyObject *ka, *va, *kb, *vb;
        while (rc == 1 && PyDict_Next(a, &i, &ka, &va)) {
            if (!PyDict_Next(b, &j, &kb, &vb)) { rc = 0; break; }
            rc = same(ka, kb);
            if (rc == 1) rc = same(va, vb);
        }
        Py_LeaveRecursiveCall();
        return rc;
    }
    if (t == &PyList_Type || t == &PyTuple_Type) {
        Py_ssize_t n = Py_SIZE(a);
        if (n != Py_SIZE(b)) return 0;
        if (Py_EnterRecursiveCall(" in same_json")) return -1;
        for (Py_ssize_t i = 0; i < n && rc == 1; i++) {
            PyObject *x = t == &PyList_Type ? PyList_GET_ITEM(a, i) : PyTuple_GET_ITEM(a, i);
            PyObject *y = t == &PyList_Type ? PyList_GET_ITEM(b, i) : PyTuple_GET_ITEM(b, i);
            /* a list can change under a nested comparison only through user code, which never runs here */
            rc = same(x, y);
            if (t == &PyList_Type && (Py_SIZE(a) != n || Py_SIZE(b) != n)) rc = 0;
        }
        Py_LeaveRecursiveCall();
        return rc;
    }
    return 0; /* bool and None are singletons (a == b above); other types are never the same */
}

static PyObject *same_json(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "same_json(a, b)");
        return NULL;
    }
    int rc = same(args[0], args[1]);
    if (rc < 0) return NULL;
    return PyBool_FromLong(rc);
}

/* ------------------------------------------------------------------ nesting_depth */

static PyObject *nesting_depth(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = view.buf, *end = p + view.len;
    long long depth = 0, best = 0;
    int any = 0;
    for (; p < end; p++) {
        unsigned char c = *p;
        if (c == '[' || c == '{') {
            depth++;
        } else if (c == ']' || c == '}') {
            depth--;
        } else {
            continue;
        }
        if (!any || depth > best) best = depth;
        any = 1;
    }
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(any ? best : 0);
}

/* ------------------------------------------------------------------ encode_samples */

static PyObject *S_MESSAGE_ID, *S_NAME, *S_TYPE, *S_UNIT, *S_VOLUME, *S_USER_ID, *S_USER_NAME, *S_PROJECT_ID,
    *S_PROJECT_NAME, *S_RESOURCE_ID, *S_TIMESTAMP, *S_MONOTONIC_TIME, *S_RESOURCE_METADATA, *S_SOURCE,
    *S_MESSAGE_SIGNATURE, *S_STREAMS, *S_GAUGE, *S_DELTA, *S_CUMULATIVE;

static int put_long(Buf *b, long long n) {
    uint64_t z = ((uint64_t)n << 1) ^ (uint64_t)(n >> 63);
    unsigned char tmp[10];
    int k = 0;
    while (z > 0x7F) {
        tmp[k++] = (unsigned char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    tmp[k++] = (unsigned char)z;
    return buf_put(b, (const char *)tmp, k);
}

static int put_string(Buf *b, PyObject *s) {
    if (!PyUnicode_CheckExact(s)) {
        PyErr_Format(PyExc_TypeError, "expected str, got %.100s", Py_TYPE(s)->tp_name);
        return -1;
    }
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL) return -1;
    if (put_long(b, n) < 0) return -1;
    return buf_put(b, u, n);
}

static int put_double(Buf *b, PyObject *v) {
    double d;
    if (PyFloat_CheckExact(v)) {
        d = PyFloat_AS_DOUBLE(v);
    } else if (PyLong_CheckExact(v)) {
        d = PyLong_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) return -1;
    } else {
        PyErr_Format(PyExc_TypeError, "expected a number, got %.100s", Py_TYPE(v)->tp_name);
        return -1;
    }
    unsigned char tmp[8];
    uint64_t bits;
    memcpy(&bits, &d, 8);
    for (int i = 0; i < 8; i++) tmp[i] = (unsigned char)(bits >> (8 * i)); /* little-endian */
    return buf_put(b, (const char *)tmp, 8);
}

/* borrowed value of s[key], KeyError if missing */
static PyObject *required(PyObject *s, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(s, key);
    if (v == NULL && !PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
    return v;
}

/* borrowed value of s.get(key) or NULL (no error) when missing; -1 via *err */
static PyObject *optional(PyObject *s, PyObject *key, int *err) {
    PyObject *v = PyDict_GetItemWithError(s, key);
    if (v == NULL && PyErr_Occurred()) *err = 1;
    return v;
}

static int put_optional_string(Buf *b, PyObject *s, PyObject *key) {
    int err = 0;
    PyObject *v = optional(s, key, &err);
    if (err) return -1;
    if (v == NULL || v == Py_None) return buf_byte(b, 0x00);
    if (buf_byte(b, 0x02) < 0) return -1;
    return put_string(b, v);
}

/* An Avro map<string> from an exact dict of exact str to exact str: one block of every entry, then the
   empty block (as fastavro writes it); the empty map is the empty block alone. TypeError otherwise. */
static int put_map(Buf *b, PyObject *m) {
    if (!PyDict_CheckExact(m)) {
        PyErr_Format(PyExc_TypeError, "resource_metadata must be a dict, got %.100s", Py_TYPE(m)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyDict_GET_SIZE(m);
    if (n > 0) {
        if (put_long(b, n) < 0) return -1;
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(m, &pos, &key, &value)) {
            if (put_string(b, key) < 0 || put_string(b, value) < 0) return -1;
        }
    }
    return buf_byte(b, 0x00);
}

/* The fields after resource_metadata: source (default "streams" when missing) and message_signature. */
static int put_tail(Buf *b, PyObject *s) {
    int err = 0;
    PyObject *v = optional(s, S_SOURCE, &err);
    if (err) return -1;
    if (put_string(b, v == NULL ? S_STREAMS : v) < 0) return -1;
    return put_optional_string(b, s, S_MESSAGE_SIGNATURE);
}

static int put_sample(Buf *b, PyObject *s, PyObject *map_of) {
    if (!PyDict_CheckExact(s)) {
        PyErr_SetString(PyExc_TypeError, "a sample must be a dict");
        return -1;
    }
    PyObject *v;
    int err = 0;
    if ((v = required(s, S_MESSAGE_ID)) == NULL || put_string(b, v) < 0) return -1;
    if ((v = required(s, S_NAME)) == NULL || put_string(b, v) < 0) return -1;
    if ((v = required(s, S_TYPE)) == NULL) return -1;
    unsigned char kind;
    if (!PyUnicode_CheckExact(v)) {
        PyErr_SetObject(PyExc_KeyError, v);
        return -1;
    } else if (PyUnicode_Compare(v, S_GAUGE) == 0) {
        kind = 0x00;
    } else if (PyUnicode_Compare(v, S_DELTA) == 0) {
        kind = 0x02;
    } else if (PyUnicode_Compare(v, S_CUMULATIVE) == 0) {
        kind = 0x04;
    } else {
        PyErr_SetObject(PyExc_KeyError, v);
        return -1;
    }
    if (buf_byte(b, kind) < 0) return -1;
    if ((v = required(s, S_UNIT)) == NULL || put_string(b, v) < 0) return -1;
    if ((v = required(s, S_VOLUME)) == NULL || put_double(b, v) < 0) return -1;
    if (put_optional_string(b, s, S_USER_ID) < 0 || put_optional_string(b, s, S_USER_NAME) < 0 ||
        put_optional_string(b, s, S_PROJECT_ID) < 0 || put_optional_string(b, s, S_PROJECT_NAME) < 0)
        return -1;
    if ((v = required(s, S_RESOURCE_ID)) == NULL || put_string(b, v) < 0) return -1;
    if ((v = required(s, S_TIMESTAMP)) == NULL) return -1;
    if (!PyLong_CheckExact(v)) {
        PyErr_SetString(PyExc_TypeError, "timestamp must be an int");
        return -1;
    }
    long long ts = PyLong_AsLongLong(v);
    if (ts == -1 && PyErr_Occurred()) return -1;
    if (put_long(b, ts) < 0) return -1;
    v = optional(s, S_MONOTONIC_TIME, &err);
    if (err) return -1;
    if (v == NULL || v == Py_None) {
        if (buf_byte(b, 0x00) < 0) return -1;
    } else if (buf_byte(b, 0x02) < 0 || put_double(b, v) < 0) {
        return -1;
    }
    v = optional(s, S_RESOURCE_METADATA, &err);
    if (err) return -1;
    if (map_of == Py_None) { /* fastavro's rule: the schema default {} only when the key is missing */
        if ((v == NULL ? buf_byte(b, 0x00) : put_map(b, v)) < 0) return -1;
        return put_tail(b, s);
    }
    int truthy = v == NULL ? 0 : PyObject_IsTrue(v);
    if (truthy < 0) return -1;
    if (!truthy) {
        if (buf_byte(b, 0x00) < 0) return -1;
    } else {
        PyObject *data = PyObject_CallOneArg(map_of, v);
        if (data == NULL) return -1;
        if (!PyBytes_Check(data)) {
            Py_DECREF(data);
            PyErr_SetString(PyExc_TypeError, "map_of must return bytes");
            return -1;
        }
        int rc = buf_put(b, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
        Py_DECREF(data);
        if (rc < 0) return -1;
    }
    return put_tail(b, s);
}

static PyObject *encode_samples(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode_samples(samples, map_of)");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "samples must be a sequence");
    if (seq == NULL) return NULL;
    Buf out;
    buf_init(&out);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PySequence_Fast_GET_ITEM(seq, i);
        Py_INCREF(s);
        int rc = put_sample(&out, s, args[1]);
        Py_DECREF(s);
        if (rc < 0) goto done;
    }
    result = PyBytes_FromStringAndSize(out.buf, out.len);
done:
    buf_free(&out);
    Py_DECREF(seq);
    return result;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"signed_text", (PyCFunction)(void (*)(void))signed_text, METH_FASTCALL,
     "signed_text(message, skip, texts, list_text) -> bytes | None: Ceilometer's signed text (see module doc)."},
    {"same_json", (PyCFunction)(void (*)(void))same_json, METH_FASTCALL,
     "same_json(a, b) -> bool: the same JSON value, exact types, key order and float bits."},
    {"nesting_depth", nesting_depth, METH_O, "nesting_depth(data: bytes) -> int: deepest bracket nesting."},
    {"encode_samples", (PyCFunction)(void (*)(void))encode_samples, METH_FASTCALL,
     "encode_samples(samples, map_of) -> bytes: Avro binary of each streams.Sample, concatenated "
     "(map_of None: maps written in C, fastavro's bytes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "streams._bridge",
    "The Ceilometer bridge's hot path in C; each function has a Python twin in streams.bridge "
    "(see streams/_bridge.c).",
    -1, methods};

PyMODINIT_FUNC PyInit__bridge(void) {
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(S_MESSAGE_ID, "message_id");
    INTERN(S_NAME, "name");
    INTERN(S_TYPE, "type");
    INTERN(S_UNIT, "unit");
    INTERN(S_VOLUME, "volume");
    INTERN(S_USER_ID, "user_id");
    INTERN(S_USER_NAME, "user_name");
    INTERN(S_PROJECT_ID, "project_id");
    INTERN(S_PROJECT_NAME, "project_name");
    INTERN(S_RESOURCE_ID, "resource_id");
    INTERN(S_TIMESTAMP, "timestamp");
    INTERN(S_MONOTONIC_TIME, "monotonic_time");
    INTERN(S_RESOURCE_METADATA, "resource_metadata");
    INTERN(S_SOURCE, "source");
    INTERN(S_MESSAGE_SIGNATURE, "message_signature");
    INTERN(S_STREAMS, "streams");
    INTERN(S_GAUGE, "gauge");
    INTERN(S_DELTA, "delta");
    INTERN(S_CUMULATIVE, "cumulative");
#undef INTERN
    return PyModule_Create(&module);
}
