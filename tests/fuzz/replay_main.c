/*
 * A main() for tests/fuzz/fuzz_codec.c where no libFuzzer runtime is at
 * hand (clang without libclang-rt, or gcc): runs LLVMFuzzerTestOneInput
 * once over each file named on the command line, so the corpus is still
 * replayed under AddressSanitizer and UndefinedBehaviorSanitizer
 * (tests/test_fuzz.py, test_corpus_replays_with_gcc).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    static uint8_t buf[1 << 20];
    int i;

    for (i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        size_t n;

        if (!f) {
            fprintf(stderr, "replay: cannot open %s\n", argv[i]);
            return 2;
        }
        n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, n);
        fprintf(stderr, "Executed %s\n", argv[i]);
    }
    return 0;
}
