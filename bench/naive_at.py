#!/usr/bin/env python3
"""Baseline for `imagetrail at`: what a script does without imagetrail, parse the whole
deploy-history.yml (PyYAML, C loader when present) and take the last entry at or before T."""
import sys, yaml

path, t = sys.argv[1], sys.argv[2]
loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
with open(path) as f:
    entries = yaml.load(f, Loader=loader)
best = None
for e in entries:
    if str(e["deployment"]["deployed_at"]).replace(" ", "T").replace("+00:00", "Z") <= t:
        best = e
print(best["image"]["digest"] if best else "nothing")
