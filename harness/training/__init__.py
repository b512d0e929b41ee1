"""The recipe that builds our own code LM and its SDSAT fine-tune (tokenizer, model, batches)."""
