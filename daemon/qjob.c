/*  qjob: heavy trade replies on a worker thread. See qjob.h.  */
#define _GNU_SOURCE
#include "qjob.h"

#include "flow.h"
#include "log.h"
#include "publish.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

struct qworker_t {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    qjob_t *todo;           /* submitted, not started */
    qjob_t *done;           /* finished, not collected */
    bool busy;              /* submitted and not collected (main loop only) */
    bool stop;
    int pipe[2];
    flow_work_t *fw;
    float *mat, *tmp;       /* n x n scratch */
    size_t cap;
};

uint64_t
qjob_work(const xm_shape_t *sh, bool grad, bool flow)
{
    uint64_t n3 = (uint64_t)sh->n * sh->n * sh->n, L = sh->L;
    /* Rollout: L - 1 products; grad_rollout: L; flow: about n max-flows
       over L n^2 edges. */
    return n3 * ((L ? L - 1 : 0) + (grad ? L : 0) + (flow ? L : 0));
}

qjob_t *
qjob_new(void)
{
    qjob_t *j = calloc(1, sizeof *j);
    if (j)
        msgpack_sbuffer_init(&j->buf);
    return j;
}

void
qjob_free(qjob_t *j)
{
    if (!j)
        return;
    for (int k = 0; k < j->nenv; k++)
        free(j->env[k]);
    for (int m = 0; m < XM_NMETHODS; m++)
        free(j->attr[m]);
    free(j->roll);
    free(j->flow);
    free(j->grad);
    msgpack_sbuffer_destroy(&j->buf);
    free(j);
}

/* The rest of the reply after the "attr" key: the attributions and the
   matrices. Returns 0 or -1 (out of memory). */
static int
s_build(qworker_t *w, qjob_t *j)
{
    const xm_shape_t *sh = &j->shape;
    uint32_t n = sh->n;
    size_t nn = (size_t)n * n;
    if (nn > w->cap) {
        float *a = realloc(w->mat, nn * sizeof(float)), *b = NULL;
        if (a) {
            w->mat = a;
            b = realloc(w->tmp, nn * sizeof(float));
        }
        if (!b)
            return -1;
        w->tmp = b;
        w->cap = nn;
    }
    const float *attr[XM_NMETHODS];
    memcpy(attr, j->attr, sizeof attr);
    unsigned methods = j->methods;
    if (j->want_flow) {
        /* n values: n - 1 with CLS, n without. */
        float *out = malloc(n * sizeof(float));
        if (!out || flow_compute(w->fw, sh->L, n, sh->cls, j->flow, out)) {
            free(out);
            return -1;
        }
        j->attr[XM_FLOW] = out;     /* freed with the job */
        attr[XM_FLOW] = out;
        methods |= XM_BIT(XM_FLOW);
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &j->buf, msgpack_sbuffer_write);
    enc_attr(&pk, methods, attr, j->nf);
    enc_str(&pk, "matrices");
    msgpack_pack_map(&pk, 1 + (j->grad != NULL));
    enc_str(&pk, "rollout");
    const size_t skip = (size_t)j->start * nn;
    xm_rollout_matrix(sh->L - j->start, n, j->roll + skip, w->mat, w->tmp);
    msgpack_pack_bin(&pk, nn * sizeof(float));
    msgpack_pack_bin_body(&pk, w->mat, nn * sizeof(float));
    if (j->grad) {
        enc_str(&pk, "grad_rollout");
        xm_grad_rollout_matrix(sh->L - j->start, n, j->grad + skip, j->resnorm, w->mat, w->tmp);
        msgpack_pack_bin(&pk, nn * sizeof(float));
        msgpack_pack_bin_body(&pk, w->mat, nn * sizeof(float));
    }
    return 0;
}

static void *
s_run(void *arg)
{
    qworker_t *w = arg;
    /* Below the main loop: ingest first when the cores are busy. */
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), 10) != 0) {
        /* not fatal: the job still runs off the main loop */
    }
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->todo && !w->stop)
            pthread_cond_wait(&w->cond, &w->lock);
        if (!w->todo)
            break;
        qjob_t *j = w->todo;
        w->todo = NULL;
        pthread_mutex_unlock(&w->lock);
        j->failed = s_build(w, j);
        pthread_mutex_lock(&w->lock);
        w->done = j;
        uint8_t b = 1;
        if (write(w->pipe[1], &b, 1) < 0) {
            /* the main loop also checks when it polls next */
        }
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

qworker_t *
qworker_new(void)
{
    qworker_t *w = calloc(1, sizeof *w);
    if (!w || !(w->fw = flow_work_new())) {
        free(w);
        log_err("query: out of memory for the trade worker");
        return NULL;
    }
    w->pipe[0] = w->pipe[1] = -1;
    if (pipe2(w->pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        log_err("query: cannot create the trade worker's pipe: %s", strerror(errno));
        flow_work_destroy(&w->fw);
        free(w);
        return NULL;
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    int rc = pthread_create(&w->thread, NULL, s_run, w);
    if (rc) {
        log_err("query: cannot start the trade worker: %s", strerror(rc));
        close(w->pipe[0]);
        close(w->pipe[1]);
        flow_work_destroy(&w->fw);
        free(w);
        return NULL;
    }
    return w;
}

int
qworker_fd(const qworker_t *w)
{
    return w->pipe[0];
}

bool
qworker_busy(const qworker_t *w)
{
    return w && w->busy;
}

void
qworker_submit(qworker_t *w, qjob_t *j)
{
    pthread_mutex_lock(&w->lock);
    w->todo = j;
    w->busy = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

qjob_t *
qworker_collect(qworker_t *w)
{
    uint8_t scratch[16];
    while (read(w->pipe[0], scratch, sizeof scratch) > 0)
        ;
    pthread_mutex_lock(&w->lock);
    qjob_t *j = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->lock);
    if (j)
        w->busy = false;
    return j;
}

void
qworker_destroy(qworker_t **wp)
{
    qworker_t *w = *wp;
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    qjob_free(w->todo);
    qjob_free(w->done);
    close(w->pipe[0]);
    close(w->pipe[1]);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    flow_work_destroy(&w->fw);
    free(w->mat);
    free(w->tmp);
    free(w);
    *wp = NULL;
}
