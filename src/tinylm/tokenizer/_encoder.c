/* The encoding hot loop of tinylm.tokenizer.Tokenizer, compiled.
 *
 * `Encoder.encode(text)` cuts text at its special tokens the way `pretokenize.Splitter` does (the
 * leftmost occurrence first, the longest of those starting there), splits each stretch between them
 * into GPT-2 pre-tokens and returns the ids of it all, looking each pre-token up in a cache of
 * pre-token bytes -> ids, so that no Python object is made per pre-token. A miss applies the merges
 * the way `tokenizer.bpe` does (the leftmost pair with the earliest merge, until none is left);
 * pre-tokens longer than `long_word` bytes go, uncached, to Python's `bpe_long`, which does that in
 * O(n log n).
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

#include "_common.h"

enum { UNKNOWN = 0, SPACE = 1, LETTER = 2, NUMBER = 3, OTHER = 4 };
#define CODE_POINTS 0x110000

/* One cache entry: the pre-token's UTF-8 bytes and its ids, both stored in arenas. key_len == 0
 * marks an empty slot (pre-tokens are never empty). */
typedef struct {
    uint64_t hash;
    size_t key_at, key_len, ids_at, ids_len;
} Slot;

/* One merge: the pair (first, second) of ids, its rank and the id it makes. first == second ==
 * UINT32_MAX marks an empty slot (no id is that large). */
typedef struct {
    uint32_t first, second, rank, merged;
} Merge;

#define NO_ID UINT32_MAX
#define NO_RANK UINT32_MAX

/* One special token: its UTF-8 bytes and its id. */
typedef struct {
    char *bytes;
    Py_ssize_t len;
    uint32_t id;
} Special;

typedef struct {
    PyObject_HEAD
    PyObject *bpe_long;  /* pre-token str -> list[int], for pre-tokens longer than long_word */
    PyObject *classify;  /* code point -> SPACE, LETTER, NUMBER or OTHER */
    Py_ssize_t max_entries, long_word;
    uint32_t byte_ids[256];
    Merge *merges;
    size_t merges_mask;  /* the merge table has merges_mask + 1 slots, a power of two */
    uint32_t *word, *ranks;  /* scratch for one pre-token: long_word entries each */
    uint8_t *classes;    /* CODE_POINTS entries, UNKNOWN until asked */
    Slot *slots;
    size_t capacity, count;  /* capacity is a power of two, kept at least twice count */
    unsigned char *keys;
    size_t keys_len, keys_cap;
    uint32_t *ids;
    size_t ids_len, ids_cap;
    /* id_objects[id]: the Python int of an id below id_limit, made when first returned and
     * shared by every list after that, so that a text's ids are not a million new objects */
    PyObject **id_objects;
    uint32_t id_limit;
    Special *specials;
    Py_ssize_t special_count;
} Encoder;


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

/* ---- merges ---------------------------------------------------------------------------- */

static inline size_t merge_slot(const Encoder *self, uint32_t first, uint32_t second)
{
    size_t at = pair_home(first, second, self->merges_mask);
    while (self->merges[at].first != NO_ID
           && (self->merges[at].first != first || self->merges[at].second != second))
        at = (at + 1) & self->merges_mask;
    return at;
}

static inline uint32_t rank_of(const Encoder *self, uint32_t first, uint32_t second)
{
    const Merge *merge = &self->merges[merge_slot(self, first, second)];
    return merge->first == NO_ID ? NO_RANK : merge->rank;
}

/* Ids of the pre-token key[0:len] (len <= long_word) into self->word; returns how many. */
static size_t merge_bytes(Encoder *self, const unsigned char *key, size_t len)
{
    uint32_t *word = self->word, *ranks = self->ranks;  /* ranks[k]: pair word[k], word[k + 1] */
    size_t n = len;
    for (size_t k = 0; k < n; k++)
        word[k] = self->byte_ids[key[k]];
    for (size_t k = 0; k + 1 < n; k++)
        ranks[k] = rank_of(self, word[k], word[k + 1]);
    while (n > 1) {
        size_t best = 0;
        for (size_t k = 1; k + 1 < n; k++)
            if (ranks[k] < ranks[best])
                best = k;
        if (ranks[best] == NO_RANK)
            break;
        word[best] = self->merges[merge_slot(self, word[best], word[best + 1])].merged;
        memmove(word + best + 1, word + best + 2, (n - best - 2) * sizeof(uint32_t));
        memmove(ranks + best, ranks + best + 1, (n - best - 2) * sizeof(uint32_t));
        n--;
        if (best > 0)
            ranks[best - 1] = rank_of(self, word[best - 1], word[best]);
        if (best + 1 < n)
            ranks[best] = rank_of(self, word[best], word[best + 1]);
    }
    return n;
}

static int load_merges(Encoder *self, PyObject *merges, PyObject *byte_ids)
{
    PyObject *ids = PySequence_Fast(byte_ids, "byte_ids must be a sequence");
    if (!ids)
        return -1;
    if (PySequence_Fast_GET_SIZE(ids) != 256) {
        Py_DECREF(ids);
        PyErr_SetString(PyExc_ValueError, "byte_ids must hold 256 ids");
        return -1;
    }
    for (int b = 0; b < 256; b++) {
        unsigned long id = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(ids, b));
        if ((id == (unsigned long)-1 && PyErr_Occurred()) || id >= NO_ID) {
            Py_DECREF(ids);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_OverflowError, "token ids must fit 32 bits");
            return -1;
        }
        self->byte_ids[b] = (uint32_t)id;
        if (id >= self->id_limit)
            self->id_limit = (uint32_t)id + 1;
    }
    Py_DECREF(ids);

    if (!PyDict_Check(merges)) {
        PyErr_SetString(PyExc_TypeError, "merges must be a dict (first, second) -> (rank, merged id)");
        return -1;
    }
    size_t slots = 16;
    while (slots < 2 * (size_t)PyDict_Size(merges))
        slots *= 2;
    self->merges = PyMem_Malloc(slots * sizeof(Merge));
    if (!self->merges) {
        PyErr_NoMemory();
        return -1;
    }
    memset(self->merges, 0xFF, slots * sizeof(Merge));
    self->merges_mask = slots - 1;
    PyObject *pair, *entry;
    Py_ssize_t at = 0;
    while (PyDict_Next(merges, &at, &pair, &entry)) {
        unsigned long first, second, rank, merged;
        if (!PyArg_ParseTuple(pair, "kk", &first, &second) || !PyArg_ParseTuple(entry, "kk", &rank, &merged))
            return -1;
        if (first >= NO_ID || second >= NO_ID || rank >= NO_RANK || merged >= NO_ID) {
            PyErr_SetString(PyExc_OverflowError, "token ids and ranks must fit 32 bits");
            return -1;
        }
        self->merges[merge_slot(self, (uint32_t)first, (uint32_t)second)] =
            (Merge){(uint32_t)first, (uint32_t)second, (uint32_t)rank, (uint32_t)merged};
        if (merged >= self->id_limit)
            self->id_limit = (uint32_t)merged + 1;
    }
    return 0;
}

/* The special tokens of special_ids (a dict str -> id, or NULL for none). */
static int load_specials(Encoder *self, PyObject *special_ids)
{
    if (!special_ids)
        return 0;
    if (!PyDict_Check(special_ids)) {
        PyErr_SetString(PyExc_TypeError, "special_ids must be a dict special token -> id");
        return -1;
    }
    self->specials = PyMem_Calloc((size_t)PyDict_Size(special_ids) + 1, sizeof(Special));
    if (!self->specials) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject *token, *value;
    Py_ssize_t at = 0, len;
    while (PyDict_Next(special_ids, &at, &token, &value)) {
        const char *utf8 = PyUnicode_Check(token) ? PyUnicode_AsUTF8AndSize(token, &len) : NULL;
        if (!utf8 || len == 0) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "special tokens must be non-empty str, got %R", token);
            return -1;
        }
        unsigned long id = PyLong_AsUnsignedLong(value);
        if ((id == (unsigned long)-1 && PyErr_Occurred()) || id >= NO_ID) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_OverflowError, "token ids must fit 32 bits");
            return -1;
        }
        Special *special = &self->specials[self->special_count];
        if (!(special->bytes = PyMem_Malloc((size_t)len))) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(special->bytes, utf8, (size_t)len);
        special->len = len;
        special->id = (uint32_t)id;
        self->special_count++;
        if (id >= self->id_limit)
            self->id_limit = (uint32_t)id + 1;
    }
    return 0;
}

/* Start of the first occurrence of needle[0:len] in s[from:n], or -1. */
static Py_ssize_t find_bytes(const unsigned char *s, Py_ssize_t from, Py_ssize_t n, const char *needle,
                             Py_ssize_t len)
{
    while (from + len <= n) {
        const unsigned char *hit = memchr(s + from, (unsigned char)needle[0], (size_t)(n - len + 1 - from));
        if (!hit)
            return -1;
        from = hit - s;
        if (memcmp(hit, needle, (size_t)len) == 0)
            return from;
        from++;
    }
    return -1;
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

/* A new reference to the Python int of `id`, or NULL with an error set. Ids at or above id_limit
 * (only a bpe_long that returns ids no merge makes gives those) get a new int each time. */
static PyObject *id_object(Encoder *self, uint32_t id)
{
    if (id >= self->id_limit)
        return PyLong_FromUnsignedLong(id);
    PyObject *object = self->id_objects[id];
    if (!object) {
        object = PyLong_FromUnsignedLong(id);
        if (!object)
            return NULL;
        self->id_objects[id] = object;
    }
    Py_INCREF(object);
    return object;
}

static void clear_id_objects(Encoder *self)
{
    if (!self->id_objects)
        return;
    for (uint32_t id = 0; id < self->id_limit; id++)
        Py_CLEAR(self->id_objects[id]);
}

/* Append the ids of the long pre-token key[0:len], computed by Python's bpe_long, to out. Long
 * pre-tokens are rare and seldom repeat, so they are not cached: that bounds the cache's memory
 * to max_entries pre-tokens of at most long_word bytes. */
static int append_long(Encoder *self, const unsigned char *key, size_t len, uint32_t **out, size_t *out_len,
                       size_t *out_cap)
{
    PyObject *text = PyUnicode_DecodeUTF8((const char *)key, (Py_ssize_t)len, "strict");
    if (!text)
        return -1;
    PyObject *result = PyObject_CallOneArg(self->bpe_long, text);
    Py_DECREF(text);
    if (!result)
        return -1;
    PyObject *ids = PySequence_Fast(result, "bpe_long must return a list of ids");
    Py_DECREF(result);
    if (!ids)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(ids);
    if (reserve((void **)out, out_cap, *out_len + (size_t)count, sizeof(uint32_t)) < 0)
        goto error;
    for (Py_ssize_t k = 0; k < count; k++) {
        unsigned long id = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(ids, k));
        if (id == (unsigned long)-1 && PyErr_Occurred())
            goto error;
        if (id >= NO_ID) {
            PyErr_Format(PyExc_OverflowError, "token id %lu does not fit 32 bits", id);
            goto error;
        }
        (*out)[(*out_len)++] = (uint32_t)id;
    }
    Py_DECREF(ids);
    return 0;
error:
    Py_DECREF(ids);
    return -1;
}

/* The cache slot of pre-token key[0:len] (len <= long_word), merging its bytes on a miss. */
static Slot *ids_of(Encoder *self, const unsigned char *key, size_t len)
{
    uint64_t hash = hash_bytes(key, len);
    Slot *slot = find_slot(self->slots, self->capacity, self->keys, key, len, hash);
    if (slot->key_len)
        return slot;

    if ((Py_ssize_t)self->count >= self->max_entries)  /* bounded memory on endless streams */
        clear_cache(self);
    size_t count = merge_bytes(self, key, len);
    if (reserve((void **)&self->ids, &self->ids_cap, self->ids_len + count, sizeof(uint32_t)) < 0
        || reserve((void **)&self->keys, &self->keys_cap, self->keys_len + len, 1) < 0)
        return NULL;
    memcpy(self->ids + self->ids_len, self->word, count * sizeof(uint32_t));
    memcpy(self->keys + self->keys_len, key, len);
    if (2 * (self->count + 1) > self->capacity && grow_slots(self) < 0)
        return NULL;
    slot = find_slot(self->slots, self->capacity, self->keys, key, len, hash);
    *slot = (Slot){hash, self->keys_len, len, self->ids_len, count};
    self->keys_len += len;
    self->ids_len += count;
    self->count++;
    return slot;
}

/* ---- the Python type ------------------------------------------------------------------------ */

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"merges", "byte_ids", "bpe_long", "long_word", "classify", "max_entries",
                            "special_ids", NULL};
    PyObject *merges, *byte_ids, *bpe_long, *classify, *special_ids = NULL;
    Py_ssize_t long_word, max_entries;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOnOn|O", names, &merges, &byte_ids, &bpe_long,
                                     &long_word, &classify, &max_entries, &special_ids))
        return -1;
    if (!PyCallable_Check(bpe_long) || !PyCallable_Check(classify)) {
        PyErr_SetString(PyExc_TypeError, "bpe_long and classify must be callable");
        return -1;
    }
    if (max_entries < 1 || long_word < 1) {
        PyErr_SetString(PyExc_ValueError, "max_entries and long_word must be positive");
        return -1;
    }
    if (self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder is already initialized");
        return -1;
    }
    if (load_merges(self, merges, byte_ids) < 0 || load_specials(self, special_ids) < 0)
        return -1;
    self->id_objects = PyMem_Calloc(self->id_limit, sizeof(PyObject *));
    self->classes = PyMem_Calloc(CODE_POINTS, 1);
    self->word = PyMem_Malloc((size_t)long_word * sizeof(uint32_t));
    self->ranks = PyMem_Malloc((size_t)long_word * sizeof(uint32_t));
    self->capacity = 1024;
    self->slots = PyMem_Calloc(self->capacity, sizeof(Slot));
    if (!self->id_objects || !self->classes || !self->word || !self->ranks || !self->slots) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(bpe_long);
    Py_INCREF(classify);
    self->bpe_long = bpe_long;
    self->classify = classify;
    self->long_word = long_word;
    self->max_entries = max_entries;
    return 0;
}

/* The callbacks may refer back to the object that owns this encoder (a bound method of its
 * Tokenizer does), so the collector must see them to free such a cycle. */
static int Encoder_traverse(Encoder *self, visitproc visit, void *arg)
{
    Py_VISIT(self->bpe_long);
    Py_VISIT(self->classify);
    return 0;
}

static int Encoder_clear_refs(Encoder *self)
{
    Py_CLEAR(self->bpe_long);
    Py_CLEAR(self->classify);
    return 0;
}

static void Encoder_dealloc(Encoder *self)
{
    PyObject_GC_UnTrack(self);
    Encoder_clear_refs(self);
    clear_id_objects(self);
    PyMem_Free(self->id_objects);
    for (Py_ssize_t k = 0; self->specials && k < self->special_count; k++)
        PyMem_Free(self->specials[k].bytes);
    PyMem_Free(self->specials);
    PyMem_Free(self->merges);
    PyMem_Free(self->word);
    PyMem_Free(self->ranks);
    PyMem_Free(self->classes);
    PyMem_Free(self->slots);
    PyMem_Free(self->keys);
    PyMem_Free(self->ids);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The UTF-8 bytes of `text` (kept by CPython inside the str), or NULL with an error set. */
static const unsigned char *utf8_of(Encoder *self, PyObject *text, Py_ssize_t *n, const char *method)
{
    if (!self->slots || !self->bpe_long) {  /* never initialized, or cleared by the collector */
        PyErr_SetString(PyExc_RuntimeError, "Encoder is not initialized");
        return NULL;
    }
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "%s() takes a str, not %.100s", method, Py_TYPE(text)->tp_name);
        return NULL;
    }
    return (const unsigned char *)PyUnicode_AsUTF8AndSize(text, n);
}

/* Append the ids of the text s[start:end], which holds no special tokens, to out. */
static int encode_ordinary(Encoder *self, const unsigned char *s, Py_ssize_t start, Py_ssize_t end, uint32_t **out,
                           size_t *out_len, size_t *out_cap)
{
    for (Py_ssize_t i = start; i < end;) {
        Py_ssize_t next = pretoken_end(self, s, end, i);
        if (next < 0)
            return -1;
        if (next - i > self->long_word) {
            if (append_long(self, s + i, (size_t)(next - i), out, out_len, out_cap) < 0)
                return -1;
        } else {
            Slot *slot = ids_of(self, s + i, (size_t)(next - i));
            if (!slot || reserve((void **)out, out_cap, *out_len + slot->ids_len, sizeof(uint32_t)) < 0)
                return -1;
            memcpy(*out + *out_len, self->ids + slot->ids_at, slot->ids_len * sizeof(uint32_t));
            *out_len += slot->ids_len;
        }
        i = next;
    }
    return 0;
}

static PyObject *Encoder_encode(Encoder *self, PyObject *text)
{
    Py_ssize_t n;
    const unsigned char *s = utf8_of(self, text, &n, "encode");
    if (!s)
        return NULL;
    uint32_t *out = NULL;
    size_t out_len = 0, out_cap = 0;
    /* found[k]: where special token k next occurs at or after `start`; -2 not yet searched, -1 none */
    Py_ssize_t *found = PyMem_Malloc(((size_t)self->special_count + 1) * sizeof(Py_ssize_t));
    if (!found) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t k = 0; k < self->special_count; k++)
        found[k] = -2;
    for (Py_ssize_t start = 0;;) {
        const Special *special = NULL;
        Py_ssize_t at = n;
        for (Py_ssize_t k = 0; k < self->special_count; k++) {
            const Special *candidate = &self->specials[k];
            if (found[k] == -2 || (found[k] >= 0 && found[k] < start))
                found[k] = find_bytes(s, start, n, candidate->bytes, candidate->len);
            if (found[k] >= 0 && (found[k] < at || (found[k] == at && special && candidate->len > special->len))) {
                at = found[k];
                special = candidate;
            }
        }
        if (encode_ordinary(self, s, start, at, &out, &out_len, &out_cap) < 0)
            goto error;
        if (!special)
            break;
        if (reserve((void **)&out, &out_cap, out_len + 1, sizeof(uint32_t)) < 0)
            goto error;
        out[out_len++] = special->id;
        start = at + special->len;
    }
    PyMem_Free(found);
    found = NULL;
    PyObject *list = PyList_New((Py_ssize_t)out_len);
    if (!list)
        goto error;
    for (size_t k = 0; k < out_len; k++) {
        PyObject *id = id_object(self, out[k]);
        if (!id) {
            Py_DECREF(list);
            goto error;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)k, id);
    }
    PyMem_Free(out);
    return list;
error:
    PyMem_Free(found);
    PyMem_Free(out);
    return NULL;
}

static PyObject *Encoder_pretokenize(Encoder *self, PyObject *text)
{
    Py_ssize_t n;
    const unsigned char *s = utf8_of(self, text, &n, "pretokenize");
    if (!s)
        return NULL;
    PyObject *list = PyList_New(0);
    for (Py_ssize_t i = 0; list && i < n;) {
        Py_ssize_t end = pretoken_end(self, s, n, i);
        PyObject *pretoken = end < 0 ? NULL : PyUnicode_DecodeUTF8((const char *)s + i, end - i, "strict");
        if (!pretoken || PyList_Append(list, pretoken) < 0)
            Py_CLEAR(list);
        Py_XDECREF(pretoken);
        i = end;
    }
    return list;
}

static PyObject *Encoder_clear(Encoder *self, PyObject *Py_UNUSED(ignored))
{
    if (self->slots)
        clear_cache(self);
    clear_id_objects(self);
    Py_RETURN_NONE;
}

static PyObject *Encoder_len(Encoder *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(self->count);
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)Encoder_encode, METH_O,
     "encode(text) -> list of ids of text; each special token in it becomes its one id."},
    {"pretokenize", (PyCFunction)Encoder_pretokenize, METH_O,
     "pretokenize(text) -> the GPT-2 pre-tokens of text, as the scanner in encode() finds them."},
    {"clear", (PyCFunction)Encoder_clear, METH_NOARGS, "Forget the cached pre-token ids and the ints made for ids."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Encoder_getset[] = {
    {"cached", (getter)Encoder_len, NULL, "Number of pre-tokens in the cache.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tinylm.tokenizer._encoder.Encoder",
    .tp_doc = "Encoder(merges, byte_ids, bpe_long, long_word, classify, max_entries, special_ids={}):\n"
              "special tokens, GPT-2 pre-tokenization, byte-pair merging and a cache of pre-token ids.",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_traverse = (traverseproc)Encoder_traverse,
    .tp_clear = (inquiry)Encoder_clear_refs,
    .tp_methods = Encoder_methods,
    .tp_getset = Encoder_getset,
};

static struct PyModuleDef encoder_module = {
    PyModuleDef_HEAD_INIT, "_encoder", "Compiled pre-tokenization, merging and pre-token cache for Tokenizer.",
    -1, NULL, NULL, NULL, NULL, NULL,
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
