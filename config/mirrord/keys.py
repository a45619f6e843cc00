#!/usr/bin/env python3
"""Writes keys.txt, the key tree of mirrord's own config, from mirrord's
published JSON schema (`mirrord-schema.json` at the root of
metalbear-co/mirrord):

    python3 config/mirrord/keys.py path/to/mirrord-schema.json > config/mirrord/keys.txt

and removed.txt, the keys that earlier releases had and the current one has
not (developers' files still carry them), from every version of the schema
in mirrord's history:

    cd mirrord && mkdir -p /tmp/schemas && git log --format=%h -- mirrord-schema.json |
        while read c; do git show "$c:mirrord-schema.json" > "/tmp/schemas/$c.json"; done
    python3 config/mirrord/keys.py --removed mirrord/mirrord-schema.json /tmp/schemas/*.json \
        > config/mirrord/removed.txt

Names of a Rust enum's variants that some schema versions leaked as keys
(`incoming.Advanced`) are not keys of any config, and are left out.

One key path per line: `.` between keys, `[]` for the items of a list, `*`
for any key of a map (env vars, annotations, …). mirrord-config reads the
file to tell a key of mirrord that this project does not use (accepted,
listed as ignored) from a key that mirrord does not have either (an error).
"""
import json
import sys


def tree(path):
    schema = json.load(open(path))
    defs = schema.get("$defs") or schema.get("definitions") or {}
    keys = set()

    def resolve(node):
        while isinstance(node, dict) and "$ref" in node:
            node = defs[node["$ref"].split("/")[-1]]
        return node

    def walk(node, prefix, seen):
        node = resolve(node)
        if not isinstance(node, dict):
            return
        ident = (id(node), prefix)
        if ident in seen:
            return
        seen = seen | {ident}
        for combinator in ("anyOf", "oneOf", "allOf"):
            for branch in node.get(combinator, []):
                walk(branch, prefix, seen)
        for name, sub in node.get("properties", {}).items():
            path = f"{prefix}.{name}" if prefix else name
            keys.add(path)
            walk(sub, path, seen)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            path = f"{prefix}.*" if prefix else "*"
            keys.add(path)
            walk(extra, path, seen)
        items = node.get("items")
        if isinstance(items, dict):
            walk(items, prefix + "[]", seen)
        for item in node.get("prefixItems", []):
            walk(item, prefix + "[]", seen)

    walk(schema, "", frozenset())
    # A variant name is capitalised; mirrord's keys are not.
    return {k for k in keys if not any(part[:1].isupper() for part in k.replace("[]", "").split("."))}


def main(args):
    if args[:1] == ["--removed"]:
        current = tree(args[1])
        earlier = set().union(*(tree(path) for path in args[2:]))
        print("# keys of earlier mirrord releases that the current schema no longer has")
        print("# (written by keys.py --removed; do not edit)")
        for key in sorted(earlier - current):
            print(key)
        return
    print("# mirrord's config keys, from mirrord-schema.json (written by keys.py; do not edit)")
    for key in sorted(tree(args[0])):
        print(key)


if __name__ == "__main__":
    main(sys.argv[1:])
