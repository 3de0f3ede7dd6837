/* A tiny calculator: jailbuilder's demo project. Each .c file is compiled in its own sandbox. */
#ifndef CALC_H
#define CALC_H
#include <stddef.h>

enum tok_kind { T_NUM, T_PLUS, T_MINUS, T_STAR, T_SLASH, T_LPAREN, T_RPAREN, T_END, T_ERR };

struct token {
    enum tok_kind kind;
    long value;
};

struct lexer {
    const char *src;
    size_t pos;
};

void lexer_init(struct lexer *lx, const char *src);
struct token lexer_next(struct lexer *lx);

struct node;
struct node *parse(const char *src, const char **error);
long eval(const struct node *n, const char **error);
void free_tree(struct node *n);

struct node {
    char op; /* 'n' for a number, else + - * / */
    long value;
    struct node *lhs, *rhs;
};

struct node *node_new(char op, long value, struct node *lhs, struct node *rhs);
const char *format_long(long v, char *buf, size_t len);
#endif
