#include "calc.h"

const char *format_long(long v, char *buf, size_t len) {
    char tmp[32];
    size_t i = 0, o = 0;
    unsigned long u = v < 0 ? 0UL - (unsigned long)v : (unsigned long)v;
    do {
        tmp[i++] = (char)('0' + u % 10);
        u /= 10;
    } while (u && i < sizeof tmp);
    if (v < 0 && o + 1 < len)
        buf[o++] = '-';
    while (i && o + 1 < len)
        buf[o++] = tmp[--i];
    buf[o] = '\0';
    return buf;
}
