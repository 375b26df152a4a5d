/*  xpl_error: the calling thread's last error (code and readable reason).  */
#include "xpl_private.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

static _Thread_local int s_code;
static _Thread_local char s_reason[512];

static void
s_set(int code, const char *fmt, va_list ap)
{
    s_code = code;
    vsnprintf(s_reason, sizeof s_reason, fmt, ap);
}

int
xpl_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_set(code, fmt, ap);
    va_end(ap);
    return -1;
}

void *
xpl_fail_null(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_set(code, fmt, ap);
    va_end(ap);
    return NULL;
}

int
xpl_fail_zmq(const char *what)
{
    int e = zmq_errno();
    if (e == EINTR)
        return xpl_fail(XPL_EINTR, "%s: interrupted", what);
    return xpl_fail(XPL_EZMQ, "%s: %s", what, zmq_strerror(e));
}

void
xpl_clear_error(void)
{
    s_code = XPL_OK;
    s_reason[0] = '\0';
}

int
xpl_errno(void)
{
    return s_code;
}

const char *
xpl_strerror(void)
{
    return s_reason;
}

static const char *s_names[] = {
    [XPL_OK] = "ok",
    [XPL_EINVAL] = "invalid_argument",
    [XPL_ENOMEM] = "no_memory",
    [XPL_EZMQ] = "zmq",
    [XPL_ETIMEOUT] = "timeout",
    [XPL_EINTR] = "interrupted",
    [XPL_EPROTO] = "protocol",
    [XPL_EBAD_REQUEST] = "bad_request",
    [XPL_EUNKNOWN_OP] = "unknown_op",
    [XPL_EUNKNOWN_MODEL] = "unknown_model",
    [XPL_ENOT_FOUND] = "not_found",
    [XPL_EBAD_ARGUMENT] = "bad_argument",
    [XPL_ESERVER] = "server",
    [XPL_ECERT] = "certificate",
    [XPL_EINTERNAL] = "internal",
};

const char *
xpl_errno_name(int code)
{
    if (code < 0 || (size_t)code >= sizeof s_names / sizeof s_names[0])
        return "unknown";
    return s_names[code];
}

int
xpl_errno_from_code(const char *code)
{
    for (int c = XPL_EBAD_REQUEST; c <= XPL_EBAD_ARGUMENT; c++)
        if (strcmp(code, s_names[c]) == 0)
            return c;
    if (strcmp(code, s_names[XPL_EINTERNAL]) == 0)
        return XPL_EINTERNAL;
    return XPL_ESERVER;
}

const char *
xpl_version(void)
{
    return XPL_VERSION;
}
