/*  notify: the systemd side door (sd_notify).

    Under `Type=notify` the daemon says READY=1 once its sockets are up,
    keeps a one-line STATUS= current, pings WATCHDOG=1 at half the
    WatchdogSec interval, and says STOPPING=1 on its way out. Outside
    systemd (no $NOTIFY_SOCKET) every call does nothing.  */
#ifndef XPLD_NOTIFY_H
#define XPLD_NOTIFY_H

#include <stdint.h>

/* Set up; returns the watchdog period to keep (ns), 0 when none. */
int64_t notify_init(void);

void notify_ready(void);
void notify_stopping(void);
void notify_watchdog(void);
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
