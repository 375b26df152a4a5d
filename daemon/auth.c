/*  auth: CURVE server sockets and the ZAP handler. See auth.h.  */
#include "auth.h"

#include "keys.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_DOMAIN "xplaind"

const char *const auth_kind_names[5] = {"key", "mechanism", "crypto", "protocol", "incomplete"};

/* Read every *.key certificate of `dir` (czmq names public certificates
   <name>.key and secret ones <name>.key_secret; only the former count). */
static int
s_load_clients(const char *dir, uint8_t (**out)[32], size_t *count)
{
    DIR *d = opendir(dir);
    if (!d) {
        log_err("security: cannot read clients_dir %s: %s", dir, strerror(errno));
        return -1;
    }
    uint8_t(*keys)[32] = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 5 || strcmp(e->d_name + len - 4, ".key") != 0)
            continue;
        char path[4096], pub[41], err[256];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (keys_load(path, pub, NULL, err, sizeof err)) {
            log_warn("security: skipping client certificate %s", err);
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            uint8_t(*nk)[32] = realloc(keys, cap * sizeof *keys);
            if (!nk) {
                free(keys);
                closedir(d);
                return -1;
            }
            keys = nk;
        }
        zmq_z85_decode(keys[n++], pub);
    }
    closedir(d);
    free(*out);
    *out = keys;
    *count = n;
    return 0;
}

int
auth_init(auth_t *a, void *zctx, const config_t *cfg)
{
    memset(a, 0, sizeof *a);
    if (!cfg->curve)
        return 0;
    a->enabled = true;
    a->zctx = zctx;
    if (!zmq_has("curve")) {
        log_err("security: this libzmq has no CURVE support");
        return -1;
    }
    char err[512];
    if (!cfg->secret_key_file[0]) {
        log_err("security: curve is on but security.secret_key_file is not set "
                "(make one with: xplainctl keygen FILE)");
        return -1;
    }
    if (keys_load(cfg->secret_key_file, a->public_key, a->secret_key, err, sizeof err)) {
        log_err("security: %s", err);
        return -1;
    }
    if (!cfg->clients_dir[0]) {
        log_err("security: curve is on but security.clients_dir is not set");
        return -1;
    }
    if (s_load_clients(cfg->clients_dir, &a->allowed, &a->nallowed))
        return -1;
    /* The handler must exist before any CURVE socket does: without one,
       libzmq lets every key in. */
    int linger = 0;
    if (!(a->zap = zmq_socket(zctx, ZMQ_REP)) ||
        zmq_setsockopt(a->zap, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_bind(a->zap, ZAP_ENDPOINT)) {
        log_err("security: cannot start the ZAP handler: %s", zmq_strerror(errno));
        return -1;
    }
    log_info("security: CURVE on, server key %s, %zu client key(s) admitted from %s", a->public_key,
             a->nallowed, cfg->clients_dir);
    if (a->nallowed == 0)
        log_warn("security: no client certificates in %s: every peer will be refused", cfg->clients_dir);
    return 0;
}

/* A socket monitor reporting `sock`'s failed handshakes to a PAIR socket
   of ours. Each monitor gets an inproc name never used before in this
   process: libzmq cannot bind a name again while the old monitor's pipe
   may still be closing. */
static int
s_monitor(auth_t *a, void *sock, const char *what)
{
    static uint64_t serial;
    if (a->nmon == AUTH_MONITORS) {
        log_err("security: more than %d CURVE sockets to watch", AUTH_MONITORS);
        return -1;
    }
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://xplaind-monitor-%llu", (unsigned long long)++serial);
    int events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL;
    /* Events are dropped when this end falls behind: a deep queue keeps a
       burst of refusals counted until the loop reads it. */
    int hwm = 100000, linger = 0;
    void *pair = NULL;
    if (zmq_socket_monitor(sock, ep, events) != 0 || !(pair = zmq_socket(a->zctx, ZMQ_PAIR)) ||
        zmq_setsockopt(pair, ZMQ_RCVHWM, &hwm, sizeof hwm) ||
        zmq_setsockopt(pair, ZMQ_LINGER, &linger, sizeof linger) || zmq_connect(pair, ep)) {
        log_err("security: cannot watch the handshakes of the %s socket: %s", what, zmq_strerror(errno));
        if (pair)
            zmq_close(pair);
        return -1;
    }
    a->mon[a->nmon] = pair;
    a->mon_what[a->nmon] = what;
    a->nmon++;
    return 0;
}

int
auth_apply(auth_t *a, void *sock, const char *what)
{
    if (!a->enabled)
        return 0;
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN, strlen(ZAP_DOMAIN)) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, a->secret_key, KEY_Z85_LEN)) {
        log_err("security: cannot make the %s socket a CURVE server: %s", what, zmq_strerror(errno));
        return -1;
    }
    return s_monitor(a, sock, what);
}

int
auth_poll_items(const auth_t *a, void *items_v)
{
    zmq_pollitem_t *items = items_v;
    for (int k = 0; k < a->nmon; k++)
        items[k] = (zmq_pollitem_t){a->mon[k], 0, ZMQ_POLLIN, 0};
    return a->nmon;
}

/* One monitor event: frame 1 is the event (u16) and its value (u32),
   frame 2 the socket's endpoint. */
static void
s_event(auth_t *a, int m)
{
    zmq_msg_t f[2];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t scratch, *msg = n < 2 ? &f[n] : &scratch;
        zmq_msg_init(msg);
        if (zmq_msg_recv(msg, a->mon[m], n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(msg);
            n = n < 2 ? n : 2;
            for (int k = 0; k < n; k++)
                zmq_msg_close(&f[k]);
            return;
        }
        more = zmq_msg_more(msg);
        if (msg == &scratch)
            zmq_msg_close(msg);
        n++;
    }
    if (n >= 2 && zmq_msg_size(&f[0]) == 6) {
        const uint8_t *p = zmq_msg_data(&f[0]);
        uint16_t event;
        uint32_t value;
        memcpy(&event, p, 2);
        memcpy(&value, p + 2, 4);
        char ep[128];
        size_t el = zmq_msg_size(&f[1]) < sizeof ep - 1 ? zmq_msg_size(&f[1]) : sizeof ep - 1;
        memcpy(ep, zmq_msg_data(&f[1]), el);
        ep[el] = '\0';
        int kind;
        const char *why;
        char detail[96];
        if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
            kind = AUTH_KIND_INCOMPLETE;
            /* A plaintext peer often ends up here: it sees the mechanism
               mismatch first and hangs up while our greeting is sent. */
            snprintf(detail, sizeof detail, "connection lost during the handshake (%s; a "
                     "plaintext peer hanging up looks like this)", value ? strerror((int)value) : "closed");
            why = detail;
        } else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
            kind = AUTH_KIND_MECHANISM;
            why = "not a CURVE peer (plaintext or another security mechanism)";
        } else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) {
            kind = AUTH_KIND_CRYPTO;
            why = "CURVE handshake does not decrypt (the peer uses another server key)";
        } else {
            kind = AUTH_KIND_PROTOCOL;
            snprintf(detail, sizeof detail, "ZMTP/CURVE protocol error 0x%08x", (unsigned)value);
            why = detail;
        }
        a->by_kind[kind]++;
        a->refused++;
        log_limited(LOGK_AUTH_HANDSHAKE, LOG_WARN_, "security: refused a peer on the %s socket (%s): %s",
                    a->mon_what[m], ep, why);
    }
    n = n < 2 ? n : 2;
    for (int k = 0; k < n; k++)
        zmq_msg_close(&f[k]);
}

void
auth_handle_monitors(auth_t *a, const void *items_v, int count)
{
    const zmq_pollitem_t *items = items_v;
    for (int m = 0; m < count && m < a->nmon; m++) {
        if (!(items[m].revents & ZMQ_POLLIN))
            continue;
        for (int k = 0; k < 256; k++) {
            zmq_pollitem_t it = {a->mon[m], 0, ZMQ_POLLIN, 0};
            if (zmq_poll(&it, 1, 0) <= 0 || !(it.revents & ZMQ_POLLIN))
                break;
            s_event(a, m);
        }
    }
}

static bool
s_allowed(const auth_t *a, const uint8_t *key)
{
    for (size_t k = 0; k < a->nallowed; k++)
        if (memcmp(a->allowed[k], key, 32) == 0)
            return true;
    return false;
}

/* One ZAP request: version, request id, domain, address, identity,
   mechanism, credentials... (RFC 27). */
static void
s_request(auth_t *a)
{
    zmq_msg_t f[8];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t scratch, *m = n < 8 ? &f[n] : &scratch;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, a->zap, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(m);
            for (int k = 0; k < n && k < 8; k++)
                zmq_msg_close(&f[k]);
            return;
        }
        more = zmq_msg_more(m);
        if (m == &scratch)
            zmq_msg_close(m);
        n++;
    }
    bool ok = false;
    const char *why = "malformed ZAP request";
    char address[64] = "?";
    if (n >= 7 && n <= 8) {
        size_t al = zmq_msg_size(&f[3]) < sizeof address - 1 ? zmq_msg_size(&f[3]) : sizeof address - 1;
        memcpy(address, zmq_msg_data(&f[3]), al);
        address[al] = '\0';
        if (zmq_msg_size(&f[5]) != 5 || memcmp(zmq_msg_data(&f[5]), "CURVE", 5) != 0)
            why = "not a CURVE peer";
        else if (zmq_msg_size(&f[6]) != 32)
            why = "malformed CURVE credentials";
        else if (!(ok = s_allowed(a, zmq_msg_data(&f[6]))))
            why = "public key not in clients_dir";
    }
    if (ok) {
        a->admitted++;
    } else {
        a->refused++;
        a->by_kind[AUTH_KIND_KEY]++;
        char key[41] = "?";
        if (n >= 7 && zmq_msg_size(&f[6]) == 32)
            zmq_z85_encode(key, zmq_msg_data(&f[6]), 32);
        log_limited(LOGK_AUTH_PEER, LOG_WARN_, "security: refused peer %s (key %s): %s", address, key, why);
    }
    const char *status = ok ? "200" : "400";
    const char *text = ok ? "OK" : why;
    /* Reply: version, request id, status code, status text, user id, metadata. */
    zmq_send(a->zap, "1.0", 3, ZMQ_SNDMORE);
    if (n >= 2)
        zmq_send(a->zap, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
    else
        zmq_send(a->zap, "", 0, ZMQ_SNDMORE);
    zmq_send(a->zap, status, 3, ZMQ_SNDMORE);
    zmq_send(a->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(a->zap, "", 0, ZMQ_SNDMORE);
    zmq_send(a->zap, "", 0, 0);
    for (int k = 0; k < n && k < 8; k++)
        zmq_msg_close(&f[k]);
}

void
auth_handle(auth_t *a)
{
    if (!a->zap)
        return;
    for (int k = 0; k < 64; k++) {
        zmq_pollitem_t it = {a->zap, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 0) <= 0 || !(it.revents & ZMQ_POLLIN))
            return;
        s_request(a);
    }
}

int
auth_reload(auth_t *a, const config_t *cfg)
{
    if (!a->enabled)
        return 0;
    if (s_load_clients(cfg->clients_dir, &a->allowed, &a->nallowed))
        return -1;
    log_notice("security: %zu client key(s) admitted from %s", a->nallowed, cfg->clients_dir);
    return 0;
}

void
auth_destroy(auth_t *a)
{
    for (int k = 0; k < a->nmon; k++)
        zmq_close(a->mon[k]);
    if (a->zap)
        zmq_close(a->zap);
    free(a->allowed);
    memset(a, 0, sizeof *a);
}
