#include "calc.h"

/* expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
   factor := NUM | '(' expr ')' | '-' factor */
struct parser {
    struct lexer lx;
    struct token cur;
    const char **error;
};

static void advance(struct parser *p) { p->cur = lexer_next(&p->lx); }
static struct node *expr(struct parser *p);

static struct node *factor(struct parser *p) {
    if (p->cur.kind == T_NUM) {
        struct node *n = node_new('n', p->cur.value, NULL, NULL);
        advance(p);
        return n;
    }
    if (p->cur.kind == T_MINUS) {
        advance(p);
        return node_new('-', 0, node_new('n', 0, NULL, NULL), factor(p));
    }
    if (p->cur.kind == T_LPAREN) {
        advance(p);
        struct node *n = expr(p);
        if (p->cur.kind != T_RPAREN)
            *p->error = "expected ')'";
        advance(p);
        return n;
    }
    *p->error = "unexpected token";
    return node_new('n', 0, NULL, NULL);
}

static struct node *term(struct parser *p) {
    struct node *n = factor(p);
    while (p->cur.kind == T_STAR || p->cur.kind == T_SLASH) {
        char op = p->cur.kind == T_STAR ? '*' : '/';
        advance(p);
        n = node_new(op, 0, n, factor(p));
    }
    return n;
}

static struct node *expr(struct parser *p) {
    struct node *n = term(p);
    while (p->cur.kind == T_PLUS || p->cur.kind == T_MINUS) {
        char op = p->cur.kind == T_PLUS ? '+' : '-';
        advance(p);
        n = node_new(op, 0, n, term(p));
    }
    return n;
}

struct node *parse(const char *src, const char **error) {
    struct parser p;
    *error = NULL;
    p.error = error;
    lexer_init(&p.lx, src);
    advance(&p);
    struct node *n = expr(&p);
    if (!*error && p.cur.kind != T_END)
        *error = "trailing input";
    return n;
}
