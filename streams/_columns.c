/*
 * streams._columns: decode the samples of a streams.SampleBatch body straight into column lists.
 *
 * The processor stores samples as columns (one list per ClickHouse column). Decoding each sample
 * into a dict and then picking the dicts apart costs more than the decode itself; this walks the
 * Avro binary encoding (Avro spec, "Binary Encoding": zig-zag varints, length-prefixed UTF-8
 * strings, little-endian doubles, unions as a branch index, arrays and maps in blocks) of the
 * current schemas/sample.avsc field by field and appends each value to its column.
 *
 * decode_samples(data: bytes, pos: int, columns: tuple[list, ...16]) -> (count: int, end: int)
 *   columns, in order: message_id, name, type, unit, volume, user_id, user_name, project_id,
 *   project_name, resource_id, timestamp, monotonic_time, metadata keys (a list per sample),
 *   metadata values (a list per sample), source, message_signature.
 *   Reads the samples array starting at `pos`; returns how many samples were appended and the
 *   position after the array. Raises ValueError on malformed input; on error the columns may
 *   hold part of the record: the caller truncates them to their previous length.
 *
 * Memory: a record's samples share their resource, project, user, source and (usually) metadata, and
 * meter names and units repeat across records. A string equal to the previous row's value in its
 * column is that same object again, a map whose bytes equal the previous sample's map (same record)
 * is the same two lists again, and names and units come from a small cache of recent short strings.
 * Nothing in the processor changes a column's values in place, so the sharing is invisible (equal
 * values, fewer objects: about a third of the decoded batch's memory).
 *
 * Nothing here is a general Avro decoder: a record written with another schema version has
 * another fingerprint and is decoded by fastavro (streams.codec).
 *
 * Two more helpers of the processor's per-sample path live here (each has a Python twin used when
 * this module is not built): copy_json, the per-batch copy of a resource's state
 * (streams.processor.state), and uuid5_text, the text of a derived sample's id
 * (streams.transformers.base.derived_id). And one of the sink's: native_column, the bytes of a
 * column of a ClickHouse INSERT (streams.storage.native; without this module the sink leaves every
 * column to clickhouse-driver).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define NCOLS 16

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Reader;

static PyObject *ENUM_SYMBOLS[3];

static int fail(const char *what) {
    PyErr_Format(PyExc_ValueError, "malformed SampleBatch: %s", what);
    return -1;
}

static int read_long(Reader *r, long long *out) {
    unsigned long long acc = 0;
    int shift = 0;
    for (;;) {
        if (r->p >= r->end) return fail("truncated varint");
        unsigned char b = *r->p++;
        acc |= ((unsigned long long)(b & 0x7F)) << shift;
        if (!(b & 0x80)) break;
        shift += 7;
        if (shift > 63) return fail("varint too long");
    }
    *out = (long long)(acc >> 1) ^ -(long long)(acc & 1);
    return 0;
}

/* A string's byte length, checked against what is left of the record. */
static int read_length(Reader *r, long long *n) {
    if (read_long(r, n) < 0) return -1;
    if (*n < 0 || *n > r->end - r->p) return fail("string length out of range");
    return 0;
}

static PyObject *read_string(Reader *r) {
    long long n;
    if (read_length(r, &n) < 0) return NULL;
    PyObject *s = PyUnicode_DecodeUTF8((const char *)r->p, (Py_ssize_t)n, "strict");
    r->p += n;
    return s;
}

/* The string at r, as the previous row's object of `list` when its bytes are equal (compact ASCII). */
static PyObject *read_string_like_last(Reader *r, PyObject *list) {
    const unsigned char *start = r->p;
    long long n;
    if (read_length(r, &n) < 0) return NULL;
    Py_ssize_t size = PyList_GET_SIZE(list);
    if (size > 0) {
        PyObject *last = PyList_GET_ITEM(list, size - 1);
        if (PyUnicode_CheckExact(last) && PyUnicode_IS_COMPACT_ASCII(last) && PyUnicode_GET_LENGTH(last) == n &&
            memcmp(PyUnicode_DATA(last), r->p, (size_t)n) == 0) {
            r->p += n;
            Py_INCREF(last);
            return last;
        }
    }
    r->p = start;
    return read_string(r);
}

/* Recent short strings (meter names, units): a fixed ring of strong references, compact ASCII only. */
#define CACHE_SIZE 64
#define CACHE_MAX_LEN 64
static PyObject *CACHE[CACHE_SIZE];
static int cache_next = 0;

static PyObject *read_string_cached(Reader *r) {
    const unsigned char *start = r->p;
    long long n;
    if (read_length(r, &n) < 0) return NULL;
    if (n > CACHE_MAX_LEN) {
        r->p = start;
        return read_string(r);
    }
    for (int i = 0; i < CACHE_SIZE && CACHE[i] != NULL; i++) {
        PyObject *s = CACHE[i];
        if (PyUnicode_GET_LENGTH(s) == n && memcmp(PyUnicode_DATA(s), r->p, (size_t)n) == 0) {
            r->p += n;
            Py_INCREF(s);
            return s;
        }
    }
    r->p = start;
    PyObject *s = read_string(r);
    if (s != NULL && PyUnicode_IS_COMPACT_ASCII(s)) {
        Py_XDECREF(CACHE[cache_next]);
        Py_INCREF(s);
        CACHE[cache_next] = s;
        cache_next = (cache_next + 1) % CACHE_SIZE;
    }
    return s;
}

static int skip_string(Reader *r) {
    long long n;
    if (read_length(r, &n) < 0) return -1;
    r->p += n;
    return 0;
}

static int read_double(Reader *r, double *out) {
    if (r->end - r->p < 8) return fail("truncated double");
    /* Avro doubles are little-endian IEEE 754: assemble the bits whatever the host's byte order */
    unsigned long long bits = 0;
    for (int i = 7; i >= 0; i--) bits = (bits << 8) | r->p[i];
    r->p += 8;
    memcpy(out, &bits, sizeof bits);
    return 0;
}

/* Append a new reference to `list` and drop ours. */
static int put(PyObject *list, PyObject *value) {
    if (value == NULL) return -1;
    int rc = PyList_Append(list, value);
    Py_DECREF(value);
    return rc;
}

static int put_optional_string(Reader *r, PyObject *list) {
    long long branch;
    if (read_long(r, &branch) < 0) return -1;
    if (branch == 0) return PyList_Append(list, Py_None);
    if (branch != 1) return fail("bad union branch");
    return put(list, read_string_like_last(r, list));
}

static int read_block_count(Reader *r, long long *count) {
    if (read_long(r, count) < 0) return -1;
    if (*count < 0) { /* negative count: a byte size follows (Avro spec) */
        long long size;
        if (read_long(r, &size) < 0) return -1;
        *count = -*count;
    }
    return 0;
}

/* The end of the map at r, without decoding it (NULL with ValueError set if malformed). */
static const unsigned char *map_end(Reader r) {
    for (;;) {
        long long count;
        if (read_block_count(&r, &count) < 0) return NULL;
        if (count == 0) return r.p;
        if (count > r.end - r.p) { fail("map block count out of range"); return NULL; }
        for (long long i = 0; i < 2 * count; i++)
            if (skip_string(&r) < 0) return NULL;
    }
}

typedef struct {
    const unsigned char *p;  /* the previous sample's map bytes in this record (NULL: none) */
    Py_ssize_t len;
} MapSpan;

static int read_metadata(Reader *r, PyObject *keys_col, PyObject *values_col, MapSpan *prev) {
    const unsigned char *end = map_end(*r);
    if (end == NULL) return -1;
    Py_ssize_t len = end - r->p;
    Py_ssize_t rows = PyList_GET_SIZE(keys_col);
    if (prev->p != NULL && prev->len == len && rows > 0 && PyList_GET_SIZE(values_col) == rows &&
        memcmp(prev->p, r->p, (size_t)len) == 0) {
        /* the same map as the previous sample of this record: the same two lists */
        if (PyList_Append(keys_col, PyList_GET_ITEM(keys_col, rows - 1)) < 0) return -1;
        if (PyList_Append(values_col, PyList_GET_ITEM(values_col, rows - 1)) < 0) return -1;
        r->p = end;
        return 0;
    }
    prev->p = r->p;
    prev->len = len;
    PyObject *keys = PyList_New(0), *values = PyList_New(0);
    if (keys == NULL || values == NULL) goto error;
    for (;;) {
        long long count;
        if (read_block_count(r, &count) < 0) goto error;
        if (count == 0) break;
        if (count > r->end - r->p) { fail("map block count out of range"); goto error; }
        for (long long i = 0; i < count; i++) {
            if (put(keys, read_string_cached(r)) < 0) goto error;
            if (put(values, read_string(r)) < 0) goto error;
        }
    }
    if (put(keys_col, keys) < 0) { keys = NULL; goto error; }
    keys = NULL;
    if (put(values_col, values) < 0) { values = NULL; goto error; }
    return 0;
error:
    Py_XDECREF(keys);
    Py_XDECREF(values);
    return -1;
}

static int read_sample(Reader *r, PyObject **cols, MapSpan *prev_map) {
    long long v;
    double d;
    if (put(cols[0], read_string(r)) < 0) return -1;                 /* message_id */
    if (put(cols[1], read_string_cached(r)) < 0) return -1;          /* name */
    if (read_long(r, &v) < 0) return -1;                             /* type (enum) */
    if (v < 0 || v > 2) return fail("bad SampleType symbol");
    if (PyList_Append(cols[2], ENUM_SYMBOLS[v]) < 0) return -1;
    if (put(cols[3], read_string_cached(r)) < 0) return -1;          /* unit */
    if (read_double(r, &d) < 0) return -1;                           /* volume */
    if (put(cols[4], PyFloat_FromDouble(d)) < 0) return -1;
    for (int c = 5; c <= 8; c++)                                     /* user/project id/name */
        if (put_optional_string(r, cols[c]) < 0) return -1;
    if (put(cols[9], read_string_like_last(r, cols[9])) < 0) return -1;  /* resource_id */
    if (read_long(r, &v) < 0) return -1;                             /* timestamp (µs) */
    if (put(cols[10], PyLong_FromLongLong(v)) < 0) return -1;
    if (read_long(r, &v) < 0) return -1;                             /* monotonic_time */
    if (v == 0) {
        if (PyList_Append(cols[11], Py_None) < 0) return -1;
    } else if (v == 1) {
        if (read_double(r, &d) < 0) return -1;
        if (put(cols[11], PyFloat_FromDouble(d)) < 0) return -1;
    } else {
        return fail("bad union branch");
    }
    if (read_metadata(r, cols[12], cols[13], prev_map) < 0) return -1;  /* resource_metadata */
    if (put(cols[14], read_string_like_last(r, cols[14])) < 0) return -1;  /* source */
    return put_optional_string(r, cols[15]);                         /* message_signature */
}

static PyObject *decode_samples(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t pos;
    PyObject *columns;
    if (!PyArg_ParseTuple(args, "y*nO!", &buf, &pos, &PyTuple_Type, &columns)) return NULL;
    PyObject *result = NULL;
    if (PyTuple_GET_SIZE(columns) != NCOLS) {
        PyErr_Format(PyExc_TypeError, "columns must be a tuple of %d lists", NCOLS);
        goto done;
    }
    PyObject *cols[NCOLS];
    for (int i = 0; i < NCOLS; i++) {
        cols[i] = PyTuple_GET_ITEM(columns, i);
        if (!PyList_Check(cols[i])) {
            PyErr_SetString(PyExc_TypeError, "columns must be lists");
            goto done;
        }
    }
    if (pos < 0 || pos > buf.len) {
        PyErr_SetString(PyExc_ValueError, "position out of range");
        goto done;
    }
    Reader r = {(const unsigned char *)buf.buf + pos, (const unsigned char *)buf.buf + buf.len};
    long long total = 0;
    MapSpan prev_map = {NULL, 0};
    for (;;) {
        long long count;
        if (read_block_count(&r, &count) < 0) goto done;
        if (count == 0) break;
        if (count > r.end - r.p) { fail("array block count out of range"); goto done; }
        for (long long i = 0; i < count; i++) {
            if (read_sample(&r, cols, &prev_map) < 0) goto done;
        }
        total += count;
    }
    result = Py_BuildValue("Ln", total, (Py_ssize_t)(r.p - (const unsigned char *)buf.buf));
done:
    PyBuffer_Release(&buf);
    return result;
}

/*
 * copy_json(value) -> a deep copy of JSON-shaped data (streams.processor.state.copy_json's rule):
 * exact dicts and lists are copied (a dict keeps its insertion order and its key objects), anything
 * else is the same object again (JSON scalars are immutable). Raises RecursionError past Python's
 * recursion limit, as the Python version does (a cycle included).
 *
 * A container is cloned whole (PyDict_Copy, a list slice: its table copied at once) and then its
 * dict and list values replaced by their copies; only the clone is changed, which no other code
 * can reach yet.
 */
static int is_container(PyObject *v) {
    return PyDict_CheckExact(v) || PyList_CheckExact(v);
}

static PyObject *copy_value(PyObject *v) {
    if (PyDict_CheckExact(v)) {
        if (Py_EnterRecursiveCall(" in copy_json")) return NULL;
        PyObject *out = PyDict_Copy(v);
        Py_ssize_t pos = 0;
        PyObject *key, *item;
        while (out != NULL && PyDict_Next(out, &pos, &key, &item)) {
            if (!is_container(item)) continue;
            PyObject *copy = copy_value(item);
            /* the key is there already: only its value changes, which PyDict_Next allows */
            if (copy == NULL || PyDict_SetItem(out, key, copy) < 0) Py_CLEAR(out);
            Py_XDECREF(copy);
        }
        Py_LeaveRecursiveCall();
        return out;
    }
    if (PyList_CheckExact(v)) {
        if (Py_EnterRecursiveCall(" in copy_json")) return NULL;
        PyObject *out = PyList_GetSlice(v, 0, PY_SSIZE_T_MAX);
        for (Py_ssize_t i = 0; out != NULL && i < PyList_GET_SIZE(out); i++) {
            PyObject *item = PyList_GET_ITEM(out, i);
            if (!is_container(item)) continue;
            PyObject *copy = copy_value(item);
            if (copy == NULL) Py_CLEAR(out);
            else PyList_SetItem(out, i, copy);  /* steals copy, releases the shared item */
        }
        Py_LeaveRecursiveCall();
        return out;
    }
    Py_INCREF(v);
    return v;
}

static PyObject *copy_json(PyObject *self, PyObject *value) {
    return copy_value(value);
}

/*
 * uuid5_text(digest: bytes) -> str: the RFC 4122 name-based (SHA-1) UUID of a SHA-1 digest of
 * namespace + name, as str(uuid.UUID) spells it: the first 16 bytes, version 5 (byte 6's high
 * nibble) and the RFC 4122 variant (byte 8's two high bits 10), 36 lowercase characters with dashes
 * at 8-4-4-4-12. Raises ValueError if the digest is shorter than 16 bytes.
 */
static PyObject *uuid5_text(PyObject *self, PyObject *arg) {
    static const char hex[] = "0123456789abcdef";
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &data, &len) < 0) return NULL;
    if (len < 16) {
        PyErr_SetString(PyExc_ValueError, "uuid5_text: the digest has fewer than 16 bytes");
        return NULL;
    }
    unsigned char b[16];
    memcpy(b, data, 16);
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x50);
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    PyObject *out = PyUnicode_New(36, 127);
    if (out == NULL) return NULL;
    Py_UCS1 *p = PyUnicode_1BYTE_DATA(out);
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
        *p++ = (Py_UCS1)hex[b[i] >> 4];
        *p++ = (Py_UCS1)hex[b[i] & 0x0F];
    }
    return out;
}

/*
 * native_column(type: str, values: list) -> bytes | None: the data of one column of a ClickHouse
 * Native-format block (ClickHouse docs, "Native" format; the bytes clickhouse-driver's column writers
 * produce), for the types the samples table has:
 *   String             each value: varint length + bytes (str as UTF-8, bytes as they are)
 *   Float64, Int64     8 bytes little-endian per value
 *   Nullable(String), Nullable(Float64)
 *                      a null map (one byte per value, 1 for None), then the values with None as
 *                      '' or 0.0
 *   Array(String)      cumulative end offsets (UInt64 little-endian, one per row), then every
 *                      element as a String
 *   LowCardinality(String)
 *                      (current servers' name, type, unit and source) the state prefix (UInt64 1,
 *                      shared dictionaries with additional keys), then, if there are rows, the
 *                      serialization type (UInt64: has additional keys, update the dictionary, and
 *                      the index width: UInt8 below 256 distinct values, UInt16 below 65,536, ...),
 *                      the distinct values in first-seen order (UInt64 count, then each a String),
 *                      the row count (UInt64) and each row's index in that width
 * Returns None for any other type (the caller writes that column some other way). Raises
 * TypeError (a value of the wrong type, or values not a list), OverflowError (an Int64 out of
 * range) or UnicodeEncodeError (a str that is not valid UTF-8, e.g. a lone surrogate); the caller
 * then leaves the column to clickhouse-driver, whose error is the one reported.
 *
 * Two passes: the first sizes the bytes object, the second fills it, so nothing is copied twice.
 */
enum { K_STRING, K_FLOAT64, K_INT64, K_NULL_STRING, K_NULL_FLOAT64, K_ARRAY_STRING, K_LC_STRING, K_UNKNOWN };

static int kind_of(PyObject *type) {
    static const char *names[K_UNKNOWN] = {"String", "Float64", "Int64", "Nullable(String)",
                                           "Nullable(Float64)", "Array(String)", "LowCardinality(String)"};
    for (int k = 0; k < K_UNKNOWN; k++)
        if (PyUnicode_CompareWithASCIIString(type, names[k]) == 0) return k;
    return K_UNKNOWN;
}

static int varint_size(size_t n) {
    int size = 1;
    while (n >= 0x80) { n >>= 7; size++; }
    return size;
}

static unsigned char *put_varint(unsigned char *p, size_t n) {
    while (n >= 0x80) { *p++ = (unsigned char)(n | 0x80); n >>= 7; }
    *p++ = (unsigned char)n;
    return p;
}

/* the UTF-8 (or raw) bytes of a String value; NULL with an exception set if it is neither str nor bytes */
static const char *string_bytes(PyObject *v, Py_ssize_t *len) {
    if (PyUnicode_Check(v)) return PyUnicode_AsUTF8AndSize(v, len);
    if (PyBytes_Check(v)) { *len = PyBytes_GET_SIZE(v); return PyBytes_AS_STRING(v); }
    PyErr_Format(PyExc_TypeError, "a String value must be str or bytes, not %.100s", Py_TYPE(v)->tp_name);
    return NULL;
}

static int string_size(PyObject *v, size_t *total) {
    Py_ssize_t len;
    if (string_bytes(v, &len) == NULL) return -1;
    *total += (size_t)varint_size((size_t)len) + (size_t)len;
    return 0;
}

static unsigned char *put_string(unsigned char *p, PyObject *v) {
    Py_ssize_t len;
    const char *data = string_bytes(v, &len);  /* cannot fail: sized in the first pass */
    p = put_varint(p, (size_t)len);
    memcpy(p, data, (size_t)len);
    return p + len;
}

/* x as 8 bytes, little-endian */
static unsigned char *put_u64(unsigned char *p, unsigned long long x) {
    for (int i = 0; i < 8; i++) *p++ = (unsigned char)(x >> (8 * i));
    return p;
}

static int number_bytes(int kind, PyObject *v, unsigned char *out) {
    /* exact built-in numbers only: nothing here may run Python code (a __float__ or __index__ could
       change the list being written); anything else is clickhouse-driver's to write */
    if (!PyLong_CheckExact(v) && !PyBool_Check(v) && (kind == K_INT64 || !PyFloat_CheckExact(v))) {
        PyErr_Format(PyExc_TypeError, "a %s value must be a built-in %s, not %.100s",
                     kind == K_INT64 ? "Int64" : "Float64", kind == K_INT64 ? "int" : "float or int",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    if (kind == K_INT64) {
        long long x = PyLong_AsLongLong(v);
        if (x == -1 && PyErr_Occurred()) return -1;
        put_u64(out, (unsigned long long)x);
        return 0;
    }
    double d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred()) return -1;
    unsigned long long bits;
    memcpy(&bits, &d, 8);
    put_u64(out, bits);
    return 0;
}

static PyObject *low_cardinality_column(PyObject *values) {
    Py_ssize_t n = PyList_GET_SIZE(values);
    PyObject **items = PySequence_Fast_ITEMS(values);
    if (n == 0) {  /* the state prefix only, as clickhouse-driver writes an empty column */
        unsigned char prefix[8];
        put_u64(prefix, 1);
        return PyBytes_FromStringAndSize((const char *)prefix, 8);
    }
    PyObject *index = PyDict_New(), *distinct = PyList_New(0);  /* value -> position; values in order */
    Py_ssize_t *rows = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)n);
    PyObject *out = NULL;
    size_t total = 8 * 4;
    if (rows == NULL) PyErr_NoMemory();
    if (index == NULL || distinct == NULL || rows == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_CheckExact(items[i]) && !PyBytes_CheckExact(items[i])) {
            /* exact str and bytes only: hashing a subclass could run Python code */
            PyErr_Format(PyExc_TypeError, "a LowCardinality(String) value must be str or bytes, not %.100s",
                         Py_TYPE(items[i])->tp_name);
            goto done;
        }
        PyObject *pos = PyDict_GetItemWithError(index, items[i]);
        if (pos != NULL) { rows[i] = PyLong_AsSsize_t(pos); continue; }
        if (PyErr_Occurred() || string_size(items[i], &total) < 0) goto done;
        PyObject *next = PyLong_FromSsize_t(PyList_GET_SIZE(distinct));
        if (next == NULL || PyDict_SetItem(index, items[i], next) < 0 || PyList_Append(distinct, items[i]) < 0) {
            Py_XDECREF(next);
            goto done;
        }
        Py_DECREF(next);
        rows[i] = PyList_GET_SIZE(distinct) - 1;
    }
    Py_ssize_t keys = PyList_GET_SIZE(distinct);
    int top = 0;  /* clickhouse-driver's int(log(len(index), 2) / 8): the highest set bit, by 8 */
    while (((size_t)keys >> (top + 1)) != 0) top++;
    int width_type = top / 8, width = 1 << width_type;
    total += (size_t)width * (size_t)n;
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) goto done;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    p = put_u64(p, 1);
    p = put_u64(p, (1ULL << 9) | (1ULL << 10) | (unsigned long long)width_type);
    p = put_u64(p, (unsigned long long)keys);
    for (Py_ssize_t k = 0; k < keys; k++) p = put_string(p, PyList_GET_ITEM(distinct, k));
    p = put_u64(p, (unsigned long long)n);
    for (Py_ssize_t i = 0; i < n; i++)
        for (int b = 0; b < width; b++) *p++ = (unsigned char)((unsigned long long)rows[i] >> (8 * b));
done:
    Py_XDECREF(index);
    Py_XDECREF(distinct);
    PyMem_Free(rows);
    return out;
}

static PyObject *native_column(PyObject *self, PyObject *args) {
    PyObject *type, *values;
    if (!PyArg_ParseTuple(args, "UO!", &type, &PyList_Type, &values)) return NULL;
    int kind = kind_of(type);
    if (kind == K_UNKNOWN) Py_RETURN_NONE;
    if (kind == K_LC_STRING) return low_cardinality_column(values);
    Py_ssize_t n = PyList_GET_SIZE(values);
    PyObject **items = PySequence_Fast_ITEMS(values);
    int nullable = kind == K_NULL_STRING || kind == K_NULL_FLOAT64;
    size_t total = nullable ? (size_t)n : 0;
    if (kind == K_FLOAT64 || kind == K_INT64 || kind == K_NULL_FLOAT64) {
        total += 8 * (size_t)n;
    } else if (kind == K_ARRAY_STRING) {
        total += 8 * (size_t)n;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!PyList_Check(items[i]) && !PyTuple_Check(items[i])) {
                PyErr_Format(PyExc_TypeError, "an Array(String) value must be a list or tuple, not %.100s",
                             Py_TYPE(items[i])->tp_name);
                return NULL;
            }
            PyObject **elems = PySequence_Fast_ITEMS(items[i]);
            for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(items[i]); j++)
                if (string_size(elems[j], &total) < 0) return NULL;
        }
    } else {  /* String, Nullable(String) */
        for (Py_ssize_t i = 0; i < n; i++) {
            if (items[i] == Py_None && nullable) total += 1;  /* '' */
            else if (string_size(items[i], &total) < 0) return NULL;
        }
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    if (nullable)
        for (Py_ssize_t i = 0; i < n; i++) *p++ = items[i] == Py_None;
    if (kind == K_STRING || kind == K_NULL_STRING) {
        for (Py_ssize_t i = 0; i < n; i++)
            p = items[i] == Py_None ? put_varint(p, 0) : put_string(p, items[i]);
    } else if (kind == K_ARRAY_STRING) {
        unsigned long long end = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            end += (unsigned long long)PySequence_Fast_GET_SIZE(items[i]);
            p = put_u64(p, end);
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject **elems = PySequence_Fast_ITEMS(items[i]);
            for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(items[i]); j++) p = put_string(p, elems[j]);
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++, p += 8) {
            if (items[i] == Py_None && nullable) { memset(p, 0, 8); continue; }
            if (number_bytes(kind == K_INT64 ? K_INT64 : K_FLOAT64, items[i], p) < 0) {
                Py_DECREF(out);
                return NULL;
            }
        }
    }
    return out;
}

/*
 * Samples as dicts and back (streams.columns.SampleColumns.row and extend_dicts, and the sink's add):
 *
 * sample_row(cols: tuple of 16 lists, i: int) -> dict: sample i in the streams.Sample shape, the
 *   fields in FIELDS order, resource_metadata a new dict of row i's keys and values. Raises
 *   IndexError (i out of range), ValueError (row i's key and value lists differ in length, as
 *   zip(strict=True) does) or TypeError (the metadata of row i is not two lists).
 *
 * extend_from_dicts(cols: tuple or list of 15 or 16 lists, samples: list) -> bool: appends every
 *   sample's fields to the columns, as the Python loop does (streams.columns.extend_from_dicts):
 *   required fields as they are, optional ones None when missing, resource_metadata's keys and
 *   values as two new lists ([] for None or a missing one), source '' when missing or None, and
 *   with 16 columns message_signature. Returns False, changing nothing, when a sample is not an
 *   exact dict, lacks a required field, or has metadata that is not None or an exact dict, or a
 *   source that is not None or a str: the Python loop then does the work (and raises its error).
 */
static PyObject *FIELD_KEYS[NCOLS];  /* interned, in FIELDS order; 12 and 13 are resource_metadata's halves */
static PyObject *KEY_METADATA, *EMPTY_STR;
static const int REQUIRED[] = {0, 1, 2, 3, 4, 9, 10};

static PyObject *sample_row(PyObject *self, PyObject *args) {
    PyObject *cols;
    Py_ssize_t i;
    if (!PyArg_ParseTuple(args, "O!n", &PyTuple_Type, &cols, &i)) return NULL;
    if (PyTuple_GET_SIZE(cols) != NCOLS) {
        PyErr_SetString(PyExc_ValueError, "sample_row: expected 16 columns");
        return NULL;
    }
    PyObject *first = PyTuple_GET_ITEM(cols, 0);
    if (!PyList_Check(first)) {
        PyErr_SetString(PyExc_TypeError, "sample_row: the columns must be lists");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(first);
    if (i < 0) i += n;
    PyObject *values[NCOLS];
    for (int k = 0; k < NCOLS; k++) {
        PyObject *col = PyTuple_GET_ITEM(cols, k);
        if (!PyList_Check(col) || i < 0 || i >= PyList_GET_SIZE(col)) {
            PyErr_SetString(PyList_Check(col) ? PyExc_IndexError : PyExc_TypeError,
                            PyList_Check(col) ? "list index out of range" : "sample_row: the columns must be lists");
            return NULL;
        }
        values[k] = PyList_GET_ITEM(col, i);
    }
    PyObject *keys = values[12], *vals = values[13];
    if (!PyList_Check(keys) || !PyList_Check(vals)) {
        PyErr_SetString(PyExc_TypeError, "sample_row: a row's metadata must be two lists");
        return NULL;
    }
    if (PyList_GET_SIZE(keys) != PyList_GET_SIZE(vals)) {
        PyErr_Format(PyExc_ValueError, "zip() argument 2 is %s than argument 1",
                     PyList_GET_SIZE(vals) < PyList_GET_SIZE(keys) ? "shorter" : "longer");
        return NULL;
    }
    /* the row's fields first (the dict holds them), then the metadata: hashing a key may run Python
       code (a str subclass), which must find nothing borrowed here to free or shrink */
    PyObject *out = _PyDict_NewPresized(NCOLS - 1);
    for (int k = 0; out != NULL && k < NCOLS; k++) {  /* resource_metadata: None until its dict is built */
        if (k == 13) continue;
        if (PyDict_SetItem(out, k == 12 ? KEY_METADATA : FIELD_KEYS[k], k == 12 ? Py_None : values[k]) < 0)
            Py_CLEAR(out);
    }
    if (out == NULL) return NULL;
    Py_INCREF(keys);
    Py_INCREF(vals);
    PyObject *md = PyDict_New();
    for (Py_ssize_t j = 0; md != NULL && j < PyList_GET_SIZE(keys) && j < PyList_GET_SIZE(vals); j++) {
        PyObject *key = PyList_GET_ITEM(keys, j), *val = PyList_GET_ITEM(vals, j);
        Py_INCREF(key);
        Py_INCREF(val);
        if (PyDict_SetItem(md, key, val) < 0) Py_CLEAR(md);
        Py_DECREF(key);
        Py_DECREF(val);
    }
    Py_DECREF(keys);
    Py_DECREF(vals);
    if (md == NULL || PyDict_SetItem(out, KEY_METADATA, md) < 0) Py_CLEAR(out);
    Py_XDECREF(md);
    return out;
}

static int append_new(PyObject *list, PyObject *value) {  /* appends, and releases, a new reference */
    if (value == NULL) return -1;
    int rc = PyList_Append(list, value);
    Py_DECREF(value);
    return rc;
}

static PyObject *extend_from_dicts(PyObject *self, PyObject *args) {
    PyObject *cols, *samples;
    if (!PyArg_ParseTuple(args, "OO!", &cols, &PyList_Type, &samples)) return NULL;
    PyObject *seq = PySequence_Fast(cols, "extend_from_dicts: columns must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t ncols = PySequence_Fast_GET_SIZE(seq);
    PyObject **lists = PySequence_Fast_ITEMS(seq);
    int ok = ncols == NCOLS || ncols == NCOLS - 1;
    for (Py_ssize_t k = 0; ok && k < ncols; k++) ok = PyList_Check(lists[k]);
    Py_ssize_t n = PyList_GET_SIZE(samples);
    for (Py_ssize_t i = 0; ok && i < n; i++) {  /* first: is every sample one this loop handles? */
        PyObject *s = PyList_GET_ITEM(samples, i);
        if (!PyDict_CheckExact(s)) { ok = 0; break; }
        for (size_t r = 0; ok && r < sizeof REQUIRED / sizeof REQUIRED[0]; r++)
            ok = PyDict_GetItemWithError(s, FIELD_KEYS[REQUIRED[r]]) != NULL;
        PyObject *md = ok ? PyDict_GetItemWithError(s, KEY_METADATA) : NULL;
        if (ok && md != NULL && md != Py_None && !PyDict_CheckExact(md)) ok = 0;
        PyObject *src = ok ? PyDict_GetItemWithError(s, FIELD_KEYS[14]) : NULL;
        if (ok && src != NULL && src != Py_None && !PyUnicode_Check(src)) ok = 0;
        if (PyErr_Occurred()) { Py_DECREF(seq); return NULL; }
    }
    if (!ok) { Py_DECREF(seq); Py_RETURN_FALSE; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyList_GET_ITEM(samples, i);
        for (Py_ssize_t k = 0; k < ncols; k++) {
            PyObject *v;
            int rc;
            if (k == 12 || k == 13) {
                v = PyDict_GetItem(s, KEY_METADATA);
                if (v == NULL || v == Py_None) rc = append_new(lists[k], PyList_New(0));
                else rc = append_new(lists[k], k == 12 ? PyDict_Keys(v) : PyDict_Values(v));
            } else {
                v = PyDict_GetItem(s, FIELD_KEYS[k]);  /* borrowed; required ones are there */
                if (k == 14 && (v == NULL || v == Py_None || PyUnicode_GET_LENGTH(v) == 0)) v = EMPTY_STR;
                rc = PyList_Append(lists[k], v == NULL ? Py_None : v);
            }
            if (rc < 0) { Py_DECREF(seq); return NULL; }  /* out of memory only */
        }
    }
    Py_DECREF(seq);
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"decode_samples", decode_samples, METH_VARARGS,
     "decode_samples(data, pos, columns) -> (count, end): append the samples array at pos to 16 column lists."},
    {"copy_json", copy_json, METH_O,
     "copy_json(value): a deep copy of JSON-shaped data (exact dicts and lists copied, anything else shared)."},
    {"uuid5_text", uuid5_text, METH_O,
     "uuid5_text(digest) -> str: the version-5 UUID text of a SHA-1 digest (RFC 4122), as str(uuid.UUID)."},
    {"native_column", native_column, METH_VARARGS,
     "native_column(type, values) -> bytes | None: one column of a ClickHouse Native block (None: type not handled)."},
    {"sample_row", sample_row, METH_VARARGS,
     "sample_row(cols, i) -> dict: sample i of 16 column lists as a streams.Sample dict."},
    {"extend_from_dicts", extend_from_dicts, METH_VARARGS,
     "extend_from_dicts(cols, samples) -> bool: append sample dicts to 15 or 16 columns (False: not done)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "streams._columns", NULL, -1, methods};

PyMODINIT_FUNC PyInit__columns(void) {
    const char *symbols[3] = {"gauge", "delta", "cumulative"};
    for (int i = 0; i < 3; i++) {
        ENUM_SYMBOLS[i] = PyUnicode_InternFromString(symbols[i]);
        if (ENUM_SYMBOLS[i] == NULL) return NULL;
    }
    const char *fields[NCOLS] = {"message_id", "name", "type", "unit", "volume", "user_id", "user_name",
                                 "project_id", "project_name", "resource_id", "timestamp", "monotonic_time",
                                 "metadata_keys", "metadata_values", "source", "message_signature"};
    for (int k = 0; k < NCOLS; k++)
        if ((FIELD_KEYS[k] = PyUnicode_InternFromString(fields[k])) == NULL) return NULL;
    if ((KEY_METADATA = PyUnicode_InternFromString("resource_metadata")) == NULL) return NULL;
    if ((EMPTY_STR = PyUnicode_New(0, 0)) == NULL) return NULL;
    return PyModule_Create(&module);
}
