"""One module per on-disk format, each with ``read(src, data_cfg, stats) -> list`` (see ``vlmbed.data.FORMATS``).

``src`` is the source's :class:`vlmbed.config.SourceConfig`, ``data_cfg`` the stage's data config (image
checks, bad-image policy), ``stats`` a :class:`vlmbed.data.jsonl.ReadStats` that counts skipped records.
"""
