"""What a network is and how it is cut: the model graph (:mod:`.graph`) the family adapters
(:mod:`.families`) describe, the :class:`~.arch.Arch` spec, FLOPs, slicing dense layers
(:mod:`.slicing`), the slim network (:mod:`.materialize`), a run's network read back (:mod:`.load`)
and importance-ordered channels (:mod:`.channel_order`)."""
