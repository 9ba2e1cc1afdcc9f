/* The merge loop of BPE training (tinylm.tokenizer.training.bpe_merges), compiled.
 *
 * learn_merges(words, counts, tokens, num_merges, progress) learns up to num_merges merges from
 * distinct pre-tokens (`words`, as UTF-8 bytes, each longer than one byte) and their counts.
 * `tokens[id]` are the bytes of the ids already in the vocabulary (byte b has id b); merge k makes
 * id len(tokens) + k. Returns the merged id pairs in order. `progress(n)`, if given, hears how many
 * merges are done now and then.
 *
 * The algorithm is the Python one, step for step, so both learn the same merges (the tests train
 * with both): pair counts are kept up to date by touching only the words that hold the merged
 * pair, and a heap with lazy invalidation gives the most frequent pair; ties go to the greater
 * pair of byte strings, then to the smaller ids.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_common.h"

typedef struct {
    uint32_t *ids;
    size_t len;
    int64_t count;
    int64_t stamp;  /* the last merge step that touched this word */
} Word;

typedef struct {
    uint32_t first, second;  /* first == UINT32_MAX marks an empty slot */
    int64_t count;
    int64_t before, stamp;   /* the count before the current step, and that step */
    uint32_t *words;         /* indices of words that hold (or once held) the pair */
    size_t nwords, cap;
} Pair;

typedef struct {
    int64_t count;
    uint32_t first, second;
} Entry;

typedef struct {
    unsigned char *data;
    size_t len;
} Token;

typedef struct {
    Word *words;
    size_t nwords;
    Token *tokens;          /* the bytes of every id */
    size_t ntokens, tokens_cap;
    Pair *pairs;
    size_t pairs_mask, npairs;
    Entry *heap;
    size_t heap_len, heap_cap;
    uint64_t *touched;      /* pairs (first << 32 | second) whose count changed in this step */
    size_t ntouched, touched_cap;
} Trainer;

#define EMPTY UINT32_MAX


/* ---- pairs -------------------------------------------------------------------------------- */

static size_t pair_slot(const Pair *pairs, size_t mask, uint32_t first, uint32_t second)
{
    size_t at = pair_home(first, second, mask);
    while (pairs[at].first != EMPTY && (pairs[at].first != first || pairs[at].second != second))
        at = (at + 1) & mask;
    return at;
}

static int grow_pairs(Trainer *t)
{
    size_t slots = (t->pairs_mask + 1) * 2;
    Pair *pairs = PyMem_Malloc(slots * sizeof(Pair));
    if (!pairs) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t k = 0; k < slots; k++)
        pairs[k].first = EMPTY;
    for (size_t k = 0; k <= t->pairs_mask; k++)
        if (t->pairs[k].first != EMPTY)
            pairs[pair_slot(pairs, slots - 1, t->pairs[k].first, t->pairs[k].second)] = t->pairs[k];
    PyMem_Free(t->pairs);
    t->pairs = pairs;
    t->pairs_mask = slots - 1;
    return 0;
}

/* The slot of pair (first, second), made with count 0 if new; (size_t)-1 on error. */
static size_t pair_of(Trainer *t, uint32_t first, uint32_t second)
{
    size_t at = pair_slot(t->pairs, t->pairs_mask, first, second);
    if (t->pairs[at].first != EMPTY)
        return at;
    if (2 * (t->npairs + 1) > t->pairs_mask + 1) {
        if (grow_pairs(t) < 0)
            return (size_t)-1;
        at = pair_slot(t->pairs, t->pairs_mask, first, second);
    }
    t->pairs[at] = (Pair){first, second, 0, 0, 0, NULL, 0, 0};  /* stamp 0: loading, before step 1 */
    t->npairs++;
    return at;
}

/* Add `delta` to the count of (first, second), remembering its count before this step
 * (step 0, the loading of the words, remembers nothing). */
static int add_count(Trainer *t, uint32_t first, uint32_t second, int64_t delta, int64_t step)
{
    size_t at = pair_of(t, first, second);
    if (at == (size_t)-1)
        return -1;
    Pair *pair = &t->pairs[at];
    if (pair->stamp != step) {
        pair->stamp = step;
        pair->before = pair->count;
        if (reserve((void **)&t->touched, &t->touched_cap, t->ntouched + 1, sizeof(uint64_t)) < 0)
            return -1;
        t->touched[t->ntouched++] = ((uint64_t)first << 32) | second;
    }
    pair->count += delta;
    return 0;
}

static int add_word(Trainer *t, uint32_t first, uint32_t second, uint32_t word)
{
    size_t at = pair_of(t, first, second);
    if (at == (size_t)-1)
        return -1;
    Pair *pair = &t->pairs[at];
    if (pair->nwords && pair->words[pair->nwords - 1] == word)
        return 0;  /* a word holding the pair twice is listed once */
    if (reserve((void **)&pair->words, &pair->cap, pair->nwords + 1, sizeof(uint32_t)) < 0)
        return -1;
    pair->words[pair->nwords++] = word;
    return 0;
}

/* ---- the heap: the most frequent pair on top, ties to the greater bytes, then smaller ids -- */

static int bytes_cmp(const Trainer *t, uint32_t x, uint32_t y)
{
    size_t lx = t->tokens[x].len, ly = t->tokens[y].len;
    int c = memcmp(t->tokens[x].data, t->tokens[y].data, lx < ly ? lx : ly);
    return c ? c : (lx > ly) - (lx < ly);
}

/* Whether entry x should come out of the heap before entry y. */
static int before(const Trainer *t, const Entry *x, const Entry *y)
{
    if (x->count != y->count)
        return x->count > y->count;
    int c = bytes_cmp(t, x->first, y->first);
    if (!c)
        c = bytes_cmp(t, x->second, y->second);
    if (c)
        return c > 0;
    if (x->first != y->first)
        return x->first < y->first;
    return x->second < y->second;
}

static int heap_push(Trainer *t, Entry entry)
{
    if (reserve((void **)&t->heap, &t->heap_cap, t->heap_len + 1, sizeof(Entry)) < 0)
        return -1;
    size_t k = t->heap_len++;
    while (k > 0 && before(t, &entry, &t->heap[(k - 1) / 2])) {
        t->heap[k] = t->heap[(k - 1) / 2];
        k = (k - 1) / 2;
    }
    t->heap[k] = entry;
    return 0;
}

static Entry heap_pop(Trainer *t)
{
    Entry top = t->heap[0], last = t->heap[--t->heap_len];
    size_t k = 0;
    for (;;) {
        size_t child = 2 * k + 1;
        if (child >= t->heap_len)
            break;
        if (child + 1 < t->heap_len && before(t, &t->heap[child + 1], &t->heap[child]))
            child++;
        if (!before(t, &t->heap[child], &last))
            break;
        t->heap[k] = t->heap[child];
        k = child;
    }
    if (t->heap_len)
        t->heap[k] = last;
    return top;
}

/* ---- one merge ---------------------------------------------------------------------------- */

/* Replace every (a, b) in word w by `merged`, left to right, moving the pair counts along. */
static int merge_word(Trainer *t, uint32_t w, uint32_t a, uint32_t b, uint32_t merged, int64_t step)
{
    Word *word = &t->words[w];
    uint32_t *ids = word->ids;
    size_t n = word->len, out = 0;
    int found = 0;
    for (size_t k = 0; k + 1 < n; k++)
        if (ids[k] == a && ids[k + 1] == b) {
            found = 1;
            break;
        }
    if (!found)
        return 0;  /* a stale entry in the pair's word list */
    for (size_t k = 0; k + 1 < n; k++)
        if (add_count(t, ids[k], ids[k + 1], -word->count, step) < 0)
            return -1;
    for (size_t k = 0; k < n; out++) {
        if (k + 1 < n && ids[k] == a && ids[k + 1] == b) {
            ids[out] = merged;
            k += 2;
        } else {
            ids[out] = ids[k++];
        }
    }
    word->len = out;
    for (size_t k = 0; k + 1 < out; k++) {
        if (add_count(t, ids[k], ids[k + 1], word->count, step) < 0)
            return -1;
        if ((ids[k] == merged || ids[k + 1] == merged) && add_word(t, ids[k], ids[k + 1], w) < 0)
            return -1;
    }
    return 0;
}

static int add_token(Trainer *t, const unsigned char *data, size_t len)
{
    if (reserve((void **)&t->tokens, &t->tokens_cap, t->ntokens + 1, sizeof(Token)) < 0)
        return -1;
    unsigned char *copy = PyMem_Malloc(len ? len : 1);
    if (!copy) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(copy, data, len);
    t->tokens[t->ntokens++] = (Token){copy, len};
    return 0;
}

static void free_trainer(Trainer *t)
{
    for (size_t k = 0; k < t->nwords; k++)
        PyMem_Free(t->words[k].ids);
    PyMem_Free(t->words);
    for (size_t k = 0; k < t->ntokens; k++)
        PyMem_Free(t->tokens[k].data);
    PyMem_Free(t->tokens);
    if (t->pairs)
        for (size_t k = 0; k <= t->pairs_mask; k++)
            if (t->pairs[k].first != EMPTY)
                PyMem_Free(t->pairs[k].words);
    PyMem_Free(t->pairs);
    PyMem_Free(t->heap);
    PyMem_Free(t->touched);
}

static int load(Trainer *t, PyObject *words, PyObject *counts, PyObject *tokens)
{
    Py_ssize_t nwords = PyList_Size(words), ntokens = PyList_Size(tokens);
    if (nwords < 0 || ntokens < 0)
        return -1;
    if (PyList_Size(counts) != nwords) {
        PyErr_SetString(PyExc_ValueError, "words and counts differ in length");
        return -1;
    }
    if (ntokens < 256) {
        PyErr_SetString(PyExc_ValueError, "tokens must start with the 256 single bytes");
        return -1;
    }
    for (Py_ssize_t k = 0; k < ntokens; k++) {
        char *data;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(PyList_GET_ITEM(tokens, k), &data, &len) < 0
            || add_token(t, (const unsigned char *)data, (size_t)len) < 0)
            return -1;
    }
    t->words = PyMem_Calloc((size_t)nwords + 1, sizeof(Word));
    t->pairs = PyMem_Malloc(1024 * sizeof(Pair));
    if (!t->words || !t->pairs) {
        PyErr_NoMemory();
        return -1;
    }
    t->pairs_mask = 1023;
    for (size_t k = 0; k <= t->pairs_mask; k++)
        t->pairs[k].first = EMPTY;
    for (Py_ssize_t w = 0; w < nwords; w++) {
        char *data;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(PyList_GET_ITEM(words, w), &data, &len) < 0)
            return -1;
        int64_t count = PyLong_AsLongLong(PyList_GET_ITEM(counts, w));
        if (count == -1 && PyErr_Occurred())
            return -1;
        Word *word = &t->words[t->nwords++];
        word->ids = PyMem_Malloc((size_t)(len ? len : 1) * sizeof(uint32_t));
        if (!word->ids) {
            PyErr_NoMemory();
            return -1;
        }
        word->len = (size_t)len;
        word->count = count;
        for (Py_ssize_t k = 0; k < len; k++)
            word->ids[k] = (unsigned char)data[k];  /* byte b has id b */
        for (Py_ssize_t k = 0; k + 1 < len; k++)
            if (add_count(t, word->ids[k], word->ids[k + 1], count, 0) < 0
                || add_word(t, word->ids[k], word->ids[k + 1], (uint32_t)w) < 0)
                return -1;
    }
    for (size_t k = 0; k <= t->pairs_mask; k++) {
        Pair *pair = &t->pairs[k];
        if (pair->first != EMPTY && pair->count > 0
            && heap_push(t, (Entry){pair->count, pair->first, pair->second}) < 0)
            return -1;
    }
    return 0;
}

static PyObject *learn_merges(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"words", "counts", "tokens", "num_merges", "progress", NULL};
    PyObject *words, *counts, *tokens, *progress = Py_None;
    Py_ssize_t num_merges;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O!n|O", names, &PyList_Type, &words, &PyList_Type,
                                     &counts, &PyList_Type, &tokens, &num_merges, &progress))
        return NULL;
    Trainer t = {0};
    PyObject *merges = PyList_New(0);
    if (!merges || load(&t, words, counts, tokens) < 0)
        goto error;
    for (int64_t step = 1; step <= num_merges; step++) {
        Pair *pair = NULL;
        while (t.heap_len) {  /* skip entries whose count has changed since they were pushed */
            pair = &t.pairs[pair_slot(t.pairs, t.pairs_mask, t.heap[0].first, t.heap[0].second)];
            if (pair->count == t.heap[0].count)
                break;
            heap_pop(&t);
            pair = NULL;
        }
        if (!pair)
            break;  /* no pairs left */
        Entry best = heap_pop(&t);
        uint32_t merged = (uint32_t)t.ntokens;
        size_t la = t.tokens[best.first].len, lb = t.tokens[best.second].len;
        unsigned char *joined = PyMem_Malloc(la + lb);
        if (!joined) {
            PyErr_NoMemory();
            goto error;
        }
        memcpy(joined, t.tokens[best.first].data, la);
        memcpy(joined + la, t.tokens[best.second].data, lb);
        int failed = add_token(&t, joined, la + lb);
        PyMem_Free(joined);
        PyObject *item = failed ? NULL : Py_BuildValue("(II)", best.first, best.second);
        if (!item || PyList_Append(merges, item) < 0) {
            Py_XDECREF(item);
            goto error;
        }
        Py_DECREF(item);

        /* The pair's word list moves out of the table: merging may add to (and so move) it. */
        uint32_t *holders = pair->words;
        size_t nholders = pair->nwords;
        pair->words = NULL;
        pair->nwords = pair->cap = 0;
        for (size_t k = 0; k < nholders; k++) {
            Word *word = &t.words[holders[k]];
            if (word->stamp == step)
                continue;
            word->stamp = step;
            if (merge_word(&t, holders[k], best.first, best.second, merged, step) < 0) {
                PyMem_Free(holders);
                goto error;
            }
        }
        PyMem_Free(holders);
        for (size_t k = 0; k < t.ntouched; k++) {
            uint32_t first = (uint32_t)(t.touched[k] >> 32), second = (uint32_t)t.touched[k];
            Pair *changed = &t.pairs[pair_slot(t.pairs, t.pairs_mask, first, second)];
            if (changed->count == changed->before)
                continue;
            if (changed->count > 0) {
                if (heap_push(&t, (Entry){changed->count, changed->first, changed->second}) < 0)
                    goto error;
            } else {  /* gone for good: only pairs holding the newest id ever gain counts */
                PyMem_Free(changed->words);
                changed->words = NULL;
                changed->nwords = changed->cap = 0;
            }
        }
        t.ntouched = 0;
        if (progress != Py_None && (step % 256 == 0 || step == num_merges)) {
            PyObject *result = PyObject_CallFunction(progress, "L", (long long)step);
            if (!result)
                goto error;
            Py_DECREF(result);
        }
    }
    free_trainer(&t);
    return merges;
error:
    free_trainer(&t);
    Py_XDECREF(merges);
    return NULL;
}

static PyMethodDef trainer_methods[] = {
    {"learn_merges", (PyCFunction)(void (*)(void))learn_merges, METH_VARARGS | METH_KEYWORDS,
     "learn_merges(words, counts, tokens, num_merges, progress=None) -> [(first id, second id), ...]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef trainer_module = {
    PyModuleDef_HEAD_INIT, "_trainer", "The compiled merge loop of BPE training.", -1, trainer_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__trainer(void)
{
    return PyModule_Create(&trainer_module);
}
