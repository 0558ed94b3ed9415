"""bench/serve.py's one combined table: a row per measurement, a column group per model size.

Each size's results are {"ceiling": r, "server": {clients: r}, "generate": r,
"fanout": {(group, "one" | "four"): r}, "cache": {"on" | "off": r}} with r a closed-loop
result (bench/closed_loop.py: n, failed, rps, p50, p99; seconds), and with several caption
schedulers "schedulers": {name: {clients: r}} ("server" is the first's); a level not run
leaves its key out and its rows out of the table.
"""

from __future__ import annotations

import math

COLUMNS = ["per s", "p50 ms", "p99 ms", "ratio", "n", "failed"]
FANOUT = (("frozen", "ViT frozen"), ("vision", "ViT vectors"))


def _rate(x: float) -> str:
    # BLIP-base runs ~1 request/s and the small model ~100: keep three figures either way
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1000:.0f}"


def _cells(r: dict | None, ratio: str = "") -> list[str]:
    """One size's cells of a measured row; "-" where the level ran nothing that succeeded."""
    if r is None:
        return ["-"] * len(COLUMNS)
    rate = _rate(r["rps"]) if r["n"] else "-"
    return [rate, _ms(r["p50"]), _ms(r["p99"]), ratio, str(r["n"]), str(r.get("failed", 0))]


def _ratio(a: dict | None, b: dict | None, fmt: str = "{:.2f}") -> str:
    if not a or not b or not a["n"] or not b["n"] or not b["rps"]:
        return "-"
    return fmt.format(a["rps"] / b["rps"])


def _vs(a: dict | None, b: dict | None) -> list[str]:
    """Ratios a / b of req/s, p50 and p99 in their columns (a comparison row, e.g. continuous / batch)."""
    if not a or not b or not a["n"] or not b["n"]:
        return ["-", "-", "-", "", "", ""]

    def ratio(x, y):
        return "-" if math.isnan(x) or math.isnan(y) or not y else f"{x / y:.2f}x"

    return [ratio(a["rps"], b["rps"]), ratio(a["p50"], b["p50"]), ratio(a["p99"], b["p99"]), "", "", ""]


def rows(levels: list[str], concurrency: list[int], fan_clients: int, batch: int,
         schedulers: list[str] | None = None) -> list[tuple]:
    """(label, clients, cells(result of one size) -> 6 cells) for every row the levels give;
    `schedulers` (caption level): the first one's rows are the "server" rows, the others get a
    row each and a ratio row against the first, per concurrency."""
    out = []
    schedulers = schedulers or ["batch"]
    first = schedulers[0]
    if "ceiling" in levels:
        out.append((f"ceiling: model alone, batch {batch}, no HTTP (rows/s; p50/p99 per batch call)", "-",
                    lambda s: _cells(s.get("ceiling"))))
    if {"caption", "ceiling"} & set(levels):
        named = "" if schedulers == ["batch"] else f", {first} scheduler"
        for c in concurrency:
            out.append((f"server{named}, mixed adapters (req/s; ratio: / ceiling)", str(c),
                        lambda s, c=c: _cells(s["server"].get(c), _ratio(s["server"].get(c), s.get("ceiling")))))
            for other in schedulers[1:]:
                def mine(s, c=c, o=other):
                    return s.get("schedulers", {}).get(o, {}).get(c)

                out.append((f"server, {other} scheduler, mixed adapters (req/s; ratio: / ceiling)", str(c),
                            lambda s, m=mine: _cells(m(s), _ratio(m(s), s.get("ceiling")))))
                out.append((f"{other} / {first} scheduler (ratios of req/s, p50, p99)", str(c),
                            lambda s, m=mine, c=c: _vs(m(s), s["server"].get(c))))
    if "caption" in levels:
        out.append(("transformers generate, one at a time (req/s)", "1", lambda s: _cells(s.get("generate"))))
        for c in concurrency:
            out.append(("server / transformers generate (ratio of req/s)", str(c),
                        lambda s, c=c: ["", "", "", _ratio(s["server"].get(c), s.get("generate"), "{:.2f}x"),
                                        "", ""]))
    if "fanout" in levels:
        for group, name in FANOUT:
            out.append((f"fan-out, {name}: 1 request, adapters=[4] (units of 4/s; ratio: / 4 requests)",
                        str(fan_clients),
                        lambda s, g=group: _cells(s["fanout"].get((g, "one")),
                                                  _ratio(s["fanout"].get((g, "one")), s["fanout"].get((g, "four"))))))
            out.append((f"fan-out, {name}: 4 requests (units of 4/s)", str(fan_clients),
                        lambda s, g=group: _cells(s["fanout"].get((g, "four")))))
    if "cache" in levels:
        out.append(("5 questions on one image, cache on (units of 5/s; ratio: / cache off)", str(fan_clients),
                    lambda s: _cells(s["cache"].get("on"), _ratio(s["cache"].get("on"), s["cache"].get("off")))))
        out.append(("5 questions on one image, cache off (units of 5/s)", str(fan_clients),
                    lambda s: _cells(s["cache"].get("off"))))
    return out


def combined(results: dict[str, dict], levels: list[str], concurrency: list[int], batch: int,
             schedulers: list[str] | None = None) -> str:
    """The markdown table: per size, per s / p50 / p99 / ratio / n / failed."""
    sizes = list(results)
    head = ["row", "clients"] + [f"{size} {col}" for size in sizes for col in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    filled = {size: {"server": {}, "fanout": {}, "cache": {}, **results[size]} for size in sizes}
    for label, clients, cells in rows(levels, concurrency, max(concurrency), batch, schedulers):
        lines.append("| " + " | ".join([label, clients] + [x for size in sizes for x in cells(filled[size])]) + " |")
    return "\n".join(lines)
