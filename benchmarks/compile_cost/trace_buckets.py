#!/usr/bin/env python3
"""Where one TU's compile time goes, by owner: Asio/Boost, spdlog/fmt, the standard
library, coropool's non-template core, coropool's templates on the user's types.

    clang++ -std=c++20 -O2 -ftime-trace -ftime-trace-granularity=100 -Iinclude \\
        -c benchmarks/compile_cost/quick_start.cpp -o /tmp/quick_start.o
    benchmarks/compile_cost/trace_buckets.py /tmp/quick_start.json /tmp/quick_start.o [top]

The trace gives the front end (parsing, instantiation) and each function's
optimisation; the object file's symbol sizes stand in for machine code
generation, which the trace does not split by function. An object from g++ of
the same file may be given instead: its sizes are bucketed the same way.
"""
import json
import re
import subprocess
import sys
from collections import defaultdict

trace_path, object_path = sys.argv[1], sys.argv[2]
top = int(sys.argv[3]) if len(sys.argv) > 3 else 15
events = [e for e in json.load(open(trace_path))["traceEvents"] if e.get("ph") == "X"]


def ms(us):
    return us / 1000.0


def detail(event):
    return event.get("args", {}).get("detail", "")


def owner(name):
    """The bucket of a demangled function or class name."""
    frame = " (coroutine frame)" if re.search(r"\[clone \.(resume|destroy|cleanup|actor)\]", name) else ""
    if name.startswith("coropool::Pool<"):
        return "coropool: Pool<Request, Response> members" + frame
    if name.startswith("coropool::detail::pool_core"):
        return "coropool: detail::pool_core (not a template)" + frame
    if name.startswith("coropool::"):
        return "coropool: other types" + frame
    if "coropool::" in name:
        return "Asio/std templates instantiated on coropool's types" + frame
    if re.search(r"\bModel\b|^main$|^load\(|^handle\(", name):
        return "the user's code" + frame
    if "boost::" in name[:80]:
        return "Asio/Boost on their own or the user's types" + frame
    if "spdlog" in name or "fmt::" in name:
        return "spdlog/fmt" + frame
    return "std/other" + frame


def coropool_share(name):
    """Whether a second Pool<Request, Response>, or a second kind of completion token, compiles this again."""
    if re.search(r"coropool::Pool<|coropool::detail::\w+<|\bModel\b", name):
        return "per Pool type (templates on Request, Response, load, handle)"
    if re.search(r"pool_core::\w+<", name):
        return "per completion token (pool_core's member templates on a handler)"
    return "fixed: the non-template core and what it instantiates"


def coropool_entity(name):
    """The first coropool entity a name mentions: what asked for this code."""
    start = name.find("coropool::")
    if start < 0:
        return "?"
    rest = name[start:]
    if rest.startswith("coropool::Pool<"):
        depth, i = 0, len("coropool::Pool")
        for i in range(i, len(rest)):
            depth += {"<": 1, ">": -1}.get(rest[i], 0)
            if depth == 0:
                break
        member = re.match(r"::[A-Za-z_~]+", rest[i + 1:])
        return "coropool::Pool<...>" + (member.group(0) if member else "")
    m = re.match(r"coropool::(?:detail::)?[A-Za-z_]+(?:::[A-Za-z_~]+)?", rest)
    return m.group(0)


def show(title, rows, unit):
    print("\n== " + title)
    total = sum(value for value, _ in rows.values()) or 1
    for key, (value, count) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]:
        print("  %9.0f %-2s %5.1f%%  %5d  %s" % (value, unit, 100.0 * value / total, count, key))


def add(rows, key, value):
    rows[key][0] += value
    rows[key][1] += 1


def table():
    return defaultdict(lambda: [0, 0])


def outermost(kind):
    """Events of `kind` not nested in another of the same kind, so nothing counts twice."""
    found, end = [], -1
    for e in sorted((e for e in events if e["name"] == kind), key=lambda e: (e["ts"], -e["dur"])):
        if e["ts"] >= end:
            found.append(e)
            end = e["ts"] + e["dur"]
    return found


print("== Phases (ms)")
for phase in ("ExecuteCompiler", "Frontend", "Total Source", "PerformPendingInstantiations", "Backend", "OptModule",
              "CodeGenPasses"):
    print("  %9.0f  %s" % (ms(sum(e["dur"] for e in events if e["name"] == phase)), phase))

# Parsing: each header's own time (Source events nest: a header's includes are subtracted).
own = defaultdict(int)
stack = []
for e in sorted((e for e in events if e["name"] == "Source"), key=lambda e: (e["ts"], -e["dur"])):
    while stack and e["ts"] >= stack[-1]["ts"] + stack[-1]["dur"]:
        stack.pop()
    own[detail(e)] += e["dur"]
    if stack:
        own[detail(stack[-1])] -= e["dur"]
    stack.append(e)
headers = table()
for path, us in own.items():
    group = ("coropool's headers" if "include/coropool" in path else "Boost.Asio" if "boost/asio" in path else
             "other Boost" if "boost/" in path else "spdlog/fmt" if "spdlog" in path or "/fmt/" in path else
             "standard library" if "c++/" in path else "other")
    add(headers, group, ms(us))
show("Parsing, by where the header lives (ms of its own time)", headers, "ms")
for path, us in sorted(((p, u) for p, u in own.items() if "include/coropool" in p), key=lambda kv: -kv[1])[:5]:
    print("  %9.0f ms  %s" % (ms(us), path))

for kind in ("InstantiateFunction", "InstantiateClass"):
    rows = table()
    for e in outermost(kind):
        add(rows, owner(detail(e)), ms(e["dur"]))
    show(kind + " (outermost, ms)", rows, "ms")

entities = table()
for e in outermost("InstantiateFunction") + outermost("InstantiateClass"):
    if "coropool::" in detail(e):
        add(entities, coropool_entity(detail(e)), ms(e["dur"]))
show("Instantiation that coropool asks for, by entity (ms)", entities, "ms")

mangled = sorted({detail(e) for e in events if e["name"] == "OptFunction"})
demangled = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True).stdout.split("\n")
names = dict(zip(mangled, demangled))
optimised = defaultdict(int)
for e in events:
    if e["name"] == "OptFunction":
        optimised[names.get(detail(e), detail(e))] += e["dur"]
rows = table()
for name, us in optimised.items():
    add(rows, owner(name), ms(us))
show("Optimisation by function owner (OptFunction, ms)", rows, "ms")
print("  the slowest functions:")
for name, us in sorted(optimised.items(), key=lambda kv: -kv[1])[:top]:
    print("  %9.1f ms  %s" % (ms(us), name[:180]))

symbols = []
for line in subprocess.run(["nm", "-C", "-S", "--size-sort", object_path], capture_output=True,
                           text=True).stdout.splitlines():
    parts = line.split(" ", 3)
    if len(parts) == 4 and parts[2] in "tTwW":
        symbols.append((parts[3], int(parts[1], 16)))
rows = table()
for name, size in symbols:
    add(rows, owner(name), size)
show("Code emitted, by owner (.text bytes of " + object_path + ")", rows, "B")

split = table()
entities = table()
for name, size in symbols:
    if "coropool::" in name:
        add(split, coropool_share(name), size)
        add(entities, coropool_entity(name), size)
show("coropool's code: per Pool type, per token, or fixed per TU (.text bytes)", split, "B")
show("coropool's code by the entity that asks for it (.text bytes)", entities, "B")
