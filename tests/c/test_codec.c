/*
 * C tests of the codec: handshake and packet headers, encoded and checked without I/O.
 */
#include "t_harness.h"

void test_codec(void)
{
    uint8_t buf[16];
    uint8_t ver = 0;
    uint8_t reply[9];
    uint8_t req[9];
    ipc_packet_header h;
    size_t n;
    int i;

    CHECK(memcmp(IPC_DEFAULT_HANDSHAKE, DEFAULT_HS, 8) == 0);

    /* client request */
    n = ipc_handshake_encode_request(req, DEFAULT_HS, 1);
    CHECK(n == 9);
    CHECK(memcmp(req, "\x00\xf7\x83\xca\x2a\x31\x7e\x38\x01", 9) == 0);
    for (i = 0; i < 9; i++)
        CHECK(ipc_handshake_check_request(req, (size_t)i, DEFAULT_HS, &ver) ==
              IPC_VERDICT_NEED_MORE);
    ver = 0;
    CHECK(ipc_handshake_check_request(req, 9, DEFAULT_HS, &ver) == IPC_VERDICT_OK);
    CHECK(ver == 1);
    CHECK(ipc_handshake_check_request((const uint8_t *)"G", 1, DEFAULT_HS, &ver) ==
          IPC_VERDICT_FOREIGN);
    CHECK(ipc_handshake_check_request((const uint8_t *)"GET / HTTP/1.0", 9, DEFAULT_HS, &ver) ==
          IPC_VERDICT_FOREIGN);
    memcpy(buf, req, 9);
    buf[7] ^= 1;
    CHECK(ipc_handshake_check_request(buf, 9, DEFAULT_HS, &ver) == IPC_VERDICT_MISMATCH);
    CHECK(ipc_handshake_check_request(buf, 8, DEFAULT_HS, &ver) == IPC_VERDICT_MISMATCH);
    memcpy(buf, req, 9);
    buf[2] ^= 0x80;
    CHECK(ipc_handshake_check_request(buf, 3, DEFAULT_HS, &ver) == IPC_VERDICT_MISMATCH);
    memcpy(buf, req, 9);
    buf[8] = 0;
    CHECK(ipc_handshake_check_request(buf, 9, DEFAULT_HS, &ver) == IPC_VERDICT_BAD_VERSION);
    buf[8] = 255;
    CHECK(ipc_handshake_check_request(buf, 9, DEFAULT_HS, &ver) == IPC_VERDICT_OK);
    CHECK(ver == 255);

    /* server reply */
    n = ipc_handshake_encode_reply(reply, DEFAULT_HS, 1);
    CHECK(n == 9);
    CHECK(memcmp(reply, "\x5a\xad\xd9\x90\x70\x6b\x24\x62\x01", 9) == 0);
    for (i = 0; i < 9; i++)
        CHECK(ipc_handshake_check_reply(reply, (size_t)i, DEFAULT_HS, &ver) ==
              IPC_VERDICT_NEED_MORE);
    ver = 0;
    CHECK(ipc_handshake_check_reply(reply, 9, DEFAULT_HS, &ver) == IPC_VERDICT_OK);
    CHECK(ver == 1);
    CHECK(ipc_handshake_check_reply((const uint8_t *)"\xff", 1, DEFAULT_HS, &ver) ==
          IPC_VERDICT_FOREIGN);
    CHECK(ipc_handshake_check_reply(req, 9, DEFAULT_HS, &ver) == IPC_VERDICT_MISMATCH);
    CHECK(ipc_handshake_check_reply(req, 1, DEFAULT_HS, &ver) == IPC_VERDICT_MISMATCH);
    memcpy(buf, reply, 9);
    buf[8] = 0;
    CHECK(ipc_handshake_check_reply(buf, 9, DEFAULT_HS, &ver) == IPC_VERDICT_BAD_VERSION);

    /* packet headers */
    n = ipc_packet_header_encode(buf, IPC_PACKET_REQUEST, 0x01020304u, 0);
    CHECK(n == 5);
    CHECK(memcmp(buf, "\x01\x04\x03\x02\x01", 5) == 0);
    memset(&h, 0xAB, sizeof h);
    CHECK(ipc_packet_header_parse(buf, 5, 0xFFFFFFFFu, 1, &h) == IPC_VERDICT_OK);
    CHECK(h.type == 1 && h.version == 0 && h.length == 0x01020304u && h.header_size == 5);
    for (i = 0; i < 5; i++)
        CHECK(ipc_packet_header_parse(buf, (size_t)i, 0xFFFFFFFFu, 1, &h) == IPC_VERDICT_NEED_MORE);
    n = ipc_packet_header_encode(buf, IPC_PACKET_RESPONSE, 7, 1);
    CHECK(n == 6);
    CHECK(memcmp(buf, "\x42\x01\x07\x00\x00\x00", 6) == 0);
    CHECK(ipc_packet_header_parse(buf, 6, 100, 1, &h) == IPC_VERDICT_OK);
    CHECK(h.type == 2 && h.version == 1 && h.length == 7 && h.header_size == 6);
    for (i = 0; i < 6; i++)
        CHECK(ipc_packet_header_parse(buf, (size_t)i, 100, 1, &h) == IPC_VERDICT_NEED_MORE);
    CHECK(ipc_packet_header_parse(buf, 6, 6, 1, &h) == IPC_VERDICT_TOO_LARGE);
    CHECK(h.length == 7);
    buf[1] = 2;
    CHECK(ipc_packet_header_parse(buf, 2, 100, 1, &h) == IPC_VERDICT_BAD_VERSION);
    CHECK(ipc_packet_header_parse(buf, 6, 100, 2, &h) == IPC_VERDICT_OK);
    buf[1] = 0;
    CHECK(ipc_packet_header_parse(buf, 6, 100, 2, &h) == IPC_VERDICT_BAD_VERSION);
    CHECK(ipc_packet_header_parse((const uint8_t *)"\x81", 1, 100, 1, &h) ==
          IPC_VERDICT_RESERVED_BIT);
    CHECK(ipc_packet_header_parse((const uint8_t *)"\x00", 1, 100, 1, &h) ==
          IPC_VERDICT_UNKNOWN_TYPE);
    CHECK(ipc_packet_header_parse((const uint8_t *)"\x08", 1, 100, 1, &h) ==
          IPC_VERDICT_UNKNOWN_TYPE);
    CHECK(ipc_packet_header_parse((const uint8_t *)"\x3f\x00\x00\x00\x00", 5, 100, 1, &h) ==
          IPC_VERDICT_UNKNOWN_TYPE);
    CHECK(ipc_packet_header_parse((const uint8_t *)"\x01\xff\xff\xff\xff", 5,
                                  IPC_DEFAULT_MAX_MESSAGE, 1, &h) == IPC_VERDICT_TOO_LARGE);
    CHECK(h.length == 0xFFFFFFFFu);
    for (i = IPC_PACKET_REQUEST; i <= IPC_PACKET_CANCEL; i++) {
        n = ipc_packet_header_encode(buf, (uint8_t)i, 0, 0);
        CHECK(n == 5 && ipc_packet_header_parse(buf, n, 0, 1, &h) == IPC_VERDICT_OK &&
              h.type == i && h.length == 0);
    }

    /* names */
    CHECK(strcmp(ipc_verdict_name(IPC_VERDICT_TOO_LARGE), "IPC_VERDICT_TOO_LARGE") == 0);
    CHECK(strcmp(ipc_verdict_name(IPC_VERDICT_OK), "IPC_VERDICT_OK") == 0);
    CHECK(ipc_verdict_name(99) != NULL && ipc_verdict_name(-1) != NULL);
    CHECK(strcmp(ipc_result_name(IPC_OK), "IPC_OK") == 0);
    CHECK(strcmp(ipc_result_name(IPC_E_TIMEOUT), "IPC_E_TIMEOUT") == 0);
    CHECK(strcmp(ipc_result_name(IPC_E_SYSTEM), "IPC_E_SYSTEM") == 0);
    CHECK(ipc_result_name(99) != NULL && ipc_result_name(-1) != NULL);
    for (i = IPC_OK; i <= IPC_E_SYSTEM; i++)
        CHECK(strncmp(ipc_result_name(i), "IPC_", 4) == 0);
}
