#!/usr/bin/env bash
# Prints the "core figures" counted from the source tree: how widely the
# 2026-07-28 revision and MCP method names are spelled out in src/, the type
# with the most methods, which clippy lints are denied, and how many hops
# docs/ARCHITECTURE.md's "Follow one call" section takes (and, from its
# "Every stretch of work" subsection, the same call counted by file visits).
#
#   scripts/core-figures.sh           the figures, one line each
#   scripts/core-figures.sh --files   also the files behind figures 1 and 2
#
# It reports; it does not gate: the exit status is always 0.
#
# "Tests aside" means: files named tests.rs or *_tests.rs, files under a
# tests/ directory, files that are only declared by a `#[cfg(test)] mod x;`
# (and whatever those declare in turn), and, inside every other file, each
# item that follows `#[cfg(test)]` (a `mod tests { ... }`, a test-only fn,
# impl or use). Comments (`//`, `///`, `//!`, `/* */`) are never counted;
# string literals are.

cd "$(dirname "$0")/.." || exit 0

PY=python3
command -v "$PY" >/dev/null 2>&1 || PY=python3.11
"$PY" - "$@" <<'PYTHON' || true
import os
import re
import signal
import sys
from collections import defaultdict

try:
    import tomllib
except ImportError:  # python < 3.11
    tomllib = None

signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head

SHOW_FILES = "--files" in sys.argv[1:]
REVISION = "2026-07-28"

# Every MCP method of the 2024-11-05, 2025-03-26, 2025-06-18, 2025-11-25
# and 2026-07-28 revisions, plus `tasks/update` (the tasks extension as this
# code speaks it, see src/protocol/modern.rs and src/gateway/task_table.rs).
MCP_METHODS = {
    # requests
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "tasks/update",
    "server/discover",
    "subscriptions/listen",
    # notifications
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/roots/list_changed",
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "notifications/resources/updated",
    "notifications/prompts/list_changed",
    "notifications/tasks/status",
    "notifications/elicitation/complete",
    "notifications/subscriptions/acknowledged",
}

IDENT = re.compile(r"[A-Za-z0-9_]")


def is_ident(ch):
    return bool(ch) and (ch.isalnum() or ch == "_")


# --------------------------------------------------------------------------
# Lexing: split a Rust file into code, comments and literals.
# --------------------------------------------------------------------------


class Lexed:
    """Three views of one file, all the same length so offsets agree:

    nocomment  the text with every comment blanked (newlines kept)
    code       nocomment with the inside of every string/char literal blanked
    literals   (start, end, value) of every string literal
    """

    def __init__(self, text):
        self.text = text
        nocomment = list(text)
        code = list(text)
        literals = []
        n = len(text)
        i = 0

        def blank(buf, a, b):
            for k in range(a, b):
                if buf[k] != "\n":
                    buf[k] = " "

        while i < n:
            c = text[i]
            nxt = text[i + 1] if i + 1 < n else ""
            prev = text[i - 1] if i > 0 else ""
            # line comment (also /// and //!)
            if c == "/" and nxt == "/":
                j = text.find("\n", i)
                j = n if j < 0 else j
                blank(nocomment, i, j)
                blank(code, i, j)
                i = j
                continue
            # block comment, nested
            if c == "/" and nxt == "*":
                depth, j = 1, i + 2
                while j < n and depth:
                    if text.startswith("/*", j):
                        depth, j = depth + 1, j + 2
                    elif text.startswith("*/", j):
                        depth, j = depth - 1, j + 2
                    else:
                        j += 1
                blank(nocomment, i, j)
                blank(code, i, j)
                i = j
                continue
            # raw string: r"..", r#".."#, br#".."#, cr".."
            if c == "r" and not (is_ident(prev) and prev not in "bc") and not (
                prev in ("b", "c") and i > 1 and is_ident(text[i - 2])
            ):
                j = i + 1
                while j < n and text[j] == "#":
                    j += 1
                if j < n and text[j] == '"':
                    hashes = j - i - 1
                    close = '"' + "#" * hashes
                    end = text.find(close, j + 1)
                    end = n if end < 0 else end
                    literals.append((i, end + len(close), text[j + 1 : end]))
                    blank(code, j + 1, end)
                    i = end + len(close)
                    continue
            # ordinary string (also b"..", c"..")
            if c == '"':
                j = i + 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                value = text[i + 1 : j]
                literals.append((i, j + 1, value))
                blank(code, i + 1, j)
                i = j + 1
                continue
            # char literal or lifetime/label
            if c == "'":
                if nxt == "\\":
                    j = i + 1
                    while j < n and text[j] != "'":
                        j += 2 if text[j] == "\\" else 1
                    blank(code, i + 1, j)
                    i = j + 1
                    continue
                if i + 2 < n and text[i + 2] == "'":
                    blank(code, i + 1, i + 2)
                    i += 3
                    continue
                i += 1  # a lifetime such as 'a or 'static
                continue
            i += 1
        self.nocomment = "".join(nocomment)
        self.code = "".join(code)
        self.literals = literals


def match_close(code, open_at, opening="{", closing="}"):
    """Offset just past the bracket matching the one at open_at."""
    depth = 0
    for k in range(open_at, len(code)):
        ch = code[k]
        if ch == opening:
            depth += 1
        elif ch == closing:
            depth -= 1
            if depth == 0:
                return k + 1
    return len(code)


def skip_ws(code, k):
    while k < len(code) and code[k].isspace():
        k += 1
    return k


CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")
MOD_DECL = re.compile(r"^(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;")
PATH_ATTR = re.compile(r'#\s*\[\s*path\s*=\s*"([^"]*)"\s*\]')


def test_items(lexed):
    """(start, end, declared_module, path_attr) of each #[cfg(test)] item."""
    code = lexed.code
    found = []
    for m in CFG_TEST.finditer(code):
        start = m.start()
        k = skip_ws(code, m.end())
        path_attr = None
        # further attributes on the same item
        while code.startswith("#", k):
            b = code.find("[", k)
            if b < 0:
                break
            end = match_close(code, b, "[", "]")
            pm = PATH_ATTR.match(lexed.text[k:end])
            if pm:
                path_attr = pm.group(1)
            k = skip_ws(code, end)
        item_start = k
        depth = 0
        while k < len(code):
            ch = code[k]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif depth == 0 and ch == ";":
                k += 1
                break
            elif depth == 0 and ch == "{":
                k = match_close(code, k)
                break
            k += 1
        decl = MOD_DECL.match(code[item_start:k])
        found.append((start, k, decl.group(1) if decl else None, path_attr))
    return found


def blank_ranges(s, ranges):
    out = list(s)
    for a, b in ranges:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "
    return "".join(out)


# --------------------------------------------------------------------------
# Which files are tests
# --------------------------------------------------------------------------


def by_name_is_test(path):
    base = os.path.basename(path)
    parts = path.split(os.sep)
    return base == "tests.rs" or base.endswith("_tests.rs") or "tests" in parts[:-1]


def module_file(declaring, name, path_attr):
    here = os.path.dirname(declaring)
    if path_attr:
        return os.path.normpath(os.path.join(here, path_attr))
    base = os.path.basename(declaring)
    if base not in ("mod.rs", "lib.rs", "main.rs"):
        here = os.path.join(here, os.path.splitext(base)[0])
    for candidate in (os.path.join(here, name + ".rs"), os.path.join(here, name, "mod.rs")):
        if os.path.exists(candidate):
            return os.path.normpath(candidate)
    return None


ALL_MOD_DECL = re.compile(r"(?m)^[ \t]*(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;")

files = sorted(
    os.path.normpath(os.path.join(root, f))
    for root, _, names in os.walk("src")
    for f in names
    if f.endswith(".rs")
)
lexed = {}
for path in files:
    with open(path, encoding="utf-8", errors="replace") as fh:
        lexed[path] = Lexed(fh.read())

items = {path: test_items(lx) for path, lx in lexed.items()}
test_files = {p for p in files if by_name_is_test(p)}
declared_by_cfg_test = set()
for path, found in items.items():
    for _, _, name, path_attr in found:
        if name:
            target = module_file(path, name, path_attr)
            if target:
                declared_by_cfg_test.add(target)
test_files |= declared_by_cfg_test
# whatever a test file declares is test code too
changed = True
while changed:
    changed = False
    for path in list(test_files):
        if path not in lexed:
            continue
        for m in ALL_MOD_DECL.finditer(lexed[path].code):
            # honour a #[path] attribute just before the declaration
            before = lexed[path].text[max(0, m.start() - 200) : m.start()]
            pm = list(PATH_ATTR.finditer(before))
            path_attr = pm[-1].group(1) if pm and before[pm[-1].end():].strip() == "" else None
            target = module_file(path, m.group(1), path_attr)
            if target and target not in test_files:
                test_files.add(target)
                changed = True

shipped = [p for p in files if p not in test_files]

# Per shipped file: the views with the #[cfg(test)] items blanked.
views = {}
full_text = {}  # comments kept
for path in shipped:
    lx = lexed[path]
    ranges = [(a, b) for a, b, _, _ in items[path]]
    nocomment = blank_ranges(lx.nocomment, ranges)
    code = blank_ranges(lx.code, ranges)
    literals = [
        lit for lit in lx.literals if not any(a <= lit[0] < b for a, b in ranges)
    ]
    views[path] = (nocomment, code, literals)
    full_text[path] = blank_ranges(lx.text, ranges)


def line_of(text, offset):
    return text.count("\n", 0, offset) + 1


# --------------------------------------------------------------------------
# 1. the revision named
# --------------------------------------------------------------------------

revision_files = {}
for path in shipped:
    nocomment, _, _ = views[path]
    hits = [line_of(nocomment, m.start()) for m in re.finditer(re.escape(REVISION), nocomment)]
    if hits:
        revision_files[path] = hits

# the same, comments counted too (how the issue counted)
revision_anywhere = [p for p in shipped if REVISION in full_text[p]]

# --------------------------------------------------------------------------
# 2. MCP method names spelled as strings
# --------------------------------------------------------------------------

method_files = {}
for path in shipped:
    _, _, literals = views[path]
    names = defaultdict(int)
    for _, _, value in literals:
        if value in MCP_METHODS:
            names[value] += 1
    if names:
        method_files[path] = names

# --------------------------------------------------------------------------
# 3. the type with the most methods (inherent impls only)
# --------------------------------------------------------------------------

IMPL = re.compile(r"\bimpl\b")
FN_ITEM = re.compile(r"\bfn\s+[A-Za-z_]")


def skip_angles(code, k):
    """Past a <...> group starting at k ('->' and '=>' are not brackets)."""
    depth = 0
    while k < len(code):
        ch = code[k]
        if ch == "<":
            depth += 1
        elif ch == ">" and code[k - 1] not in "-=":
            depth -= 1
            if depth == 0:
                return k + 1
        k += 1
    return k


def inherent_impls(code):
    """(type name, body start, body end) of each inherent impl block."""
    out = []
    for m in IMPL.finditer(code):
        # an item-level impl, not `-> impl Trait` or `x: impl Trait`
        k = m.start() - 1
        while k >= 0 and code[k].isspace():
            k -= 1
        before = code[max(0, k - 5) : k + 1]
        if k >= 0 and code[k] not in ";{}]" and not before.endswith("unsafe"):
            continue
        k = skip_ws(code, m.end())
        if code.startswith("<", k):
            k = skip_angles(code, k)
        # the header runs to the body's brace
        h = k
        header = []
        while h < len(code) and code[h] not in "{;":
            if code[h] == "<":
                e = skip_angles(code, h)
                header.append(" <> ")
                h = e
                continue
            header.append(code[h])
            h += 1
        if h >= len(code) or code[h] != "{":
            continue
        head = "".join(header)
        head = re.split(r"\bwhere\b", head)[0]
        if re.search(r"\bfor\b", head):
            continue  # impl Trait for Type
        tm = re.match(r"\s*(?:dyn\s+)?((?:[A-Za-z_][A-Za-z0-9_]*\s*::\s*)*[A-Za-z_][A-Za-z0-9_]*)", head)
        if not tm:
            continue
        name = re.split(r"\s*::\s*", tm.group(1))[-1]
        end = match_close(code, h)
        out.append((name, h, end))
    return out


def fn_items(code, start, end):
    """fn items directly inside the body at code[start] == '{'."""
    count = 0
    depth = 0
    k = start
    while k < end:
        ch = code[k]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 1 and ch == "f" and FN_ITEM.match(code, k) and not is_ident(code[k - 1]):
            count += 1
        k += 1
    return count


methods = defaultdict(int)
blocks = defaultdict(int)
block_files = defaultdict(set)
for path in shipped:
    _, code, _ = views[path]
    for name, start, end in inherent_impls(code):
        methods[name] += fn_items(code, start, end)
        blocks[name] += 1
        block_files[name].add(path)
ranked = sorted(methods.items(), key=lambda kv: (-kv[1], kv[0]))

# --------------------------------------------------------------------------
# 4. lints
# --------------------------------------------------------------------------

clippy = {}
try:
    with open("Cargo.toml", "rb") as fh:
        if tomllib:
            clippy = tomllib.load(fh).get("lints", {}).get("clippy", {})
        else:
            raise RuntimeError
except Exception:
    # fall back to a plain reading of the [lints.clippy] table
    section = None
    with open("Cargo.toml", encoding="utf-8") as fh:
        for line in fh:
            s = line.split("#", 1)[0].strip()
            if s.startswith("["):
                section = s
            elif section == "[lints.clippy]" and "=" in s:
                key, value = (x.strip() for x in s.split("=", 1))
                lm = re.search(r'"(\w+)"', value)
                clippy[key] = lm.group(1) if lm else value


def lint_level(name):
    value = clippy.get(name)
    if isinstance(value, dict):
        value = value.get("level")
    return value


def denied(name):
    return "yes" if lint_level(name) in ("deny", "forbid") else "no"


# --------------------------------------------------------------------------
# 5. hops in "Follow one call"
# --------------------------------------------------------------------------

hops = None
stretches = None


def numbered_steps(lines, start):
    """Top-level numbered items under the heading at `start`, up to the
    next heading of any level (a subsection is counted on its own)."""
    steps = []
    fenced = False
    for line in lines[start + 1:]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        if re.match(r"^#+\s", line):
            break
        sm = re.match(r"^(\s*)\d+[.)]\s", line)
        if sm:
            steps.append(len(sm.group(1).expandtabs()))
    top = min(steps) if steps else 0
    return sum(1 for indent in steps if indent == top)


try:
    with open(os.path.join("docs", "ARCHITECTURE.md"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    level = None
    fenced = False
    for at, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        hm = re.match(r"^(#+)\s+(.*?)\s*#*\s*$", line)
        if not hm:
            continue
        depth, title = len(hm.group(1)), hm.group(2)
        if level is not None and depth <= level:
            break
        if level is None and re.match(r"follow one call\b", title, re.I):
            level = depth
            hops = numbered_steps(lines, at)
        elif level is not None and re.match(r"every stretch of work\b", title, re.I):
            stretches = numbered_steps(lines, at)
except OSError:
    pass

# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

print(f"revision {REVISION} named in src files (tests aside): {len(revision_files):<4} (goal <= 6; {len(revision_anywhere)} counting comments)")
print(f"MCP method names spelled as strings, src files:      {len(method_files):<4} (goal <= 4)")
if ranked:
    top_name, top_count = ranked[0]
    rest = ", ".join(f"{n} {c} ({blocks[n]})" for n, c in ranked[1:5]) or "none"
    print(
        f"most methods on one type: {top_name} {top_count} in {blocks[top_name]} impl blocks "
        f"(goal <= 60); next: {rest}"
    )
else:
    print("most methods on one type: none found (goal <= 60)")
print(
    "lints denied: "
    + ", ".join(f"{n} {denied(n)}" for n in ("expect_used", "panic", "indexing_slicing"))
)
if hops is None:
    print("follow one call: no such section (goal <= 12 hops)")
else:
    also = "" if stretches is None else f"; {stretches} stretches of work in one file"
    print(f"follow one call: {hops} hops (goal <= 12 hops){also}")

if SHOW_FILES:
    print()
    print(f"files naming {REVISION} (line numbers, comments and tests aside):")
    for path in sorted(revision_files):
        lines_ = revision_files[path]
        print(f"  {path}: {len(lines_)}x, lines {', '.join(map(str, lines_))}")
    print()
    print("files spelling MCP method names as strings (name x count):")
    for path in sorted(method_files):
        names = method_files[path]
        listed = ", ".join(
            f"{n}" + (f" x{c}" if c > 1 else "") for n, c in sorted(names.items())
        )
        print(f"  {path} ({sum(names.values())}): {listed}")
    print()
    print("types by methods (inherent impls, tests aside): methods, impl blocks, files")
    for name, count in ranked[:5]:
        print(f"  {name}: {count} in {blocks[name]} blocks, {len(block_files[name])} files")
    print()
    print("files set aside as tests:")
    for path in sorted(p for p in test_files if p in lexed):
        why = "declared by #[cfg(test)] mod" if path in declared_by_cfg_test and not by_name_is_test(path) else "by name"
        print(f"  {path} ({why})")
PYTHON
exit 0
