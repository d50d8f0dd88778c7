"""``python -m tas.export``: the entry point of ``tas export`` (:mod:`tas.commands.export`).

Exporting lives in :mod:`tas.deploy`; this package only keeps the documented ``python -m``
spelling working (``__main__``).
"""
