/*  libxplain with CURVE: key sets and certificate files (xpl_curve.h),
    and every class against a real xplaind started with --curve.

    Each daemon test makes three key pairs with the library
    (xpl_curve_keypair, xpl_curve_save): the daemon's, whose secret
    certificate is its --secret-key-file, a "good" client whose public
    certificate is in --clients-dir, and a "bad" one whose is not. The
    good key is admitted on the query, publish and ingest paths (queries
    answer, the subscriber receives explanations with feature names, the
    publisher's trades are explained, a view fills); the bad key is
    refused on each (timeouts whose reason says the daemon refused the
    key, nothing explained or received, the daemon's auth_refused grows).
    The daemon is found through XPLAIND_PATH, as in test_client.c.  */
#include <xplain/xplain.h>

#include "support.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- keys and files --------------------------------------------------- */

typedef struct {
    char dir[64];
    char clients[128];
    char server_pub[128], server_sec[140];      /* certificate paths */
    char good_pub[128], good_sec[140];
    char bad_pub[128], bad_sec[140];
    char server_key[41], good_key[41], bad_key[41];     /* public keys */
} keys_t;

static void
s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot write %s: %s", path, strerror(errno));
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

static char *
read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot read %s: %s", path, strerror(errno));
    static char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void
copy_file(const char *from, const char *to)
{
    char text[4096];
    snprintf(text, sizeof text, "%s", read_file(from));
    write_file(to, text);
}

static mode_t
file_mode(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
    return st.st_mode & 07777;
}

/* A new key pair saved as <dir>/<name>.key and .key_secret. */
static void
make_pair(const char *dir, const char *name, char *pub_path, char *sec_path, char *pub_key)
{
    char pub[41], sec[41];
    cr_assert_eq(xpl_curve_keypair(pub, sec), 0, "%s", xpl_strerror());
    cr_assert_eq(strlen(pub), XPL_CURVE_KEY_LEN);
    sprintf(pub_path, "%s/%s.key", dir, name);
    sprintf(sec_path, "%s/%s.key_secret", dir, name);
    cr_assert_eq(xpl_curve_save(pub_path, pub, sec, false), 0, "%s", xpl_strerror());
    strcpy(pub_key, pub);
}

static void
keys_make(keys_t *k, const char *dir)
{
    memset(k, 0, sizeof *k);
    snprintf(k->dir, sizeof k->dir, "%s", dir);
    snprintf(k->clients, sizeof k->clients, "%s/clients", dir);
    cr_assert_eq(mkdir(k->clients, 0700), 0);
    make_pair(dir, "server", k->server_pub, k->server_sec, k->server_key);
    make_pair(dir, "good", k->good_pub, k->good_sec, k->good_key);
    make_pair(dir, "bad", k->bad_pub, k->bad_sec, k->bad_key);
    char admitted[160];
    snprintf(admitted, sizeof admitted, "%s/good.key", k->clients);
    copy_file(k->good_pub, admitted);
}

static xpl_curve_t *
curve_of(const keys_t *k, const char *who)
{
    const char *sec = strcmp(who, "good") == 0 ? k->good_sec : k->bad_sec;
    xpl_curve_t *c = xpl_curve_load(sec, k->server_pub);
    cr_assert_not_null(c, "%s", xpl_strerror());
    return c;
}

/* ---- a daemon per test -------------------------------------------------- */

typedef struct {
    pid_t pid;
    char dir[64];
    char in[128], pub[128], query[128], log[128];
    keys_t keys;
    xpl_curve_t *good, *bad;
    bool plain;                 /* runs without --curve */
} daemon_t;

static daemon_t g_d;

static void
s_mkdir(daemon_t *d)
{
    snprintf(d->dir, sizeof d->dir, "/tmp/xplcc-XXXXXX");
    cr_assert_not_null(mkdtemp(d->dir));
    keys_make(&d->keys, d->dir);
    d->good = curve_of(&d->keys, "good");
    d->bad = curve_of(&d->keys, "bad");
}

/* Start xplaind with --curve (unless plain), ingest bound at d->in (or
   connected to `connect`); wait until it answers the good key's ping. */
static void
daemon_start(daemon_t *d, const char *connect, bool plain)
{
    d->plain = plain;
    snprintf(d->in, sizeof d->in, "ipc://%s/in", d->dir);
    snprintf(d->pub, sizeof d->pub, "ipc://%s/pub", d->dir);
    snprintf(d->query, sizeof d->query, "ipc://%s/q", d->dir);
    snprintf(d->log, sizeof d->log, "%s/stderr.log", d->dir);
    const char *argv[] = {XPLAIND_PATH,
                          "--publish", d->pub,
                          "--query", d->query,
                          connect ? "--ingest-connect" : "--ingest-bind", connect ? connect : d->in,
                          "--glob-interval-ms", "10",
                          "--log-rate", "1000",
                          plain ? NULL : "--curve",
                          "--secret-key-file", d->keys.server_sec,
                          "--clients-dir", d->keys.clients,
                          NULL};
    d->pid = fork();
    cr_assert(d->pid >= 0);
    if (d->pid == 0) {
        int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    xpl_client_t *c = xpl_client_new_curve(d->query, plain ? NULL : d->good);
    cr_assert_not_null(c);
    xpl_client_set_timeout(c, 200);
    for (int i = 0; i < 150; i++) {
        if (xpl_client_ping(c, NULL, 0, NULL) == 0) {
            xpl_client_destroy(&c);
            return;
        }
        int status;
        cr_assert_eq(waitpid(d->pid, &status, WNOHANG), 0, "xplaind exited early (see %s)",
                     d->log);
    }
    cr_assert_fail("xplaind did not answer ping (see %s)", d->log);
}

static void
daemon_stop(daemon_t *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 2000 && waitpid(d->pid, &status, WNOHANG) == 0; i++)
        s_sleep_ms(10);
    if (waitpid(d->pid, &status, WNOHANG) == 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, &status, 0);
        cr_assert_fail("xplaind did not stop on SIGTERM");
    }
    d->pid = 0;
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "xplaind exited with %d", status);
}

static void
setup_nodaemon(void)
{
    memset(&g_d, 0, sizeof g_d);
    s_mkdir(&g_d);
}

static void
setup(void)
{
    setup_nodaemon();
    daemon_start(&g_d, NULL, false);
}

static void
teardown(void)
{
    daemon_stop(&g_d);
    if (g_d.pid > 0) {
        kill(g_d.pid, SIGKILL);
        waitpid(g_d.pid, NULL, 0);
    }
    xpl_curve_destroy(&g_d.good);
    xpl_curve_destroy(&g_d.bad);
    if (g_d.dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_d.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", g_d.dir);
    }
}

/* The daemon's auth_refused counter, asked with the good key. */
static uint64_t
auth_refused(const daemon_t *d)
{
    xpl_client_t *c = xpl_client_new_curve(d->query, d->good);
    xpl_stats_t *st = xpl_client_stats(c);
    cr_assert_not_null(st, "%s", xpl_strerror());
    uint64_t v = 0;
    cr_assert_eq(xpl_stats_counter(st, "auth_refused", &v), 0);
    xpl_stats_destroy(&st);
    xpl_client_destroy(&c);
    return v;
}

/* Wait until auth_refused is above `before`. */
static void
wait_refused(const daemon_t *d, uint64_t before, const char *what)
{
    for (int i = 0; i < 300; i++) {
        if (auth_refused(d) > before)
            return;
        s_sleep_ms(10);
    }
    cr_assert_fail("the daemon did not count the refusal of %s", what);
}

/* Explained trades of `model` (0 when the daemon does not know it). */
static uint64_t
explained(const daemon_t *d, const char *model)
{
    xpl_client_t *c = xpl_client_new_curve(d->query, d->plain ? NULL : d->good);
    xpl_models_t *ms = xpl_client_models(c);
    cr_assert_not_null(ms, "%s", xpl_strerror());
    const xpl_model_info_t *m = xpl_models_find(ms, model);
    uint64_t n = m ? m->explained : 0;
    xpl_models_destroy(&ms);
    xpl_client_destroy(&c);
    return n;
}

/* ---- trades ------------------------------------------------------------- */

enum { TL = 1, TH = 2, TN = 4, TCLS = 3 };
static const char *const g_tokens[TN] = {"price", "size", "spread", "CLS"};

static void
send_trade(xpl_pub_t *p, const char *model, uint64_t id)
{
    rng_t r;
    rng_seed(&r, id + 1);
    double a[TL * TH * TN * TN];
    float f[TL * TH * TN * TN];
    gen_attention(&r, a, TL * TH * TN, TN, 2.0);
    for (int i = 0; i < TL * TH * TN * TN; i++)
        f[i] = (float)a[i];
    xpl_id_t tid = xpl_id_uint(id);
    xpl_batch_t b = {.model = model, .B = 1, .ids = &tid, .dtype = XPL_F32, .attn = f};
    cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
}

/* ---- key sets and certificate files (no daemon) ----------------------- */

Test(curve_keys, load_and_its_errors, .init = setup_nodaemon, .fini = teardown)
{
    const keys_t *k = &g_d.keys;
    cr_assert_str_eq(xpl_errno_name(XPL_ECERT), "certificate");
    xpl_curve_t *c = xpl_curve_load(k->good_sec, k->server_pub);
    cr_assert_not_null(c, "%s", xpl_strerror());
    cr_assert_str_eq(xpl_curve_public_key(c), k->good_key);
    cr_assert_str_eq(xpl_curve_server_key(c), k->server_key);
    xpl_curve_destroy(&c);
    cr_assert_null(c);
    xpl_curve_destroy(&c);
    /* The daemon's secret certificate also gives its public key. */
    c = xpl_curve_load(k->good_sec, k->server_sec);
    cr_assert_not_null(c, "%s", xpl_strerror());
    cr_assert_str_eq(xpl_curve_server_key(c), k->server_key);
    xpl_curve_destroy(&c);

    cr_assert_null(xpl_curve_load(NULL, k->server_pub));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_curve_load(k->good_sec, NULL));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);

    char path[160];
    snprintf(path, sizeof path, "%s/missing", k->dir);
    cr_assert_null(xpl_curve_load(path, k->server_pub));
    cr_assert_eq(xpl_errno(), XPL_ECERT);
    cr_assert(strstr(xpl_strerror(), "cannot read") && strstr(xpl_strerror(), path)
                  && strstr(xpl_strerror(), "No such file"),
              "%s", xpl_strerror());
    cr_assert_null(xpl_curve_load(k->good_sec, path));
    cr_assert_eq(xpl_errno(), XPL_ECERT);
    cr_assert(strstr(xpl_strerror(), "server certificate") && strstr(xpl_strerror(), path),
              "%s", xpl_strerror());

    /* A public certificate where the secret one is needed. */
    cr_assert_null(xpl_curve_load(k->good_pub, k->server_pub));
    cr_assert_eq(xpl_errno(), XPL_ECERT);
    cr_assert(strstr(xpl_strerror(), "public certificate") && strstr(xpl_strerror(), k->good_pub),
              "%s", xpl_strerror());

    /* A key that is not 40 Z85 characters. */
    snprintf(path, sizeof path, "%s/short.key_secret", k->dir);
    write_file(path, "curve\n    public-key = \"abc\"\n    secret-key = \"def\"\n");
    cr_assert_null(xpl_curve_load(path, k->server_pub));
    cr_assert_eq(xpl_errno(), XPL_ECERT);
    cr_assert(strstr(xpl_strerror(), "40 Z85"), "%s", xpl_strerror());
    /* Nothing of a certificate at all. */
    write_file(path, "hello\n");
    cr_assert_null(xpl_curve_load(k->good_sec, path));
    cr_assert_eq(xpl_errno(), XPL_ECERT);
    cr_assert(strstr(xpl_strerror(), "no public-key"), "%s", xpl_strerror());

    /* A public key that is not the secret key's. */
    char good_sec_key[41], text[512];
    const char *p = strstr(read_file(k->good_sec), "secret-key = \"");
    cr_assert_not_null(p);
    memcpy(good_sec_key, p + 14, 40);
    good_sec_key[40] = '\0';
    snprintf(text, sizeof text, "curve\n    public-key = \"%s\"\n    secret-key = \"%s\"\n",
             k->bad_key, good_sec_key);
    snprintf(path, sizeof path, "%s/mixed.key_secret", k->dir);
    write_file(path, text);
    cr_assert_null(xpl_curve_load(path, k->server_pub));
    cr_assert_eq(xpl_errno(), XPL_ECERT);
    cr_assert(strstr(xpl_strerror(), "not the one of its secret key"), "%s", xpl_strerror());

    /* Raw keys. */
    c = xpl_curve_new(good_sec_key, k->server_key);
    cr_assert_not_null(c, "%s", xpl_strerror());
    cr_assert_str_eq(xpl_curve_public_key(c), k->good_key, "public key derived from the secret");
    cr_assert_str_eq(xpl_curve_server_key(c), k->server_key);
    xpl_curve_destroy(&c);
    cr_assert_null(xpl_curve_new("too short", k->server_key));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_curve_new(good_sec_key, "~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~"));
    cr_assert_eq(xpl_errno(), XPL_EINVAL, "'~' is not in the Z85 alphabet");
    cr_assert_null(xpl_curve_new(NULL, k->server_key));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
}

Test(curve_keys, save_modes_overwrite_and_round_trip, .init = setup_nodaemon, .fini = teardown)
{
    const keys_t *k = &g_d.keys;
    mode_t old = umask(022);
    cr_assert_eq(file_mode(k->good_pub), 0644);
    cr_assert_eq(file_mode(k->good_sec), 0600, "the secret certificate is private");
    char pub[41], sec[41], pub2[41], sec2[41];
    cr_assert_eq(xpl_curve_keypair(pub, sec), 0);
    cr_assert_eq(xpl_curve_keypair(pub2, sec2), 0);
    cr_assert_str_neq(pub, pub2);

    /* Existing files are not overwritten, and not touched. */
    char before[4096];
    snprintf(before, sizeof before, "%s", read_file(k->good_sec));
    cr_assert_eq(xpl_curve_save(k->good_pub, pub, sec, false), -1);
    cr_assert_eq(xpl_errno(), XPL_ECERT);
    cr_assert(strstr(xpl_strerror(), "exists"), "%s", xpl_strerror());
    cr_assert_str_eq(read_file(k->good_sec), before);
    /* Only the secret one exists: still refused, and no public file made. */
    char path[160], spath[180];
    snprintf(path, sizeof path, "%s/lonely.key", k->dir);
    snprintf(spath, sizeof spath, "%s_secret", path);
    write_file(spath, "whatever\n");
    cr_assert_eq(chmod(spath, 0644), 0);
    cr_assert_eq(xpl_curve_save(path, pub, sec, false), -1);
    cr_assert_eq(xpl_errno(), XPL_ECERT);
    cr_assert(access(path, F_OK) != 0);
    /* Overwriting replaces the files; the secret one is 0600 again even
       though the old one was 0644. */
    cr_assert_eq(xpl_curve_save(path, pub, sec, true), 0, "%s", xpl_strerror());
    cr_assert_eq(file_mode(path), 0644);
    cr_assert_eq(file_mode(spath), 0600);
    xpl_curve_t *c = xpl_curve_load(spath, path);
    cr_assert_not_null(c, "%s", xpl_strerror());
    cr_assert_str_eq(xpl_curve_public_key(c), pub);
    cr_assert_str_eq(xpl_curve_server_key(c), pub);
    xpl_curve_destroy(&c);
    cr_assert(strstr(read_file(spath), sec), "the secret key is in the secret certificate");
    cr_assert_null(strstr(read_file(path), sec), "and only there");

    /* Bad keys, mismatched keys, an unwritable place (nothing left behind). */
    cr_assert_eq(xpl_curve_save(path, "short", sec, true), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_eq(xpl_curve_save(path, pub2, sec, true), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert(strstr(xpl_strerror(), "not the one of the secret key"), "%s", xpl_strerror());
    cr_assert_eq(xpl_curve_save(NULL, pub, sec, true), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    snprintf(path, sizeof path, "%s/no/such/dir.key", k->dir);
    cr_assert_eq(xpl_curve_save(path, pub, sec, false), -1);
    cr_assert_eq(xpl_errno(), XPL_ECERT);
    cr_assert(strstr(xpl_strerror(), "No such file"), "%s", xpl_strerror());
    /* A directory where the secret certificate would go: refused, and not
       removed even with overwrite. */
    snprintf(spath, sizeof spath, "%s/d.key_secret", k->dir);
    cr_assert_eq(mkdir(spath, 0700), 0);
    snprintf(path, sizeof path, "%s/d.key", k->dir);
    cr_assert_eq(xpl_curve_save(path, pub, sec, false), -1);
    cr_assert_eq(xpl_errno(), XPL_ECERT);
    cr_assert_eq(xpl_curve_save(path, pub, sec, true), -1);
    cr_assert_eq(xpl_errno(), XPL_ECERT);
    cr_assert(strstr(xpl_strerror(), "cannot replace"), "%s", xpl_strerror());
    cr_assert_eq(rmdir(spath), 0);
    cr_assert_eq(xpl_curve_save(path, pub, sec, false), 0, "%s", xpl_strerror());
    umask(old);
}

/* ---- the query path ------------------------------------------------------ */

Test(curve, query_admitted_and_refused, .init = setup, .fini = teardown)
{
    xpl_client_t *good = xpl_client_new_curve(g_d.query, g_d.good);
    cr_assert_not_null(good, "%s", xpl_strerror());
    char version[32];
    cr_assert_eq(xpl_client_ping(good, version, sizeof version, NULL), 0, "%s", xpl_strerror());
    uint64_t refused = auth_refused(&g_d);

    /* The bad key: a timeout whose reason says the daemon refused it (the
       refusal must complete within the timeout for the reason to name it:
       1 s leaves room for a loaded machine and the sanitizer build). */
    xpl_client_t *bad = xpl_client_new_curve(g_d.query, g_d.bad);
    cr_assert_not_null(bad, "%s", xpl_strerror());
    xpl_client_set_timeout(bad, 1000);
    cr_assert_eq(xpl_client_ping(bad, NULL, 0, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert(strstr(xpl_strerror(), "within 1000 ms")
                  && strstr(xpl_strerror(), "; CURVE: the daemon refused this client's key")
                  && strstr(xpl_strerror(), "clients_dir"),
              "%s", xpl_strerror());
    wait_refused(&g_d, refused, "the bad key on the query socket");
    /* And again: the client connects anew, and is refused anew (not a
       dead socket with a full queue). */
    refused = auth_refused(&g_d);
    cr_assert_null(xpl_client_stats(bad));
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert(strstr(xpl_strerror(), "no reply") && strstr(xpl_strerror(), "refused this client"),
              "%s", xpl_strerror());
    wait_refused(&g_d, refused, "the bad key's second request");

    /* A plain client: a timeout, and no CURVE hint (it has no keys). */
    xpl_client_t *plain = xpl_client_new(g_d.query);
    xpl_client_set_timeout(plain, 300);
    cr_assert_eq(xpl_client_ping(plain, NULL, 0, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert_null(strstr(xpl_strerror(), "CURVE"), "%s", xpl_strerror());

    /* The good key with a wrong server key: no handshake completes. */
    xpl_curve_t *wrong = xpl_curve_load(g_d.keys.good_sec, g_d.keys.bad_pub);
    cr_assert_not_null(wrong);
    xpl_client_t *lost = xpl_client_new_curve(g_d.query, wrong);
    xpl_curve_destroy(&wrong);      /* the client has its own copy */
    xpl_client_set_timeout(lost, 300);
    cr_assert_eq(xpl_client_ping(lost, NULL, 0, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert(strstr(xpl_strerror(), "; CURVE: no handshake with the daemon completed"), "%s",
              xpl_strerror());

    /* The good client was never disturbed. */
    cr_assert_eq(xpl_client_ping(good, NULL, 0, NULL), 0, "%s", xpl_strerror());
    xpl_client_destroy(&lost);
    xpl_client_destroy(&plain);
    xpl_client_destroy(&bad);
    xpl_client_destroy(&good);
}

Test(curve, admitted_after_reload_with_the_same_client, .init = setup, .fini = teardown)
{
    xpl_client_t *bad = xpl_client_new_curve(g_d.query, g_d.bad);
    xpl_client_set_timeout(bad, 1000);
    cr_assert_eq(xpl_client_ping(bad, NULL, 0, NULL), -1);
    cr_assert(strstr(xpl_strerror(), "refused this client's key"), "%s", xpl_strerror());
    /* The operator admits the key: copy its certificate, SIGHUP. */
    char admitted[160];
    snprintf(admitted, sizeof admitted, "%s/bad.key", g_d.keys.clients);
    copy_file(g_d.keys.bad_pub, admitted);
    kill(g_d.pid, SIGHUP);
    bool ok = false;
    for (int i = 0; i < 30 && !ok; i++)
        ok = xpl_client_ping(bad, NULL, 0, NULL) == 0;
    cr_assert(ok, "the same client never got in after the reload: %s", xpl_strerror());
    /* Revoked again: the next connection is refused. */
    cr_assert_eq(unlink(admitted), 0);
    kill(g_d.pid, SIGHUP);
    /* Once the daemon has handled the signal, a new connection is refused
       (until then it may still get in). */
    int64_t deadline = s_now_ms() + 20000;
    for (;;) {
        xpl_client_t *fresh = xpl_client_new_curve(g_d.query, g_d.bad);
        xpl_client_set_timeout(fresh, 300);
        int rc = xpl_client_ping(fresh, NULL, 0, NULL);
        int e = xpl_errno();
        xpl_client_destroy(&fresh);
        if (rc == -1) {
            cr_assert_eq(e, XPL_ETIMEOUT, "%s", xpl_strerror());
            break;
        }
        cr_assert(s_now_ms() < deadline, "a new connection with the revoked key still got in "
                                         "20 s after the SIGHUP");
    }
    xpl_client_destroy(&bad);
}

/* ---- the ingest and publish paths ------------------------------------- */

Test(curve, ingest_and_publish, .init = setup, .fini = teardown, .timeout = 120)
{
    /* The good publisher and subscriber. */
    xpl_pub_t *p = xpl_pub_new_connect_curve(g_d.in, g_d.good);
    cr_assert_not_null(p, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_wait_subscriber(p, 5000), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(p, "m-good", TL, TH, TN, TCLS, g_tokens), 0);
    xpl_sub_t *s = xpl_sub_new_curve(g_d.pub, g_d.query, g_d.good);
    cr_assert_not_null(s, "%s", xpl_strerror());
    cr_assert_eq(xpl_sub_subscribe(s, XPL_KIND_XPL, "m-good"), 0);
    xpl_sub_t *sbad = xpl_sub_new_curve(g_d.pub, NULL, g_d.bad);
    cr_assert_not_null(sbad, "%s", xpl_strerror());
    cr_assert_eq(xpl_sub_subscribe(sbad, XPL_KIND_ALL, NULL), 0);

    /* Trades until the good subscriber hears one (the slow joiner). */
    xpl_event_t *ev = NULL;
    for (uint64_t id = 0; id < 200 && !ev; id++) {
        send_trade(p, "m-good", id);
        ev = xpl_sub_recv(s, 50);
    }
    cr_assert_not_null(ev, "the admitted subscriber heard nothing: %s", xpl_strerror());
    cr_assert_str_eq(ev->model, "m-good");
    cr_assert_not_null(ev->explanation->features,
                       "feature names come through the subscriber's CURVE query client");
    cr_assert_str_eq(ev->explanation->features[2], "spread");
    xpl_event_destroy(&ev);
    cr_assert(explained(&g_d, "m-good") >= 1);

    /* The refused subscriber heard none of it, and says why. */
    cr_assert_null(xpl_sub_recv(sbad, 300));
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert(strstr(xpl_strerror(), "no message within 300 ms; CURVE: the daemon refused"), "%s",
              xpl_strerror());

    /* The refused publisher: no subscriber ever, nothing explained. */
    uint64_t refused = auth_refused(&g_d);
    xpl_pub_t *pbad = xpl_pub_new_connect_curve(g_d.in, g_d.bad);
    cr_assert_not_null(pbad, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(pbad, "m-bad", TL, TH, TN, TCLS, g_tokens), 0);
    cr_assert_eq(xpl_pub_wait_subscriber(pbad, 1500), -1);
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert(strstr(xpl_strerror(), "no subscriber") && strstr(xpl_strerror(), "refused this"),
              "%s", xpl_strerror());
    wait_refused(&g_d, refused, "the bad publisher");
    for (uint64_t id = 0; id < 20; id++) {
        send_trade(pbad, "m-bad", id);
        send_trade(p, "m-good", 1000 + id);
    }
    for (int i = 0; i < 20; i++) {
        cr_assert_not_null(ev = xpl_sub_recv(s, 5000), "%s", xpl_strerror());
        xpl_event_destroy(&ev);
    }
    cr_assert_eq(explained(&g_d, "m-bad"), 0, "the refused publisher's trades were explained");
    cr_assert_null(xpl_sub_recv(sbad, 200), "the refused subscriber received something");
    xpl_pub_destroy(&pbad);
    xpl_sub_destroy(&sbad);
    xpl_sub_destroy(&s);
    xpl_pub_destroy(&p);
}

Test(curve, view_admitted_and_refused, .init = setup, .fini = teardown, .timeout = 120)
{
    xpl_pub_t *p = xpl_pub_new_connect_curve(g_d.in, g_d.good);
    cr_assert_eq(xpl_pub_wait_subscriber(p, 5000), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(p, "m1", TL, TH, TN, TCLS, g_tokens), 0);
    for (uint64_t id = 0; id < 200 && explained(&g_d, "m1") == 0; id++) {
        send_trade(p, "m1", id);
        s_sleep_ms(10);
    }
    cr_assert(explained(&g_d, "m1") > 0);
    xpl_view_t *v = xpl_view_new_curve(g_d.pub, g_d.query, "m1", 5000, g_d.good);
    cr_assert_not_null(v, "%s", xpl_strerror());
    uint64_t version = xpl_view_version(v);
    send_trade(p, "m1", 5000);
    cr_assert_eq(xpl_view_wait(v, version, 5000), 0, "%s", xpl_strerror());
    xpl_global_t *g = xpl_view_state(v);
    cr_assert_not_null(g, "%s", xpl_strerror());
    cr_assert(g->count >= 1);
    xpl_global_destroy(&g);
    xpl_view_stats_t st;
    xpl_view_stats(v, &st);
    cr_assert(st.synced && st.snapshots >= 1);
    xpl_view_destroy(&v);

    /* 1.5 s for the refusal to complete, on a loaded machine too. */
    cr_assert_null(xpl_view_new_curve(g_d.pub, g_d.query, "m1", 1500, g_d.bad));
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert(strstr(xpl_strerror(), "no connection") && strstr(xpl_strerror(), "refused this"),
              "%s", xpl_strerror());
    /* NULL keys: exactly xpl_view_new (a plain view, refused too). */
    cr_assert_null(xpl_view_new_curve(g_d.pub, g_d.query, "m1", 300, NULL));
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert_null(strstr(xpl_strerror(), "CURVE"), "%s", xpl_strerror());
    xpl_pub_destroy(&p);
}

/* The daemon's SUB connects to the model's bound PUB and is still the
   CURVE server: the publisher must hold an admitted key. */
Test(curve, ingest_connect_mode, .init = setup_nodaemon, .fini = teardown, .timeout = 120)
{
    char ep_good[160], ep_bad[160];
    snprintf(ep_good, sizeof ep_good, "ipc://%s/model-good", g_d.dir);
    snprintf(ep_bad, sizeof ep_bad, "ipc://%s/model-bad", g_d.dir);
    xpl_pub_t *good = xpl_pub_new_bind_curve(ep_good, g_d.good);
    cr_assert_not_null(good, "%s", xpl_strerror());
    cr_assert_str_eq(xpl_pub_endpoint(good), ep_good);
    daemon_start(&g_d, ep_good, false);
    cr_assert_eq(xpl_pub_wait_subscriber(good, 5000), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(good, "c-good", TL, TH, TN, TCLS, g_tokens), 0);
    for (uint64_t id = 0; id < 300 && explained(&g_d, "c-good") == 0; id++) {
        send_trade(good, "c-good", id);
        s_sleep_ms(10);
    }
    cr_assert(explained(&g_d, "c-good") > 0, "the admitted bound publisher was not explained");
    daemon_stop(&g_d);
    xpl_pub_destroy(&good);

    xpl_pub_t *bad = xpl_pub_new_bind_curve(ep_bad, g_d.bad);
    cr_assert_not_null(bad, "%s", xpl_strerror());
    daemon_start(&g_d, ep_bad, false);
    cr_assert_eq(xpl_pub_wait_subscriber(bad, 2000), -1);
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert(strstr(xpl_strerror(), "refused this client's key"), "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(bad, "c-bad", TL, TH, TN, TCLS, g_tokens), 0);
    for (uint64_t id = 0; id < 20; id++)
        send_trade(bad, "c-bad", id);
    s_sleep_ms(200);
    cr_assert_eq(explained(&g_d, "c-bad"), 0);
    cr_assert(auth_refused(&g_d) >= 1);
    xpl_pub_destroy(&bad);
}

/* Keys for a daemon that runs without CURVE: no handshake completes. */
Test(curve, curve_client_against_a_plain_daemon, .init = setup_nodaemon, .fini = teardown)
{
    daemon_start(&g_d, NULL, true);
    xpl_client_t *c = xpl_client_new_curve(g_d.query, g_d.good);
    xpl_client_set_timeout(c, 300);
    cr_assert_eq(xpl_client_ping(c, NULL, 0, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert(strstr(xpl_strerror(), "; CURVE: no handshake with the daemon completed"), "%s",
              xpl_strerror());
    xpl_client_destroy(&c);
    /* NULL keys are a plain client. */
    c = xpl_client_new_curve(g_d.query, NULL);
    cr_assert_eq(xpl_client_ping(c, NULL, 0, NULL), 0, "%s", xpl_strerror());
    xpl_client_destroy(&c);
}

/* ---- churn: endpoint names are never reused --------------------------- */

/* Trades of `model` until the daemon has explained one (so that views of
   it get a snapshot). */
static void
make_known(const daemon_t *d, xpl_pub_t *p, const char *model)
{
    cr_assert_eq(xpl_pub_wait_subscriber(p, 10000), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(p, model, TL, TH, TN, TCLS, g_tokens), 0);
    int64_t deadline = s_now_ms() + 30000;
    for (uint64_t id = 0; explained(d, model) == 0; id++) {
        cr_assert(s_now_ms() < deadline, "the daemon explained no trade of %s in 30 s", model);
        send_trade(p, model, id);
        s_sleep_ms(10);
    }
}

/* Create and destroy `n` of each kind of object against `d` (`curve`
   NULL: plain), with one long-lived object keeping the process's ZeroMQ
   context alive meanwhile: libzmq may still hold the monitor endpoint of
   a destroyed object while the next one (often at the same address) sets
   up its own, and no creation may ever fail. Views are fewer: each
   destroy waits for its thread's next look at the stop flag. */
static void
churn(const daemon_t *d, const xpl_curve_t *curve, const char *model, int n, int views)
{
    xpl_client_t *keep = xpl_client_new_curve(d->query, curve);
    cr_assert_not_null(keep, "%s", xpl_strerror());
    for (int i = 0; i < n; i++) {
        xpl_sub_t *s = xpl_sub_new_curve(d->pub, i % 2 ? d->query : NULL, curve);
        cr_assert_not_null(s, "subscriber %d: %s", i, xpl_strerror());
        cr_assert_eq(xpl_sub_subscribe(s, XPL_KIND_GLOB, model), 0, "%s", xpl_strerror());
        xpl_client_t *c = xpl_client_new_curve(d->query, curve);
        cr_assert_not_null(c, "client %d: %s", i, xpl_strerror());
        xpl_client_destroy(&c);
        xpl_sub_destroy(&s);
    }
    for (int i = 0; i < views; i++) {
        xpl_view_t *v = xpl_view_new_curve(d->pub, d->query, model, 10000, curve);
        cr_assert_not_null(v, "view %d: %s", i, xpl_strerror());
        xpl_view_destroy(&v);
    }
    /* The daemon still answers this process's long-lived client. */
    cr_assert_eq(xpl_client_ping(keep, NULL, 0, NULL), 0, "%s", xpl_strerror());
    xpl_client_destroy(&keep);
    /* And the same with nothing alive in between: every object then
       creates and terminates the context. */
    for (int i = 0; i < views / 4; i++) {
        xpl_view_t *v = xpl_view_new_curve(d->pub, d->query, model, 10000, curve);
        cr_assert_not_null(v, "view %d (fresh context): %s", i, xpl_strerror());
        xpl_view_destroy(&v);
        xpl_sub_t *s = xpl_sub_new_curve(d->pub, d->query, curve);
        cr_assert_not_null(s, "subscriber %d (fresh context): %s", i, xpl_strerror());
        xpl_sub_destroy(&s);
    }
}

Test(curve, churn_never_collides, .init = setup, .fini = teardown, .timeout = 240)
{
    xpl_pub_t *p = xpl_pub_new_connect_curve(g_d.in, g_d.good);
    cr_assert_not_null(p, "%s", xpl_strerror());
    make_known(&g_d, p, "churn");
    churn(&g_d, g_d.good, "churn", 1000, 60);

    /* Without CURVE: a second, plain daemon. */
    daemon_t plain;
    memset(&plain, 0, sizeof plain);
    s_mkdir(&plain);
    daemon_start(&plain, NULL, true);
    xpl_pub_t *pp = xpl_pub_new_connect(plain.in);
    cr_assert_not_null(pp, "%s", xpl_strerror());
    make_known(&plain, pp, "churn");
    churn(&plain, NULL, "churn", 1000, 60);
    xpl_pub_destroy(&pp);
    daemon_stop(&plain);
    xpl_curve_destroy(&plain.good);
    xpl_curve_destroy(&plain.bad);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", plain.dir);
    cr_expect_eq(system(cmd), 0, "cannot remove %s", plain.dir);
    xpl_pub_destroy(&p);
}
