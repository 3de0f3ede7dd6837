#include <stdlib.h>
#include "calc.h"

struct node *node_new(char op, long value, struct node *lhs, struct node *rhs) {
    struct node *n = malloc(sizeof *n);
    if (!n)
        abort();
    n->op = op;
    n->value = value;
    n->lhs = lhs;
    n->rhs = rhs;
    return n;
}

void free_tree(struct node *n) {
    if (!n)
        return;
    free_tree(n->lhs);
    free_tree(n->rhs);
    free(n);
}
