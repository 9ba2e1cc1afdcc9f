/* Helpers shared by the compiled tokenizer parts, _encoder.c and _trainer.c. */
#ifndef TINYLM_TOKENIZER_COMMON_H
#define TINYLM_TOKENIZER_COMMON_H

#include <Python.h>
#include <stdint.h>

/* Make room for `need` items of `item` bytes in *data (capacity *cap, doubled as needed).
 * Returns 0, or -1 with MemoryError set. */
static int reserve(void **data, size_t *cap, size_t need, size_t item)
{
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : 16;
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

/* Where to start probing for the pair of ids (first, second) in a table of mask + 1 slots. */
static inline size_t pair_home(uint32_t first, uint32_t second, size_t mask)
{
    uint64_t h = (((uint64_t)first << 32) | second) * 0x9E3779B97F4A7C15ull;  /* Fibonacci hashing */
    return (size_t)(h >> 32) & mask;
}

#endif
