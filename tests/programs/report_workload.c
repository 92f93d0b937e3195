/* A program for the report's tests: eleven functions of very different heat, some never run
   for most inputs, so a profile has a real ranking, a 90 % cut-off and functions not covered. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long mix(unsigned long x) { return (x ^ (x >> 7)) * 2654435761u; }

static unsigned long hot_loop(unsigned long n) {
    unsigned long acc = 0;
    for (unsigned long i = 0; i < n * 200; i++) acc += mix(i + acc) & 0xff;
    return acc;
}

static unsigned long warm(unsigned long n) {
    unsigned long acc = 1;
    for (unsigned long i = 0; i < n * 10; i++) acc = acc * 31 + i;
    return acc;
}

static int count_vowels(const char *text) {
    int vowels = 0;
    for (const char *p = text; *p; p++) vowels += strchr("aeiouAEIOU", *p) != NULL;
    return vowels;
}

static int rarely(int k) { return k % 97 == 0 ? 1 : 0; }
static int only_for_seven(int k) { return k * 7 + 1; }
static int only_for_big(unsigned long n) { return (int)(n % 13); }
static void never_a(void) { puts("never a"); }
static void never_b(int x) { printf("never b %d\n", x); }
static int never_c(int x) { return x > 0 ? x : -x; }

int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 10) : 3;
    const char *text = argc > 2 ? argv[2] : "hello";
    unsigned long result = hot_loop(n) + warm(n) + (unsigned long)count_vowels(text);
    for (int k = 0; k < (int)n; k++) result += (unsigned long)rarely(k);
    if (n == 7) result += (unsigned long)only_for_seven((int)n);
    if (n > 1000) result += (unsigned long)only_for_big(n);
    if (argc > 5) { never_a(); never_b(argc); result += (unsigned long)never_c(argc); }
    printf("%lu\n", result);
    return 0;
}
