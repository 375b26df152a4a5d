/*  xpl_models: the models reply, every model with its counters.  */
#include "xpl_decode.h"

#include <string.h>

xpl_models_t *
xpl_decode_models(const xnode_t *root, const char *what)
{
    xpl_models_t *m = xobj_new(sizeof *m);
    if (!m)
        return NULL;
    xdc_t c = {m, what};
    if (xdc_model_list(&c, root, &m->models, &m->count))
        xobj_unref(&m);
    return m;
}

const xpl_model_info_t *
xpl_models_find(const xpl_models_t *self, const char *model)
{
    for (uint32_t i = 0; i < self->count; i++)
        if (strcmp(self->models[i].model, model) == 0)
            return &self->models[i];
    return NULL;
}

void
xpl_models_destroy(xpl_models_t **self_p)
{
    xobj_unref(self_p);
}
