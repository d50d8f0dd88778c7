"""Files: atomic writes, safetensors/JSON, resumable state (:mod:`.checkpoint`) and the run directory
every stage writes, with its writer lock (:mod:`.rundir`). The lowest layer above the utilities: it
knows no model (reading a run's network back is :mod:`tas.prune.load`)."""
