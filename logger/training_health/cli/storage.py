"""`--storage-option KEY=VALUE`: fsspec options for a bucket logdir, on the command line.

The same options `HealthCallback(..., storage_options=...)` takes: each
VALUE is read as JSON when it is JSON (numbers, true/false, objects such as
``client_kwargs={"endpoint_url": "http://127.0.0.1:9000"}``) and as a
plain string otherwise (``key=AKIA...``). Dots in KEY name nested options:
``client_kwargs.endpoint_url=http://...`` is the same as the object above.
"""

import argparse
import json


def add_argument(parser):
    """Adds the repeatable `--storage-option` to an argparse parser."""
    parser.add_argument(
        "--storage-option", action="append", default=[], dest="storage_options", metavar="KEY=VALUE",
        type=parse_option,
        help="an fsspec option for a bucket logdir (repeatable), e.g. "
             "client_kwargs.endpoint_url=http://127.0.0.1:9000, key=..., secret=..., anon=true; "
             "VALUE is JSON when it parses as JSON, else a string",
    )


def parse_option(text):
    """'KEY=VALUE' -> (key path tuple, value); argparse's `type`."""
    key, sep, raw = text.partition("=")
    path = tuple(key.strip().split("."))
    if not sep or not all(path):
        raise argparse.ArgumentTypeError(
            "expected KEY=VALUE (e.g. client_kwargs.endpoint_url=http://127.0.0.1:9000); "
            "received %r" % (text,))
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return path, value


def options(args):
    """The storage_options dict of parsed `--storage-option`s, or None for none."""
    if not args.storage_options:
        return None
    out = {}
    for path, value in args.storage_options:
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
            node[path[-1]].update(value)
        else:
            node[path[-1]] = value
    return out
