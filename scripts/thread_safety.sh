#!/usr/bin/env bash
# Compiles the code that uses locks with clang++ -Wthread-safety -Werror
# (build-tsa, SAE_THREAD_SAFETY=ON): every .cc that names a lock
# (sae::Mutex of core/base/mutex.h, or absl::Mutex) or a lock annotation, or
# includes a header that does; tests and benchmarks excluded. Compile only
# (no linking).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${SAE_TSA_BUILD_DIR:-build-tsa}
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
[ -f "$B/CMakeCache.txt" ] || cmake -S . -B "$B" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang -DSAE_THREAD_SAFETY=ON -DSAE_BUILD_BENCHMARKS=OFF >/dev/null
pattern='(absl|sae)::Mutex|ABSL_(PT_)?GUARDED_BY|ABSL_(EXCLUSIVE|SHARED)_LOCKS_REQUIRED|ABSL_LOCKS_EXCLUDED'
mapfile -t headers < <(git grep -l -E "$pattern" -- '*.h' ':!tests' ':!benchmarks')
{
  git grep -l -E "$pattern" -- '*.cc' ':!tests' ':!benchmarks'
  for h in "${headers[@]}"; do git grep -l -F "#include \"$h\"" -- '*.cc' ':!tests' ':!benchmarks'; done
} | sort -u >"$B/tsa_sources.txt"
targets=$(ninja -C "$B" -t targets all | sed -n 's/^\([^ ]*\.cc\.o\): .*/\1/p')
objects=()
while read -r src; do
  dir=$(dirname "$src")
  obj=$(grep -E "^$dir/CMakeFiles/[^/]+\.dir/$(basename "$src")\.o$" <<<"$targets" || true)
  [ -n "$obj" ] || { echo "thread_safety.sh: no object for $src" >&2; exit 1; }
  objects+=($obj)
done <"$B/tsa_sources.txt"
echo "thread safety: ${#objects[@]} object(s) with clang -Wthread-safety -Werror"
ninja -C "$B" -j"${SAE_TSA_JOBS:-$(nproc)}" "${objects[@]}"
