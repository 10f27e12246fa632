/*
 * Every C test, in the order the runner runs them: X(name) stands for
 * `void test_name(void)`, defined in the tests/c/test_*.c file of its area.
 * t_harness.h declares them from this list and t_main.c builds its table
 * from it, so a new test is one function plus one line here.
 *
 * Run order matters twice: the cross-process tests follow the in-process
 * ones, and under ThreadSanitizer a data race ends the run, so the test that
 * swaps the log handler while servers run comes last.
 */
#ifndef IPCFAST_TEST_LIST_H
#define IPCFAST_TEST_LIST_H

#if defined(_WIN32)
#define T_POSIX_ONLY(X, name)
#else
#define T_POSIX_ONLY(X, name) X(name)
#endif

/* The shared-memory path's fault tests need a region: Linux (memfd) and
 * Windows (a section); the mapping and CPU counts read /proc (Linux). */
#if defined(__linux__)
#define T_LINUX_ONLY(X, name) X(name)
#else
#define T_LINUX_ONLY(X, name)
#endif
#if defined(__linux__) || defined(_WIN32)
#define T_SHM_ONLY(X, name) X(name)
#else
#define T_SHM_ONLY(X, name)
#endif

#define T_TEST_LIST(X)                                              \
    X(codec)                                                        \
    X(options_and_nulls)                                            \
    X(server_open_stop)                                             \
    X(round_trips)                                                  \
    X(concurrent_clients)                                           \
    X(bad_options)                                                  \
    X(racing_servers)                                               \
    X(remote_errors)                                                \
    X(fail_message_bounds)                                          \
    X(big_then_small)                                               \
    X(pipelining_and_connection)                                    \
    X(client_in_use)                                                \
    X(client_shutdown_during_call)                                  \
    X(client_interrupt_hook)                                        \
    X(client_call_reply)                                            \
    X(client_call_into)                                             \
    X(client_call_into_misuse)                                      \
    X(client_call_into_mixed)                                       \
    X(shm_messages_beyond_the_socket_buffer)                        \
    X(too_large_response)                                           \
    X(too_large_request)                                            \
    X(address_in_use)                                               \
    X(name_too_long)                                                \
    X(not_found)                                                    \
    X(connect_retries_until_server_starts)                          \
    X(wrong_handshake)                                              \
    X(versions)                                                     \
    X(busy)                                                         \
    X(server_user)                                                  \
    X(stop_with_clients)                                            \
    X(stop_with_full_slots)                                         \
    X(timeouts)                                                     \
    X(write_timeout)                                                \
    X(connect_cycles)                                               \
    X(disconnect_notification)                                      \
    X(log_callback)                                                 \
    X(legacy_api)                                                   \
    X(open_stop_cycles)                                             \
    X(cross_process_client)                                         \
    X(killed_client)                                                \
    X(cross_process_server)                                         \
    X(stale_name_reclaimed)                                         \
    T_POSIX_ONLY(X, raw_wire)                                       \
    T_POSIX_ONLY(X, stop_with_stuck_peers)                          \
    T_POSIX_ONLY(X, path_names)                                     \
    T_POSIX_ONLY(X, private_directory)                              \
    X(idle_connections_survive_wakeups)                             \
    X(cancel_race_under_load)                                       \
    X(windows_acl_readback)                                         \
    X(two_wine_processes)                                           \
    X(no_sigpipe)                                                   \
    X(manual_dispatch)                                              \
    X(manual_dispatch_ready_follows_queue)                          \
    X(manual_dispatch_stale_ready_cleared)                          \
    X(batched_next_calls)                                           \
    X(connection_loop)                                              \
    X(node_codec)                                                   \
    X(node_commands)                                                \
    X(node_packets_refused)                                         \
    X(shm_negotiation)                                              \
    X(shm_round_trips)                                              \
    X(shm_errors)                                                   \
    X(shm_stop_during_request)                                      \
    X(shm_manual_dispatch)                                          \
    T_SHM_ONLY(X, shm_stop_wakes_idle_waits)                        \
    T_SHM_ONLY(X, shm_killed_peers)                                 \
    T_SHM_ONLY(X, shm_hostile_peer)                                 \
    T_SHM_ONLY(X, shm_requests_in_place)                            \
    T_SHM_ONLY(X, shm_responses_in_place)                           \
    T_SHM_ONLY(X, shm_connection_loop)                              \
    T_SHM_ONLY(X, shm_vanished_peer)                                \
    T_SHM_ONLY(X, shm_many_idle_connections)                        \
    /* last: under ThreadSanitizer a data race here ends the run */ \
    X(log_handler_swap_while_serving)

#endif
