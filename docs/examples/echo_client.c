/*
 * echo_client.c: a complete ipcfast client in C.
 *
 * Connects to NAME (waiting up to 5 s for the server to appear), sends each
 * further argument as one request and prints each response on its own line.
 * A request the server's handler refused (IPC_E_REMOTE) is reported and the
 * same connection is used for the next one; any other failure ends the
 * program with exit code 1.
 *
 * Build: see below.
 *
 * Run:  ./echo_client demo hello world
 */

// Build from a checkout: this file and every .c file of csrc/, one call:
//     cc -std=c99 -Wall -Wextra -Icsrc docs/examples/echo_client.c csrc/*.c -lpthread -o echo_client
// (Windows, MinGW: ... -ladvapi32 instead of -lpthread.)

#include <stdio.h>
#include <string.h>

#include "ipc.h"

int main(int argc, char **argv)
{
    ipc_client_t *client = NULL;
    ipc_error err = {0, 0, NULL};
    int i, status = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s NAME [REQUEST...]\n", argv[0]);
        return 2;
    }
    /* options NULL: defaults, including the default handshake value that
     * Python clients and servers use with key=None. */
    if (ipc_client_open(&client, argv[1], NULL, 5000, &err) != IPC_OK) {
        fprintf(stderr, "echo_client: %s: %s\n", ipc_result_name(err.code),
                err.message ? err.message : "");
        ipc_error_clear(&err);
        return 1;
    }
    for (i = 2; i < argc; i++) {
        const uint8_t *response;
        size_t size;
        int r = ipc_client_request(client, argv[i], strlen(argv[i]), &response, &size,
                                   2000, &err);

        if (r == IPC_OK) {
            /* response points into the client's buffer, valid until the
             * next call on this client */
            printf("%.*s\n", (int)size, (const char *)response);
        } else if (r == IPC_E_REMOTE) {
            printf("refused: %s\n", err.message ? err.message : "");
            ipc_error_clear(&err);   /* the connection stays usable */
        } else {
            fprintf(stderr, "echo_client: %s: %s\n", ipc_result_name(r),
                    err.message ? err.message : "");
            ipc_error_clear(&err);
            status = 1;
            break;
        }
    }
    ipc_client_close(client);
    return status;
}
