/*  notify: sd_notify wrappers. See notify.h.  */
#include "notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>

int64_t
notify_init(void)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0)
        return 0;
    return (int64_t)usec * 1000 / 2;
}

void
notify_ready(void)
{
    sd_notify(0, "READY=1");
}

void
notify_stopping(void)
{
    sd_notify(0, "STOPPING=1");
}

void
notify_watchdog(void)
{
    sd_notify(0, "WATCHDOG=1");
}

void
notify_status(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int len = snprintf(buf, sizeof buf, "STATUS=");
    vsnprintf(buf + len, sizeof buf - (size_t)len, fmt, ap);
    va_end(ap);
    sd_notify(0, buf);
}
