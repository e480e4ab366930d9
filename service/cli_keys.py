"""``breastdx api-keys``: create, list and revoke API keys.

    breastdx api-keys create NAME [--scope analyses:write ...]   prints the key ONCE
    breastdx api-keys list                                       one JSON line per key
    breastdx api-keys revoke ID

Keys are stored hashed in Redis (``BREASTDX_REDIS_URL`` set) or in ``BREASTDX_API_KEYS_FILE``
(default ``var/api-keys.json``); the same settings as ``breastdx serve`` pick the same place.
Exit 0 on success, 1 on a refused request (unknown id, invalid name, Redis down), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from breastdx.errors import BreastdxError

PROG = "breastdx api-keys"


def _parser() -> argparse.ArgumentParser:
    from service.security.keys import SCOPES

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key; the key is printed once")
    create.add_argument("name", help="who or what uses the key, e.g. 'pacs-bridge'")
    create.add_argument(
        "--scope", action="append", choices=SCOPES, help="repeatable (default: all scopes)"
    )
    commands.add_parser("list", help="list keys (never their secrets)")
    revoke = commands.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", help="the 12-digit key id from 'list' or 'create'")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from service.config import get_settings
    from service.security.keys import create_key, key_store, revoke_key

    try:
        store = key_store(get_settings())
        if args.command == "create":
            key, token = create_key(store, args.name, args.scope)
            print(json.dumps(key.public() | {"key": token}))
            print(f"{PROG}: store the key now: it is not shown again", file=sys.stderr)
        elif args.command == "list":
            for key in store.all():
                print(json.dumps(key.public()))
        else:
            print(json.dumps(revoke_key(store, args.id).public()))
    except BreastdxError as exc:
        print(f"{PROG}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
