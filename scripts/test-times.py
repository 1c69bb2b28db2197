#!/usr/bin/env python3
"""Test times from nextest JUnit reports, slowest first, and their sum.

    cargo nextest run --profile timing -p depot-e2e --test api
    scripts/test-times.py target/nextest/timing/junit.xml [more.xml ...]

Reports of several runs (one per group of tests) are merged; a test that
appears in more than one keeps its last time. `--names FILE` keeps only the
tests listed in FILE (one `binary::test` a line), so that two trees are
compared on the same tests; `--top N` limits the ranking (the sum is over
every kept test).
"""

import argparse
import sys
import xml.etree.ElementTree as ET


def times(paths):
    out = {}
    for path in paths:
        for case in ET.parse(path).getroot().iter("testcase"):
            binary = case.get("classname", "")
            # nextest names an integration test binary `package::binary`.
            binary = binary.split("::")[-1]
            failed = case.find("failure") is not None or case.find("error") is not None
            out[f"{binary}::{case.get('name')}"] = (float(case.get("time", 0)), failed)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--names")
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args()
    found = times(args.reports)
    if args.names:
        with open(args.names) as f:
            wanted = [line.strip() for line in f if line.strip()]
        missing = [n for n in wanted if n not in found]
        for name in missing:
            print(f"missing: {name}", file=sys.stderr)
        found = {n: found[n] for n in wanted if n in found}
    ranked = sorted(found.items(), key=lambda kv: -kv[1][0])
    shown = ranked[: args.top] if args.top else ranked
    for name, (secs, failed) in shown:
        print(f"{secs:8.2f}  {name}{'  FAILED' if failed else ''}")
    total = sum(secs for secs, _ in found.values())
    print(f"{total:8.2f}  total of {len(found)} tests")


if __name__ == "__main__":
    main()
