#include "calc.h"

long eval(const struct node *n, const char **error) {
    if (n->op == 'n')
        return n->value;
    long a = eval(n->lhs, error), b = eval(n->rhs, error);
    switch (n->op) {
    case '+': return a + b;
    case '-': return a - b;
    case '*': return a * b;
    case '/':
        if (b == 0) {
            *error = "division by zero";
            return 0;
        }
        return a / b;
    }
    *error = "bad node";
    return 0;
}
