/*  child: the processes a run starts (daemon, consumer), their stdout
    read line by line, and their end.  */
#define _GNU_SOURCE
#include "bench_xplain.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int
child_spawn(child_t *c, char *const argv[], const char *log_path, const char *const *extra_env)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    int pfd[2] = {-1, -1};
    c->fd = -1;
    c->len = 0;
    if (log_path) {
        posix_spawn_file_actions_addopen(&fa, 1, log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
    } else {
        if (pipe2(pfd, O_CLOEXEC))
            return -1;
        posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    }
    char **env = environ;
    char **penv = NULL;
    if (extra_env) {
        size_t n = 0, x = 0;
        while (environ[n])
            n++;
        while (extra_env[x])
            x++;
        penv = calloc(n + x + 1, sizeof *penv);
        for (size_t k = 0; k < n; k++)
            penv[k] = environ[k];
        for (size_t k = 0; k < x; k++)
            penv[n + k] = (char *)extra_env[k];
        env = penv;
    }
    int rc = posix_spawn(&c->pid, argv[0], &fa, NULL, argv, env);
    free(penv);
    posix_spawn_file_actions_destroy(&fa);
    if (pfd[1] >= 0)
        close(pfd[1]);
    if (rc) {
        fprintf(stderr, "spawn %s: %s\n", argv[0], strerror(rc));
        if (pfd[0] >= 0)
            close(pfd[0]);
        return -1;
    }
    c->fd = pfd[0];
    return 0;
}

/* Wait up to `ms` for a line starting with `prefix` from a child; copy it
   to `line`. Returns 0, or -1 on timeout or EOF. */
int
child_wait_line(child_t *c, const char *prefix, char *line, size_t cap, int ms)
{
    int64_t deadline = now_mono() + (int64_t)ms * 1000000;
    for (;;) {
        char *nl;
        while ((nl = memchr(c->buf, '\n', c->len))) {
            size_t ll = (size_t)(nl - c->buf);
            bool hit = strncmp(c->buf, prefix, strlen(prefix)) == 0;
            if (hit && line) {
                size_t cp = ll < cap - 1 ? ll : cap - 1;
                memcpy(line, c->buf, cp);
                line[cp] = '\0';
            }
            memmove(c->buf, nl + 1, c->len - ll - 1);
            c->len -= ll + 1;
            if (hit)
                return 0;
        }
        int left = (int)((deadline - now_mono()) / 1000000);
        if (left <= 0)
            return -1;
        struct pollfd p = {c->fd, POLLIN, 0};
        if (poll(&p, 1, left) <= 0)
            continue;
        ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - c->len - 1);
        if (r <= 0)
            return -1;
        c->len += (size_t)r;
    }
}

void
child_reap(child_t *c, int sig, int ms)
{
    if (c->pid <= 0)
        return;
    if (sig)
        kill(c->pid, sig);
    int64_t deadline = now_mono() + (int64_t)ms * 1000000;
    int st;
    while (waitpid(c->pid, &st, WNOHANG) == 0) {
        if (now_mono() > deadline) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &st, 0);
            break;
        }
        usleep(2000);
    }
    if (c->fd >= 0)
        close(c->fd);
    c->pid = 0;
    c->fd = -1;
}
