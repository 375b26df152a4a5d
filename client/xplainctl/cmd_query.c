/*  xplainctl query: any query op, the reply as JSON.  */
#include "ctl.h"

#include <errno.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

static const char s_help[] =
    "usage: xplainctl query OP [KEY=VALUE]...\n"
    "\n"
    "Send the query {\"v\": 1, \"op\": OP, KEY: VALUE, ...} and print the reply as\n"
    "one line of JSON on stdout (bin values, such as the trade matrices, as\n"
    "base64). When the daemon answers ok: false, its error goes to stderr\n"
    "and the exit status is 1.\n"
    "\n"
    "Values are typed from their text: true, false, null, integers, floats,\n"
    "[a,b,...] arrays of those; anything else is a string. Quote a value\n"
    "to keep it a string: id='\"42\"'.\n"
    "\n"
    "ops (proto/queries.md): ping, models, schema model=M, stats,\n"
    "  trade model=M id=ID [flow=true], global model=M [method=X] [target=T],\n"
    "  baseline model=M action=pin|reset,\n"
    "  reference model=M method=X values=[v1,v2,...]\n"
    "\n"
    "examples:\n"
    "  xplainctl query ping\n"
    "  xplainctl query trade model=m1 id=t-17\n"
    "\n" CTL_COMMON_HELP;

static void
s_pack_scalar(msgpack_packer *pk, const char *s, size_t n)
{
    char buf[128];
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
        msgpack_pack_str(pk, n - 2);
        msgpack_pack_str_body(pk, s + 1, n - 2);
        return;
    }
    if (n < sizeof buf) {
        memcpy(buf, s, n);
        buf[n] = '\0';
        char *end;
        if (strcmp(buf, "true") == 0) {
            msgpack_pack_true(pk);
            return;
        }
        if (strcmp(buf, "false") == 0) {
            msgpack_pack_false(pk);
            return;
        }
        if (strcmp(buf, "null") == 0) {
            msgpack_pack_nil(pk);
            return;
        }
        errno = 0;
        if (n > 0 && buf[0] == '-') {
            long long i = strtoll(buf, &end, 10);
            if (!errno && *end == '\0') {
                msgpack_pack_int64(pk, i);
                return;
            }
        } else if (n > 0 && buf[0] >= '0' && buf[0] <= '9') {
            unsigned long long u = strtoull(buf, &end, 10);
            if (!errno && *end == '\0') {
                msgpack_pack_uint64(pk, u);
                return;
            }
        }
        errno = 0;
        double d = strtod(buf, &end);
        if (n > 0 && !errno && *end == '\0' && (buf[0] == '-' || buf[0] == '.'
                                                || (buf[0] >= '0' && buf[0] <= '9'))) {
            msgpack_pack_double(pk, d);
            return;
        }
    }
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void
s_pack_value(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        const char *p = s + 1, *end = s + n - 1;
        uint32_t count = 0;
        for (const char *q = p; q < end; q++)
            count += *q == ',';
        bool empty = true;
        for (const char *q = p; q < end; q++)
            empty &= *q == ' ';
        msgpack_pack_array(pk, empty ? 0 : count + 1);
        while (!empty && p <= end) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            const char *stop = comma ? comma : end;
            while (p < stop && *p == ' ')
                p++;
            const char *e = stop;
            while (e > p && e[-1] == ' ')
                e--;
            s_pack_scalar(pk, p, (size_t)(e - p));
            p = stop + 1;
        }
        return;
    }
    s_pack_scalar(pk, s, n);
}

int
cmd_query(int argc, char **argv)
{
    ctl_args_t a;
    ctl_args_init(&a, "query", argc, argv);
    const char *op = NULL;
    const char *args[64];
    int nargs = 0;
    const char *arg;
    while ((arg = ctl_next(&a))) {
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(s_help, stdout);
            return CTL_OK;
        }
        if (arg[0] == '-' && arg[1] == '-')
            return ctl_error("query", CTL_USAGE, "unknown option '%s' (try --help)", arg);
        if (!op)
            op = arg;
        else if (!strchr(arg, '=') || arg[0] == '=')
            return ctl_error("query", CTL_USAGE, "argument '%s' is not KEY=VALUE", arg);
        else if (nargs == 64)
            return ctl_error("query", CTL_USAGE, "too many arguments");
        else
            args[nargs++] = arg;
    }
    if (a.status != CTL_OK)
        return a.status;
    if (!op)
        return ctl_error("query", CTL_USAGE, "no op given (try --help)");

    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2 + (uint32_t)nargs);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_int(&pk, XPL_WIRE_VERSION);
    msgpack_pack_str_with_body(&pk, "op", 2);
    msgpack_pack_str_with_body(&pk, op, strlen(op));
    for (int i = 0; i < nargs; i++) {
        const char *eq = strchr(args[i], '=');
        msgpack_pack_str_with_body(&pk, args[i], (size_t)(eq - args[i]));
        s_pack_value(&pk, eq + 1);
    }

    int rc = CTL_FAIL;
    xpl_client_t *c = ctl_client("query");
    void *reply = NULL;
    size_t size = 0;
    if (c && xpl_client_request(c, sb.data, sb.size, &reply, &size) == 0) {
        char *json = xpl_json_from_msgpack(reply, size);
        if (json) {
            puts(json);
            rc = CTL_OK;
        } else
            ctl_xpl_error("query");
        free(json);
    } else if (c)
        ctl_xpl_error("query");
    free(reply);
    xpl_client_destroy(&c);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}
