#!/usr/bin/env python3
"""Validates custom resources against the CustomResourceDefinitions that
define them, as an API server does with strict field validation: the served
version's openAPIV3Schema (types, required fields, enums, patterns,
int-or-string) by jsonschema, and no field the schema does not declare
(unless it preserves unknown fields).

    validate.py CRD_DIR FILE...

Prints one line per problem (FILE: KIND NAME: PATH: what) and exits 1 when
there is any, 0 when every object of every FILE is valid. Objects whose
group has no CRD in CRD_DIR are an error too. CEL rules
(x-kubernetes-validations) are not evaluated.
"""

import pathlib
import sys

import jsonschema
import yaml


def load_crds(directory):
    crds = {}
    for path in sorted(pathlib.Path(directory).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                spec = doc["spec"]
                for version in spec["versions"]:
                    if version.get("served"):
                        key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                        crds[key] = version["schema"]["openAPIV3Schema"]
    return crds


def unknown_fields(value, schema, path):
    """Fields of `value` that `schema` does not declare."""
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                yield from unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(additional, dict):
                yield from unknown_fields(item, additional, f"{path}.{key}")
            elif properties is not None and not additional:
                yield f"{path}.{key}: unknown field"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")


def problems(obj, crds):
    key = (obj.get("apiVersion"), obj.get("kind"))
    schema = crds.get(key)
    if schema is None:
        yield f"no CustomResourceDefinition serves {key[1]} {key[0]}"
        return
    # metadata is ObjectMeta, checked by the API server itself.
    checked = {k: v for k, v in obj.items() if k != "metadata"}
    root = dict(schema, properties={k: v for k, v in schema.get("properties", {}).items() if k != "metadata"})
    for error in jsonschema.Draft7Validator(root).iter_errors(checked):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        yield f"{where or '.'}: {error.message}"
    yield from unknown_fields(checked, root, "")


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    crds = load_crds(argv[1])
    if not crds:
        print(f"no CustomResourceDefinition in {argv[1]}", file=sys.stderr)
        return 2
    bad = 0
    for file in argv[2:]:
        for obj in yaml.safe_load_all(pathlib.Path(file).read_text()):
            if not obj:
                continue
            name = obj.get("metadata", {}).get("name", "?")
            for problem in problems(obj, crds):
                print(f"{file}: {obj.get('kind')} {name}: {problem}")
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
