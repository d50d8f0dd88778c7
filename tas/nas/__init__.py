"""The differentiable architecture search: per-group state and searchable layers (:mod:`.groups`,
:mod:`.ops`), the :class:`~.supernet.Supernet`, its cost model, the architecture step
(:mod:`.arch_step`) and the :class:`~.searcher.Searcher` (settings in :mod:`.config`). Named ``nas``,
not ``search``: :func:`tas.search` is the public function, which a subpackage would shadow."""
