#!/usr/bin/env python3
"""Write a deploy-history.yml of N entries in imagetrail's exact shape (one deployment every
10 minutes from 2020-01-01T00:00:00Z), plus a matching deploy-info.yml, under
STATE/prod/hello/. Usage: gen-history.py STATE N REPO"""
import datetime, hashlib, os, sys, uuid

state, n, repo = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = os.path.join(state, "prod", "hello")
os.makedirs(d, exist_ok=True)
start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
with open(os.path.join(d, "deploy-history.yml"), "w") as f:
    for i in range(n):
        t = (start + datetime.timedelta(minutes=10 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        digest = "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()
        f.write(
            f'- image:\n    repo: "{repo}"\n    tag: "{i:07x}"\n    digest: "{digest}"\n'
            f'    platform:\n      os: "linux"\n      architecture: "amd64"\n'
            f'    description: "build {i}: add healthcheck + fix nginx proxy header"\n'
            f'    built_at: "{t}"\n    revision: "{i:07x}"\n\n'
            f'  deployment:\n    deployed_at: "{t}"\n    deployed_by: "alice"\n'
            f'    workspace: "prod"\n    event_id: "{uuid.uuid4()}"\n\n'
        )
print(t)
