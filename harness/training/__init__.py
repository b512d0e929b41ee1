"""The recipe that builds our own code LM and its SDSAT fine-tune (tokenizer, model, batches)."""

# The recipe's stages, in order (here, not in recipe.py, so the command line lists them without torch).
STAGES = ("corpus", "tokenizer", "tokens", "pretrain", "sdsat", "draft", "evaluate")
# Trained peers' drafters on the frozen base: stages run only when --stages names them.
DRAFTERS = ("medusa", "eagle")
