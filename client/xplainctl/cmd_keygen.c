/*  xplainctl keygen: a CURVE key pair as czmq certificate files.  */
#include "ctl.h"

#include <string.h>

static const char s_help[] =
    "usage: xplainctl keygen [--force] FILE | --print\n"
    "\n"
    "Make a CURVE key pair for a daemon running with --curve and write it as\n"
    "two certificates (czmq's format): FILE, the public one, and FILE_secret,\n"
    "the secret one (mode 0600). For a client, copy FILE into the daemon's\n"
    "clients_dir and reload the daemon; the client uses FILE_secret\n"
    "(--curve-key). For the daemon itself, FILE_secret is its\n"
    "secret_key_file and its clients use FILE as --server-key. Prints the\n"
    "public key. Needs no daemon.\n"
    "\n"
    "  --force         replace FILE and FILE_secret if they exist (otherwise\n"
    "                  existing files are an error and left alone)\n"
    "  --print         print a new key pair (public-key and secret-key lines)\n"
    "                  instead of writing files\n";

int
cmd_keygen(int argc, char **argv)
{
    bool force = false, print = false;
    const char *file = NULL;
    ctl_args_t a;
    ctl_args_init(&a, "keygen", argc, argv);
    const char *arg;
    while ((arg = ctl_next(&a))) {
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(s_help, stdout);
            return CTL_OK;
        } else if (strcmp(arg, "--force") == 0)
            force = true;
        else if (strcmp(arg, "--print") == 0)
            print = true;
        else if (arg[0] == '-' && arg[1] != '\0')
            return ctl_error("keygen", CTL_USAGE, "unknown argument '%s' (try --help)", arg);
        else if (file)
            return ctl_error("keygen", CTL_USAGE, "one FILE only ('%s' and '%s')", file, arg);
        else
            file = arg;
    }
    if (a.status != CTL_OK)
        return a.status;
    if (print && (file || force))
        return ctl_error("keygen", CTL_USAGE, "--print writes no file: give FILE or --print");
    if (!print && (!file || !*file))
        return ctl_error("keygen", CTL_USAGE, "no FILE given (try --help)");

    char pub[XPL_CURVE_KEY_LEN + 1], sec[XPL_CURVE_KEY_LEN + 1];
    if (xpl_curve_keypair(pub, sec))
        return ctl_xpl_error("keygen");
    int rc = CTL_OK;
    if (print) {
        printf("public-key = \"%s\"\nsecret-key = \"%s\"\n", pub, sec);
    } else if (xpl_curve_save(file, pub, sec, force)) {
        rc = ctl_error("keygen", CTL_FAIL, "%s%s", xpl_strerror(),
                       strstr(xpl_strerror(), " exists: ") ? " (--force replaces it)" : "");
    } else {
        printf("public key  %s\n", pub);
        printf("wrote %s (public certificate) and %s_secret (secret, mode 0600)\n", file, file);
        printf("hint: copy %s into the daemon's clients_dir and reload it to admit this key; "
               "keep %s_secret private\n",
               file, file);
    }
    explicit_bzero(sec, sizeof sec);
    if (fflush(stdout) != 0 && rc == CTL_OK)
        rc = ctl_error("keygen", CTL_FAIL, "cannot write to standard output");
    return rc;
}
