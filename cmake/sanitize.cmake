# IPCFAST_SANITIZE: the sanitizers every target of this build is compiled and
# linked with ("address;undefined" or "thread"; they cannot be combined
# across those two groups). Included from CMakeLists.txt when it is set.
#
# Before the build, a small threaded program is built and run with the same
# flags: a toolchain without the runtime (or a kernel the TSan runtime cannot
# map memory on) fails here, at configure time, with a message starting
# "IPCFAST_SANITIZE unusable:" that tests/c_build.py turns into a skip.

set(_ipcfast_known address undefined thread)
foreach(_sanitizer IN LISTS IPCFAST_SANITIZE)
  if(NOT _sanitizer IN_LIST _ipcfast_known)
    message(FATAL_ERROR "IPCFAST_SANITIZE: unknown sanitizer '${_sanitizer}' "
                        "(use \"address;undefined\" or \"thread\")")
  endif()
endforeach()
if("thread" IN_LIST IPCFAST_SANITIZE AND NOT IPCFAST_SANITIZE STREQUAL "thread")
  message(FATAL_ERROR "IPCFAST_SANITIZE: thread cannot be combined with other sanitizers")
endif()

list(JOIN IPCFAST_SANITIZE "," _ipcfast_fsanitize)
# one cached answer per sanitizer set (the option may change in a build folder)
string(MAKE_C_IDENTIFIER "IPCFAST_SANITIZE_WORKS_${_ipcfast_fsanitize}" _ipcfast_works)
set(IPCFAST_SANITIZE_FLAGS "-fsanitize=${_ipcfast_fsanitize}" -fno-omit-frame-pointer -g)

include(CheckCSourceRuns)
set(CMAKE_REQUIRED_FLAGS "-fsanitize=${_ipcfast_fsanitize}")
set(CMAKE_REQUIRED_LINK_OPTIONS "-fsanitize=${_ipcfast_fsanitize}")
set(CMAKE_REQUIRED_LIBRARIES Threads::Threads)
check_c_source_runs([[
#include <pthread.h>
static int x;
static void *run(void *p) { (void)p; x = 1; return 0; }
int main(void)
{
    pthread_t t;
    if (pthread_create(&t, 0, run, 0) != 0) return 1;
    pthread_join(t, 0);
    return x - 1;
}
]] ${_ipcfast_works})
unset(CMAKE_REQUIRED_FLAGS)
unset(CMAKE_REQUIRED_LINK_OPTIONS)
unset(CMAKE_REQUIRED_LIBRARIES)
if(NOT ${_ipcfast_works})
  unset(${_ipcfast_works} CACHE)  # try again on the next configure
  message(FATAL_ERROR "IPCFAST_SANITIZE unusable: the compiler cannot build, or this machine "
                      "cannot run, a threaded program with -fsanitize=${_ipcfast_fsanitize} "
                      "(see CMakeFiles/CMakeConfigureLog.yaml)")
endif()

add_compile_options(${IPCFAST_SANITIZE_FLAGS})
add_link_options("-fsanitize=${_ipcfast_fsanitize}")
