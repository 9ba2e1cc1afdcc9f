/* The encoding hot loop of tinylm.tokenizer.Tokenizer, compiled.
 *
 * `Encoder.encode(text)` splits text (which holds no special tokens) into GPT-2 pre-tokens and
 * returns their ids, looking each pre-token up in a cache of pre-token bytes -> ids. Only a cache
 * miss calls back into Python (`bpe`, the Tokenizer's own merge loop), so the merge rules live in
 * one place; what this file adds is a scanner that never creates a Python object per pre-token.
 *
 * The scanner implements the GPT-2 pattern
 *     '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * by hand. Which class a character belongs to (whitespace, letter, number, other) is asked of
 * Python (`classify`, built on the `regex` module that defines the pattern) once per code point
 * and remembered, so both implementations agree on every character. The build is optional: without
 * a C compiler, tinylm encodes with its pure-Python path, which gives the same ids
 * (tests/test_tokenizer_encoder.py checks that they do).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { UNKNOWN = 0, SPACE = 1, LETTER = 2, NUMBER = 3, OTHER = 4 };
#define CODE_POINTS 0x110000

/* One cache entry: the pre-token's UTF-8 bytes and its ids, both stored in arenas. key_len == 0
 * marks an empty slot (pre-tokens are never empty). */
typedef struct {
    uint64_t hash;
    size_t key_at, key_len, ids_at, ids_len;
} Slot;

typedef struct {
    PyObject_HEAD
    PyObject *bpe;       /* pre-token str -> list[int] */
    PyObject *classify;  /* code point -> SPACE, LETTER, NUMBER or OTHER */
    Py_ssize_t max_entries;
    uint8_t *classes;    /* CODE_POINTS entries, UNKNOWN until asked */
    Slot *slots;
    size_t capacity, count;  /* capacity is a power of two, kept at least twice count */
    unsigned char *keys;
    size_t keys_len, keys_cap;
    uint32_t *ids;
    size_t ids_len, ids_cap;
} Encoder;

/* ---- growable arrays ------------------------------------------------------------------------ */

static int reserve(void **data, size_t *cap, size_t need, size_t item)
{
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : 1024;
    while (cap2 < need)
        cap2 *= 2;
    void *grown = PyMem_Realloc(*data, cap2 * item);
    if (!grown) {
        PyErr_NoMemory();
        return -1;
    }
    *data = grown;
    *cap = cap2;
    return 0;
}

/* ---- character classes ---------------------------------------------------------------------- */

static int class_of(Encoder *self, uint32_t code_point)
{
    uint8_t known = self->classes[code_point];
    if (known != UNKNOWN)
        return known;
    PyObject *result = PyObject_CallFunction(self->classify, "I", (unsigned int)code_point);
    if (!result)
        return -1;
    long value = PyLong_AsLong(result);
    Py_DECREF(result);
    if (value < SPACE || value > OTHER) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "classify(%u) returned %ld, not 1-4", code_point, value);
        return -1;
    }
    self->classes[code_point] = (uint8_t)value;
    return (int)value;
}

/* Class of the character at s[i] (valid UTF-8, as CPython produces), its length in *len. */
static inline int char_at(Encoder *self, const unsigned char *s, Py_ssize_t i, int *len)
{
    unsigned c = s[i];
    uint32_t code_point;
    if (c < 0x80) {
        *len = 1;
        code_point = c;
    } else if (c < 0xE0) {
        *len = 2;
        code_point = ((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
    } else if (c < 0xF0) {
        *len = 3;
        code_point = ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
    } else {
        *len = 4;
        code_point = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6)
                     | (s[i + 3] & 0x3Fu);
    }
    return class_of(self, code_point);
}

/* ---- the GPT-2 pattern ---------------------------------------------------------------------- */

/* End of the pre-token that starts at s[i] (i < n), or -1 with a Python error set. The cases
 * follow the pattern's alternatives in order; the first that matches wins. */
static Py_ssize_t pretoken_end(Encoder *self, const unsigned char *s, Py_ssize_t n, Py_ssize_t i)
{
    if (s[i] == '\'' && i + 1 < n) {  /* '(?:[sdmt]|ll|ve|re) */
        unsigned char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
        if (a == 's' || a == 'd' || a == 'm' || a == 't')
            return i + 2;
        if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e'))
            return i + 3;
    }
    int len, cls = char_at(self, s, i, &len);
    if (cls < 0)
        return -1;
    Py_ssize_t j = i;
    if (s[i] == ' ' && i + 1 < n) {  /* the optional space of " ?\p{L}+" and its siblings */
        int next_len, next = char_at(self, s, i + 1, &next_len);
        if (next < 0)
            return -1;
        if (next != SPACE) {
            j = i + 1;
            cls = next;
            len = next_len;
        }
    }
    if (cls != SPACE) {  /* a run of letters, of numbers, or of other characters */
        for (j += len; j < n; j += len) {
            int c = char_at(self, s, j, &len);
            if (c < 0)
                return -1;
            if (c != cls)
                break;
        }
        return j;
    }
    Py_ssize_t last = i;  /* whitespace: find the run's end and its last character */
    for (j = i; j < n; j += len) {
        int c = char_at(self, s, j, &len);
        if (c < 0)
            return -1;
        if (c != SPACE)
            break;
        last = j;
    }
    if (j == n)
        return n;     /* \s+(?!\S) at the end of the text */
    if (last > i)
        return last;  /* \s+(?!\S): all but the last whitespace character before a non-space */
    return j;         /* \s+: one whitespace character before a non-space */
}

/* ---- the cache ------------------------------------------------------------------------------ */

static uint64_t hash_bytes(const unsigned char *key, size_t len)
{
    uint64_t h = 14695981039346656037ull;  /* FNV-1a */
    for (size_t k = 0; k < len; k++)
        h = (h ^ key[k]) * 1099511628211ull;
    return h ? h : 1;
}

static Slot *find_slot(Slot *slots, size_t capacity, const unsigned char *keys,
                       const unsigned char *key, size_t len, uint64_t hash)
{
    for (size_t at = hash & (capacity - 1);; at = (at + 1) & (capacity - 1)) {
        Slot *slot = &slots[at];
        if (slot->key_len == 0)
            return slot;
        if (slot->hash == hash && slot->key_len == len && memcmp(keys + slot->key_at, key, len) == 0)
            return slot;
    }
}

static int grow_slots(Encoder *self)
{
    size_t capacity = self->capacity * 2;
    Slot *slots = PyMem_Calloc(capacity, sizeof(Slot));
    if (!slots) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t k = 0; k < self->capacity; k++) {
        Slot *old = &self->slots[k];
        if (old->key_len)
            *find_slot(slots, capacity, self->keys, self->keys + old->key_at, old->key_len, old->hash) = *old;
    }
    PyMem_Free(self->slots);
    self->slots = slots;
    self->capacity = capacity;
    return 0;
}

static void clear_cache(Encoder *self)
{
    memset(self->slots, 0, self->capacity * sizeof(Slot));
    self->count = self->keys_len = self->ids_len = 0;
}

/* The cache slot of pre-token key[0:len], computing its ids through `bpe` on a miss. */
static Slot *ids_of(Encoder *self, const unsigned char *key, size_t len)
{
    uint64_t hash = hash_bytes(key, len);
    Slot *slot = find_slot(self->slots, self->capacity, self->keys, key, len, hash);
    if (slot->key_len)
        return slot;

    PyObject *text = PyUnicode_DecodeUTF8((const char *)key, (Py_ssize_t)len, "strict");
    if (!text)
        return NULL;
    PyObject *result = PyObject_CallOneArg(self->bpe, text);
    Py_DECREF(text);
    if (!result)
        return NULL;
    PyObject *ids = PySequence_Fast(result, "bpe must return a list of ids");
    Py_DECREF(result);
    if (!ids)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(ids);

    if ((Py_ssize_t)self->count >= self->max_entries)  /* bounded memory on endless streams */
        clear_cache(self);
    if (reserve((void **)&self->keys, &self->keys_cap, self->keys_len + len, 1) < 0
        || reserve((void **)&self->ids, &self->ids_cap, self->ids_len + (size_t)count, sizeof(uint32_t)) < 0)
        goto error;
    for (Py_ssize_t k = 0; k < count; k++) {
        unsigned long id = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(ids, k));
        if (id == (unsigned long)-1 && PyErr_Occurred())
            goto error;
        if (id > UINT32_MAX) {
            PyErr_Format(PyExc_OverflowError, "token id %lu does not fit 32 bits", id);
            goto error;
        }
        self->ids[self->ids_len + (size_t)k] = (uint32_t)id;
    }
    Py_DECREF(ids);
    memcpy(self->keys + self->keys_len, key, len);
    if (2 * (self->count + 1) > self->capacity && grow_slots(self) < 0)
        return NULL;
    slot = find_slot(self->slots, self->capacity, self->keys, key, len, hash);
    *slot = (Slot){hash, self->keys_len, len, self->ids_len, (size_t)count};
    self->keys_len += len;
    self->ids_len += (size_t)count;
    self->count++;
    return slot;
error:
    Py_DECREF(ids);
    return NULL;
}

/* ---- the Python type ------------------------------------------------------------------------ */

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"bpe", "classify", "max_entries", NULL};
    PyObject *bpe, *classify;
    Py_ssize_t max_entries;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOn", names, &bpe, &classify, &max_entries))
        return -1;
    if (!PyCallable_Check(bpe) || !PyCallable_Check(classify)) {
        PyErr_SetString(PyExc_TypeError, "bpe and classify must be callable");
        return -1;
    }
    if (max_entries < 1) {
        PyErr_SetString(PyExc_ValueError, "max_entries must be positive");
        return -1;
    }
    if (self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder is already initialized");
        return -1;
    }
    self->classes = PyMem_Calloc(CODE_POINTS, 1);
    self->capacity = 1024;
    self->slots = PyMem_Calloc(self->capacity, sizeof(Slot));
    if (!self->classes || !self->slots) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(bpe);
    Py_INCREF(classify);
    self->bpe = bpe;
    self->classify = classify;
    self->max_entries = max_entries;
    return 0;
}

static void Encoder_dealloc(Encoder *self)
{
    Py_XDECREF(self->bpe);
    Py_XDECREF(self->classify);
    PyMem_Free(self->classes);
    PyMem_Free(self->slots);
    PyMem_Free(self->keys);
    PyMem_Free(self->ids);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Encoder_encode(Encoder *self, PyObject *text)
{
    if (!self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder is not initialized");
        return NULL;
    }
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "encode() takes a str, not %.100s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    Py_ssize_t n;
    const unsigned char *s = (const unsigned char *)PyUnicode_AsUTF8AndSize(text, &n);
    if (!s)
        return NULL;
    uint32_t *out = NULL;
    size_t out_len = 0, out_cap = 0;
    for (Py_ssize_t i = 0; i < n;) {
        Py_ssize_t end = pretoken_end(self, s, n, i);
        if (end < 0)
            goto error;
        Slot *slot = ids_of(self, s + i, (size_t)(end - i));
        if (!slot || reserve((void **)&out, &out_cap, out_len + slot->ids_len, sizeof(uint32_t)) < 0)
            goto error;
        memcpy(out + out_len, self->ids + slot->ids_at, slot->ids_len * sizeof(uint32_t));
        out_len += slot->ids_len;
        i = end;
    }
    PyObject *list = PyList_New((Py_ssize_t)out_len);
    if (!list)
        goto error;
    for (size_t k = 0; k < out_len; k++) {
        PyObject *id = PyLong_FromUnsignedLong(out[k]);
        if (!id) {
            Py_DECREF(list);
            goto error;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)k, id);
    }
    PyMem_Free(out);
    return list;
error:
    PyMem_Free(out);
    return NULL;
}

static PyObject *Encoder_clear(Encoder *self, PyObject *Py_UNUSED(ignored))
{
    if (self->slots)
        clear_cache(self);
    Py_RETURN_NONE;
}

static PyObject *Encoder_len(Encoder *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(self->count);
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)Encoder_encode, METH_O,
     "encode(text) -> list of ids of text, which holds no special tokens."},
    {"clear", (PyCFunction)Encoder_clear, METH_NOARGS, "Forget the cached pre-token ids."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Encoder_getset[] = {
    {"cached", (getter)Encoder_len, NULL, "Number of pre-tokens in the cache.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tinylm.tokenizer._encoder.Encoder",
    .tp_doc = "Encoder(bpe, classify, max_entries): GPT-2 pre-tokenization and a pre-token cache.",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
    .tp_getset = Encoder_getset,
};

static struct PyModuleDef encoder_module = {
    PyModuleDef_HEAD_INIT, "_encoder", "Compiled pre-tokenization and pre-token cache for Tokenizer.", -1,
};

PyMODINIT_FUNC PyInit__encoder(void)
{
    if (PyType_Ready(&EncoderType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&encoder_module);
    if (!module)
        return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(module, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
