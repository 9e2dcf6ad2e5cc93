"""Puts the figures the reliability tests told (one JSON object a line, see
tests/it/common/figures.rs) into RELIABILITY.md as a table, between the lines
`<!-- figures:begin -->` and `<!-- figures:end -->`, so that the file holds
the last long run's results without anyone copying numbers by hand.

    python3 scripts/lib/figures_table.py FIGURES.jsonl RELIABILITY.md "how it was run"
"""

import json
import sys

BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"
# Shown first, in this order, when a case has them; the rest follow by name.
FIRST = ["iterations", "tasks", "runs", "jobs", "left", "exits", "outcomes", "seconds"]


def cell(value):
    if isinstance(value, dict):
        return ", ".join(f"{key} {cell(inner)}" for key, inner in value.items())
    if isinstance(value, list):
        return ", ".join(cell(inner) for inner in value)
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def table(records):
    lines = ["| case | figures | left |", "|---|---|---|"]
    for record in records:
        case = record.pop("case")
        left = record.pop("left", "?")
        keys = [key for key in FIRST if key in record] + sorted(key for key in record if key not in FIRST)
        figures = "; ".join(f"{key}: {cell(record[key])}" for key in keys)
        lines.append(f"| {case} | {figures} | {cell(left)} |")
    return "\n".join(lines)


def main():
    figures_path, page_path, how = sys.argv[1:4]
    with open(figures_path) as figures:
        records = [json.loads(line) for line in figures if line.strip()]
    if not records:
        sys.exit(f"{figures_path}: no figures were told; RELIABILITY.md is left as it was")
    rendered = f"{BEGIN}\nLast long run: {how}.\n\n{table(records)}\n{END}"
    print(rendered)
    with open(page_path) as page:
        text = page.read()
    if BEGIN not in text or END not in text:
        sys.exit(f"{page_path} has no {BEGIN} … {END} section to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(page_path, "w") as page:
        page.write(head + rendered + tail)


if __name__ == "__main__":
    main()
