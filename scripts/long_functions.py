#!/usr/bin/env python3
"""Lists the C++ functions longer than N lines (default 80) in a source tree.

Usage: scripts/long_functions.py [--min-lines N] [--all] [--tests] [ROOT]

A function is a brace body at namespace or class scope whose head (the text
since the previous `;`, `{` or `}`) ends in a parameter list, optionally
followed by qualifiers, a trailing return type or a constructor's member
initializers. Its length is counted from the first line of the head to the
closing brace, both included (lambdas and local classes count as part of the
function that holds them). Comments, string and character literals (raw
strings too) and preprocessor lines are blanked before the braces are
counted. Test code (tests/, *_test.cc) is left out unless --tests is given;
build/ and node_modules/ are always left out.

Prints one line per function, longest first: LINES path:first-last name,
then the count. Exit status 0.
"""
import argparse
import os
import re
import sys

SOURCE_EXT = (".cc", ".cpp", ".cxx", ".h", ".hpp")
SKIP_DIRS = {"build", "node_modules", ".git"}
NOT_FUNCTION_HEAD = re.compile(
    r"^\s*(namespace\b|extern\s*$|class\b|struct\b|union\b|enum\b|template\s*<[^>]*>\s*(class|struct|union)\b)")
CONTROL = re.compile(r"\b(if|for|while|switch|catch|return)\s*\(")


def blank(text):
    """Returns text with comments, literals and preprocessor lines replaced by
    spaces (newlines kept, so line numbers stay)."""
    out = []
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start:
            j = i
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == "#":
                # A preprocessor line, with its continuations.
                while j < n and text[j] != "\n":
                    if text[j] == "\\" and j + 1 < n and text[j + 1] == "\n":
                        out.append(" " * (j - i) + "\n")
                        i = j = j + 2
                        continue
                    j += 1
                out.append(" " * (j - i))
                i = j
                continue
        at_line_start = False
        if c == "\n":
            out.append(c)
            at_line_start = True
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "R" and i + 1 < n and text[i + 1] == '"' and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
                                                               or text[i - 1] in "uUL8"):
            m = re.match(r'R"([^(\s]{0,16})\(', text[i:])
            if not m:
                out.append(c)
                i += 1
                continue
            end = text.find(")" + m.group(1) + '"', i + m.end())
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c in "\"'":
            if c == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < n and text[i + 1].isalnum():
                out.append(" ")  # a digit separator: 1'000'000
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + " " * (j - i - 2) + c if j - i >= 2 else " " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def is_function_head(head):
    h = head.strip()
    if not h or NOT_FUNCTION_HEAD.match(h) or "=" in re.sub(r"operator\s*[^\s(]*\(", "", h).split("(")[0]:
        return False
    if CONTROL.search(h) and not re.search(r"\boperator\b", h):
        return False
    # Constructor member initializers: `X::X(int a) : a_(a), b_(b)`.
    h = re.sub(r"\)\s*:(?!:)[^{};]*$", ")", h)
    # Qualifiers and a trailing return type after the parameter list.
    h = re.sub(r"(\s*(const|noexcept(\s*\([^)]*\))?|override|final|volatile|&&?|mutable|try"
               r"|->\s*[\w:<>,\s*&]+|ABSL_\w+(\([^)]*\))?))*\s*$", "", h)
    return h.endswith(")") and "(" in h


def name_of(head):
    h = re.sub(r"\s+", " ", head.strip())
    m = re.search(r"([~\w:]+(?:operator\s*\S+?)?)\s*\(", h)
    return m.group(1) if m else h[:40]


def functions(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        text = blank(f.read())
    stack = []  # scope kinds: ns, class, func, other
    head_start = 0
    funcs = []
    i, n = 0, len(text)
    line_of = lambda pos: text.count("\n", 0, pos) + 1
    while i < n:
        c = text[i]
        in_func = any(k == "func" for k in stack)
        if c == "{":
            kind = "other"
            if not in_func and (not stack or stack[-1] in ("ns", "class")):
                head = text[head_start:i]
                hs = head.strip()
                if re.match(r"^namespace\b", hs) or (re.match(r"^extern\b", hs) and "(" not in hs) or hs == "":
                    kind = "ns" if hs else "other"
                elif re.match(r"^(template\s*<.*>\s*)?(class|struct|union|enum)\b", hs, re.S) and "(" not in hs.split("{")[0]:
                    kind = "class"
                elif re.search(r"\)\s*:(?!:)[^{};]*\w\s*$", hs) and is_function_head(hs.rstrip("{ ") + ")"):
                    # `b_{b}` in a member-initializer list: skip its braces.
                    depth, j = 0, i
                    while j < n:
                        if text[j] == "{":
                            depth += 1
                        elif text[j] == "}":
                            depth -= 1
                            if depth == 0:
                                break
                        j += 1
                    i = j + 1
                    continue
                elif is_function_head(hs):
                    kind = "func"
                    first = head_start + (len(head) - len(head.lstrip()))
                    funcs.append([name_of(hs), line_of(first), None])
            stack.append(kind)
            head_start = i + 1
        elif c == "}":
            kind = stack.pop() if stack else "other"
            if kind == "func" and not any(k == "func" for k in stack):
                funcs[-1][2] = line_of(i)
            head_start = i + 1
        elif c == ";":
            if not in_func:
                head_start = i + 1
        i += 1
    return [(name, a, b) for name, a, b in funcs if b is not None]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", default=".")
    ap.add_argument("--min-lines", type=int, default=80, help="list functions longer than this (default 80)")
    ap.add_argument("--tests", action="store_true", help="count test code too")
    ap.add_argument("--all", action="store_true", help="list every function (with --min-lines 0)")
    args = ap.parse_args()
    rows = []
    for dirpath, dirnames, filenames in os.walk(args.root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("build"))
        rel_dir = os.path.relpath(dirpath, args.root)
        if not args.tests and (rel_dir == "tests" or rel_dir.startswith("tests" + os.sep)):
            continue
        for fn in sorted(filenames):
            if not fn.endswith(SOURCE_EXT) or (not args.tests and fn.endswith("_test.cc")):
                continue
            p = os.path.join(dirpath, fn)
            for name, a, b in functions(p):
                length = b - a + 1
                if length > args.min_lines:
                    rows.append((length, os.path.relpath(p, args.root), a, b, name))
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    for length, p, a, b, name in rows:
        print(f"{length:5d} {p}:{a}-{b} {name}")
    print(f"{len(rows)} functions over {args.min_lines} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
