"""Question answering: follow-up rewriting, prompt templates, context packing and the answering chain."""
