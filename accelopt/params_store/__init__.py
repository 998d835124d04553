"""The params store: the JSON file of confirmed answers that codegen reads.

- ``file``: the schema's keys, reading and atomic locked writing
- ``seed_layout``: the seed system's flat ``search_params.json`` layout, written and read
- ``check``: whether an entry is usable, and why not
- ``query``: the questions asked of a store: the entry for a request, the nearest, the frontier
"""
