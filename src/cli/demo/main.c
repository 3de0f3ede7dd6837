#include <stdio.h>
#include "calc.h"

int main(int argc, char **argv) {
    const char *exprs[] = {"1 + 2 * 3", "(1 + 2) * 3", "100 / (5 - 3)", "-(4 * 5) + 42"};
    int n = argc > 1 ? argc - 1 : (int)(sizeof exprs / sizeof *exprs);
    for (int i = 0; i < n; i++) {
        const char *src = argc > 1 ? argv[i + 1] : exprs[i];
        const char *err = NULL;
        struct node *tree = parse(src, &err);
        long v = err ? 0 : eval(tree, &err);
        char buf[32];
        if (err)
            printf("%s = error: %s\n", src, err);
        else
            printf("%s = %s\n", src, format_long(v, buf, sizeof buf));
        free_tree(tree);
    }
    return 0;
}
