#!/usr/bin/env python3
"""Validates every file given against the official Kubernetes schemas of
every minor from 1.29 to the newest kubernetes-validate ships, strictly
(unknown fields rejected). Any output other than "passed" is a failure,
warnings such as "couldn't find schema" included."""
import subprocess
import sys

from kubernetes_validate import utils


def minors():
    seen = {}
    for v in utils.all_versions():
        major, minor = (int(x) for x in v.split(".")[:2])
        if (major, minor) >= (1, 29):
            seen[(major, minor)] = v
    return [seen[k] for k in sorted(seen)]


def main():
    files = sys.argv[1:]
    failures = []
    versions = minors()
    for version in versions:
        out = subprocess.run(["kubernetes-validate", "--strict", "-k", version, *files], capture_output=True, text=True)
        lines = [l for l in (out.stdout + out.stderr).splitlines() if l.strip()]
        bad = [l for l in lines if " passed for resource " not in l]
        if out.returncode != 0 or bad or len(lines) < len(files):
            failures.append(f"{version}: exit {out.returncode}\n" + "\n".join(bad[:20]))
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"{len(files)} files valid for Kubernetes {', '.join(versions)}")


main()
