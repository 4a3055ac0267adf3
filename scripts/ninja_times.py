#!/usr/bin/env python3
"""Where a Ninja build's time went, from its .ninja_log.

Usage: scripts/ninja_times.py BUILD_DIR [--top N] [--cpu-log FILE]

Prints the N slowest build steps (wall seconds each took; on a loaded machine
these are inflated, but they rank the steps) and the sum per source folder
(core/sae, cli, tests/unit/lm, ...: the folder of the object's target, the
library or test it belongs to). Only the last run of each output counts, so
a build resumed after a failure is counted once per step. With --cpu-log (the
log scripts/cpu_launcher.sh writes), the CPU-seconds (user + system) of each
step instead, which a busy machine does not inflate; steps the launcher did
not wrap (custom commands such as protoc) are then left out. Exit status 0.
"""
import argparse
import collections
import os
import sys


def folder(output):
    # core/sae/CMakeFiles/sae_sae.dir/trainer.cc.o -> core/sae
    parts = output.split("/")
    if "CMakeFiles" in parts:
        parts = parts[: parts.index("CMakeFiles")]
    else:
        parts = parts[:-1]
    if not parts:
        return "(top)"
    if parts[0] in ("core", "tests") and len(parts) > 1:
        if parts[:2] == ["tests", "unit"] and len(parts) > 2:
            return "/".join(parts[:3])
        return "/".join(parts[:2])
    return parts[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build_dir")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--cpu-log", help="scripts/cpu_launcher.sh's log: CPU-seconds per step")
    args = ap.parse_args()
    last = {}
    unit = "wall time of each step"
    if args.cpu_log:
        unit = "CPU-seconds, user + system"
        with open(args.cpu_log) as f:
            for line in f:
                fields = line.split(maxsplit=2)
                if len(fields) == 3 and not line.startswith("Command"):
                    try:
                        last[fields[2].strip()] = float(fields[0]) + float(fields[1])
                    except ValueError:
                        pass  # /usr/bin/time's note on a failed command
    else:
        with open(os.path.join(args.build_dir, ".ninja_log")) as f:
            for line in f:
                if line.startswith("#"):
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 4:
                    continue
                start, end, output = int(fields[0]), int(fields[1]), fields[3]
                last[output] = (end - start) / 1000.0
    total = sum(last.values())
    print(f"{len(last)} steps, {total:.1f} s summed ({unit})")
    print(f"\nslowest {args.top}:")
    for out, secs in sorted(last.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {secs:7.1f}  {out}")
    per = collections.Counter()
    for out, secs in last.items():
        per[folder(out)] += secs
    print("\nper folder:")
    for d, secs in per.most_common():
        print(f"  {secs:7.1f}  {100 * secs / total:5.1f}%  {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
