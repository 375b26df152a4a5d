/*  xpl_base: library-wide definitions of libxplain (export macro,
    error codes, version). Included by every libxplain header; see
    xplain.h for the conventions.  */
#ifndef XPL_BASE_H_INCLUDED
#define XPL_BASE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && defined(XPL_BUILDING_LIBRARY)
#define XPL_EXPORT __attribute__((visibility("default")))
#else
#define XPL_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Version of the wire contract this library speaks. */
#define XPL_WIRE_VERSION 1

/* Default endpoints of the daemon (proto/README.md). */
#define XPL_DEFAULT_SUB_ENDPOINT "tcp://127.0.0.1:5557"
#define XPL_DEFAULT_QUERY_ENDPOINT "tcp://127.0.0.1:5558"

/* Error codes. The XPL_E* codes from XPL_EBAD_REQUEST on mirror the
   daemon's query error codes (proto/queries.md). */
typedef enum {
    XPL_OK = 0,
    XPL_EINVAL = 1,             /* bad argument from the caller */
    XPL_ENOMEM = 2,             /* out of memory */
    XPL_EZMQ = 3,               /* a ZeroMQ call failed (bad endpoint, ...) */
    XPL_ETIMEOUT = 4,           /* no reply or message in time (daemon unreachable?) */
    XPL_EINTR = 5,              /* interrupted by a signal */
    XPL_EPROTO = 6,             /* malformed message or reply from the daemon */
    XPL_EBAD_REQUEST = 7,       /* daemon: "bad_request" */
    XPL_EUNKNOWN_OP = 8,        /* daemon: "unknown_op" */
    XPL_EUNKNOWN_MODEL = 9,     /* daemon: "unknown_model" */
    XPL_ENOT_FOUND = 10,        /* daemon: "not_found" (trade, method, target) */
    XPL_EBAD_ARGUMENT = 11,     /* daemon: "bad_argument" */
    XPL_ESERVER = 12,           /* daemon: ok false with another code */
    XPL_ECERT = 13,             /* a CURVE certificate file cannot be read or
                                   written, or is not what is needed */
    XPL_EINTERNAL = 14          /* daemon: "internal" (it ran out of memory;
                                   the same request may succeed later) */
} xpl_errno_t;

/* Code of the last error in the calling thread (XPL_OK when none yet). */
XPL_EXPORT int xpl_errno(void);

/* Readable one-line reason of the last error in the calling thread
   ("" when none yet). The string belongs to the library and is valid
   until the next failing call in this thread. */
XPL_EXPORT const char *xpl_strerror(void);

/* Stable name of an error code ("timeout", "unknown_model", ...). */
XPL_EXPORT const char *xpl_errno_name(int code);

/* Version of this library ("0.1.0"). */
XPL_EXPORT const char *xpl_version(void);

#ifdef __cplusplus
}
#endif

#endif
