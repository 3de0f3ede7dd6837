#include "calc.h"

void lexer_init(struct lexer *lx, const char *src) {
    lx->src = src;
    lx->pos = 0;
}

struct token lexer_next(struct lexer *lx) {
    struct token t = {T_END, 0};
    while (lx->src[lx->pos] == ' ')
        lx->pos++;
    char c = lx->src[lx->pos];
    if (c == '\0')
        return t;
    lx->pos++;
    switch (c) {
    case '+': t.kind = T_PLUS; return t;
    case '-': t.kind = T_MINUS; return t;
    case '*': t.kind = T_STAR; return t;
    case '/': t.kind = T_SLASH; return t;
    case '(': t.kind = T_LPAREN; return t;
    case ')': t.kind = T_RPAREN; return t;
    }
    if (c >= '0' && c <= '9') {
        long v = c - '0';
        while (lx->src[lx->pos] >= '0' && lx->src[lx->pos] <= '9')
            v = v * 10 + (lx->src[lx->pos++] - '0');
        t.kind = T_NUM;
        t.value = v;
        return t;
    }
    t.kind = T_ERR;
    return t;
}
