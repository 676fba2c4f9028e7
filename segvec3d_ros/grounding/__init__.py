"""Language grounding: the frozen text encoder and ranking instances for free text."""
