"""Turns bench/run's measurements into bench/results.json and the "Side by side" section of
BENCHMARKS.md (between its markers; the rest of the file is left as it is).

Usage: report.py RUNS.jsonl MEMORY.json SOAK.json LATENCY.jsonl MACHINE VERSIONS COMMAND RESULTS.json BENCHMARKS.md
"""

import json
import statistics
import sys
from datetime import date

BEGIN = "<!-- bench/run: begin (generated, do not edit) -->"
END = "<!-- bench/run: end -->"
TARGETS = ["direct", "weir", "weir-plugins", "weir-pgo", "weir-pgo-plugins", "haproxy",
           "haproxy-rules", "nginx", "pingora", "sozu"]
# Held against HAProxy doing the same work in the fixed-rate latency rounds.
WITH_PLUGINS = ("weir-plugins", "weir-pgo-plugins")
LABELS = {
    "direct": "direct to a server",
    "weir": "weir, no plugins",
    "weir-plugins": "weir, 3 stock plugins",
    "weir-pgo": "weir, profile-guided build, no plugins",
    "weir-pgo-plugins": "weir, profile-guided build, 3 stock plugins",
    "haproxy": "HAProxy",
    "haproxy-rules": "HAProxy, the same 3 rules",
    "nginx": "nginx",
    "pingora": "Pingora",
    "sozu": "Sozu",
}


def summarize(runs, connections):
    out = {}
    for target in TARGETS:
        mine = [r for r in runs if r["target"] == target and r["connections"] == connections]
        if not mine:
            continue
        cpu = [r["cpu_us_per_request"] for r in mine if r["cpu_us_per_request"] is not None]
        out[target] = {
            "rounds": len(mine),
            "requests_per_s": statistics.median(r["requests_per_s"] for r in mine),
            "p50_ms": statistics.median(r["p50_ms"] for r in mine),
            "p99_ms": statistics.median(r["p99_ms"] for r in mine),
            "cpu_us_per_request": statistics.median(cpu) if cpu else None,
            "errors": sum(r["errors"] for r in mine),
        }
    return out


def ratio(value, base):
    if value is None or base in (None, 0):
        return None
    return value / base


def fmt(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def table(summary, connections):
    base = summary.get("haproxy", {})
    lines = [
        f"At {connections} connection{'s' if connections != 1 else ''} (medians of the rounds):",
        "",
        "| target | requests/s | ×HAProxy | p50 ms | p99 ms | ×HAProxy p99 | CPU µs/request | ×HAProxy CPU | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target in TARGETS:
        s = summary.get(target)
        if s is None:
            continue
        lines.append(
            "| {} | {:.0f} | {} | {} | {} | {} | {} | {} | {} |".format(
                LABELS[target],
                s["requests_per_s"],
                fmt(ratio(s["requests_per_s"], base.get("requests_per_s"))),
                fmt(s["p50_ms"], 3),
                fmt(s["p99_ms"], 3),
                fmt(ratio(s["p99_ms"], base.get("p99_ms"))),
                fmt(s["cpu_us_per_request"], 1),
                fmt(ratio(s["cpu_us_per_request"], base.get("cpu_us_per_request"))),
                s["errors"],
            )
        )
    return lines


def latency_summary(rounds):
    """Per target: medians of the fixed-rate rounds, and its p99 over HAProxy's round by
    round (median and range of those ratios)."""
    hap = {r["round"]: r["result"]["p99_ms"] for r in rounds if r["target"] == "haproxy"}
    rules = {r["round"]: r["result"]["p99_ms"] for r in rounds if r["target"] == "haproxy-rules"}
    out = {}
    for target in TARGETS:
        mine = [r for r in rounds if r["target"] == target]
        if not mine:
            continue
        # weir with plugins is held against HAProxy doing the same work.
        base = rules if target in WITH_PLUGINS and rules else hap
        ratios = sorted(
            r["result"]["p99_ms"] / base[r["round"]]
            for r in mine
            if base.get(r["round"])
        )
        out[target] = {
            "rounds": len(mine),
            "rate": mine[0]["rate"],
            "p50_ms": statistics.median(r["result"]["p50_ms"] for r in mine),
            "p99_ms": statistics.median(r["result"]["p99_ms"] for r in mine),
            "p999_ms": statistics.median(r["result"]["p999_ms"] for r in mine),
            "p99_ratio": statistics.median(ratios) if ratios else None,
            "p99_ratio_range": [ratios[0], ratios[-1]] if ratios else None,
            "base": "haproxy-rules" if base is rules else "haproxy",
            "late": sum(r["result"]["late"] for r in mine),
            "errors": sum(r["result"]["errors"] for r in mine),
        }
    return out


def latency_table(summary):
    if not summary:
        return ["Fixed-rate latency: not run this time (`LATENCY_ROUNDS=15 bench/run`)."]
    any_target = next(iter(summary.values()))
    lines = [
        f"At a fixed rate on 1 connection ({any_target['rate']} requests/s, half HAProxy's "
        f"throughput there; {any_target['rounds']} rounds; each request timed from its "
        "scheduled moment, so a stall counts for every request it delays):",
        "",
        "| target | p50 ms | p99 ms | p99.9 ms | p99 ×HAProxy, median of rounds | range of rounds | late | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in TARGETS:
        s = summary.get(target)
        if s is None:
            continue
        span = s["p99_ratio_range"]
        against = " (×HAProxy, same 3 rules)" if s["base"] == "haproxy-rules" else ""
        lines.append(
            "| {} | {} | {} | {} | {}{} | {} | {} | {} |".format(
                LABELS[target],
                fmt(s["p50_ms"], 3),
                fmt(s["p99_ms"], 3),
                fmt(s["p999_ms"], 3),
                fmt(s["p99_ratio"]),
                against,
                "–" if span is None else f"{span[0]:.2f}–{span[1]:.2f}",
                s["late"],
                s["errors"],
            )
        )
    return lines


def round_ratios(runs, connections, target, bases):
    """The target's CPU per request over the lowest of the bases' in the same round, round
    by round (sorted): the spread a verdict from the medians hides."""
    def cpu(name):
        return {r["round"]: r["cpu_us_per_request"] for r in runs
                if r["target"] == name and r["connections"] == connections
                and r["cpu_us_per_request"]}
    mine, others = cpu(target), [cpu(b) for b in bases]
    return sorted(
        value / min(o[rnd] for o in others if rnd in o)
        for rnd, value in mine.items()
        if any(rnd in o for o in others)
    )


def targets(many, one, latency=None, runs=(), connections=None):
    def check(name, value, limit, better, rounds=None):
        if value is None:
            return f"- {name}: not measured"
        met = value <= limit if better == "lower" else value >= limit
        word = "at most" if better == "lower" else "at least"
        line = f"- {name}: {value:.2f}× ({word} {limit:.2f}×) — {'met' if met else 'missed'}"
        if rounds:
            within = sum(1 for r in rounds if (r <= limit if better == "lower" else r >= limit))
            line += (f"; round by round {rounds[0]:.2f}–{rounds[-1]:.2f}×, median "
                     f"{statistics.median(rounds):.2f}×, within in {within} of {len(rounds)}")
        return line

    def cpu_rounds(target, *bases):
        return round_ratios(runs, connections, target, bases)

    hap, hap1 = many.get("haproxy", {}), one.get("haproxy", {})
    rules = many.get("haproxy-rules", {})
    lines = []
    builds = [("weir", "weir-plugins", "")]
    if "weir-pgo" in many:
        builds.append(("weir-pgo", "weir-pgo-plugins", ", profile-guided build"))
    for bare, with_plugins, build in builds:
        weir, plug, weir1 = many.get(bare, {}), many.get(with_plugins, {}), one.get(bare, {})
        lines += [
            check(f"weir{build}, no plugins: CPU per request against HAProxy",
                  ratio(weir.get("cpu_us_per_request"), hap.get("cpu_us_per_request")), 1.0, "lower",
                  cpu_rounds(bare, "haproxy")),
            check(f"weir{build}, no plugins: CPU per request against the better of HAProxy and nginx",
                  ratio(weir.get("cpu_us_per_request"),
                        min((p["cpu_us_per_request"] for p in (hap, many.get("nginx", {}))
                             if p.get("cpu_us_per_request")), default=None)), 1.0, "lower",
                  cpu_rounds(bare, "haproxy", "nginx")),
            check(f"weir{build}, no plugins: requests/s against HAProxy",
                  ratio(weir.get("requests_per_s"), hap.get("requests_per_s")), 1.0, "higher"),
            check(f"weir{build}, 3 plugins: CPU per request against HAProxy with the same 3 rules",
                  ratio(plug.get("cpu_us_per_request"), rules.get("cpu_us_per_request")), 1.15, "lower",
                  cpu_rounds(with_plugins, "haproxy-rules")),
            f"- weir{build}, 3 plugins: CPU per request against plain HAProxy: "
            + fmt(ratio(plug.get("cpu_us_per_request"), hap.get("cpu_us_per_request"))) + "×",
            check(f"weir{build}, no plugins: p99 at 1 connection against HAProxy",
                  ratio(weir1.get("p99_ms"), hap1.get("p99_ms")), 1.0, "lower"),
            check(f"weir{build}, no plugins: p99 at a fixed rate against HAProxy (median of rounds)",
                  (latency or {}).get(bare, {}).get("p99_ratio"), 1.0, "lower"),
            check(f"weir{build}, 3 plugins: p99 at a fixed rate against HAProxy with the same 3 "
                  "rules (median of rounds)",
                  (latency or {}).get(with_plugins, {}).get("p99_ratio"), 1.0, "lower"),
        ]
    return lines


def main():
    (runs_path, memory_path, soak_path, latency_path, machine, versions, command,
     results_path, benchmarks_path) = sys.argv[1:10]
    runs = [json.loads(line) for line in open(runs_path) if line.strip()]
    memory = json.load(open(memory_path))
    soak = json.load(open(soak_path))
    latency_rounds = [json.loads(line) for line in open(latency_path) if line.strip()]
    latency = latency_summary(latency_rounds)
    connections = max(r["connections"] for r in runs)
    many, one = summarize(runs, connections), summarize(runs, 1)
    results = {
        "date": date.today().isoformat(),
        "machine": machine,
        "versions": versions,
        "command": command,
        "summary": {str(connections): many, "1": one},
        "fixed_rate_latency": latency,
        "memory_kib": memory,
        "soak": soak,
        "runs": runs,
        "latency_rounds": latency_rounds,
    }
    with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")

    section = [
        BEGIN,
        "## Side by side with HAProxy, nginx, Pingora and Sozu",
        "",
        f"One run on {results['date']}: {machine}; {versions}.",
        "",
        "The proxy under test on core 0 with one worker thread; two nginx servers returning a",
        "16-byte 200 and the load generator (wrk, one thread) on core 1. Pingora is its load",
        "balancer quick start (bench/peers/pingora, one thread), Sozu its crates.io release with",
        "one worker. Rounds interleave the targets; each figure is the median over the rounds.",
        "CPU is the proxy's utime + stime over the run divided by the requests. Ratios are to",
        "HAProxy in the same run.",
        "",
    ]
    if "weir-pgo" in many:
        section += [
            "The profile-guided build is bench/pgo's: weir built again with the profile of",
            "bench/profile's load through an instrumented build, without plugins and with the",
            "three; it runs the same two configs as the plain build.",
            "",
        ]
    section += [
        "Command (builds weir and Pingora's peer in release and installs Sozu, needs",
        "`apt-get install haproxy nginx wrk cmake protobuf-compiler`):",
        "",
        "```sh",
        command,
        "```",
        "",
    ]
    section += table(many, connections) + [""] + table(one, 1) + [""]
    section += latency_table(latency) + [""]
    section += ["Targets:", ""] + targets(many, one, latency, runs, connections) + [""]
    section += [
        "Memory (RSS of the proxy's processes):",
        "",
        "| target | idle KiB | with 1,000 connections under load KiB | with 10,000 idle keep-alive connections KiB |",
        "|---|---|---|---|",
    ]
    for target in TARGETS:
        m = memory.get(target)
        if m:
            held = m.get("with_10000_idle_kib")
            held = "–" if held is None else held
            if m.get("hold_errors"):
                held = f"{held} ({m['hold_errors']} not held)"
            section.append(
                f"| {LABELS[target]} | {m['idle_kib']} | {m['with_1000_connections_kib']} | {held} |"
            )
    section.append("")
    if soak:
        samples = soak["rss_samples_kib"] or [soak["rss_start_kib"]]
        growth = (max(samples) - samples[0]) / samples[0] * 100 if samples[0] else 0
        section.append(
            f"Soak: weir under load for {soak['seconds']} s: RSS {soak['rss_start_kib']} KiB before "
            f"the load, {samples[0]} KiB at the first sample (10 s in), {max(samples)} KiB at most "
            f"({growth:.1f}% growth from the first sample; the target is at most 10%)."
        )
    else:
        section.append("Soak: not run this time (`SOAK=600 bench/run` runs a 10-minute one).")
    section += ["", END]

    text = open(benchmarks_path).read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + "\n".join(section) + tail
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    with open(benchmarks_path, "w") as f:
        f.write(text)

    print("\n".join(table(many, connections) + [""] + table(one, 1) + [""]
                    + latency_table(latency) + [""] + targets(many, one, latency, runs, connections)))


if __name__ == "__main__":
    main()
