#!/usr/bin/env python3
"""Write a small demo state directory for the dashboard screenshots in docs/dashboard/: apps
web, api and worker promoted dev -> staging -> prod over the last 80 days, two rollbacks in
prod, one app drifting. Same file shapes imagetrail writes. Usage: demo-state.py STATE"""
import datetime, hashlib, os, random, sys, uuid

state = sys.argv[1]
rnd = random.Random(7)
now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
people = ["alice", "bob", "ci-deploy", "carol"]


def ts(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def entry(app, env, n, built, at, who):
    digest = "sha256:" + hashlib.sha256(f"{app}-{n}".encode()).hexdigest()
    rev = hashlib.sha1(f"{app}-{n}".encode()).hexdigest()[:7]
    return {
        "repo": f"registry.example.com/shop/{app}", "tag": f"1.{n}.0", "digest": digest,
        "built": ts(built), "rev": rev, "at": ts(at), "who": who, "env": env,
        "ev": str(uuid.uuid4()),
    }


def write(app, env, entries):
    d = os.path.join(state, env, app)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "deploy-history.yml"), "w") as f:
        for e in entries:
            f.write(
                f'- image:\n    repo: "{e["repo"]}"\n    tag: "{e["tag"]}"\n    digest: "{e["digest"]}"\n'
                f'    platform:\n      os: "linux"\n      architecture: "amd64"\n'
                f'    built_at: "{e["built"]}"\n    revision: "{e["rev"]}"\n\n'
                f'  deployment:\n    deployed_at: "{e["at"]}"\n    deployed_by: "{e["who"]}"\n'
                f'    workspace: "{env}"\n    event_id: "{e["ev"]}"\n\n'
            )
    e = entries[-1]
    with open(os.path.join(d, "deploy-info.yml"), "w") as f:
        f.write(
            f'app: "{app}"\nworkspace: "{env}"\n\nimage:\n  repo: "{e["repo"]}"\n'
            f'  tag: "{e["tag"]}"\n  digest: "{e["digest"]}"\n  platform:\n    os: "linux"\n'
            f'    architecture: "amd64"\n  built_at: "{e["built"]}"\n  revision: "{e["rev"]}"\n\n'
            f'deployment:\n  deployed_at: "{e["at"]}"\n  deployed_by: "{e["who"]}"\n  event_id: "{e["ev"]}"\n'
        )


for app, releases in [("web", 14), ("api", 9), ("worker", 5)]:
    hist = {"dev": [], "staging": [], "prod": []}
    t = now - datetime.timedelta(days=80)
    step = datetime.timedelta(days=78) / releases
    for n in range(1, releases + 1):
        built = t + datetime.timedelta(hours=rnd.randint(0, 20))
        dev_at = built + datetime.timedelta(minutes=rnd.randint(10, 90))
        hist["dev"].append(entry(app, "dev", n, built, dev_at, "ci-deploy"))
        # The newest web release is in dev and staging only: drift.
        if app == "web" and n == releases:
            stg = dev_at + datetime.timedelta(hours=3)
            hist["staging"].append(entry(app, "staging", n, built, stg, "bob"))
            break
        stg = dev_at + datetime.timedelta(hours=rnd.randint(2, 30))
        hist["staging"].append(entry(app, "staging", n, built, stg, rnd.choice(people)))
        prod = stg + datetime.timedelta(hours=rnd.randint(20, 70))
        hist["prod"].append(entry(app, "prod", n, built, prod, rnd.choice(people)))
        if app == "web" and n in (5, 10):
            # A rollback in prod to the release before, a few hours later.
            prev = hist["prod"][-2]
            back = dict(prev, at=ts(prod + datetime.timedelta(hours=rnd.randint(1, 6))),
                        who="alice", ev=str(uuid.uuid4()))
            hist["prod"].append(back)
        t += step
    for env, entries in hist.items():
        entries.sort(key=lambda e: e["at"])
        write(app, env, entries)
