/* The two C23 entry points glibc 2.38 added that the matrix-sdk-python 0.18.0 wheel's
 * libmatrix_sdk_ffi.so imports (objdump -T: __isoc23_sscanf, __isoc23_strtol). On an older glibc
 * (Debian 12: 2.36) they are the C99 functions: C23 only adds 0b/0B binary prefixes, which the
 * SDK's callers (number parsing in its C dependencies) do not rely on. Loaded RTLD_GLOBAL before
 * the SDK by tests/rust_sdk/client.py; tests/rust_sdk/prepare.py builds it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

long __isoc23_strtol(const char *s, char **end, int base) { return strtol(s, end, base); }

int __isoc23_sscanf(const char *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsscanf(s, fmt, ap);
    va_end(ap);
    return n;
}
