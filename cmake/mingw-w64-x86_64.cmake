# Cross-compiling ipcfast's C programs for 64-bit Windows with mingw-w64
# (Debian: gcc-mingw-w64-x86-64). The test suite runs the result under wine:
#   cmake -S . -B build-win -DCMAKE_TOOLCHAIN_FILE=cmake/mingw-w64-x86_64.cmake \
#         -DIPCFAST_PYTHON=OFF -DIPCFAST_BUILD_TESTS=ON
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(IPCFAST_MINGW_PREFIX x86_64-w64-mingw32)
set(CMAKE_C_COMPILER ${IPCFAST_MINGW_PREFIX}-gcc)
set(CMAKE_RC_COMPILER ${IPCFAST_MINGW_PREFIX}-windres)

# Libraries and headers from the mingw sysroot only; programs from the host.
set(CMAKE_FIND_ROOT_PATH /usr/${IPCFAST_MINGW_PREFIX})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
