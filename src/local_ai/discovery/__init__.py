"""Model discovery: search the hub, group variants by base model, rank them for this machine.

``names`` parses repo and file names, ``ranking`` decides (pure), ``search`` talks to the hub
and reads the local caches. See docs/discovery.md for the ranking rules.
"""
