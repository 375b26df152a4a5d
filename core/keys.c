/*  keys: czmq-style CURVE certificate files. See keys.h.  */
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char s_z85[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

int
keys_z85_ok(const char *s)
{
    if (strlen(s) != KEY_Z85_LEN)
        return 0;
    for (const char *p = s; *p; p++)
        if (!strchr(s_z85, *p))
            return 0;
    return 1;
}

/* Value of `name = "..."` on a line, into out (41 bytes). */
static int
s_field(const char *line, const char *name, char *out)
{
    const char *p = line;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strlen(name);
    if (strncmp(p, name, n) != 0)
        return 0;
    p += n;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p++ != '=')
        return 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p++ != '"')
        return 0;
    const char *q = strchr(p, '"');
    if (!q || q - p != KEY_Z85_LEN)
        return -1;
    memcpy(out, p, KEY_Z85_LEN);
    out[KEY_Z85_LEN] = '\0';
    return keys_z85_ok(out) ? 1 : -1;
}

int
keys_load(const char *path, char *public_key, char *secret_key, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    char line[512];
    int have_pub = 0, have_sec = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        int r = s_field(line, "public-key", public_key);
        if (r)
            have_pub = r > 0 ? 1 : (bad = 1, 0);
        if (secret_key && (r = s_field(line, "secret-key", secret_key)))
            have_sec = r > 0 ? 1 : (bad = 1, 0);
    }
    fclose(f);
    if (bad || !have_pub || (secret_key && !have_sec)) {
        snprintf(err, errlen, "%s: %s", path,
                 bad ? "a key is not 40 Z85 characters"
                     : !have_pub ? "no public-key line" : "no secret-key line (not a secret certificate)");
        return -1;
    }
    return 0;
}

static int
s_write(const char *path, const char *pub, const char *sec, char *err, size_t errlen)
{
    /* Never through a symlink, and the mode is enforced even when the file
       existed with another one. */
    mode_t mode = sec ? 0600 : 0644;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd >= 0 && fchmod(fd, mode) != 0) {
        close(fd);
        fd = -1;
    }
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char when[64];
    time_t now = time(NULL);
    struct tm tm;
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", gmtime_r(&now, &tm));
    fprintf(f, "#   ****  Generated on %s UTC by xplainctl keygen  ****\n", when);
    fprintf(f, "#   ZeroMQ CURVE %s Certificate\n", sec ? "**Secret**" : "Public");
    fprintf(f, "#   %s\n", sec ? "Keep this file private: it is the secret key."
                             : "Share this file: it lets xplaind admit the key's owner.");
    fprintf(f, "\nmetadata\ncurve\n    public-key = \"%s\"\n", pub);
    if (sec)
        fprintf(f, "    secret-key = \"%s\"\n", sec);
    if (fclose(f) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int
keys_save(const char *path, const char *public_key, const char *secret_key, char *err,
          size_t errlen)
{
    char spath[4096];
    if (snprintf(spath, sizeof spath, "%s_secret", path) >= (int)sizeof spath) {
        snprintf(err, errlen, "path too long");
        return -1;
    }
    /* The secret first: a public certificate never exists without it. */
    if (s_write(spath, public_key, secret_key, err, errlen) ||
        s_write(path, public_key, NULL, err, errlen))
        return -1;
    return 0;
}
