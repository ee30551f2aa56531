#!/usr/bin/env python3
"""Schema round-trip of labelqc's dashboards against Grafana's own dashboard schema.

Each dashboard JSON is decoded with the typed models of grafana-foundation-sdk (generated from
Grafana's schema; pin 1769699379!11.6.0 for Grafana 11.6), with the panel and Prometheus query
variants registered, and encoded again. A field that the schema does not know, or a value of the
wrong shape, does not survive the trip: any difference between the file and its round trip is
reported with its JSON path, and the check fails.

One exception, written out below: Prometheus annotation queries spread their query fields into
the annotation object (the schema's AnnotationQuery is open for exactly this), so those fields are
compared as they are.

Usage: check_schema.py DASHBOARD.json...
"""
import json
import sys

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

# Fields of a Prometheus query that Grafana keeps on an annotation object itself.
ANNOTATION_QUERY_FIELDS = {"step", "titleFormat", "tagKeys", "textFormat", "useValueForTime"}


def differences(a, b, path="$"):
    """The JSON paths at which a and b differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in b:
                out.append(f"{path}.{key}: dropped by the schema")
            elif key not in a:
                out.append(f"{path}.{key}: added by the schema ({json.dumps(b[key])[:80]})")
            else:
                out.extend(differences(a[key], b[key], f"{path}.{key}"))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items became {len(b)}"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out.extend(differences(x, y, f"{path}[{i}]"))
        return out
    if a != b or type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return [f"{path}: {json.dumps(a)[:80]} became {json.dumps(b)[:80]}"]
    return []


def check(path):
    with open(path, encoding="utf-8") as f:
        original = json.load(f)
    spread = [
        {k: v for k, v in a.items() if k in ANNOTATION_QUERY_FIELDS}
        for a in original.get("annotations", {}).get("list", [])
    ]
    trip = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))
    for annotation, fields in zip(trip.get("annotations", {}).get("list", []), spread):
        annotation.update(fields)
    return differences(original, trip)


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    register_default_plugins()
    failed = 0
    for path in paths:
        problems = check(path)
        if problems:
            failed += 1
            print(f"{path}: {len(problems)} difference(s) after the schema round trip:")
            for p in problems:
                print(f"  {p}")
        else:
            print(f"{path}: round trip through the Grafana 11.6 schema is exact")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
