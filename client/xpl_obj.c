/*  xpl_obj: result objects. A public struct sits right after a hidden
    header holding the object's arena (every string and vector of the
    result), a reference count and an optional finaliser. Users free a
    result with one call whatever it contains; schemas and global states
    are shared by reference between subscribers, views and their users.  */
#include "xpl_private.h"

#include <stdlib.h>
#include <string.h>

typedef struct s_block_t {
    struct s_block_t *next;
    size_t size, used;
    max_align_t data[];
} s_block_t;

typedef struct {
    s_block_t *blocks;
    atomic_uint refs;
    void (*fini)(void *obj);
    max_align_t pub[];          /* the public struct */
} s_hdr_t;

#define S_ALIGN 16
#define S_BLOCK 4096

static s_hdr_t *
s_hdr(const void *obj)
{
    return (s_hdr_t *)((char *)obj - offsetof(s_hdr_t, pub));
}

void *
xobj_new(size_t size)
{
    s_hdr_t *h = calloc(1, sizeof *h + size);
    if (!h)
        return xpl_fail_null(XPL_ENOMEM, "out of memory");
    atomic_init(&h->refs, 1);
    return h->pub;
}

void *
xobj_alloc(void *obj, size_t size)
{
    s_hdr_t *h = s_hdr(obj);
    if (size > SIZE_MAX / 2)    /* rounding up and the block header would wrap */
        return xpl_fail_null(XPL_ENOMEM, "out of memory (%zu bytes)", size);
    size = (size + S_ALIGN - 1) & ~(size_t)(S_ALIGN - 1);
    s_block_t *b = h->blocks;
    if (!b || b->size - b->used < size) {
        size_t cap = size > S_BLOCK ? size : S_BLOCK;
        b = malloc(sizeof *b + cap);
        if (!b)
            return xpl_fail_null(XPL_ENOMEM, "out of memory (%zu bytes)", size);
        b->size = cap;
        b->used = 0;
        /* A big allocation gets a block of its own behind the current
           one, so the current block's free space is not wasted. */
        if (h->blocks && cap == size) {
            b->next = h->blocks->next;
            h->blocks->next = b;
        } else {
            b->next = h->blocks;
            h->blocks = b;
        }
    }
    void *p = (char *)b->data + b->used;
    b->used += size;
    memset(p, 0, size);
    return p;
}

char *
xobj_strndup(void *obj, const void *s, size_t len)
{
    char *p = xobj_alloc(obj, len + 1);
    if (p && len)
        memcpy(p, s, len);
    return p;
}

void
xobj_set_fini(void *obj, void (*fini)(void *obj))
{
    s_hdr(obj)->fini = fini;
}

void *
xobj_ref(const void *obj)
{
    atomic_fetch_add(&s_hdr(obj)->refs, 1);
    return (void *)obj;
}

void
xobj_unref(void *obj_p)
{
    void **pp = obj_p;
    if (!pp || !*pp)
        return;
    s_hdr_t *h = s_hdr(*pp);
    *pp = NULL;
    if (atomic_fetch_sub(&h->refs, 1) != 1)
        return;
    if (h->fini)
        h->fini(h->pub);
    for (s_block_t *b = h->blocks, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(h);
}
