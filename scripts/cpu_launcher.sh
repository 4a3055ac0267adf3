#!/bin/sh
# A CMake compiler/linker launcher that records what each build step cost in
# CPU-seconds: runs the command and appends "USER SYS OUTPUT" (seconds, and
# the file after -o) to $SAE_CPU_LOG. For measuring build time on a shared
# machine, where wall times say more about the neighbours (docs/performance.md):
#   SAE_CPU_LOG=$PWD/cpu.log cmake -S . -B B -G Ninja -DCMAKE_BUILD_TYPE=Release \
#     -DCMAKE_CXX_COMPILER_LAUNCHER=$PWD/scripts/cpu_launcher.sh \
#     -DCMAKE_CXX_LINKER_LAUNCHER=$PWD/scripts/cpu_launcher.sh
#   SAE_CPU_LOG=$PWD/cpu.log cmake --build B -j2
#   scripts/ninja_times.py B --cpu-log cpu.log
out=
prev=
for a in "$@"; do
  [ "$prev" = "-o" ] && out=$a
  prev=$a
done
if [ -z "${SAE_CPU_LOG:-}" ]; then exec "$@"; fi
exec /usr/bin/time -a -o "$SAE_CPU_LOG" -f "%U %S ${out:-?}" "$@"
