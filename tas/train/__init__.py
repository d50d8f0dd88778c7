"""Training: one epoch and evaluation (:mod:`.engine`), the training loop with resume (:mod:`.loop`),
distillation of a slim network (:mod:`.distill`) and the job behind ``tas train`` (:mod:`.run`)."""
