"""Synthetic data: the demo's emotion clips (`clips`), the word-level tokenizer that spells them
(`tokenizer`), tiny stand-ins for the 7B's downloads (`parts`); `omni-jax synth` (`job`)."""
