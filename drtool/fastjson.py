"""The standard `json` module's dumps and loads, under the name drtool/snapshot/cache.py still imports.

drtool used to encode and decode its start-up path's JSON here by calling CPython's private `_json` functions; that
is gone (issue #15: public APIs only). Every other module imports `json` itself; delete this file once cache.py does.
"""

from json import dumps, loads

__all__ = ["dumps", "loads"]
