/* A small program whose counters depend on its input, so runs with different inputs give
   different raw profiles. Used by the tests and the ingest benchmark. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned collatz(unsigned long n) {
    unsigned steps = 0;
    while (n != 1) { n = (n % 2) ? 3 * n + 1 : n / 2; steps++; }
    return steps;
}

static int classify(int c) {
    if (c >= 'a' && c <= 'z') return 1;
    if (c >= '0' && c <= '9') return 2;
    return 3;
}

int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 10) : 27;
    const char *text = argc > 2 ? argv[2] : "hello 42";
    int kinds[4] = {0};
    for (size_t i = 0; i < strlen(text); i++) kinds[classify(text[i])]++;
    printf("%u %d %d %d\n", collatz(n ? n : 1), kinds[1], kinds[2], kinds[3]);
    return 0;
}
